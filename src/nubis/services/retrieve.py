"""Retrieve: whole objects, metadata, frames, bulk data, rendered images (PS3.18 10.4).

Everything here reads what ingest prepared: metadata is served from the JSON kept in the index
(one query for a whole series), frames and bulk data are byte ranges located by the offset
indexes built at ingest, and whole objects stream from the blob store with their SHA-256
checked on the way out, so a corrupted blob is never served as if it were good.

Whole objects leave by one path whatever the front door: :meth:`RetrieveService.instance_chunks`
(a stream) or :meth:`~RetrieveService.instance_bytes`, as stored or converted to a transfer
syntax :meth:`~RetrieveService.syntax_for` chose among those a peer accepts; checked as
``verify_reads`` and the store's authenticated reads say (nubis.blobs.integrity).
"""

from __future__ import annotations

import io
import json
import logging
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import chain, islice
from typing import BinaryIO, TypeVar

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from nubis import metrics
from nubis.blobs.integrity import verified_chunks
from nubis.dicom import frame_codec, overlay, render, syntaxes, transcode
from nubis.dicom.inspect import BULK_URI_MARKER
from nubis.errors import BlobCorrupted, NotAcceptable, NotFound
from nubis.index.database import Index
from nubis.model.audit import EventOutcome
from nubis.model.records import StoredInstance
from nubis.ports.blobs import BlobContext, BlobNotFound, BlobStore
from nubis.security import audit_events
from nubis.security.policy import Action, Decision, Principal
from nubis.services.guard import Guard

_T = TypeVar("_T")

log = logging.getLogger(__name__)

# Study retrieval from a remote blob store: how many objects are fetched ahead of the one being
# sent, and the largest object fetched whole (larger ones stream, as from a local store).
READ_AHEAD = 4
READ_AHEAD_OBJECT = 8 << 20
# A frame's fragment up to this size is read in one call (the common case, one round trip);
# a larger one streams in chunks, so no frame is ever held whole however large it is.
READ_WHOLE_FRAGMENT = 4 << 20

