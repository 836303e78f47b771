"""DIMSE event handlers: translate each DIMSE request into a call of the archive's services.

pynetdicom calls these in the association's own thread. They are thin on purpose: C-STORE
takes the spool file the received bytes were written into as they arrived (:class:`SpoolSink`)
and calls ``StoreService.store`` (the STOW-RS path), C-FIND builds a
:class:`~nubis.model.query.Query` with :func:`~nubis.model.query.parse_cfind` and calls
``Index.search`` (the QIDO-RS path), C-MOVE and C-GET read objects through
``RetrieveService`` with their SHA-256 checked (large ones as streams, nubis.dimse.outgoing).
Every failure is answered with the status the service's error carries (:mod:`nubis.errors`),
never by aborting the association.
"""

from __future__ import annotations

import contextlib
import io
import logging
import secrets
import socket
import ssl
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pynetdicom import _config, dimse_messages, evt
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from nubis.dimse.commitment import CommitmentRequest
from nubis.dimse.outgoing import Outgoing, accepted_syntaxes, contexts_for
from nubis.dimse.peers import AccessPolicy, PeerCertificate, Permissions
from nubis.dimse.reactor import wait_for_send_room
from nubis.errors import BadRequest, InsufficientStorage, NotFound, NubisError
from nubis.model.query import CFIND_LEVELS, parse_cfind
from nubis.model.records import StoredInstance
from nubis.security.authn import dimse_principal
from nubis.security.policy import Principal
from nubis.services.query import ScopedQuery
from nubis.services.spool import Spool, SpooledFile, SpoolWriter

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

    from nubis.archive import Archive

log = logging.getLogger("nubis.dimse")

# The partition C-FIND identifiers are parsed into; the services replace it with the caller's
# tenant (nubis.services.query), so it never decides what a caller sees.
PARTITION = "default"
PAGE = 1000  # C-FIND walks the index a page at a time, so memory stays bounded

# Statuses (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4; PS3.7 C.4.2 general statuses).
SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
# C-FIND responses queued for the wire at most (see on_find).
_FIND_RESPONSES_AHEAD = 8
NOT_AUTHORIZED = 0x0124  # PS3.7 Annex C: Refused: Not authorized
IDENTIFIER_MISMATCH = 0xA900  # Identifier does not match SOP Class
CANNOT_PROCESS = 0xC000
UNKNOWN_DESTINATION = 0xA801
SUB_OPERATIONS_IMPOSSIBLE = 0xA702  # Refused: Out of Resources - Unable to perform sub-operations
PROCESSING_FAILURE = 0x0110

_PATIENT_ROOT = {
    "1.2.840.10008.5.1.4.1.2.1.1",  # FIND
    "1.2.840.10008.5.1.4.1.2.1.2",  # MOVE
    "1.2.840.10008.5.1.4.1.2.1.3",  # GET
}
_COUNTS = {
    "NumberOfPatientRelatedStudies": 0x00201200,
    "NumberOfPatientRelatedSeries": 0x00201202,
    "NumberOfPatientRelatedInstances": 0x00201204,
}
_UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}


def _peer(assoc: Association) -> str:
    r = assoc.requestor
    return f"{r.ae_title.strip()}@{r.address}:{r.port}"


