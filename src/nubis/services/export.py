"""Export: a study or series handed to a person as a ZIP of its stored PS3.10 files.

The objects are those ``RetrieveService.instances`` finds for the caller (authorized, scoped
to the tenant and grants, recorded as DICOM Instances Transferred as a WADO-RS retrieval is);
the download is also recorded as an Export (PS3.15 A.5.3.6: the data leaves the archive as a
file the person keeps). Each file is the stored object byte for byte, its SHA-256 checked on
the way out (``RetrieveService.all_instance_chunks``: a mismatch cuts the stream rather than
deliver bad bytes), and named from UIDs only: ``<series UID>/<SOP Instance UID>.dcm``.

The ZIP is written as it is sent, in bounded memory whatever the study's size: no entry is
held whole, sizes and CRCs follow each entry in a data descriptor (the output cannot seek
back), and ZIP64 records are written where a size, an offset or the entry count passes the
classic format's limits (an entry that may pass 4 GiB gets its ZIP64 header up front).
Entries are stored, not deflated: most pixel data is already compressed or compresses poorly
for the CPU it costs, and a download must not take a core per user.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nubis.model.records import StoredInstance
from nubis.security import audit_events
from nubis.security.policy import Principal
from nubis.services.guard import Guard
from nubis.services.retrieve import AS_STORED, RetrieveService

if TYPE_CHECKING:
    from nubis.services.research_view import DeidentifiedFile

__all__ = ["ExportService", "ZipDownload", "zip_stream"]

# Output is handed on in pieces of about this size (an entry's chunks are at most 1 MiB).
_FLUSH_BYTES = 1 << 20
# The DOS date of every entry: the archive's content, not the moment of the download, and the
# same bytes for the same study every time.
_DATE_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class ZipDownload:
    """A ZIP to send: its file name, the number of objects in it and its bytes, produced as
    they are read (the first object is already open, so a missing blob fails before a
    response starts)."""

    filename: str
    count: int
    chunks: Iterator[bytes]


class ExportService:
    def __init__(self, retrieve: RetrieveService, guard: Guard) -> None:
        self.retrieve = retrieve
        self.guard = guard

    def study_zip(
        self, who: Principal, study_uid: str, series_uid: str | None = None
    ) -> ZipDownload:
        """The stored files of a study (or one of its series) that ``who`` may read, as a ZIP.

        Forbidden (403) for roles that may not read; NotFound (404) outside the caller's scope
        as for anything absent. Recorded as Instances Transferred and as Export.
        """
        found = self.retrieve.instances(who, study_uid, series_uid, transfer=True)
        what = f"series {series_uid}" if series_uid else f"study {study_uid}"
        self.guard.record(
            audit_events.data_export(
                who,
                patient_id=found[0].patient_id,
                study_uids=[study_uid],
                request_id=who.request_id,
                description=f"ZIP download of {len(found)} object(s) of {what}",
            )
        )
        contents = self.retrieve.all_instance_chunks(found, AS_STORED)
        entries = (
            (entry_name(inst), inst.size, chunks)
            for inst, chunks in zip(found, contents, strict=True)
        )
        name = f"{series_uid or study_uid}.zip"
        return ZipDownload(name, len(found), zip_stream(entries))

    def deidentified_zip(self, files: Iterable[DeidentifiedFile]) -> Iterator[bytes]:
        """De-identified objects (a de-identified share link's, made and recorded by the
        research view) as a ZIP, each named by its remapped UIDs."""
        return zip_stream(
            (f"{f.series_uid}/{f.sop_instance_uid}.dcm", len(f.data), iter((f.data,)))
            for f in files
        )


def entry_name(inst: StoredInstance) -> str:
    """Where an object goes in the ZIP: UIDs only (digits and dots), never patient data."""
    return f"{inst.series_uid}/{inst.sop_instance_uid}.dcm"


class _Sink:
    """Where zipfile writes: collects the bytes until the generator hands them on. It has no
    ``tell`` or ``seek``, so zipfile writes a stream (data descriptors, no going back)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.pending = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self.pending += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Part of the file protocol zipfile asks of a writer; it closes only files it
        opened itself, and the collected bytes are taken by :meth:`take`."""

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        self.pending = 0
        return data


def zip_stream(entries: Iterable[tuple[str, int, Iterator[bytes]]]) -> Iterator[bytes]:
    """A ZIP archive of ``entries`` (name, size in bytes, content chunks), written as it is
    read: memory holds about one chunk, whatever the sizes."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, size, chunks in entries:
            info = zipfile.ZipInfo(name, date_time=_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            # The size decides whether the local header is ZIP64 (written before the data).
            info.file_size = size
            with archive.open(info, "w") as entry:
                for chunk in chunks:
                    entry.write(chunk)
                    if sink.pending >= _FLUSH_BYTES:
                        yield sink.take()
            if sink.pending:
                yield sink.take()
    if sink.pending:
        yield sink.take()