AS_STORED = "*"
# What a peer that accepts several transfer syntaxes is sent a conversion in: the syntaxes
# every DICOM application supports first (PS3.5 10.1), then the others in UID order.
_CONVERSION_ORDER = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class RetrieveService:
    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        *,
        guard: Guard,
        verify_reads: bool = True,
        on_read: Callable[[str, str], None] | None = None,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.guard = guard
        self.verify_reads = verify_reads
        # Told (partition, study UID) of every study whose objects are read, for the storage
        # tier rules (nubis.tiers.reads); must not block.
        self.on_read = on_read

    def instances(
        self,
        who: Principal,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        *,
        transfer: bool = True,
    ) -> list[StoredInstance]:
        """The instances of a study, series or instance that ``who`` may read.

        Every other method reads only instances returned here, so this is where a retrieval is
        authorized and recorded: Forbidden (403 / 0x0124) for roles that may not read, or, with
        ``transfer`` (whole objects leave), may not download (a view-only share link);
        NotFound (404) both for what does not exist and for what lies outside the caller's
        tenant or grants (one statement decides both, see ``Index.instances_of``). Recorded as
        DICOM Instances Transferred (``transfer``) or Accessed (frames, rendered images, bulk
        data), also when nothing was found.
        """
        what = _describe("retrieve", study_uid, series_uid, sop_instance_uid)
        action = Action.READ | Action.DOWNLOAD if transfer else Action.READ
        decision = self.guard.authorize(who, action, what, study_uids=(study_uid,))
        assert decision.scope is not None
        try:
            found = self.index.instances_of(
                decision.scope.partition,
                study_uid,
                series_uid,
                sop_instance_uid,
                grantee=decision.scope.grantee,
                hide_quarantined=not decision.scope.sees_quarantine,
            )
        except NotFound as exc:
            self._record(who, decision, None, study_uid, transfer, exc.reason)
            raise
        self._record(who, decision, found[0].patient_id, study_uid, transfer, None)
        if self.on_read is not None:
            self.on_read(decision.scope.partition, study_uid)
        return found

    def _record(
        self,
        who: Principal,
        decision: Decision,
        patient_id: str | None,
        study_uid: str,
        transfer: bool,
        failure: str | None,
    ) -> None:
        build = audit_events.instances_transferred if transfer else audit_events.instances_accessed
        self.guard.record(
            build(
                who,
                patient_id=patient_id,
                study_uids=[study_uid],
                outcome=EventOutcome.SUCCESS if failure is None else EventOutcome.MINOR_FAILURE,
                request_id=who.request_id,
                break_glass_reason=decision.break_glass,
                description=failure,
            )
        )

    # ------------------------------------------------------------------ whole objects
    def all_instance_chunks(
        self, found: list[StoredInstance], transfer_syntax: str
    ) -> Iterator[Iterator[bytes]]:
        """:meth:`instance_chunks` of each of ``found`` in order, the first opened at once.

        From a remote blob store (S3), a study of many small objects would cost one round trip
        after another; objects up to ``READ_AHEAD_OBJECT`` bytes are then fetched whole, up to
        ``READ_AHEAD`` of them ahead of the one being sent (bounded memory per request). A
        fetched object is complete and verified before a byte of it is sent.
        """
        if not self.blobs.capabilities.remote or len(found) == 1:
            first = self.instance_chunks(found[0], transfer_syntax)
            return chain((first,), (self.instance_chunks(i, transfer_syntax) for i in found[1:]))
        return self._read_ahead(found, transfer_syntax)

    def _read_ahead(
        self, found: list[StoredInstance], transfer_syntax: str
    ) -> Iterator[Iterator[bytes]]:
        def whole(inst: StoredInstance) -> Iterator[bytes]:
            if inst.size > READ_AHEAD_OBJECT:
                return self.instance_chunks(inst, transfer_syntax)
            return iter((b"".join(self.instance_chunks(inst, transfer_syntax)),))

        pool = ThreadPoolExecutor(READ_AHEAD, thread_name_prefix="nubis-read-ahead")
        pending: deque[Future[Iterator[bytes]]] = deque()
        upcoming = iter(found)
        for inst in islice(upcoming, READ_AHEAD):
            pending.append(pool.submit(whole, inst))
        try:
            # The first object fails (missing, erased key) before a response starts.
            first = pending.popleft().result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise

        def rest() -> Iterator[Iterator[bytes]]:
            try:
                yield first
                while pending:
                    nxt = next(upcoming, None)
                    if nxt is not None:
                        pending.append(pool.submit(whole, nxt))
                    yield pending.popleft().result()
            finally:
                pool.shutdown(wait=False, cancel_futures=True)

        return rest()

    def instance_chunks(self, inst: StoredInstance, transfer_syntax: str) -> Iterator[bytes]:
        """The PS3.10 file, as stored (``*`` or the stored syntax) or transcoded; with the
        study's corrections applied (nubis.dicom.overlay) to the stored bytes being checked."""
        return _counted(self._instance_chunks(inst, transfer_syntax), "instances")

    def _instance_chunks(self, inst: StoredInstance, transfer_syntax: str) -> Iterator[bytes]:
        corrected = not overlay.is_empty(inst.overlay_json)
        if transfer_syntax in (AS_STORED, inst.transfer_syntax_uid):
            if not corrected:
                return self._stored_chunks(inst)
            # Spliced into the checked stream: the stored object's digest is checked as for
            # any read (its last chunk withheld on a mismatch), and the file meta is as stored.
            return overlay.corrected_chunks(
                self._stored_chunks(inst), overlay.parse(inst.overlay_json)
            )
        if not syntaxes.can_transcode(inst.transfer_syntax_uid, transfer_syntax):
            raise NotAcceptable(
                f"instance {inst.sop_instance_uid} is stored in {inst.transfer_syntax_uid} and "
                f"cannot be converted to {transfer_syntax}"
            )
        with self._source(inst) as source:
            converted = transcode.transcode_file(source, transfer_syntax)
        if corrected:
            converted = overlay.apply_to_file(
                io.BytesIO(converted), overlay.parse(inst.overlay_json)
            )
        return iter((converted,))

    def known_size(self, inst: StoredInstance, transfer_syntax: str) -> int | None:
        """The size :meth:`instance_chunks` will yield for ``inst``, when known before reading
        it: sent as stored and uncorrected. None when converted or corrected."""
        if transfer_syntax in (AS_STORED, inst.transfer_syntax_uid) and overlay.is_empty(
            inst.overlay_json
        ):
            return inst.size
        return None

    def instance_bytes(self, inst: StoredInstance, transfer_syntax: str) -> bytes:
        """:meth:`instance_chunks` whole, in memory (C-STORE sub-operations of small objects)."""
        return b"".join(self.instance_chunks(inst, transfer_syntax))

    def syntax_for(self, inst: StoredInstance, accepted: Collection[str] | None) -> str:
        """The transfer syntax to send ``inst`` in to a peer that accepts ``accepted`` (None:
        whatever it is stored in): the one it arrived in when a tier compressed it and the
        peer takes that, else the stored one when accepted, else one it can be converted to
        (PS3.4 C.4.2.3.1: the SCP picks one the peer accepted), uncompressed first.
        NotAcceptable when there is none."""
        stored, received = inst.transfer_syntax_uid, inst.received_transfer_syntax_uid
        as_stored = received == stored or received not in (accepted or ())
        if accepted is None or (stored in accepted and as_stored):
            return stored
        for target in (received, *_CONVERSION_ORDER, *sorted(accepted)):
            if target in accepted and syntaxes.can_transcode(stored, target):
                return target
        raise NotAcceptable(
            f"the peer accepts no transfer syntax {inst.sop_instance_uid} can be sent in"
        )

    def verify(self, inst: StoredInstance) -> None:
        """Read the whole stored object and check it against the size and SHA-256 recorded
        at ingest, whatever ``verify_reads`` says: for callers that must know before they act
        (storage commitment; a C-STORE, which cannot be withdrawn once its data set began).
        BlobCorrupted when it fails; the store's own errors when it cannot be read."""
        chunks = self.blobs.iter_chunks(inst.blob_key, context=blob_context(inst))
        for _ in self._checked(inst, chunks):
            pass

    def stored_chunks(self, inst: StoredInstance) -> Iterator[bytes]:
        """The object exactly as stored (its recorded SHA-256 is the digest of these bytes),
        before any correction's overlay: what a replica is sent, corrections being changes of
        their own. Checked as any whole-object read; only for instances :meth:`instances`
        returned (authorized and recorded)."""
        return self._stored_chunks(inst)

    def _stored_chunks(self, inst: StoredInstance) -> Iterator[bytes]:
        """The stored file, checked by digest as it streams unless reads are not checked or
        the store authenticates what it reads (AES-GCM tags over the plaintext's digest)."""
        return self._current_blob(inst, self._chunks_of)

    def _chunks_of(self, inst: StoredInstance) -> Iterator[bytes]:
        # Opened here, not in a generator, so a missing blob or key fails before streaming.
        chunks = self.blobs.iter_chunks(inst.blob_key, context=blob_context(inst))
        if not self.verify_reads or self.blobs.capabilities.authenticated_reads:
            return chunks
        return self._checked(inst, chunks)

    def _current_blob(self, inst: StoredInstance, use: Callable[[StoredInstance], _T]) -> _T:
        """``use(inst)``; if its blob is gone, once more with the row as it is now. Between a
        read's row and its blob, a re-encryption (rekey, rewrap), a tier's compression or an
        overwrite may swap a new blob into the row and delete the old one: the object is
        still there, under another key. A row gone too is a delete that won (404)."""
        try:
            return use(inst)
        except BlobNotFound:
            current = self.index.current_instance(inst.pk)
            if current is None:
                raise NotFound("the instance was deleted while it was being read") from None
            if current.blob_key == inst.blob_key:
                raise
            return use(current)

    def _checked(self, inst: StoredInstance, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from verified_chunks(chunks, inst.size, inst.sha256)
        except BlobCorrupted:
            log.error("blob %s of instance pk %s fails its size or SHA-256", inst.blob_key, inst.pk)
            raise

    def _source(self, inst: StoredInstance) -> BinaryIO:
        """The stored file for a decoder: read and checked first when whole objects are
        checked by digest, so a conversion is never made of bad bytes either."""
        if not self.verify_reads or self.blobs.capabilities.authenticated_reads:
            return self.open(inst)
        return io.BytesIO(b"".join(self._stored_chunks(inst)))

    def open(self, inst: StoredInstance) -> BinaryIO:
        """The stored PS3.10 file as a seekable file object (plaintext; the caller closes it),
        for decoders that read where they like."""
        return self._current_blob(
            inst, lambda now: self.blobs.open(now.blob_key, context=blob_context(now))
        )

    def read(self, inst: StoredInstance, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[offset, offset + length)`` of the stored object (frames, bulk data)."""
        return self._current_blob(
            inst,
            lambda now: self.blobs.read(now.blob_key, offset, length, context=blob_context(now)),
        )

    # ------------------------------------------------------------------ metadata
    def metadata(
        self,
        who: Principal,
        base_url: str,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> bytes:
        """application/dicom+json array of the instances' metadata (PS3.18 10.4.1.1.2).

        Authorized, scoped and recorded (DICOM Instances Accessed) as :meth:`instances`.
        """
        what = _describe("read metadata of", study_uid, series_uid, sop_instance_uid)
        decision = self.guard.authorize(who, Action.READ, what, study_uids=(study_uid,))
        assert decision.scope is not None
        try:
            rows = self.index.metadata_of(
                decision.scope.partition,
                study_uid,
                series_uid,
                sop_instance_uid,
                grantee=decision.scope.grantee,
                hide_quarantined=not decision.scope.sees_quarantine,
            )
        except NotFound as exc:
            self._record(who, decision, None, study_uid, False, exc.reason)
            raise
        # One overlay for the whole study (every row carries the same), applied once per row.
        corrections = overlay.parse(rows[0][3])
        first = overlay.apply_to_metadata(rows[0][2], corrections)
        self._record(who, decision, _patient_of(first), study_uid, False, None)
        marker = f'"BulkDataURI":"{BULK_URI_MARKER}'
        parts = []
        for row_series, row_sop, stored, _ in rows:
            text = overlay.apply_to_metadata(stored, corrections)
            if marker in text:
                prefix = (
                    f'"BulkDataURI":"{base_url}/studies/{study_uid}/series/{row_series}'
                    f"/instances/{row_sop}/bulk/"
                )
                text = text.replace(marker, prefix)
            parts.append(text)
        return ("[" + ",".join(parts) + "]").encode()

    # ------------------------------------------------------------------ frames and bulk data
    def frames(self, inst: StoredInstance, numbers: list[int]) -> Iterator[Iterator[bytes]]:
        """Frame bytes as stored (native or one compressed bitstream each), PS3.18 10.4.1.1.4.

        One chunk iterator per frame, read from the blob store only as the response is sent,
        so memory holds a frame at most whatever the list's length; the first frame's first
        bytes are read here, so a missing blob or an erased key fails before a response starts.
        """
        _check_frame_numbers(inst, numbers)
        index = inst.frames
        if index is None:
            return self.decoded_frames(inst, numbers)
        return _first_read(
            _counted(self._frame_chunks(inst, index[n - 1]), "frames") for n in numbers
        )

    def _frame_chunks(
        self, inst: StoredInstance, fragments: list[tuple[int, int]]
    ) -> Iterator[bytes]:
        context = blob_context(inst)
        for offset, length in fragments:
            if length <= READ_WHOLE_FRAGMENT:
                yield self.blobs.read(inst.blob_key, offset, length, context=context)
            else:
                yield from self.blobs.iter_chunks(inst.blob_key, offset, length, context=context)

    def decoded_frames(self, inst: StoredInstance, numbers: list[int]) -> Iterator[Iterator[bytes]]:
        """Frames decoded to native little-endian pixels (for application/octet-stream), one
        at a time as the response is sent; the first is decoded here, so an object that cannot
        be decoded is an error response, not a cut stream."""
        _check_frame_numbers(inst, numbers)
        source = self.open(inst)

        def each() -> Iterator[Iterator[bytes]]:
            with source:  # closed at the end, on an error, or when the response is dropped
                for n in numbers:
                    yield iter((frame_codec.decode_frame(source, n),))

        parts = each()
        first = next(parts)
        return chain((first,), parts)

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
        with self.open(inst) as source:
            ds = dcmread(source)
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

    def read_range(self, inst: StoredInstance, offset: int, length: int | None) -> Iterator[bytes]:
        return self.blobs.iter_chunks(inst.blob_key, offset, length, context=blob_context(inst))

    # ------------------------------------------------------------------ rendered
    def rendered(
        self, inst: StoredInstance, frame_number: int | None, options: render.RenderOptions
    ) -> bytes:
        if frame_number is not None:
            _check_frame_numbers(inst, [frame_number])
        with self.open(inst) as source:
            return render.render_frame(source, frame_number or 1, options)

    def thumbnail(self, inst: StoredInstance, options: render.RenderOptions) -> bytes:
        with self.open(inst) as source:
            return render.render_thumbnail(source, options)


def _describe(verb: str, study: str, series: str | None, sop: str | None) -> str:
    if sop is not None:
        return f"{verb} instance {sop}"
    if series is not None:
        return f"{verb} series {series}"
    return f"{verb} study {study}"


def _patient_of(metadata_json: str) -> str | None:
    """The Patient ID of stored metadata JSON, for the audit record."""
    try:
        values = json.loads(metadata_json).get("00100020", {}).get("Value") or []
    except (ValueError, AttributeError):
        return None
    return str(values[0]) if values else None


def _counted(chunks: Iterator[bytes], what: str) -> Iterator[bytes]:
    """``chunks`` as they are, their bytes counted as sent (nubis.metrics) as they are read."""
    counter = metrics.retrieve_bytes.labels(what)
    try:
        for chunk in chunks:
            counter.inc(len(chunk))
            yield chunk
    finally:
        # A response cut short closes this: the blob store's reader is released at once.
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def blob_context(inst: StoredInstance) -> BlobContext:
    """The identity an instance's blob is bound to (checked by an encrypted store)."""
    return BlobContext(
        inst.partition, inst.study_uid, inst.series_uid, inst.sop_instance_uid, inst.sha256
    )


def _first_read(parts: Iterator[Iterator[bytes]]) -> Iterator[Iterator[bytes]]:
    """``parts`` with the first chunk of the first part already read."""
    first = next(parts)
    head = next(first, None)
    return chain((chain(() if head is None else (head,), first),), parts)


def _check_frame_numbers(inst: StoredInstance, numbers: list[int]) -> None:
    count = inst.number_of_frames or 1
    for n in numbers:
        if not 1 <= n <= count:
            raise NotFound(
                f"instance {inst.sop_instance_uid} has {count} frame(s); frame {n} does not exist"
            )
