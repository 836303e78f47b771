"""DIMSE event handlers: translate each DIMSE request into a call of the archive's services.

pynetdicom calls these in the association's own thread. They are thin on purpose, and answer
every failure with the status the service's error carries (:mod:`nubis.errors`), never by
aborting the association. Here: the event table, admission (the peer table, TLS client
certificates), C-ECHO, C-FIND (a :class:`~nubis.model.query.Query` from
:func:`~nubis.model.cfind.parse_cfind`, the QIDO-RS path) and the storage commitment
N-ACTION. C-STORE is received into the spool and stored by nubis.dimse.receive; C-MOVE and
C-GET select and send through ``RetrieveService`` in nubis.dimse.retrieve.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from nubis import metrics
from nubis.dimse.commitment import CommitmentRequest
from nubis.dimse.common import (
    CANCEL,
    IDENTIFIER_MISMATCH,
    NOT_AUTHORIZED,
    PAGE,
    PARTITION,
    PENDING,
    PROCESSING_FAILURE,
    SUCCESS,
    identifier_text,
    peer_name,
    query_model,
    status_ds,
)
from nubis.dimse.peers import AccessPolicy, PeerCertificate, Permissions
from nubis.dimse.reactor import wait_for_send_room
from nubis.dimse.receive import Receiver, close_sinks
from nubis.dimse.retrieve import Retrieval, refusal, refuse
from nubis.errors import BadRequest, NubisError
from nubis.model.cfind import parse_cfind
from nubis.security.authn import dimse_principal
from nubis.security.policy import Principal
from nubis.services.query import ScopedQuery

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

    from nubis.archive import Archive

log = logging.getLogger("nubis.dimse")

# C-FIND responses queued for the wire at most (see on_find).
_FIND_RESPONSES_AHEAD = 8
_COUNTS = {
    "NumberOfPatientRelatedStudies": 0x00201200,
    "NumberOfPatientRelatedSeries": 0x00201202,
    "NumberOfPatientRelatedInstances": 0x00201204,
}


class Handlers:
    """The handlers of one DIMSE server, bound to an Archive and an access policy."""

    def __init__(self, archive: Archive, policy: AccessPolicy, ae_title: str) -> None:
        self.archive = archive
        self.policy = policy
        self.ae_title = ae_title
        self._perms: weakref.WeakKeyDictionary[Association, Permissions] = (
            weakref.WeakKeyDictionary()
        )
        # Who each association is, for the services (tenant, role; see dimse_principal).
        self._principals: weakref.WeakKeyDictionary[Association, Principal] = (
            weakref.WeakKeyDictionary()
        )
        # Commitment report jobs to try once the N-ACTION response has gone out (PS3.4 J.3.3).
        self._commitments: weakref.WeakKeyDictionary[Association, list[int]] = (
            weakref.WeakKeyDictionary()
        )
        self.receiver = Receiver(archive.store, archive.spool)
        self.retrieval = Retrieval(archive.query, archive.retrieve, policy.peers)

    def bindings(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_CONN_OPEN, self.on_connection),
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_RELEASED, self.on_closed),
            (evt.EVT_ABORTED, self.on_closed),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_N_ACTION, self.on_n_action),
            (evt.EVT_DIMSE_SENT, self.on_dimse_sent),
        ]

    # ------------------------------------------------------------------ association
    def on_connection(self, event: Event) -> None:
        """Turn Nagle off: a DIMSE message is a command PDU then a data set PDU, and the second
        would wait for the peer's delayed ACK of the first (about 40 ms per message)."""
        sock = getattr(event.assoc.dul.socket, "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_requested(self, event: Event) -> None:
        """Admit or reject the caller (PS3.8 7.1.1.9: A-ASSOCIATE-RJ, calling AE not known;
        7.1.1.3: called AE title not this archive's, unless dimse_accept_any_called_ae)."""
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        calling = str(primitive.calling_ae_title if primitive else "").strip()
        address = assoc.requestor.address
        called = str(primitive.called_ae_title if primitive else "").strip()
        if called != self.ae_title.strip() and not self.archive.settings.dimse_accept_any_called_ae:
            log.warning(
                "association from %s@%s rejected: called AE title %r is not %r",
                calling,
                address,
                called,
                self.ae_title,
            )
            # Rejected permanent, by the service user, called AE title not recognized.
            assoc.acse.send_reject(0x01, 0x01, 0x07)
            assoc.kill()
            return
        certificate = _client_certificate(assoc)
        try:
            decision = self.policy.admit(calling, address, certificate)
        except Exception as exc:  # the index is unreachable and no table was ever read
            log.error("association from %s@%s refused for now: %s", calling, address, exc)
            # Rejected transient, by the service provider (presentation), temporary congestion.
            assoc.acse.send_reject(0x02, 0x03, 0x01)
            assoc.kill()
            return
        if decision.permissions is None:
            log.warning("association from %s@%s rejected: %s", calling, address, decision.reason)
            if decision.alert:
                self._alert(calling, address, decision.reason)
            # Rejected permanent, by the service user, calling AE title not recognized.
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            assoc.kill()
            return
        self._perms[assoc] = decision.permissions
        perms = decision.permissions
        # The id stays dimse:<AE> whatever the certificate: grants and audit queries name it,
        # and the entry already bound the certificate to that AE title.
        self._principals[assoc] = dimse_principal(
            self.archive.settings, calling, address, may_read=perms.query or perms.retrieve
        )
        log.info(
            "association request from %s@%s%s: %s",
            calling,
            address,
            f" (TLS certificate {certificate.subject!r})" if certificate else "",
            decision.reason,
        )

    def _alert(self, calling: str, address: str, reason: str) -> None:
        """Security Alert, Node Authentication (PS3.15 A.5.3.9): an AE title claimed with the
        wrong certificate is an impersonation attempt, not a misconfigured modality."""
        from nubis.model.audit import EventType
        from nubis.security.audit_events import security_alert

        who = Principal(
            f"dimse:{calling}", "", frozenset(), via="dimse", peer=address, ae_title=calling
        )
        try:
            self.archive.audit.record(
                security_alert(
                    who, EventType.NODE_AUTHENTICATION, description=reason, front_door="dimse"
                )
            )
        except NubisError as exc:
            # The association is refused whether or not the record could be written.
            log.error("audit record of a refused DIMSE caller failed: %s", exc.reason)

    def on_accepted(self, event: Event) -> None:
        assoc = event.assoc
        log.info(
            "association with %s accepted (%d presentation context(s))",
            peer_name(assoc),
            len(assoc.accepted_contexts),
        )

    def on_closed(self, event: Event) -> None:
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log.info("association with %s %s", peer_name(event.assoc), how)
        # Now rather than at the next start.
        close_sinks(event.assoc)

    def principal(self, assoc: Association) -> Principal:
        """The association's principal; an association admitted without one gets none of
        the services (an empty tenant is refused by the policy)."""
        found = self._principals.get(assoc)
        if found is None:
            return Principal("dimse:unknown", "", frozenset(), via="dimse")
        return found

    def _allowed(self, event: Event, what: str) -> bool:
        perms = self._perms.get(event.assoc)
        allowed = perms is not None and bool(getattr(perms, what))
        if not allowed:
            log.warning(
                "%s refused for %s: not allowed to %s",
                event.event.name,
                peer_name(event.assoc),
                what,
            )
        return allowed

    # ------------------------------------------------------------------ C-ECHO
    def on_echo(self, event: Event) -> int:
        """C-ECHO (PS3.4 A.4, PS3.7 9.1.5): always success for an admitted caller."""
        log.info("C-ECHO from %s", peer_name(event.assoc))
        return SUCCESS

    # ------------------------------------------------------------------ C-STORE
    def on_store(self, event: Event) -> Dataset | int:
        """C-STORE (PS3.4 B.2.3): stored through StoreService (nubis.dimse.receive); 0x0124
        for a caller that may not store here."""
        if not self._allowed(event, "store"):
            return status_ds(NOT_AUTHORIZED, "this AE may not store here")
        return self.receiver.store(event, self.principal(event.assoc))

    # ------------------------------------------------------------------ C-FIND
    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """C-FIND (PS3.4 C.4.1) in the Patient Root and Study Root models, every level.

        Yields 0xFF00 Pending with one response identifier per match (C.4.1.1.3.2: the keys
        of the request, filled), then the final status: 0x0000, 0xFE00 after a C-CANCEL,
        0xA900 / 0xC000 for an identifier that cannot be understood, 0x0124 not authorized.
        """
        if not self._allowed(event, "query"):
            yield status_ds(NOT_AUTHORIZED, "this AE may not query here"), None
            return
        model = query_model(event)
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        try:
            query = parse_cfind(level, identifier, model=model, partition=PARTITION, max_limit=PAGE)
        except BadRequest as exc:
            log.warning("C-FIND from %s: %s", peer_name(event.assoc), exc.reason)
            yield status_ds(IDENTIFIER_MISMATCH, exc.reason), None
            return
        try:
            scoped = self.archive.query.scoped(
                self.principal(event.assoc), query, text=identifier_text(identifier)
            )
        except NubisError as exc:  # Forbidden (0x0124), audit trail unavailable (0xA700)
            yield status_ds(exc.dimse_status, exc.reason), None
            return
        found = 0
        items = self._patients(scoped) if level == "PATIENT" else self.archive.query.matches(scoped)
        for item in items:
            # At most a few responses ahead of the wire: a C-CANCEL then stops matching within
            # them (not after every match is queued), and a huge result never sits in memory.
            if not wait_for_send_room(event.assoc, _FIND_RESPONSES_AHEAD):
                return
            if event.is_cancelled:
                log.info(
                    "C-FIND from %s cancelled after %d match(es)", peer_name(event.assoc), found
                )
                yield CANCEL, None
                return
            found += 1
            yield PENDING, self._response(item, identifier, level)
        log.info("C-FIND %s level from %s: %d match(es)", level, peer_name(event.assoc), found)
        yield SUCCESS, None

    def _patients(self, query: ScopedQuery) -> Iterator[dict[str, Any]]:
        """Distinct patients of the matching studies, with their computed counts (C.6.1.1.2)."""
        patients: dict[str, dict[str, Any]] = {}
        counts: dict[str, list[int]] = {}
        for item in self.archive.query.matches(query):
            pid_values = item.get("00100020", {}).get("Value") or [""]
            pid = str(pid_values[0])
            if pid not in patients:
                patients[pid] = item
                counts[pid] = [0, 0, 0]
            c = counts[pid]
            c[0] += 1
            c[1] += int((item.get("00201206", {}).get("Value") or [0])[0])
            c[2] += int((item.get("00201208", {}).get("Value") or [0])[0])
        for pid, item in patients.items():
            out = {k: v for k, v in item.items() if k not in ("00201206", "00201208")}
            for tag, value in zip(_COUNTS.values(), counts[pid], strict=True):
                out[f"{tag:08X}"] = {"vr": "IS", "Value": [value]}
            yield out

    def _response(self, item: dict[str, Any], identifier: Dataset, level: str) -> Dataset:
        found = Dataset.from_json(item)
        rsp = Dataset()
        for element in identifier:
            tag = element.tag
            if tag == 0x00080052 or tag == 0x00080005 or tag.group in (0x0000, 0x0002):
                continue
            if tag == 0x00080054:  # Retrieve AE Title: where the match can be retrieved from
                rsp.RetrieveAETitle = self.ae_title
            elif tag in found:
                rsp[tag] = found[tag]
            else:
                rsp.add_new(tag, element.VR, None)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if keyword in found and keyword not in rsp:
                setattr(rsp, keyword, found[keyword].value)
        rsp.QueryRetrieveLevel = level
        if any(not str(v).isascii() for v in _strings(item)):
            # The index keeps text as Unicode (DICOM JSON); UTF-8 carries all of it.
            rsp.SpecificCharacterSet = "ISO_IR 192"
        return rsp

    # ------------------------------------------------------------------ C-MOVE / C-GET
    def on_move(self, event: Event) -> Iterator[Any]:
        """C-MOVE (PS3.4 C.4.2, nubis.dimse.retrieve); refused 0x0124 before any association
        with the destination for a caller that may not retrieve here."""
        if not self._allowed(event, "retrieve"):
            yield refuse(event, NOT_AUTHORIZED, "this AE may not retrieve here")
            return
        yield from self.retrieval.move(event, self.principal(event.assoc))

    def on_get(self, event: Event) -> Iterator[Any]:
        """C-GET (PS3.4 C.4.3, nubis.dimse.retrieve); refused 0x0124, no sub-operation
        counted, for a caller that may not retrieve here."""
        if not self._allowed(event, "retrieve"):
            yield 1
            yield refusal(event, NOT_AUTHORIZED, "this AE may not retrieve here"), None
            return
        yield from self.retrieval.get(event, self.principal(event.assoc))

    # ------------------------------------------------------------------ storage commitment
    def on_n_action(self, event: Event) -> tuple[int, Dataset | None]:
        """Storage Commitment Push Model request (PS3.4 J.3.2, N-ACTION type 1).

        Answers 0x0000 once the request is a job in the index (J.3.2.1.3: success says the
        request was received), 0x0110 when the index cannot take it. The N-EVENT-REPORT (J.3.3)
        is first tried once the response is out, then retried until delivered or given up
        (nubis.dimse.commitment): each referenced instance is committed only if it is stored
        and its blob still matches the SHA-256 recorded at ingest; others are listed with
        Failure Reason 0x0112 (no such object instance), 0x0119 (SOP class differs) or 0x0110
        (processing failure).
        """
        primitive = event.request
        if not isinstance(primitive, N_ACTION):
            return 0x0122, None  # not reached: pynetdicom binds EVT_N_ACTION to N-ACTION only
        if str(primitive.RequestedSOPClassUID) != StorageCommitmentPushModel:
            return 0x0122, None  # SOP class not supported
        if not self._allowed(event, "store"):
            return NOT_AUTHORIZED, None
        if event.action_type != 1:
            return 0x0123, None  # No such action
        action = event.action_information
        if "TransactionUID" not in action:
            return 0x0120, None  # Missing attribute
        calling = event.assoc.requestor.ae_title.strip()
        request = CommitmentRequest.from_action(calling, self.principal(event.assoc).tenant, action)
        try:
            job_id = self.archive.commitment_reports.queue(request)
        except Exception as exc:  # the index is down: J.3.2.1.3, a failure says "not processing"
            log.error(
                "storage commitment %s from %s refused: not queued: %s",
                request.transaction_uid, peer_name(event.assoc), exc,
            )  # fmt: skip
            return PROCESSING_FAILURE, None
        self._commitments.setdefault(event.assoc, []).append(job_id)
        log.info(
            "storage commitment %s from %s: %d object(s), job %d",
            request.transaction_uid,
            peer_name(event.assoc),
            len(request.references),
            job_id,
        )
        return SUCCESS, None

    def on_dimse_sent(self, event: Event) -> None:
        kind = type(event.message).__name__
        if kind.endswith("_RSP"):
            _count_response(kind, event.message)
        if kind != "N_ACTION_RSP":
            return
        for job_id in self._commitments.pop(event.assoc, None) or []:
            threading.Thread(
                target=self.archive.commitment_reports.first_attempt,
                args=(job_id, event.assoc),
                name="nubis-commitment",
                daemon=True,
            ).start()


def _count_response(kind: str, message: Any) -> None:
    """A final response's operation and status in nubis.metrics (pending ones are not counted:
    a C-FIND's matches are not operations)."""
    status = getattr(message.command_set, "Status", None)
    if status is None or int(status) in (0xFF00, 0xFF01):
        return
    code = int(status)
    operation = kind[: -len("_RSP")].replace("_", "-")
    metrics.dimse_operations.labels(operation, metrics.dimse_outcome(code), f"0x{code:04X}").inc()


def _client_certificate(assoc: Association) -> PeerCertificate | None:
    """The verified client certificate of a DICOM TLS association (the handshake is over by
    the time the A-ASSOCIATE-RQ was read); None on the plain port or without one."""
    sock = getattr(assoc.dul.socket, "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        der = sock.getpeercert(binary_form=True)
    except (ValueError, OSError):
        return None
    return PeerCertificate.from_der(der) if der else None


def _strings(item: Any) -> Iterator[Any]:
    """Every leaf value of a DICOM JSON object (for the character set decision)."""
    if isinstance(item, dict):
        for value in item.values():
            yield from _strings(value)
    elif isinstance(item, list):
        for value in item:
            yield from _strings(value)
    elif isinstance(item, str):
        yield item
