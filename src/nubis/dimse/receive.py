"""C-STORE received: the object written into the archive's spool as it arrives, then stored.

pynetdicom hands a C-STORE handler the whole data set, or (``STORE_RECV_CHUNKED_DATASET``)
a temporary file it wrote every P-DATA fragment to; here that file is a :class:`SpoolSink`,
so the bytes go straight into a spool file of the archive (sealed when encryption at rest is
on) and the stored object is that file, adopted as the blob by a rename
(``StoreService.store``, the STOW-RS path). nubis.dimse.handlers binds :meth:`Receiver.store`
to C-STORE requests.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import weakref
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config, dimse_messages

from nubis.dimse.common import SUCCESS, peer_name, status_ds
from nubis.errors import InsufficientStorage
from nubis.services.spool import Spool, SpooledFile, SpoolWriter
from nubis.services.store import warning_status

if TYPE_CHECKING:
    from pynetdicom.association import Association
    from pynetdicom.events import Event

    from nubis.security.policy import Principal
    from nubis.services.store import StoreService

__all__ = ["Receiver", "SpoolSink", "close_sinks", "receive_into_spool"]

log = logging.getLogger("nubis.dimse")


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


def receive_into_spool(spool: Spool) -> None:
    """Have pynetdicom write received C-STORE data sets into ``spool`` as they arrive.

    Process-wide, as pynetdicom's configuration is (a process serves one archive): whatever
    AE of the process receives a C-STORE, its handler must take the data set from the
    :class:`SpoolSink`; ``event.dataset`` would read the sealed file as ciphertext.
    """
    global _spool
    _spool = spool
    _config.STORE_RECV_CHUNKED_DATASET = True
    dimse_messages.NamedTemporaryFile = _received_dataset_file


def close_sinks(assoc: Association) -> None:
    """Remove what an association that ended left in the spool: an object cut off
    mid-transfer (or received but never handled) leaves a file no handler will take."""
    for sink in list(_open_sinks.pop(assoc, ())):
        sink.close()


class Receiver:
    """Stores the objects of C-STORE requests through ``service``, received into ``spool``."""

    def __init__(self, service: StoreService, spool: Spool) -> None:
        self.service = service
        self.spool = spool
        receive_into_spool(spool)

    def store(self, event: Event, who: Principal) -> Dataset | int:
        """C-STORE (PS3.4 B.2.3) by ``who``: store the object byte-exact through StoreService.

        Returns 0x0000 on success (also for an identical object stored again); otherwise the
        status the service reports: 0xA700 out of resources (storage unavailable), 0xA900 data
        set does not match SOP class (also that of the presentation context it came on), 0xC000
        cannot understand, 0x0111 a different object
        under the same SOP Instance UID, 0x0124 the caller may not store. The association
        carries on whatever one object's outcome.
        """
        # The PS3.10 file as received: a preamble and file meta (from the request and the
        # negotiated transfer syntax) followed by the data set bytes exactly as they came.
        sink = getattr(event.request, "_dataset_file", None)
        try:
            spooled = sink.take() if isinstance(sink, SpoolSink) else self._spool_whole(event)
        except InsufficientStorage as exc:  # below the free-disk floor: 0xA700
            log.warning("C-STORE from %s refused 0xA700: %s", peer_name(event.assoc), exc.reason)
            return status_ds(exc.dimse_status, exc.reason)
        except OSError as exc:
            log.error("C-STORE from %s: spool write failed: %s", peer_name(event.assoc), exc)
            return status_ds(0xA700, "out of resources: cannot spool the object")
        outcome = self.service.store(
            spooled,
            principal=who,
            expected_sop_class_uid=str(event.context.abstract_syntax),
        )
        # The request's UID is what the peer sent, which may be anything: logged only if valid.
        affected = UID(str(getattr(event.request, "AffectedSOPInstanceUID", None) or ""))
        sop = outcome.sop_instance_uid or (affected if affected.is_valid else "(invalid UID)")
        if outcome.error is None:
            log.info(
                "C-STORE %s from %s: %s%s",
                sop,
                peer_name(event.assoc),
                outcome.result.value if outcome.result else "stored",
                "".join(f", warning {w.reason}" for w in outcome.warnings),
            )
            if outcome.warnings:
                # PS3.4 B.2.3: stored, with a warning status (0xB000, 0xB006, 0xB007) and
                # what was odd in the Error Comment (64 characters kept: the first reason).
                status = warning_status(outcome.warnings)
                return status_ds(status, "; ".join(w.detail for w in outcome.warnings))
            return SUCCESS
        status = outcome.error.dimse_status
        log.warning(
            "C-STORE %s from %s refused 0x%04X: %s",
            sop,
            peer_name(event.assoc),
            status,
            outcome.error.reason,
        )
        return status_ds(status, outcome.error.reason)

    def _spool_whole(self, event: Event) -> SpooledFile:
        """Spool a data set pynetdicom kept in memory (an association not registered for
        chunked receipt, e.g. a handler bound to another AE)."""
        data = event.encoded_dataset(include_meta=True)
        writer = self.spool.writer()
        try:
            writer.write(data)
            return writer.finish()
        except OSError:
            writer.abort()
            raise
