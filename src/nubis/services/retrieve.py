"""Retrieve: whole objects, metadata, frames, bulk data, rendered images (PS3.18 10.4).

Everything here reads what ingest prepared: metadata is served from the JSON kept in the index
(one query for a whole series), frames and bulk data are byte ranges located by the offset
indexes built at ingest, and whole objects stream from the blob store with their SHA-256
checked on the way out, so a corrupted blob is never served as if it were good.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

from pydicom import dcmread

from nubis.dicom import render, transcode
from nubis.dicom.inspect import BULK_URI_MARKER
from nubis.errors import NotAcceptable, NotFound, NubisError
from nubis.index.database import Index
from nubis.model.records import StoredInstance
from nubis.ports.blobs import BlobStore

log = logging.getLogger(__name__)

AS_STORED = "*"


class BlobCorrupted(NubisError):
    """The stored bytes no longer match the digest recorded at ingest."""

    http_status = 500


class RetrieveService:
    def __init__(self, index: Index, blobs: BlobStore, *, verify_reads: bool = True) -> None:
        self.index = index
        self.blobs = blobs
        self.verify_reads = verify_reads

    def instances(
        self,
        partition: str,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[StoredInstance]:
        return self.index.instances_of(partition, study_uid, series_uid, sop_instance_uid)

    # ------------------------------------------------------------------ whole objects
    def instance_chunks(self, inst: StoredInstance, transfer_syntax: str) -> Iterator[bytes]:
        """The PS3.10 file, as stored (``*`` or the stored syntax) or transcoded."""
        if transfer_syntax in (AS_STORED, inst.transfer_syntax_uid):
            if not self.verify_reads:
                return self.blobs.iter_chunks(inst.blob_key)
            return self._verified_chunks(inst)
        if not transcode.can_transcode(inst.transfer_syntax_uid, transfer_syntax):
            raise NotAcceptable(
                f"instance {inst.sop_instance_uid} is stored in {inst.transfer_syntax_uid} and "
                f"cannot be converted to {transfer_syntax}"
            )
        return iter((transcode.transcode_file(self._path(inst), transfer_syntax),))

    def _verified_chunks(self, inst: StoredInstance) -> Iterator[bytes]:
        digest = hashlib.sha256()
        size = 0
        for chunk in self.blobs.iter_chunks(inst.blob_key):
            digest.update(chunk)
            size += len(chunk)
            if size == inst.size and digest.hexdigest() != inst.sha256:
                # Withhold the last chunk: the client sees a broken stream, never bad bytes.
                log.error("blob %s of instance pk %s fails its SHA-256", inst.blob_key, inst.pk)
                raise BlobCorrupted("stored object failed its integrity check")
            yield chunk
        if size != inst.size:
            log.error("blob %s has %d bytes, index says %d", inst.blob_key, size, inst.size)
            raise BlobCorrupted("stored object failed its integrity check")

    def _path(self, inst: StoredInstance) -> Path:
        path = self.blobs.local_path(inst.blob_key)
        if path is None:
            raise NotAcceptable("conversion needs a local copy, which this store cannot give")
        return path

    # ------------------------------------------------------------------ metadata
    def metadata(
        self,
        partition: str,
        base_url: str,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> bytes:
        """application/dicom+json array of the instances' metadata (PS3.18 10.4.1.1.2)."""
        rows = self.index.metadata_of(partition, study_uid, series_uid, sop_instance_uid)
        marker = f'"BulkDataURI":"{BULK_URI_MARKER}'
        parts = []
        for row_series, row_sop, text in rows:
            if marker in text:
                prefix = (
                    f'"BulkDataURI":"{base_url}/studies/{study_uid}/series/{row_series}'
                    f"/instances/{row_sop}/bulk/"
                )
                text = text.replace(marker, prefix)
            parts.append(text)
        return ("[" + ",".join(parts) + "]").encode()

    # ------------------------------------------------------------------ frames and bulk data
    def frames(self, inst: StoredInstance, numbers: list[int]) -> list[bytes]:
        """Frame bytes as stored (native or one compressed bitstream each), PS3.18 10.4.1.1.4."""
        _check_frame_numbers(inst, numbers)
        index = inst.frames
        if index is None:
            return self.decoded_frames(inst, numbers)
        return [
            b"".join(
                self.blobs.read(inst.blob_key, offset, length) for offset, length in index[n - 1]
            )
            for n in numbers
        ]

    def decoded_frames(self, inst: StoredInstance, numbers: list[int]) -> list[bytes]:
        """Frames decoded to native little-endian pixels (for application/octet-stream)."""
        _check_frame_numbers(inst, numbers)
        path = self._path(inst)
        return [transcode.decode_frame(path, n) for n in numbers]

    def bulk(self, inst: StoredInstance, path: str) -> tuple[int, int]:
        """(offset, length) of a bulk data value in the blob."""
        try:
            return inst.bulk[path]
        except KeyError:
            raise NotFound(
                f"instance {inst.sop_instance_uid} has no bulk data at {path!r}"
            ) from None

    def inflated_bulk(self, inst: StoredInstance, path: str) -> bytes:
        """A bulk data value of a deflated object, whose values have no position in the blob.

        ``path`` is the bulk path of the metadata (``TAG`` or ``TAG/item/TAG...``).
        """
        ds = dcmread(self._path(inst))
        parts = path.split("/")
        try:
            node = ds
            for tag, item in zip(parts[:-1:2], parts[1::2], strict=True):
                node = node[int(tag, 16)].value[int(item)]
            value = node[int(parts[-1], 16)].value
        except (KeyError, IndexError, ValueError, TypeError):
            raise NotFound(
                f"instance {inst.sop_instance_uid} has no bulk data at {path!r}"
            ) from None
        if not isinstance(value, bytes):
            raise NotFound(f"instance {inst.sop_instance_uid} has no bulk data at {path!r}")
        return value

    def read_range(self, inst: StoredInstance, offset: int, length: int) -> Iterator[bytes]:
        return self.blobs.iter_chunks(inst.blob_key, offset, length)

    # ------------------------------------------------------------------ rendered
    def rendered(
        self, inst: StoredInstance, frame_number: int | None, options: render.RenderOptions
    ) -> bytes:
        path = self._path(inst)
        if frame_number is None:
            return render.render_frame(path, 1, options)
        _check_frame_numbers(inst, [frame_number])
        return render.render_frame(path, frame_number, options)

    def thumbnail(self, inst: StoredInstance, options: render.RenderOptions) -> bytes:
        return render.render_thumbnail(self._path(inst), options)


def _check_frame_numbers(inst: StoredInstance, numbers: list[int]) -> None:
    count = inst.number_of_frames or 1
    for n in numbers:
        if not 1 <= n <= count:
            raise NotFound(
                f"instance {inst.sop_instance_uid} has {count} frame(s); frame {n} does not exist"
            )