def _status_ds(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    # Error Comment is LO: at most 64 characters (PS3.7 C.4.2.1.2).
    ds.ErrorComment = comment[:64]
    return ds


class SpoolSink:
    """What pynetdicom writes a received C-STORE data set into, in place of its temporary file.

    With ``_config.STORE_RECV_CHUNKED_DATASET`` pynetdicom writes every P-DATA fragment of a
    C-STORE to ``tempfile.NamedTemporaryFile()`` as it arrives, instead of keeping the whole
    object in memory; but that file is plaintext in the system's temporary folder. This
    object stands in for it: the bytes go straight into a spool file of the archive (sealed
    when encryption at rest is on), so memory stays at one PDU whatever the object's size,
    the object is adopted as the blob by a rename, and no plaintext reaches the disk.

    pynetdicom only calls ``write``, ``file.flush``, reads ``name`` (to unlink it after the
    handler, which fails harmlessly once the store has adopted the file) and ``close``. The
    C-STORE handler calls :meth:`take`; a sink nobody took is removed by ``close``. A spool
    write that fails (disk full) is remembered, not raised: raising in pynetdicom's reader
    thread would abort the association, where PS3.4 B.2.3 wants one failed C-STORE (0xA700).
    """

    def __init__(self, spool: Spool) -> None:
        self._lock = threading.Lock()
        self._writer: SpoolWriter | None = None
        self._taken = False
        self._closed = False
        self.error: OSError | InsufficientStorage | None = None
        try:
            self._writer = spool.writer()
            self.name = str(self._writer.path)
        except (OSError, InsufficientStorage) as exc:  # InsufficientStorage: the disk floor
            self.error = exc
            # pynetdicom unlinks this name after the handler: it must name nothing else.
            self.name = str(spool.folder / f"unwritten-{secrets.token_hex(12)}")

    @property
    def file(self) -> SpoolSink:
        return self

    def write(self, data: bytes) -> int:
        with self._lock:
            if self._writer is not None and self.error is None and not self._closed:
                try:
                    self._writer.write(data)
                except OSError as exc:
                    self.error = exc
                    self._writer.abort()  # give the space back now, not after the last PDU
        return len(data)

    def flush(self) -> None:
        """pynetdicom flushes after every fragment; full segments are already written, and
        nothing reads the file before :meth:`take`."""

    def take(self) -> SpooledFile:
        """The complete spool file, now the caller's to store; OSError if it could not be
        written or the association ended first, InsufficientStorage if the disk was below its
        free-space floor when the object began."""
        with self._lock:
            if self.error is not None:
                raise self.error
            if self._writer is None or self._closed:
                raise OSError("the association ended before the object was spooled")
            self._taken = True
            try:
                return self._writer.finish()
            except OSError:
                self._writer.abort()
                raise

    def close(self) -> None:
        with self._lock:
            if not self._closed and not self._taken and self._writer is not None:
                self._writer.abort()
            self._closed = True


# The spool a C-STORE data set is received into, and the sinks of each association still
# open (so that a transfer cut off by an abort does not leave its file behind). pynetdicom
# makes the file with no reference to the association, but in the association's reader
# thread (a DULServiceProvider, whose ``assoc`` names it), which is how it is found here.
_spool: Spool | None = None
_open_sinks: weakref.WeakKeyDictionary[Association, weakref.WeakSet[SpoolSink]] = (
    weakref.WeakKeyDictionary()
)
_pynetdicom_temporary_file = dimse_messages.NamedTemporaryFile


def _received_dataset_file(*args: Any, **kwargs: Any) -> Any:
    if _spool is None:  # no DIMSE server in this process: pynetdicom's own behaviour
        return _pynetdicom_temporary_file(*args, **kwargs)
    sink = SpoolSink(_spool)
    assoc = getattr(threading.current_thread(), "assoc", None)
    if assoc is not None:
        with contextlib.suppress(TypeError):  # not weakly referenceable: not an Association
            _open_sinks.setdefault(assoc, weakref.WeakSet()).add(sink)
    return sink


def _receive_into_spool(spool: Spool) -> None:
    """Have pynetdicom write received C-STORE data sets into ``spool`` as they arrive.

    Process-wide, as pynetdicom's configuration is (a process serves one archive): whatever
    AE of the process receives a C-STORE, its handler must take the data set from the
    :class:`SpoolSink`; ``event.dataset`` would read the sealed file as ciphertext.
    """
    global _spool
    _spool = spool
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _received_dataset_file  # type: ignore[assignment]


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
        # C-MOVE and C-GET send what it makes ready, as the web face's send does.
        self.outgoing = Outgoing(archive.retrieve)
        _receive_into_spool(archive.spool)

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
            _peer(assoc),
            len(assoc.accepted_contexts),
        )

    def on_closed(self, event: Event) -> None:
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        log.info("association with %s %s", _peer(event.assoc), how)
        # An object cut off mid-transfer (or received but never handled) leaves a spool
        # file no handler will take: remove it now rather than at the next start.
        for sink in list(_open_sinks.pop(event.assoc, ())):
            sink.close()

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
                "%s refused for %s: not allowed to %s", event.event.name, _peer(event.assoc), what
            )
        return allowed

    # ------------------------------------------------------------------ C-ECHO
    def on_echo(self, event: Event) -> int:
        """C-ECHO (PS3.4 A.4, PS3.7 9.1.5): always success for an admitted caller."""
        log.info("C-ECHO from %s", _peer(event.assoc))
        return SUCCESS

    # ------------------------------------------------------------------ C-STORE
    def on_store(self, event: Event) -> Dataset | int:
        """C-STORE (PS3.4 B.2.3): store the object byte-exact through StoreService.

        Returns 0x0000 on success (also for an identical object stored again); otherwise the
        status the service reports: 0xA700 out of resources (storage unavailable), 0xA900 data
        set does not match SOP class (also that of the presentation context it came on), 0xC000
        cannot understand, 0x0111 a different object
        under the same SOP Instance UID, 0x0124 the caller may not store. The association
        carries on whatever one object's outcome.
        """
        if not self._allowed(event, "store"):
            return _status_ds(NOT_AUTHORIZED, "this AE may not store here")
        # The PS3.10 file as received: a preamble and file meta (from the request and the
        # negotiated transfer syntax) followed by the data set bytes exactly as they came.
        sink = getattr(event.request, "_dataset_file", None)
        try:
            spooled = sink.take() if isinstance(sink, SpoolSink) else self._spool_whole(event)
        except InsufficientStorage as exc:  # below the free-disk floor: 0xA700
            log.warning("C-STORE from %s refused 0xA700: %s", _peer(event.assoc), exc.reason)
            return _status_ds(exc.dimse_status, exc.reason)
        except OSError as exc:
            log.error("C-STORE from %s: spool write failed: %s", _peer(event.assoc), exc)
            return _status_ds(0xA700, "out of resources: cannot spool the object")
        outcome = self.archive.store.store(
            spooled,
            principal=self.principal(event.assoc),
            expected_sop_class_uid=str(event.context.abstract_syntax),
        )
        # The request's UID is what the peer sent, which may be anything: logged only if valid.
        affected = UID(str(event.request.AffectedSOPInstanceUID or ""))
        sop = outcome.sop_instance_uid or (affected if affected.is_valid else "(invalid UID)")
        if outcome.error is None:
            log.info(
                "C-STORE %s from %s: %s",
                sop,
                _peer(event.assoc),
                outcome.result.value if outcome.result else "stored",
            )
            return SUCCESS
        status = outcome.error.dimse_status
        log.warning(
            "C-STORE %s from %s refused 0x%04X: %s",
            sop,
            _peer(event.assoc),
            status,
            outcome.error.reason,
        )
        return _status_ds(status, outcome.error.reason)

    def _spool_whole(self, event: Event) -> SpooledFile:
        """Spool a data set pynetdicom kept in memory (an association not registered for
        chunked receipt, e.g. a handler bound to another AE)."""
        data = event.encoded_dataset(include_meta=True)
        writer = self.archive.spool.writer()
        try:
            writer.write(data)
            return writer.finish()
        except OSError:
            writer.abort()
            raise

    # ------------------------------------------------------------------ C-FIND
    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """C-FIND (PS3.4 C.4.1) in the Patient Root and Study Root models, every level.

        Yields 0xFF00 Pending with one response identifier per match (C.4.1.1.3.2: the keys
        of the request, filled), then the final status: 0x0000, 0xFE00 after a C-CANCEL,
        0xA900 / 0xC000 for an identifier that cannot be understood, 0x0124 not authorized.
        """
        if not self._allowed(event, "query"):
            yield _status_ds(NOT_AUTHORIZED, "this AE may not query here"), None
            return
        model = "patient" if str(event.request.AffectedSOPClassUID) in _PATIENT_ROOT else "study"
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        try:
            query = parse_cfind(level, identifier, model=model, partition=PARTITION, max_limit=PAGE)
        except BadRequest as exc:
            log.warning("C-FIND from %s: %s", _peer(event.assoc), exc.reason)
            yield _status_ds(IDENTIFIER_MISMATCH, exc.reason), None
            return
        try:
            scoped = self.archive.query.scoped(
                self.principal(event.assoc), query, text=_identifier_text(identifier)
            )
        except NubisError as exc:  # Forbidden (0x0124), audit trail unavailable (0xA700)
            yield _status_ds(exc.dimse_status, exc.reason), None
            return
        found = 0
        items = self._patients(scoped) if level == "PATIENT" else self._pages(scoped)
        for item in items:
            # At most a few responses ahead of the wire: a C-CANCEL then stops matching within
            # them (not after every match is queued), and a huge result never sits in memory.
            if not wait_for_send_room(event.assoc, _FIND_RESPONSES_AHEAD):
                return
            if event.is_cancelled:
                log.info("C-FIND from %s cancelled after %d match(es)", _peer(event.assoc), found)
                yield CANCEL, None
                return
            found += 1
            yield PENDING, self._response(item, identifier, level)
        log.info("C-FIND %s level from %s: %d match(es)", level, _peer(event.assoc), found)
        yield SUCCESS, None

    def _pages(self, query: ScopedQuery) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self.archive.query.page(query.at(offset))
            yield from page.items
            if not page.more:
                return
            offset += len(page.items)

    def _patients(self, query: ScopedQuery) -> Iterator[dict[str, Any]]:
        """Distinct patients of the matching studies, with their computed counts (C.6.1.1.2)."""
        patients: dict[str, dict[str, Any]] = {}
        counts: dict[str, list[int]] = {}
        for item in self._pages(query):
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
    def _select(self, assoc: Association, identifier: Dataset, model: str) -> list[StoredInstance]:
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
        who = self.principal(assoc)
        scoped = self.archive.query.scoped(who, query, text=_identifier_text(identifier))
        wanted: dict[str, tuple[set[str], set[str]]] = {}
        for item in self._pages(scoped):
            study = item["0020000D"]["Value"][0]
            series_uids, sops = wanted.setdefault(study, (set(), set()))
            if level in ("SERIES", "IMAGE"):
                series_uids.add(item["0020000E"]["Value"][0])
            if level == "IMAGE":
                sops.add(item["00080018"]["Value"][0])
        selected: list[StoredInstance] = []
        for study, (series_uids, sops) in wanted.items():
            try:
                stored = self.archive.retrieve.instances(who, study)
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
                    _peer(event.assoc),
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

    def on_move(self, event: Event) -> Iterator[Any]:
        """C-MOVE (PS3.4 C.4.2): send the matching objects to a destination of the peer table.

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
        if not self._allowed(event, "retrieve"):
            yield _refuse(event, NOT_AUTHORIZED, "this AE may not retrieve here")
            return
        peer = self.archive_peers().get(destination)
        if peer is None or not peer.host or not peer.port:
            log.warning("C-MOVE from %s: unknown destination %r", _peer(event.assoc), destination)
            yield _refuse(event, UNKNOWN_DESTINATION, f"move destination {destination} unknown")
            return
        model = "patient" if str(event.request.AffectedSOPClassUID) in _PATIENT_ROOT else "study"
        try:
            instances = self._select(event.assoc, event.identifier, model)
        except NubisError as exc:
            log.warning("C-MOVE from %s refused: %s", _peer(event.assoc), exc.reason)
            yield _refuse(event, _selection_status(exc), exc.reason)
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
                _peer(event.assoc),
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
            _peer(event.assoc),
            destination,
            peer.host,
            peer.port,
            len(instances),
        )
        yield peer.host, peer.port, kwargs
        yield len(instances)
        yield from self._sub_operations(event, instances, accepted)

    def archive_peers(self) -> Any:
        return self.policy.peers

    def on_get(self, event: Event) -> Iterator[Any]:
        """C-GET (PS3.4 C.4.3): send the matching objects back on the same association.

        Yields the number of sub-operations and one Pending per object; final statuses as for
        C-MOVE, refusals (0x0124, 0xA900) with no sub-operation counted. Objects go in their
        stored transfer syntax when the peer accepted it for the SCP role, otherwise
        converted to one it accepted.
        """
        if not self._allowed(event, "retrieve"):
            yield 1
            yield _refusal(event, NOT_AUTHORIZED, "this AE may not retrieve here"), None
            return
        model = "patient" if str(event.request.AffectedSOPClassUID) in _PATIENT_ROOT else "study"
        try:
            instances = self._select(event.assoc, event.identifier, model)
        except NubisError as exc:
            log.warning("C-GET from %s refused: %s", _peer(event.assoc), exc.reason)
            yield 1
            yield _refusal(event, _selection_status(exc), exc.reason), None
            return
        # We send C-STORE requests on contexts where the peer is the storage SCP.
        accepted = accepted_syntaxes(cx for cx in event.assoc.accepted_contexts if cx.as_scu)
        log.info("C-GET from %s: %d object(s)", _peer(event.assoc), len(instances))
        yield len(instances)
        yield from self._sub_operations(event, instances, accepted)

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
        if str(event.request.RequestedSOPClassUID) != StorageCommitmentPushModel:
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
                request.transaction_uid, _peer(event.assoc), exc,
            )  # fmt: skip
            return PROCESSING_FAILURE, None
        self._commitments.setdefault(event.assoc, []).append(job_id)
        log.info(
            "storage commitment %s from %s: %d object(s), job %d",
            request.transaction_uid,
            _peer(event.assoc),
            len(request.references),
            job_id,
        )
        return SUCCESS, None

    def on_dimse_sent(self, event: Event) -> None:
        if type(event.message).__name__ != "N_ACTION_RSP":
            return
        for job_id in self._commitments.pop(event.assoc, None) or []:
            threading.Thread(
                target=self.archive.commitment_reports.first_attempt,
                args=(job_id, event.assoc),
                name="nubis-commitment",
                daemon=True,
            ).start()


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


def _refuse(event: Event, status: int, comment: str) -> tuple[None, None]:
    """What a C-MOVE handler yields as its destination to refuse the request with ``status``.

    pynetdicom's C-MOVE SCP can only fail before it associates with the destination by
    answering 0xA801 (Move Destination unknown) for a (None, None) destination; any other
    failure status comes after it has opened an association to the destination, which a
    refused caller must not make this archive do. So the handler yields (None, None) and
    the 0xA801 response is corrected on its way out (:func:`_refusal`).
    """
    _refusal(event, status, comment)
    return None, None


def _refusal(event: Event, status: int, comment: str) -> Dataset:
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
    return _status_ds(status, comment)


def _correct_final(
    event: Event, status: int, comment: Callable[[], str], *, only: int | None = None
) -> None:
    """Have the final response to this request go out as a refusal with ``status`` and
    ``comment()`` (see :func:`_refusal`); with ``only``, just when it would have that status,
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

    dimse.send_msg = send_msg


def _identifier_text(identifier: Dataset) -> str:
    """The C-FIND / retrieve identifier as text, for the Query audit record."""
    return "\n".join(f"{e.keyword or e.tag}={e.value}" for e in identifier if e.tag.group != 2)


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
