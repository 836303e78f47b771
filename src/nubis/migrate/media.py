"""Folders, zip and tar files, and DICOMDIR media (CD/DVD exports) as a migration source.

A folder with a DICOMDIR (PS3.10 8.6, PS3.3 F) is listed from it, without opening every
file; a referenced file that is absent is reported missing, with the reason. Any other
folder, zip or tar file is listed by reading each file's header up to the UIDs; files that
are not DICOM are counted and skipped, DICOM files without readable UIDs are listed as
unreadable with the reason. The bytes delivered are the files themselves, so their SHA-256
is the source's.
"""

from __future__ import annotations

import logging
import tarfile
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from nubis.migrate.source import Deliver, ListingGap, SourceError, SourceInstance, SourceStudy
from nubis.services.spool import Spool

__all__ = ["MediaSource"]

log = logging.getLogger(__name__)

_UID_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate"]
_CHUNK = 1 << 20


class MediaSource:
    """A folder (with or without a DICOMDIR), a zip file or a tar file."""

    gives_bytes = True

    def __init__(self, path: Path, spool: Spool) -> None:
        if not path.exists():
            raise SourceError(f"{path} does not exist")
        self.path = path
        self.spool = spool
        self.description = f"media {path}"
        self.gaps: list[ListingGap] = []
        self.non_dicom = 0
        self._archive: zipfile.ZipFile | tarfile.TarFile | None = None
        if path.is_file() and zipfile.is_zipfile(path):
            self._archive = zipfile.ZipFile(path)
        elif path.is_file() and tarfile.is_tarfile(path):
            self._archive = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
        elif not path.is_dir():
            raise SourceError(f"{path} is neither a folder nor a zip or tar file")
        self._studies: dict[str, list[SourceInstance]] = {}
        self._dates: dict[str, str | None] = {}
        self._listed = False

    # ------------------------------------------------------------------ listing
    def studies(self) -> Iterator[SourceStudy]:
        self._list()
        order = sorted(self._studies, key=lambda uid: (self._dates.get(uid) or "", uid))
        for uid in order:
            yield SourceStudy(uid, self._dates.get(uid), len(self._studies[uid]))

    def instances(self, study: SourceStudy) -> list[SourceInstance]:
        self._list()
        return list(self._studies.get(study.study_uid, []))

    def _list(self) -> None:
        if self._listed:
            return
        found: dict[str, dict[str, SourceInstance]] = defaultdict(dict)
        dicomdir = self._dicomdir()
        entries = self._from_dicomdir(dicomdir) if dicomdir else self._from_headers()
        for study_uid, study_date, instance in entries:
            found[study_uid].setdefault(instance.sop_instance_uid, instance)
            if study_date and not self._dates.get(study_uid):
                self._dates[study_uid] = study_date
            self._dates.setdefault(study_uid, study_date)
        self._studies = {uid: list(items.values()) for uid, items in found.items()}
        self._listed = True

    def _dicomdir(self) -> Path | None:
        if self._archive is not None:
            return None
        for name in ("DICOMDIR", "dicomdir"):
            if (self.path / name).is_file():
                return self.path / name
        return None

    def _from_dicomdir(self, dicomdir: Path) -> Iterator[tuple[str, str | None, SourceInstance]]:
        """Every record that references a file, with the study and series records above it,
        walked by the records' offsets (PS3.3 F.3.2.2). Not pydicom's FileSet: it leaves out
        records whose file is absent, which would make a lost file a silent gap."""
        try:
            ds = dcmread(dicomdir)
            records = {r.seq_item_tell: r for r in ds.DirectoryRecordSequence}
            first = int(ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity)
        except (InvalidDicomError, AttributeError, ValueError, TypeError) as exc:
            raise SourceError(f"{dicomdir} cannot be read as a DICOMDIR: {exc}") from None
        seen: set[int] = set()
        stack: list[tuple[int, str | None, str | None, str | None]] = [(first, None, None, None)]
        while stack:
            offset, study_uid, study_date, series_uid = stack.pop()
            while offset and offset not in seen and offset in records:
                seen.add(offset)
                record = records[offset]
                kind = str(record.get("DirectoryRecordType", "")).strip()
                study, date, series = study_uid, study_date, series_uid
                if kind == "STUDY":
                    study = str(record.get("StudyInstanceUID") or "") or None
                    date = str(record.get("StudyDate") or "") or None
                elif kind == "SERIES":
                    series = str(record.get("SeriesInstanceUID") or "") or None
                file_id = record.get("ReferencedFileID")
                sop = str(record.get("ReferencedSOPInstanceUIDInFile") or "")
                if file_id and kind not in ("PATIENT", "STUDY", "SERIES"):
                    parts = [file_id] if isinstance(file_id, str) else list(file_id)
                    ref = "/".join(str(p) for p in parts)
                    if study and sop:
                        yield study, date, SourceInstance(sop, series, ref)
                    else:
                        self.gaps.append(
                            ListingGap(f"DICOMDIR record for {ref}", "no study or SOP UID")
                        )
                lower = int(record.get("OffsetOfReferencedLowerLevelDirectoryEntity") or 0)
                if lower:
                    stack.append((lower, study, date, series))
                offset = int(record.get("OffsetOfTheNextDirectoryRecord") or 0)

    def _from_headers(self) -> Iterator[tuple[str, str | None, SourceInstance]]:
        for ref in self._members():
            try:
                with self._open(ref) as f:
                    ds = dcmread(f, stop_before_pixels=True, specific_tags=_UID_TAGS)
            except InvalidDicomError:
                self.non_dicom += 1
                continue
            except Exception as exc:  # a damaged file must not stop the listing
                self.gaps.append(ListingGap(f"file {ref}", f"unreadable: {type(exc).__name__}"))
                continue
            if getattr(ds, "file_meta", None) is None or "TransferSyntaxUID" not in ds.file_meta:
                self.non_dicom += 1
                continue
            uids = [str(ds.get(k) or "").strip() for k in _UID_TAGS[:3]]
            if not all(uids):
                missing = [k for k, v in zip(_UID_TAGS[:3], uids, strict=True) if not v]
                self.gaps.append(ListingGap(f"file {ref}", f"no {', '.join(missing)}"))
                continue
            date = str(ds.get("StudyDate") or "") or None
            yield uids[0], date, SourceInstance(uids[2], uids[1], ref)

    def _members(self) -> Iterator[str]:
        if isinstance(self._archive, zipfile.ZipFile):
            yield from (i.filename for i in self._archive.infolist() if not i.is_dir())
        elif isinstance(self._archive, tarfile.TarFile):
            yield from (m.name for m in self._archive.getmembers() if m.isfile())
        else:
            for p in sorted(self.path.rglob("*")):
                if p.is_file() and p.name.upper() != "DICOMDIR":
                    yield str(PurePosixPath(*p.relative_to(self.path).parts))

    def _open(self, ref: str) -> AbstractContextManager[IO[bytes]]:
        if isinstance(self._archive, zipfile.ZipFile):
            return self._archive.open(ref)
        if isinstance(self._archive, tarfile.TarFile):
            f = self._archive.extractfile(ref)
            if f is None:
                raise FileNotFoundError(ref)
            return f
        path = (self.path / ref).resolve()
        # A DICOMDIR names files inside its medium; one that points outside it is not read.
        if not path.is_relative_to(self.path.resolve()):
            raise FileNotFoundError(ref)
        return path.open("rb")

    # ------------------------------------------------------------------ bytes
    def fetch(
        self, study: SourceStudy, wanted: list[SourceInstance], deliver: Deliver
    ) -> dict[str, str]:
        reasons: dict[str, str] = {}
        for instance in wanted:
            assert instance.ref is not None
            try:
                with self._open(instance.ref) as f, self.spool.writer() as writer:
                    while chunk := f.read(_CHUNK):
                        writer.write(chunk)
                    spooled = writer.finish()
            except FileNotFoundError:
                reasons[instance.sop_instance_uid] = f"file {instance.ref} is absent"
                continue
            except (OSError, KeyError) as exc:
                # Paths on exported media often name the patient: not logged.
                log.warning("a media file could not be read: %s", type(exc).__name__)
                reasons[instance.sop_instance_uid] = (
                    f"file {instance.ref} could not be read ({type(exc).__name__})"
                )
                continue
            deliver(spooled)
        return reasons

    def close(self) -> None:
        if self._archive is not None:
            self._archive.close()

    def summary(self) -> dict[str, Any]:
        return {"non_dicom_files": self.non_dicom}
