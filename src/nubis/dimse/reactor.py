"""Event-driven association threads for the DIMSE server (pynetdicom acceptors without polling).

pynetdicom runs each association as two threads that poll: the DUL thread sleeps 1 ms whenever
its socket and queues are empty, and the association thread sleeps 1 ms before every look at
its message queue. Every request therefore waits up to a millisecond to be read, another to
reach its handler, and a third for its response to be sent; association set-up and release
pay the same toll at each step, and each idle association wakes 2,000 times a second. Here
both threads block instead until there is something to do:

- the DUL thread waits in ``select`` on the peer's socket and a wake-up pipe; anything put on
  its queues (a primitive to send, an event for the state machine) or a kill writes to the pipe;
- the association thread waits on an Event set by whatever it reacts to: a decoded DIMSE message,
  an A-RELEASE / A-ABORT primitive from the DUL, the DUL ending, a kill, or a pause request from
  a thread that wants to use the association itself (storage commitment reports).

Both waits are bounded (:data:`TICK`) so the timers pynetdicom checks by polling (ARTIM, the
network idle timeout) still fire, within a tenth of a second instead of a millisecond.

The request handler also stops deep-copying the AE's ~210 presentation contexts (~8,000 UIDs,
5 ms) for every association: negotiation only reads them, and makes new context objects for its
result. Storage classes beyond the AE's list (private, retired, newer) are added to the
association's own copy of the list from what the requestor proposes
(:class:`~nubis.dimse.storage_classes.OpenStorageACSE`).

Both kinds of association (and the C-MOVE sub-associations, see :class:`RaceFreeAE`) also send
a :class:`StreamedDataset` by C-STORE as it is read, with bounded memory (:class:`StreamingStore`).

Everything else (state machine, PDU and DIMSE coding, services, events) is pynetdicom's own; the
overridden loops keep its order of checks. Written against pynetdicom 3.0.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import chain
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import LOGGER as ASSOC_LOGGER
from pynetdicom.association import Association
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE, DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dul import LOGGER, DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler

from nubis.dimse.commands import data_set_p_data, fast_message, p_data, streamed_store_request
from nubis.dimse.storage_classes import OpenStorageACSE

if TYPE_CHECKING:
    from pynetdicom.ae import ApplicationEntity

# Longest wait without a wake-up: how late a timer pynetdicom polls for (ARTIM, network idle
# timeout, both tens of seconds) may be noticed. Not a latency on any request.
TICK = 0.1
# Socket reads: large enough for a whole 128 KiB P-DATA PDU in a few calls (pynetdicom reads
# 4 KiB per call: 32 calls, each a poll and a recv, per PDU).
_RECV_CHUNK = 1 << 20
# The operations a C-CANCEL can stop (PS3.7 9.3.2.3, 9.3.3.3, 9.3.4.3).
_CANCELLABLE = (C_FIND, C_GET, C_MOVE)
# How much of a streamed data set may wait in the DUL's queue to be sent: the reader stops
# there until the network takes some, so an object read faster than the peer receives it is
# never piled up in memory.
_STREAM_QUEUED_BYTES = 4 << 20
# The fragment size assumed for that budget when the peer sets no maximum PDU length.
_UNLIMITED_PDU_FRAGMENT = 1 << 20

log = logging.getLogger("nubis.dimse")


class _Wakeup:
    """A pipe the DUL thread can ``select`` on together with its socket."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)

    def signal(self) -> None:
        # Under the lock: once close() has run, the descriptor number may belong to another
        # file (a blob being written), and a stray byte must never reach it.
        with self._lock:
            if self._write_fd >= 0:
                # A full pipe is already readable: the waiter will wake anyway.
                with contextlib.suppress(BlockingIOError):
                    os.write(self._write_fd, b"\0")

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        with self._lock:
            if self._write_fd >= 0:
                os.close(self._write_fd)
                os.close(self.read_fd)
                self._write_fd = self.read_fd = -1


class _SignallingQueue(queue.Queue[Any]):
    """A Queue that calls ``signal`` after each put (under the queue's own lock)."""

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def _put(self, item: Any) -> None:
        super()._put(item)
        self._signal()


