"""A DIMSE PACS as a migration source: C-FIND lists, C-MOVE or C-GET delivers (PS3.4 C.4).

Studies are listed by C-FIND at study level (Study Root) over date windows. Legacy archives
cap how many matches one C-FIND returns, and say so in different ways: Orthanc ends with
Cancel (0xFE00) when it stopped at ``LimitFindResults``, others with a failure (0xA700, 0xC000),
others just stop at their limit (``--find-limit`` names it). A window whose answer is capped is
split in two and asked again, down to one day, then a day by hours of Study Time; a window
still capped then is a listing gap in the report, never a silent one. Instances are listed per
study by one C-FIND at image level keyed by the study (relational), or where the source
refuses that at series level, then image level per series (hierarchical keys, C.4.1.3.1).

Objects come by C-MOVE to ``move_ae``, received by a Storage SCP this process runs on
``listen_port`` for the duration of the migration (the source must know ``move_ae`` at this
host and port), or by C-GET on the querying association. Each received object goes to the
job's ``deliver`` (the store service) before its C-STORE is answered, so a refusal reaches the
source as a failed sub-operation, and a throttled store slows the sender. Only associations
from the source's address and AE title are accepted by the receiver.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import _config, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    _STORAGE_CLASSES,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from nubis.dimse.reactor import EventDrivenRequestHandler, RaceFreeAE
from nubis.dimse.receive import SpoolSink, close_sinks, receive_into_spool
from nubis.dimse.requestor import EventDrivenAE
from nubis.dimse.storage_classes import OpenStorage
from nubis.errors import InsufficientStorage
from nubis.migrate.request import MigrationRequest
from nubis.migrate.source import Deliver, ListingGap, SourceError, SourceInstance, SourceStudy
from nubis.services.spool import Spool, SpooledFile

__all__ = ["DimseSource", "FindWindow"]

log = logging.getLogger(__name__)

# As the DIMSE server does: pynetdicom's standard handlers would log every message (with
# identifiers, patient data), and they do not know the message classes of nubis's reactor.
_config.LOG_HANDLER_LEVEL = "none"

_FIND = StudyRootQueryRetrieveInformationModelFind
_MOVE = StudyRootQueryRetrieveInformationModelMove
_GET = StudyRootQueryRetrieveInformationModelGet
_PENDING = (0xFF00, 0xFF01)
_CANCEL = 0xFE00
_EARLIEST = dt.date(1900, 1, 1)
# The storage classes a C-GET association offers to receive (SCP role, PS3.7 D.3.3.4): as many
# as fit beside the query contexts in 128 presentation contexts.
_GET_CLASSES = list(_STORAGE_CLASSES.values())[:125]
_TIMEOUT = 120
_HOURS = [(f"{h:02d}0000", f"{h:02d}5959") for h in range(24)]
# SOP Instance UIDs in one retrieve's list: at most 6.5 kB of UIDs in an identifier.
_UIDS_PER_RETRIEVE = 100


@dataclass(frozen=True)
class FindWindow:
    """A C-FIND date window (and, within one day, a Study Time range); ``every``: no date
    key at all, which alone also matches studies without a Study Date."""

    first: dt.date
    last: dt.date
    time: str | None = None
    every: bool = False

    @property
    def date_range(self) -> str:
        if self.every:
            return ""
        a, b = self.first.strftime("%Y%m%d"), self.last.strftime("%Y%m%d")
        return a if a == b else f"{a}-{b}"

    def split(self) -> list[FindWindow]:
        """Two halves; a single day splits into hours of Study Time."""
        if self.every:
            return [FindWindow(self.first, self.last)]
        if self.first < self.last:
            middle = self.first + (self.last - self.first) // 2
            return [
                FindWindow(self.first, middle),
                FindWindow(middle + dt.timedelta(days=1), self.last),
            ]
        if self.time is None:
            return [FindWindow(self.first, self.last, f"{a}-{b}") for a, b in _HOURS]
        return []

    def __str__(self) -> str:
        if self.every:
            return "every date"
        return self.date_range + (f" {self.time}" if self.time else "")


def _date(text: str | None, default: dt.date) -> dt.date:
    if not text:
        return default
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise SourceError(f"{text!r} is not a date YYYYMMDD") from None


class DimseSource:
    gives_bytes = False  # objects are re-encoded on the network: their digest is nubis's own

    def __init__(self, request: MigrationRequest, spool: Spool) -> None:
        url = urlparse(request.source)
        if not url.hostname or not url.port or not url.username:
            raise SourceError("a DIMSE source is dicom://AE@HOST:PORT")
        self.called_ae = unquote(url.username)
        self.host, self.port = url.hostname, url.port
        self.request = request
        self.spool = spool
        self.description = f"DIMSE {self.called_ae}@{self.host}:{self.port}"
        self.gaps: list[ListingGap] = []
        self.windows_asked = 0
        # Set when the source refuses an instance listing keyed by the study alone.
        self._hierarchical = False
        self._receiver: _Receiver | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._associations: list[Any] = []
        # Received objects go straight into spool files as their fragments arrive, as the
        # DIMSE server's do: one PDU in memory whatever the object's size.
        receive_into_spool(spool)

    # ------------------------------------------------------------------ associations
    def _association(self) -> Any:
        """This thread's association with the source (opened on first use, kept for the
        next study: each association costs the source a set-up and a release). For C-GET it
        also takes the SCP role of the storage classes; the C-STOREs, handled in the
        association's own thread, go to the ``deliver`` its fetch put on it."""
        assoc = getattr(self._local, "assoc", None)
        if assoc is not None and assoc.is_established:
            return assoc
        get = self.request.retrieve == "get"
        # Event driven: the association waits idle between studies (and the listing's for the
        # whole run) without waking every millisecond.
        ae = EventDrivenAE(ae_title=self.request.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = _TIMEOUT
        ae.add_requested_context(_FIND)
        ae.add_requested_context(_GET if get else _MOVE)
        roles: list[Any] = []
        handlers: list[Any] = []
        if get:
            for uid in _GET_CLASSES:
                ae.add_requested_context(uid, [str(t) for t in AllTransferSyntaxes])
                roles.append(build_role(uid, scp_role=True))
            handlers = [
                (evt.EVT_C_STORE, self._on_get_store),
                (evt.EVT_RELEASED, lambda event: close_sinks(event.assoc)),
                (evt.EVT_ABORTED, lambda event: close_sinks(event.assoc)),
            ]
        assoc = ae.associate(
            self.host, self.port, ae_title=self.called_ae, ext_neg=roles, evt_handlers=handlers
        )
        if not assoc.is_established:
            raise SourceError(f"{self.description}: association refused or failed")
        _no_delay(assoc)
        self._local.assoc = assoc
        with self._lock:
            self._associations.append(assoc)
        return assoc

    def _on_get_store(self, event: Any) -> int:
        return _store(event, getattr(event.assoc, "migrate_deliver", None), self.spool)

    def _find(self, assoc: Any, identifier: Dataset) -> tuple[list[Dataset], int]:
        """Every match and the final status."""
        matches: list[Dataset] = []
        final = -1
        for status, found in assoc.send_c_find(identifier, _FIND):
            if "Status" not in status:
                raise SourceError(f"{self.description} stopped answering a C-FIND")
            code = int(status.Status)
            if code in _PENDING:
                if found is not None:
                    matches.append(found)
            else:
                final = code
        return matches, final

    # ------------------------------------------------------------------ listing
    def studies(self) -> Iterator[SourceStudy]:
        today = dt.date.today()
        first = _date(self.request.date_from, _EARLIEST)
        last = _date(self.request.date_to, today)
        seen: set[str] = set()
        assoc = self._association()
        # Without dates asked for, one query with no date key comes first: when the source
        # answers it whole, it has listed the studies without a Study Date too, which no
        # date window matches (PS3.4 C.2.2.2.5).
        dated = bool(self.request.date_from or self.request.date_to)
        todo = [FindWindow(first, last, every=not dated)]
        while todo:
            window = todo.pop(0)
            matches, capped = self._study_window(assoc, window)
            if capped and window.every:
                self.gaps.append(
                    ListingGap(
                        "studies without a Study Date",
                        "the source caps its C-FIND answers and no date window matches them",
                    )
                )
            if capped:
                parts = window.split()
                if not parts:
                    self.gaps.append(
                        ListingGap(
                            f"studies of {window}",
                            f"the source caps its C-FIND answers ({len(matches)} given)",
                        )
                    )
                else:
                    todo[:0] = parts
                    continue
            for found in matches:
                uid = str(found.get("StudyInstanceUID") or "")
                if not uid or uid in seen:
                    continue
                seen.add(uid)
                count = found.get("NumberOfStudyRelatedInstances")
                yield SourceStudy(
                    uid,
                    str(found.get("StudyDate") or "") or None,
                    int(count) if count not in (None, "") else None,
                )

    def _study_window(self, assoc: Any, window: FindWindow) -> tuple[list[Dataset], bool]:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = ""
        ds.StudyDate = window.date_range
        ds.StudyTime = window.time or ""
        ds.NumberOfStudyRelatedInstances = ""
        self.windows_asked += 1
        matches, final = self._find(assoc, ds)
        limit = self.request.find_limit
        capped = final != 0x0000 or (limit is not None and len(matches) >= limit)
        if capped:
            log.info("C-FIND of %s capped (status 0x%04X): splitting", window, final & 0xFFFF)
        return matches, capped

    def instances(self, study: SourceStudy) -> list[SourceInstance]:
        """One C-FIND at image level keyed by the study alone, with the Series Instance UID
        as a return key: a relational query (PS3.4 C.4.1.2.2), which Orthanc and many others
        answer without its extended negotiation. A source that refuses it, or answers with
        fewer instances than its study-level count, is asked hierarchically instead (series,
        then image level per series, C.4.1.3.1), and after a refusal only that way."""
        assoc = self._association()
        if not self._hierarchical:
            ds = Dataset()
            ds.QueryRetrieveLevel = "IMAGE"
            ds.StudyInstanceUID = study.study_uid
            ds.SeriesInstanceUID = ""
            ds.SOPInstanceUID = ""
            images, final = self._find(assoc, ds)
            found = _listed(images)
            if final != 0x0000:
                self._hierarchical = True
            elif found and (study.instances is None or len(found) >= study.instances):
                return found
        return self._instances_by_series(assoc, study)

    def _instances_by_series(self, assoc: Any, study: SourceStudy) -> list[SourceInstance]:
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = study.study_uid
        ds.SeriesInstanceUID = ""
        series, final = self._find(assoc, ds)
        if final != 0x0000:
            self.gaps.append(
                ListingGap(f"series of study {study.study_uid}", f"C-FIND 0x{final:04X}")
            )
        found: list[SourceInstance] = []
        for item in series:
            series_uid = str(item.get("SeriesInstanceUID") or "")
            if not series_uid:
                continue
            ds = Dataset()
            ds.QueryRetrieveLevel = "IMAGE"
            ds.StudyInstanceUID = study.study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = ""
            images, final = self._find(assoc, ds)
            if final != 0x0000:
                self.gaps.append(
                    ListingGap(f"instances of series {series_uid}", f"C-FIND 0x{final:04X}")
                )
            found.extend(_listed(images, series_uid))
        return found

    # ------------------------------------------------------------------ bytes
    def fetch(
        self, study: SourceStudy, wanted: list[SourceInstance], deliver: Deliver
    ) -> dict[str, str]:
        """The whole study in one request when every instance is wanted; otherwise, per
        series, the wanted instances by a list of SOP Instance UIDs (a retrieve's unique key
        at its level may be a list, PS3.4 C.4.2.2.1 and C.4.3.2.1), so a study that grew
        at the source moves only what it gained."""
        listed = study.instances
        whole = listed is not None and len(wanted) >= listed
        requests: list[Dataset] = []
        if whole:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyInstanceUID = study.study_uid
            requests.append(ds)
        else:
            by_series: dict[str, list[str]] = {}
            for instance in wanted:
                by_series.setdefault(instance.series_uid or "", []).append(
                    instance.sop_instance_uid
                )
            for series_uid, uids in by_series.items():
                for at in range(0, len(uids), _UIDS_PER_RETRIEVE):
                    ds = Dataset()
                    ds.QueryRetrieveLevel = "IMAGE"
                    ds.StudyInstanceUID = study.study_uid
                    ds.SeriesInstanceUID = series_uid
                    ds.SOPInstanceUID = uids[at : at + _UIDS_PER_RETRIEVE]
                    requests.append(ds)
        uids = [i.sop_instance_uid for i in wanted]
        if self.request.retrieve == "get":
            failure = self._get(requests, deliver)
        else:
            failure = self._move(requests, uids, deliver)
        # Every object not delivered gets the retrieve's failure as its reason.
        return dict.fromkeys(uids, failure) if failure is not None else {}

    def _move(self, requests: list[Dataset], uids: list[str], deliver: Deliver) -> str | None:
        receiver = self._receiver_started()
        receiver.expect(uids, deliver)
        failure = None
        try:
            assoc = self._association()
            for ds in requests:
                status = _last_status(assoc.send_c_move(ds, self.request.move_ae, _MOVE))
                failure = failure or _failure("C-MOVE", status)
        finally:
            receiver.forget(uids)
        return failure

    def _get(self, requests: list[Dataset], deliver: Deliver) -> str | None:
        assoc = self._association()
        assoc.migrate_deliver = deliver
        failure = None
        try:
            for ds in requests:
                status = _last_status(assoc.send_c_get(ds, _GET))
                failure = failure or _failure("C-GET", status)
        finally:
            assoc.migrate_deliver = None
        return failure

    def _receiver_started(self) -> _Receiver:
        with self._lock:  # the first studies of several threads start at once
            if self._receiver is None:
                self._receiver = _Receiver(self.request, self.host, self.called_ae, self.spool)
            return self._receiver

    def summary(self) -> dict[str, Any]:
        return {"find_windows": self.windows_asked}

    def close(self) -> None:
        with self._lock:
            associations, self._associations = self._associations, []
        for assoc in associations:
            if assoc.is_established:
                assoc.release()
        if self._receiver is not None:
            self._receiver.stop()
            self._receiver = None


def _listed(images: list[Dataset], series_uid: str | None = None) -> list[SourceInstance]:
    return [
        SourceInstance(str(i.SOPInstanceUID), series_uid or str(i.get("SeriesInstanceUID") or ""))
        for i in images
        if i.get("SOPInstanceUID")
    ]


def _no_delay(assoc: Any) -> None:
    """Turn Nagle off, as the DIMSE server does: a DIMSE message is a command PDU then a data
    set PDU, and the second would wait for the peer's delayed ACK of the first."""
    sock = getattr(assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _failure(what: str, status: Dataset) -> str | None:
    """Why a retrieve that did not end in success failed; None when it succeeded."""
    code = int(status.get("Status", -1))
    if code == 0x0000:
        return None
    failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
    return f"{what} ended with status 0x{code & 0xFFFF:04X} ({failed} failed sub-operations)"


def _last_status(responses: Any) -> Dataset:
    last = Dataset()
    for status, _identifier in responses:
        if "Status" not in status:
            raise SourceError("the source stopped answering a retrieve")
        last = status
    return last


def _store(event: Any, deliver: Deliver | None, spool: Spool) -> int:
    """Hand a received C-STORE data set, spooled as it arrived (nubis.dimse.receive), to
    ``deliver``; its DIMSE status."""
    sink = getattr(event.request, "_dataset_file", None)
    if deliver is None:
        return 0xA700
    try:
        spooled = sink.take() if isinstance(sink, SpoolSink) else _spool_whole(event, spool)
    except (OSError, InsufficientStorage):
        return 0xA700
    outcome = deliver(spooled)
    return 0x0000 if outcome.error is None else int(outcome.error.dimse_status)


def _spool_whole(event: Any, spool: Spool) -> SpooledFile:
    """A data set pynetdicom kept in memory (received before the spool was set up)."""
    writer = spool.writer()
    try:
        writer.write(event.encoded_dataset(include_meta=True))
        return writer.finish()
    except OSError:
        writer.abort()
        raise


class _Receiver:
    """The Storage SCP that C-MOVE sub-operations reach while the migration runs."""

    def __init__(self, request: MigrationRequest, source_host: str, source_ae: str, spool: Spool):
        self.spool = spool
        self.source_ae = source_ae
        try:
            self.source_addresses = {a[4][0] for a in socket.getaddrinfo(source_host, None)}
        except OSError as exc:
            raise SourceError(f"{source_host} cannot be resolved: {exc}") from None
        self._lock = threading.Lock()
        self._expected: dict[str, Deliver] = {}
        self._last: Deliver | None = None
        ae = RaceFreeAE(ae_title=request.move_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = _TIMEOUT
        ae.maximum_associations = max(4, request.concurrency * 2)
        # Every storage class, retired and private ones too: a legacy archive holds them.
        OpenStorage([str(t) for t in AllTransferSyntaxes]).install(ae)
        try:
            self.server = ae.make_server(
                (request.listen_host, request.listen_port),
                evt_handlers=[
                    (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_CONN_OPEN, lambda event: _no_delay(event.assoc)),
                    (evt.EVT_RELEASED, lambda event: close_sinks(event.assoc)),
                    (evt.EVT_ABORTED, lambda event: close_sinks(event.assoc)),
                ],
                request_handler=EventDrivenRequestHandler,
            )
        except OSError as exc:
            raise SourceError(
                f"cannot receive C-MOVE on port {request.listen_port}: {exc.strerror}"
            ) from None
        ae._servers.append(self.server)
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="migrate-receiver", daemon=True
        )
        self.thread.start()

    def expect(self, uids: list[str], deliver: Deliver) -> None:
        with self._lock:
            for uid in uids:
                self._expected[uid] = deliver
            self._last = deliver

    def forget(self, uids: list[str]) -> None:
        with self._lock:
            for uid in uids:
                self._expected.pop(uid, None)

    def _on_store(self, event: Any) -> int:
        requestor = event.assoc.requestor
        if (
            requestor.address not in self.source_addresses
            or requestor.ae_title.strip() != self.source_ae
        ):
            log.warning("C-STORE refused: not from the migration's source")
            return 0x0124
        uid = str(event.request.AffectedSOPInstanceUID or "")
        with self._lock:
            # An object the source sends that was not listed (it arrived there since) is
            # stored too, and recorded under its own study.
            deliver = self._expected.get(uid, self._last)
        return _store(event, deliver, self.spool)

    def stop(self) -> None:
        self.server.shutdown()
