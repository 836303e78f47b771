"""Stored objects leaving the archive by C-STORE: C-MOVE and C-GET sub-operations
(nubis.dimse.handlers) and the web face's "send to a DIMSE peer" (nubis.dimse.send).

Both go the same way: the instances come from ``RetrieveService.instances`` (authorized, scoped
and recorded there), the association proposes :func:`contexts_for` them, and each object is
made ready by :meth:`Outgoing.dataset` from what ``RetrieveService`` serves any front door: the
transfer syntax it chooses among those the peer accepted (``syntax_for``: as stored when it
can, PS3.4 C.4.2.3.1), the object read and checked as WADO-RS reads are (``instance_bytes``;
large ones as streams, ``instance_chunks``, verified before the C-STORE begins). pynetdicom's
C-MOVE and C-GET SCPs send what the handlers yield; :func:`send` does the same on an
association of its own.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import build_context
from pynetdicom.status import code_to_category

from nubis.dicom import overlay
from nubis.dimse.reactor import RaceFreeAE, StreamedDataset
from nubis.errors import NubisError
from nubis.model.records import StoredInstance
from nubis.services.retrieve import AS_STORED, RetrieveService

__all__ = [
    "STREAM_LARGER_THAN",
    "Outgoing",
    "SendRefused",
    "SendResult",
    "accepted_syntaxes",
    "contexts_for",
    "send",
]

log = logging.getLogger("nubis.dimse")

_MAX_CONTEXTS = 128  # PS3.8 9.3.2: at most 128 presentation contexts (odd IDs 1-255)
# Objects larger than this are sent as streams (read once to check, then again to send),
# never whole in memory; smaller ones are read, checked and sent from memory.
STREAM_LARGER_THAN = 64 << 20
# How much of a streamed object's start is kept to find where its data set begins: far more
# than any file meta group.
_HEAD = 1 << 20
_TIMEOUT = 60  # seconds: TCP connect, association set-up, each C-STORE response


class Outgoing:
    """Makes stored objects ready to send by C-STORE, read through ``retrieve``."""

    def __init__(self, retrieve: RetrieveService) -> None:
        self.retrieve = retrieve

    def dataset(self, inst: StoredInstance, accepted: dict[str, set[str]]) -> Dataset:
        """The object to send, read through ``retrieve``; converted only if the peer must have
        another transfer syntax (PS3.4 C.4.2.3.1: the SCP picks one the peer accepted), or
        back to the syntax it arrived in, when a tier compressed it and the peer takes that.

        ``accepted`` maps each SOP Class UID to the transfer syntaxes of the contexts the peer
        accepted for it (:func:`accepted_syntaxes`); a class missing from it is sent as stored.
        An object over :data:`STREAM_LARGER_THAN` sent in its stored transfer syntax goes as a
        stream (:meth:`streamed`); a conversion is made in memory, as it decodes the pixel
        data anyway."""
        syntax = self.retrieve.syntax_for(inst, accepted.get(inst.sop_class_uid))
        # A corrected object streams too (nubis.dicom.overlay splices it, its file meta as
        # stored), unless deflated: that one is rewritten whole.
        if (
            syntax == inst.transfer_syntax_uid
            and inst.size > STREAM_LARGER_THAN
            and (overlay.is_empty(inst.overlay_json) or syntax != DeflatedExplicitVRLittleEndian)
        ):
            return self.streamed(inst)
        return dcmread(io.BytesIO(self.retrieve.instance_bytes(inst, syntax)))

    def streamed(self, inst: StoredInstance) -> StreamedDataset:
        """A large object to send as a stream, read through once first to verify it.

        A stream's digest is known only at its end, and a C-STORE request whose data set has
        begun cannot be withdrawn: its fragments may not be followed by another message's
        (PS3.8 9.3.1), so the only way to stop it is an A-ABORT (PS3.8 7.3), which for a C-GET
        ends the requester's own association with no final response and for a C-MOVE fails
        every sub-operation left. Reading the object once before sending (when reads are
        checked, ``verify_reads``) lets a corrupted one fail its own sub-operation, listed in
        the Failed SOP Instance UID List (PS3.4 C.4.2.1.4.2, C.4.3.1.3.2), as a small one does.
        Blobs are written once, so the second read sees the same bytes; it is the WADO-RS read
        all the same (checked as it goes, its last chunk withheld on a mismatch), and an
        association on which it fails is aborted rather than a bad object completed
        (nubis.dimse.reactor.StreamingStore).
        """
        retrieve = self.retrieve
        if retrieve.verify_reads:
            retrieve.verify(inst)
        start, transfer_syntax = _data_set_start(
            retrieve.read(inst, 0, min(_HEAD, inst.size)), inst
        )
        return StreamedDataset(
            inst.sop_class_uid,
            inst.sop_instance_uid,
            transfer_syntax,
            lambda: _skip(retrieve.instance_chunks(inst, AS_STORED), start),
        )


def contexts_for(instances: list[StoredInstance]) -> list[Any]:
    """Presentation contexts for sending ``instances``: each (SOP class, syntax it arrived in)
    alone, so the peer cannot pick another syntax of the same class (an object a tier
    compressed is offered as it arrived, and converted back); then an uncompressed fallback
    per class, used after conversion. At most 128 (PS3.8 9.3.2)."""
    pairs = dict.fromkeys((i.sop_class_uid, i.received_transfer_syntax_uid) for i in instances)
    contexts = [build_context(sop, ts) for sop, ts in pairs][:_MAX_CONTEXTS]
    for sop in dict.fromkeys(sop for sop, _ in pairs):
        if len(contexts) >= _MAX_CONTEXTS:
            break
        contexts.append(build_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    return contexts


def accepted_syntaxes(contexts: Iterable[Any]) -> dict[str, set[str]]:
    """SOP Class UID -> the transfer syntaxes of the accepted presentation contexts."""
    accepted: dict[str, set[str]] = {}
    for cx in contexts:
        accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return accepted


@dataclass(frozen=True)
class SendResult:
    """What became of each C-STORE sub-operation, counted as C-MOVE counts them (PS3.4
    C.4.2.1.5): completed (0x0000), warning (0xB000 class), failed (anything else, or not
    sent), and the SOP Instance UIDs that failed."""

    completed: int = 0
    warning: int = 0
    failed: int = 0
    failed_uids: tuple[str, ...] = field(default=())

    @property
    def status(self) -> int:
        """The final status a C-MOVE would answer: 0x0000, 0xB000 (some failed or had a
        warning) or 0xA702 (all failed)."""
        if self.failed and not (self.completed or self.warning):
            return 0xA702
        return 0xB000 if self.failed or self.warning else 0x0000


class SendRefused(NubisError):
    """The destination could not be associated with: nothing was sent (C-MOVE answers this
    0xA702, Refused: unable to perform sub-operations)."""

    dimse_status = 0xA702


def send(
    outgoing: Outgoing,
    instances: list[StoredInstance],
    *,
    host: str,
    port: int,
    ae_title: str,
    calling_ae_title: str,
    progress: Callable[[int], None] | None = None,
) -> SendResult:
    """C-STORE ``instances`` to the AE ``ae_title`` at ``host``:``port`` on one association, as
    C-MOVE's sub-operations do: the same contexts, the same checked objects, the same counts.

    ``progress`` is called with the number of objects handled so far after each one; it may
    raise to stop (a cancelled job), which releases the association. Raises
    :class:`SendRefused` when no association could be established.
    """
    ae = RaceFreeAE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = _TIMEOUT
    where = f"{ae_title} ({host}:{port})"
    assoc = ae.associate(host, port, contexts=contexts_for(instances), ae_title=ae_title)
    if not assoc.is_established:
        how = "rejected the association" if assoc.is_rejected else "could not be associated with"
        raise SendRefused(f"{where} {how}")
    accepted = accepted_syntaxes(assoc.accepted_contexts)
    completed = warning = 0
    failed: list[str] = []
    try:
        for done, inst in enumerate(instances, start=1):
            category = _store_one(outgoing, assoc, inst, accepted)
            if category == "Success":
                completed += 1
            elif category == "Warning":
                warning += 1
            else:
                failed.append(inst.sop_instance_uid)
            if progress is not None:
                progress(done)
    finally:
        if assoc.is_established:
            assoc.release()
    log.info(
        "sent to %s: %d completed, %d warning, %d failed",
        where,
        completed,
        warning,
        len(failed),
    )
    return SendResult(completed, warning, len(failed), tuple(failed))


def _store_one(
    outgoing: Outgoing, assoc: Any, inst: StoredInstance, accepted: dict[str, set[str]]
) -> str:
    """One C-STORE sub-operation: its status category (Success, Warning, Failure)."""
    if not assoc.is_established:
        return "Failure"  # aborted (by the peer, or by a stream that failed part-way)
    try:
        ds = outgoing.dataset(inst, accepted)
    except (NubisError, OSError) as exc:
        log.warning("%s not sent: %s", inst.sop_instance_uid, exc)
        return "Failure"
    try:
        status = assoc.send_c_store(ds)
    except (ValueError, RuntimeError, OSError) as exc:
        # No accepted context for the object, or the association broke off.
        log.warning("%s not sent: %s", inst.sop_instance_uid, exc)
        return "Failure"
    if "Status" not in status:
        return "Failure"  # no response: the association was aborted or timed out
    return str(code_to_category(int(status.Status)))


def _data_set_start(head: bytes, inst: StoredInstance) -> tuple[int, str]:
    """Where the data set begins in a stored PS3.10 file (after the preamble, "DICM" and the
    group 0002 file meta, PS3.10 7.1) and the transfer syntax it is in, from the file's
    first bytes."""
    fp = io.BytesIO(head)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except (InvalidDicomError, EOFError, ValueError):
        meta = None
    start = fp.tell()
    # A meta group that fills ``head`` may go on past it.
    if meta is None or start >= len(head) or "TransferSyntaxUID" not in meta:
        raise NubisError(f"the file meta of {inst.sop_instance_uid} cannot be read")
    return start, str(meta.TransferSyntaxUID)


def _skip(chunks: Iterator[bytes], count: int) -> Iterator[bytes]:
    """``chunks`` less their first ``count`` bytes."""
    for chunk in chunks:
        if count >= len(chunk):
            count -= len(chunk)
            continue
        yield chunk[count:] if count else chunk
        count = 0