class _SignallingEvent(threading.Event):
    """The association's reactor checkpoint: clearing it (a thread wants the association to
    itself) must wake the reactor so it reaches the checkpoint and reports itself paused."""

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def set(self) -> None:
        super().set()
        self._signal()

    def clear(self) -> None:
        super().clear()
        self._signal()


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL provider, blocking in ``select`` instead of sleeping between looks."""

    def __init__(self, assoc: Association, on_user_primitive: Callable[[], None]) -> None:
        self._wakeup = _Wakeup()
        # The reactor closes the pipe when it ends; this covers a DUL that never started.
        weakref.finalize(self, self._wakeup.close)
        self._killed = False
        super().__init__(assoc)
        # Outgoing primitives and state machine events come from other threads too.
        self.to_provider_queue = _SignallingQueue(self._wakeup.signal)
        self.event_queue = _SignallingQueue(self._wakeup.signal)
        # A-ASSOCIATE / A-RELEASE / A-ABORT for the association thread.
        self.to_user_queue = _SignallingQueue(on_user_primitive)

    # pynetdicom stops the reactor by setting this flag (kill_dul, stop_dul, its own abort path).
    @property
    def _kill_thread(self) -> bool:
        return self._killed

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self._killed = value
        if value:
            self._wakeup.signal()

    def _wait(self) -> None:
        """Block until the socket is readable, a queue or flag changed, or TICK passed."""
        sock = self.socket.socket if self.socket is not None else None
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes already buffered: select would not see them
        fds: list[Any] = [self._wakeup.read_fd]
        if sock is not None and sock.fileno() >= 0:
            fds.append(sock)
        # A socket closed under us fails select; the reactor's own check then reports Evt17.
        with contextlib.suppress(OSError, ValueError):
            select.select(fds, [], [], TICK)
        self._wakeup.drain()

    def run_reactor(self) -> None:
        """pynetdicom's reactor loop (dul.py, 3.0) with its idle sleep replaced by ``_wait``."""
        try:
            self._reactor()
        finally:
            self._wakeup.close()
            # The association thread checks ``dul.is_alive()``: let it look now.
            self.assoc._nubis_wake.set()  # type: ignore[attr-defined]

    def _reactor(self) -> None:
        self._idle_timer.start()
        self.socket = cast(AssociationSocket, self.socket)
        idle = False
        read_first = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if idle:
                self._wait()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # One primitive to encode or one PDU to decode per turn, as pynetdicom does, but
                # taking turns: pynetdicom reads only once nothing is left to send, so a C-CANCEL
                # sat unread behind a long run of pending responses until they were all sent.
                if read_first and self._is_transport_event():
                    self._idle_timer.restart()
                elif self._process_recv_primitive():
                    pass
                elif not read_first and self._is_transport_event():
                    self._idle_timer.restart()
                read_first = not read_first
            except Exception as exc:
                # As pynetdicom: bypass the state machine, send an A-ABORT, stop both threads.
                LOGGER.error("Exception in DUL.run(), aborting association")
                LOGGER.exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            self.state_machine.do_action(event)
            idle = False


