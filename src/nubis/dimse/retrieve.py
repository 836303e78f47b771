"""C-MOVE and C-GET: which stored objects a request names, and their C-STORE sub-operations.

The objects come through the services as any retrieval's do: the identifier is a C-FIND
query (``QueryService.scoped``: authorized, scoped to the caller's tenant and grants,
recorded), and the instances of each matching study come from ``RetrieveService.instances``
(recorded as DICOM Instances Transferred); each is made ready by nubis.dimse.outgoing, read
and checked as WADO-RS reads are. nubis.dimse.handlers binds :meth:`Retrieval.move` and
:meth:`Retrieval.get` to the requests once the caller may retrieve; refusals before any
sub-operation go out with :func:`refuse` (C-MOVE) and :func:`refusal` (C-GET).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import evt
from pynetdicom.dsutils import encode

from nubis.dimse.common import (
    CANCEL,
    IDENTIFIER_MISMATCH,
    PAGE,
    PARTITION,
    PENDING,
    SUB_OPERATIONS_IMPOSSIBLE,
    UNKNOWN_DESTINATION,
    identifier_text,
    peer_name,
    query_model,
    status_ds,
)
from nubis.dimse.outgoing import Outgoing, accepted_syntaxes, contexts_for
from nubis.errors import BadRequest, NotFound, NubisError
from nubis.model.cfind import CFIND_LEVELS, parse_cfind
from nubis.model.records import StoredInstance

if TYPE_CHECKING:
    from pynetdicom.events import Event

    from nubis.dimse.peers import PeerTable
    from nubis.security.policy import Principal
    from nubis.services.query import QueryService
    from nubis.services.retrieve import RetrieveService

__all__ = ["Retrieval", "refusal", "refuse"]

log = logging.getLogger("nubis.dimse")

_UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


class Retrieval:
    """C-MOVE and C-GET of one DIMSE server: selection through ``query`` and ``retrieve``,
    destinations from ``peers``; what it sends is made ready as the web face's send's is."""

    def __init__(self, query: QueryService, retrieve: RetrieveService, peers: PeerTable) -> None:
        self.query = query
        self.retrieve = retrieve
        self.peers = peers
        self.outgoing = Outgoing(retrieve)

    def select(self, who: Principal, identifier: Dataset, model: str) -> list[StoredInstance]:
        """The stored instances a C-MOVE / C-GET identifier names (PS3.4 C.4.2.1.4.1)."""
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        if level not in CFIND_LEVELS:
            raise BadRequest(f"QueryRetrieveLevel {level!r} is not PATIENT, STUDY, SERIES or IMAGE")
        keys = Dataset()
        for name in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if name in identifier and str(identifier[name].value or "").strip():
                keys[name] = identifier[name]
        unique = _UNIQUE_KEYS[level]
        if unique not in keys:
            raise BadRequest(f"a {level} level retrieve needs {unique} (PS3.4 C.4.2.2.1)")
        _check_unique_key(level, unique, keys[unique].value)
        for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if name not in keys:
                keys.add_new(name, "UI", None)  # return keys: which entities matched
        # A patient's studies are found at STUDY level by the patient keys alone: a PATIENT
        # level query would fold them into the patient and drop the Study Instance UIDs.
        query_level = "STUDY" if level == "PATIENT" else level
        query = parse_cfind(query_level, keys, model=model, partition=PARTITION, max_limit=PAGE)
        scoped = self.query.scoped(who, query, text=identifier_text(identifier))
        wanted: dict[str, tuple[set[str], set[str]]] = {}
        for item in self.query.matches(scoped):
            study = item["0020000D"]["Value"][0]
            series_uids, sops = wanted.setdefault(study, (set(), set()))
            if level in ("SERIES", "IMAGE"):
                series_uids.add(item["0020000E"]["Value"][0])
            if level == "IMAGE":
                sops.add(item["00080018"]["Value"][0])
        selected: list[StoredInstance] = []
        for study, (series_uids, sops) in wanted.items():
            try:
                stored = self.retrieve.instances(who, study)
            except NotFound:
                continue  # deleted since the search
            selected += [
                inst
                for inst in stored
                if (not series_uids or inst.series_uid in series_uids)
                and (not sops or inst.sop_instance_uid in sops)
            ]
        return selected

    def _sub_operations(
        self, event: Event, instances: list[StoredInstance], accepted: dict[str, set[str]]
    ) -> Iterator[tuple[int, Dataset]]:
        for sent, inst in enumerate(instances):
            if not event.assoc.is_established:
                return  # aborted, by the peer or by a streamed C-STORE that failed part-way
            if event.is_cancelled:
                log.info(
                    "%s from %s cancelled after %d sub-operation(s)",
                    event.event.name,
                    peer_name(event.assoc),
                    sent,
                )
                yield CANCEL, None  # type: ignore[misc]
                return
            try:
                ds = self.outgoing.dataset(inst, accepted)
            except (NubisError, OSError) as exc:
                log.warning("%s: %s not sent: %s", event.event.name, inst.sop_instance_uid, exc)
                # A stub without a SOP Class cannot be sent: pynetdicom counts the sub-operation
                # as failed and lists its UID in Failed SOP Instance UID List (C.4.2.1.5).
                ds = Dataset()
                ds.SOPInstanceUID = inst.sop_instance_uid
            yield PENDING, ds

    def move(self, event: Event, who: Principal) -> Iterator[Any]:
        """C-MOVE (PS3.4 C.4.2) by ``who``: send the matching objects to a destination of the
        peer table (what pynetdicom's C-MOVE SCP wants its handler to yield).

        Refusals come before any association with the destination: 0x0124 Refused: Not
        authorized (PS3.7 C.5) for a caller that may not retrieve or whose role may not read,
        0xA801 Refused: Move Destination unknown (Table C.4-2) for a destination not in the
        peer table, 0xA900 for an identifier that cannot be understood. Otherwise yields the
        destination, the number of sub-operations, then one Pending per object; pynetdicom
        sends the Pending responses with the remaining, completed, failed and warning counts,
        and the final 0x0000, 0xB000 (some failed), 0xA702 (all failed) or 0xFE00 (C-CANCEL).
        A destination that cannot be associated with (nothing listens, or its AE rejects the
        association) is 0xA702 with an Error Comment saying which and why, no sub-operation
        counted: pynetdicom's own answer, 0xA801 without a comment, would call a known
        destination unknown.
        """
        destination = (event.move_destination or "").strip()
        peer = self.peers.get(destination)
        if peer is None or not peer.host or not peer.port:
            log.warning(
                "C-MOVE from %s: unknown destination %r", peer_name(event.assoc), destination
            )
            yield refuse(event, UNKNOWN_DESTINATION, f"move destination {destination} unknown")
            return
        try:
            instances = self.select(who, event.identifier, query_model(event))
        except NubisError as exc:
            log.warning("C-MOVE from %s refused: %s", peer_name(event.assoc), exc.reason)
            yield refuse(event, _selection_status(exc), exc.reason)
            return
        accepted: dict[str, set[str]] = {}
        reached: list[str] = []  # what happened to the association with the destination

        def on_destination_accepted(ev: Event) -> None:
            accepted.update(accepted_syntaxes(ev.assoc.accepted_contexts))

        def failure() -> str:
            if "rejected" in reached:
                how = "rejected the association"
            elif "connected" in reached:
                how = "did not accept the association"  # aborted, or no answer in time
            else:
                how = "unreachable"
            log.warning(
                "C-MOVE from %s: destination %s (%s:%d) %s",
                peer_name(event.assoc),
                destination,
                peer.host,
                peer.port,
                how,
            )
            return f"{destination} {how} ({peer.host}:{peer.port})"

        kwargs = {
            "contexts": contexts_for(instances),
            "evt_handlers": [
                (evt.EVT_ACCEPTED, on_destination_accepted),
                (evt.EVT_CONN_OPEN, lambda ev: reached.append("connected")),
                (evt.EVT_REJECTED, lambda ev: reached.append("rejected")),
            ],
        }
        # pynetdicom answers a failed association with the destination 0xA801, which only
        # it sends after a destination was given: make that response 0xA702 with the reason.
        _correct_final(event, SUB_OPERATIONS_IMPOSSIBLE, failure, only=UNKNOWN_DESTINATION)
        log.info(
            "C-MOVE from %s to %s (%s:%d): %d object(s)",
            peer_name(event.assoc),
            destination,
            peer.host,
            peer.port,
            len(instances),
        )
        yield peer.host, peer.port, kwargs
        yield len(instances)
        yield from self._sub_operations(event, instances, accepted)

    def get(self, event: Event, who: Principal) -> Iterator[Any]:
        """C-GET (PS3.4 C.4.3) by ``who``: send the matching objects back on the same
        association (what pynetdicom's C-GET SCP wants its handler to yield).

        Yields the number of sub-operations and one Pending per object; final statuses as for
        C-MOVE, refusals (0x0124, 0xA900) with no sub-operation counted. Objects go in their
        stored transfer syntax when the peer accepted it for the SCP role, otherwise
        converted to one it accepted.
        """
        try:
            instances = self.select(who, event.identifier, query_model(event))
        except NubisError as exc:
            log.warning("C-GET from %s refused: %s", peer_name(event.assoc), exc.reason)
            yield 1
            yield refusal(event, _selection_status(exc), exc.reason), None
            return
        # We send C-STORE requests on contexts where the peer is the storage SCP.
        accepted = accepted_syntaxes(cx for cx in event.assoc.accepted_contexts if cx.as_scu)
        log.info("C-GET from %s: %d object(s)", peer_name(event.assoc), len(instances))
        yield len(instances)
        yield from self._sub_operations(event, instances, accepted)


def _check_unique_key(level: str, name: str, value: Any) -> None:
    """A retrieve names what it moves by its unique key (PS3.4 C.4.2.1.4.1, C.4.3.1.3.1):
    one Patient ID at PATIENT level (Single Value Matching), a UID or a List of UID Matching
    at STUDY, SERIES and IMAGE level; never universal or wildcard matching, which would let one
    request move the whole archive. The list's length is bounded by ``parse_cfind``."""
    values = [str(v) for v in value] if isinstance(value, list | MultiValue) else [str(value)]
    if any("*" in v or "?" in v for v in values):
        raise BadRequest(
            f"a {level} level retrieve names {name} exactly, without wildcards (PS3.4 C.4.2.1.4.1)"
        )
    if level == "PATIENT" and len(values) > 1:
        raise BadRequest("a PATIENT level retrieve names one PatientID (PS3.4 C.4.2.1.4.1)")


def _selection_status(exc: NubisError) -> int:
    """The C-MOVE / C-GET status for a failure to select what to send."""
    return IDENTIFIER_MISMATCH if isinstance(exc, BadRequest) else exc.dimse_status


def refuse(event: Event, status: int, comment: str) -> tuple[None, None]:
    """What a C-MOVE handler yields as its destination to refuse the request with ``status``.

    pynetdicom's C-MOVE SCP can only fail before it associates with the destination by
    answering 0xA801 (Move Destination unknown) for a (None, None) destination; any other
    failure status comes after it has opened an association to the destination, which a
    refused caller must not make this archive do. So the handler yields (None, None) and
    the 0xA801 response is corrected on its way out (:func:`refusal`).
    """
    refusal(event, status, comment)
    return None, None


def refusal(event: Event, status: int, comment: str) -> Dataset:
    """Make the final C-MOVE / C-GET response to this request a refusal: ``status`` with
    the comment, no sub-operation counted (pynetdicom counts the one a C-GET handler must
    announce before it may fail as failed) and an empty Failed SOP Instance UID List, which
    a refusal carries (PS3.4 C.4.2.1.4.2, C.4.3.1.3.2). Returns the status for a C-GET
    handler to yield.

    The response primitive, not an encoded message, is corrected, in a wrapper of this
    association's ``dimse.send_msg`` that lasts for this one response; so the correction
    holds whichever DIMSE provider encodes the message (pynetdicom's or nubis's own).
    """
    _correct_final(event, status, lambda: comment)
    return status_ds(status, comment)


def _correct_final(
    event: Event, status: int, comment: Callable[[], str], *, only: int | None = None
) -> None:
    """Have the final response to this request go out as a refusal with ``status`` and
    ``comment()`` (see :func:`refusal`); with ``only``, just when it would have that status,
    and otherwise unchanged."""
    dimse = event.assoc.dimse
    msg_id = event.request.MessageID
    send = dimse.send_msg
    transfer_syntax = event.context.transfer_syntax
    identifier = Dataset()
    identifier.FailedSOPInstanceUIDList = []
    encoded = encode(
        identifier,
        transfer_syntax.is_implicit_VR,
        transfer_syntax.is_little_endian,
        transfer_syntax.is_deflated,
    )

    def send_msg(primitive: Any, context_id: int) -> None:
        final = getattr(primitive, "Status", None) not in (None, PENDING, 0xFF01)
        if final and getattr(primitive, "MessageIDBeingRespondedTo", None) == msg_id:
            with contextlib.suppress(AttributeError):
                del dimse.send_msg  # back to the class's own
            if only is not None and primitive.Status != only:
                send(primitive, context_id)
                return
            primitive.Status = status
            primitive.ErrorComment = comment()[:64]  # LO (PS3.7 C.4.2.1.2)
            primitive.NumberOfRemainingSuboperations = None
            primitive.NumberOfCompletedSuboperations = 0
            primitive.NumberOfFailedSuboperations = 0
            primitive.NumberOfWarningSuboperations = 0
            if encoded:
                primitive.Identifier = io.BytesIO(encoded)
        send(primitive, context_id)

    # An instance attribute shadowing the class's method for this one response (deleted above).
    dimse.send_msg = send_msg  # type: ignore[method-assign]