class FastSocket(AssociationSocket):
    """Reads a PDU with as few ``recv`` calls as the kernel allows (pynetdicom: 4 KiB each)."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        got = 0
        try:
            while got < nr_bytes:
                n = sock.recv_into(view[got:], min(nr_bytes - got, _RECV_CHUNK))
                if not n:
                    break  # connection closed: return the short read, the DUL reports it
                got += n
        finally:
            view.release()
        if got < nr_bytes:
            del buffer[got:]
        return buffer


class _RequestQueue(_SignallingQueue):
    """The association's incoming DIMSE requests; a new request drops any C-CANCEL still
    held under its Message ID, which can only be a late one for an earlier operation."""

    def __init__(self, signal: Callable[[], None], cancels: dict[int, Any]) -> None:
        super().__init__(signal)
        self._cancels = cancels

    def _put(self, item: Any) -> None:
        message_id = getattr(item[1], "MessageID", None)
        if message_id is not None:
            self._cancels.pop(message_id, None)
        super()._put(item)


class FastDIMSE(DIMSEServiceProvider):
    """Sends messages with their command sets encoded by :mod:`nubis.dimse.commands`, and
    keeps a C-CANCEL that arrives right behind its request.

    pynetdicom empties its C-CANCEL table before and after each operation, so a cancel that
    the DUL thread decoded before the association thread started the operation was thrown
    away and the operation ran to its end; PS3.7 9.3.2.3 lets the SCU cancel at any time.
    Here the table keeps, across those resets, the cancel for the operation being served.
    """

    def __init__(self, assoc: Association) -> None:
        self._cancels: dict[int, Any] = {}
        self.serving: int | None = None
        super().__init__(assoc)

    @property
    def cancel_req(self) -> dict[int, Any]:
        return self._cancels

    @cancel_req.setter
    def cancel_req(self, _: dict[int, Any]) -> None:
        # In place: the DUL thread may be adding a cancel for the served operation right now.
        for msg_id in list(self._cancels):
            if msg_id != self.serving:
                self._cancels.pop(msg_id, None)

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if primitive.MessageIDBeingRespondedTo is None:
            message_class = _RQ_TO_MESSAGE[type(primitive)]
        else:
            message_class = _RSP_TO_MESSAGE[type(primitive)]
        fast = fast_message(message_class, primitive, context_id)
        if fast is None:
            super().send_msg(primitive, context_id)
            return
        msg, command, data_set = fast
        evt.trigger(self.assoc, evt.EVT_DIMSE_SENT, {"message": msg})
        for pdata in p_data(context_id, command, data_set, self.maximum_pdu_size):
            self.dul.send_pdu(pdata)


class StreamedDataset(Dataset):
    """A stored object for :meth:`StreamingStore.send_c_store` to send as the data set bytes of
    its file, read as a stream, neither decoded nor held whole.

    A Dataset with only the SOP Class and Instance UIDs and, in its file meta, the transfer
    syntax the bytes are in: pynetdicom's C-GET and C-MOVE SCPs pass on only what a handler
    yields as a non-empty Dataset, and name a failed sub-operation by its SOPInstanceUID.
    ``open_data_set`` opens the stream of the data set bytes (after the preamble and file meta).
    """

    def __init__(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        open_data_set: Callable[[], Iterator[bytes]],
    ) -> None:
        super().__init__()
        self.SOPClassUID = sop_class_uid
        self.SOPInstanceUID = sop_instance_uid
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(transfer_syntax_uid)
        self.open_data_set = open_data_set


class StreamingStore(Association):
    """pynetdicom's Association, whose ``send_c_store`` also takes a :class:`StreamedDataset`:
    the command goes out, then the data set as P-DATA fragments cut from the stream as it is
    read, with at most :data:`_STREAM_QUEUED_BYTES` of them waiting for the DUL thread. An
    object of any size then costs a few MB. Anything else is pynetdicom's own send.

    pynetdicom's chunked send (``_config.STORE_SEND_CHUNKED_DATASET`` with a file path) cannot
    serve here: it reads a plaintext file, which an archive encrypted at rest must not write,
    and queues every fragment at once, holding the object in memory whenever the disk is
    faster than the network.
    """

    def send_c_store(
        self,
        dataset: Any,
        msg_id: int = 1,
        priority: int = 2,
        originator_aet: str | None = None,
        originator_id: int | None = None,
    ) -> Dataset:
        if not isinstance(dataset, StreamedDataset):
            return super().send_c_store(dataset, msg_id, priority, originator_aet, originator_id)
        if not self.is_established:
            raise RuntimeError(
                "The association with a peer SCP must be established before sending a C-STORE "
                "request"
            )
        # The bytes go as they are stored: only a context of their own transfer syntax fits.
        context = self._get_valid_context(
            dataset.SOPClassUID,
            dataset.file_meta.TransferSyntaxUID,
            "scu",
            allow_conversion=False,
        )
        req = C_STORE()
        req.MessageID = msg_id
        req.Priority = priority
        req.MoveOriginatorApplicationEntityTitle = originator_aet
        req.MoveOriginatorMessageID = originator_id
        req.AffectedSOPClassUID = dataset.SOPClassUID
        req.AffectedSOPInstanceUID = dataset.SOPInstanceUID
        chunks = dataset.open_data_set()  # a missing blob or key fails here, with nothing sent
        # As pynetdicom's send_*: pause the reactor so that the response is ours to take.
        self._reactor_checkpoint.clear()
        while not self._is_paused:
            time.sleep(0.0001)
        try:
            self._send_streamed(req, cast(int, context.context_id), chunks)
        except Exception as exc:
            # The message cannot be withdrawn, nor another sent before its last fragment (PS3.8
            # 9.3.1): only an abort keeps the peer from ever taking it as complete.
            log.error(
                "C-STORE of %s to %s stopped part-way (%s): aborting the association",
                dataset.SOPInstanceUID,
                self.acceptor.ae_title if self.is_requestor else self.requestor.ae_title,
                exc,
            )
            self.abort()
            raise
        _, rsp = self.dimse.get_msg(block=True)
        self._reactor_checkpoint.set()
        if rsp is None:
            self._handle_no_response()
            return Dataset()
        return self._check_received_status(rsp)

    def _send_streamed(self, req: C_STORE, context_id: int, chunks: Iterator[bytes]) -> None:
        max_pdu = self.dimse.maximum_pdu_size
        msg, command = streamed_store_request(req, context_id)
        evt.trigger(self, evt.EVT_DIMSE_SENT, {"message": msg})
        room = max(2, _STREAM_QUEUED_BYTES // (max_pdu or _UNLIMITED_PDU_FRAGMENT))
        fragments = chain(
            p_data(context_id, command, b"", max_pdu),
            data_set_p_data(context_id, chunks, max_pdu),
        )
        for pdata in fragments:
            if not wait_for_send_room(self, room):
                raise ConnectionError("the association ended during the C-STORE")
            self.dul.send_pdu(pdata)


def wait_for_send_room(assoc: Association, room: int) -> bool:
    """Block while ``room`` or more PDUs wait for ``assoc``'s DUL thread to send them; False if
    the association ends meanwhile. pynetdicom's send queue has no bound, so a producer faster
    than the network would otherwise queue everything it makes."""
    waiting = assoc.dul.to_provider_queue
    # Every get() by the DUL thread notifies not_full, also on a queue with no maxsize.
    with waiting.not_full:
        while len(waiting.queue) >= room:
            # An acceptor's own reactor may be the thread sending (C-GET, C-FIND), so an
            # A-ABORT or a closed connection is only seen on the DUL's queue to the user.
            if not (assoc.is_established and assoc.dul.is_alive() and not assoc.acse.is_aborted()):
                return False
            waiting.not_full.wait(TICK)
    return True


class RaceFreePause:
    """Mixin for pynetdicom's Association: a thread that pauses the reactor to use the
    association itself (``send_*``: clear the checkpoint, wait for ``_is_paused``) is never
    let through while the reactor is still on its way to look at the message queue.

    pynetdicom 3.0's reactor sets ``_is_paused = True``, passes the checkpoint and sets it
    False; a thread that clears the checkpoint between the last two steps sees the stale True,
    sends its request, and when the answer comes back within the reactor's turn the reactor
    takes it ("Received unexpected C-ECHO service message") while the sender waits for the
    DIMSE timeout. A fast peer makes that likely: 2 in 300 C-FIND + C-ECHO pairs here. Here
    leaving the paused state waits while a pause is requested, under a lock the readers of
    ``_is_paused`` share, so the sender either sees False and waits, or the reactor stays put.
    """

    _reactor_checkpoint: threading.Event

    def _init_pause(self) -> None:
        self._pause_lock = threading.Lock()
        self._paused = False

    @property
    def _is_paused(self) -> bool:
        with self._pause_lock:
            return self._paused

    @_is_paused.setter
    def _is_paused(self, value: bool) -> None:
        checkpoint = getattr(self, "_reactor_checkpoint", None)
        while True:
            with self._pause_lock:
                if value or checkpoint is None or checkpoint.is_set():
                    self._paused = value
                    return
            checkpoint.wait()  # a pause was requested: stay paused until it is over


class RaceFreeRequestor(RaceFreePause, StreamingStore):
    """pynetdicom's association with the race of its reactor pause closed (see RaceFreePause)
    and streamed C-STORE requests (StreamingStore); its loops are pynetdicom's own."""

    def __init__(self, ae: ApplicationEntity, mode: str) -> None:
        self._init_pause()
        super().__init__(ae, mode)


class RaceFreeAE(AE):
    """An AE whose ``associate`` makes :class:`RaceFreeRequestor` associations: nubis's SCU
    (scu.py), and in the server the C-MOVE sub-associations (pynetdicom's Move SCP calls the
    server AE's ``associate``) and storage commitment reports. Each of them sends requests
    from a user thread while the association's own reactor runs, which is where pynetdicom's
    race takes a fast reply away from the sender (it then waits for the DIMSE timeout). The
    C-MOVE sub-associations also send large objects as streams this way (StreamingStore).

    ``AE.associate`` makes a plain ``Association`` and hands it to ``_create_socket`` before
    its thread starts; its class is changed there, as pynetdicom 3.0 offers no other way in
    short of copying ``associate``.
    """

    def _create_socket(self, assoc: Association, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(assoc, RaceFreePause):
            paused = bool(assoc.__dict__.pop("_is_paused", False))
            assoc.__class__ = RaceFreeRequestor
            cast(RaceFreeRequestor, assoc)._init_pause()
            cast(RaceFreeRequestor, assoc)._paused = paused
        return super()._create_socket(assoc, *args, **kwargs)


class EventDrivenAssociation(RaceFreePause, StreamingStore):
    """An acceptor association whose thread waits on an Event instead of polling every 1 ms
    (and can stream the C-STORE requests of a C-GET, StreamingStore)."""

    dimse: FastDIMSE

    def __init__(self, ae: ApplicationEntity, mode: str) -> None:
        self._nubis_wake = threading.Event()
        self._killed = False
        self._init_pause()
        super().__init__(ae, mode)
        # Storage of classes beyond the AE's list, decided from the requestor's proposal.
        self.acse = OpenStorageACSE(self)
        self.dul = EventDrivenDUL(self, self._nubis_wake.set)
        # The timeout setters push their values into the DUL's timers: apply them to the new one.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.dimse = FastDIMSE(self)
        self.dimse.msg_queue = _RequestQueue(self._nubis_wake.set, self.dimse.cancel_req)
        self._reactor_checkpoint = _SignallingEvent(self._nubis_wake.set)
        self._reactor_checkpoint.set()

    @property
    def _kill(self) -> bool:
        return self._killed

    @_kill.setter
    def _kill(self, value: bool) -> None:
        self._killed = value
        if value:
            self._nubis_wake.set()

    def _serve_request(self, msg: Any, context_id: int) -> None:
        cancellable = isinstance(msg, _CANCELLABLE)
        if cancellable:
            self.dimse.serving = msg.MessageID
        try:
            super()._serve_request(msg, context_id)
        finally:
            if cancellable:
                self.dimse.serving = None
                self.dimse.cancel_req = {}  # whatever came for it is now late

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop (association.py, 3.0) with its 1 ms sleep replaced by a
        wait for the next thing to react to."""
        self._is_paused = False
        wake = self._nubis_wake
        while not self._kill:
            wake.wait(TICK)
            wake.clear()
            # Another thread may want the association to itself (send_* pause the reactor).
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
                wake.set()  # more may have arrived while serving: look again at once

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                ASSOC_LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                ASSOC_LOGGER.info(
                    "Association Aborted"
                    + (" (A-P-ABORT)" if self.acse.is_aborted("a-p-abort") else "")
                )
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires, as pynetdicom does
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                ASSOC_LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class EventDrivenRequestHandler(RequestHandler):
    """Makes an :class:`EventDrivenAssociation` for each connection (pynetdicom 3.0's
    ``RequestHandler._create_association``, without the deep copy of the contexts)."""

    def _create_association(self) -> Association:
        assoc = EventDrivenAssociation(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        # After the association: the socket announces itself on the DUL's event queue.
        assoc.set_socket(FastSocket(assoc, client_socket=self.request))

        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        # Negotiation reads these and builds new contexts for its result; a copy of the list
        # (not of every context and UID in it) keeps later changes to the server's list out.
        assoc.acceptor.supported_contexts = list(self.server.contexts)
        assoc.requestor.address_info = self.remote

        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                handlers = self.server._handlers[event]
                for handler in handlers if isinstance(handlers, list) else ():
                    assoc.bind(event, handler[0], handler[1])
        return assoc
