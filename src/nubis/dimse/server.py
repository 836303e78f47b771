"""The DIMSE front door: a pynetdicom AE serving the archive on the DICOM port (and TLS port).

Services offered as SCP (PS3.4): Verification (A), Storage (B) for every storage SOP class,
retired and private ones included (nubis.dimse.storage_classes), in every transfer syntax
pydicom knows, so objects are stored as they were sent; Query/Retrieve FIND, MOVE and GET
in the Patient Root and Study Root models (C); Storage Commitment Push Model (J). The storage
contexts also accept the SCU role, which C-GET needs to send objects back on the caller's
association (PS3.4 C.4.3, PS3.7 D.3.3.4).

``nubis serve`` runs a DimseServer in every HTTP worker process, on a shared port; DICOMweb and
DIMSE reach the same index and blob store through the same services. Associations run on
:mod:`nubis.dimse.reactor` (pynetdicom's, without its polling loops).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING, Any

from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import AE, _config
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from nubis.dimse.handlers import Handlers
from nubis.dimse.listener import SharedListener
from nubis.dimse.peers import AccessPolicy, PeerTable
from nubis.dimse.reactor import EventDrivenRequestHandler, RaceFreeAE
from nubis.dimse.storage_classes import OpenStorage

if TYPE_CHECKING:
    from nubis.archive import Archive

log = logging.getLogger("nubis.dimse")

# pynetdicom deep-copies presentation contexts (the acceptor's ~8,000 UIDs per association, which
# nubis.dimse.reactor no longer does; the requested ones of every association nubis opens), and
# UID.__new__ re-validates each with a regex (40 ms per acceptor). A UID is an immutable str, so
# its deep copy may be itself.
# UID (a str) has no __deepcopy__ of its own for the stubs to know: this adds one.
UID.__deepcopy__ = lambda self, memo: self  # type: ignore[attr-defined]

# A worker with N associations (set up or in use) waits N x SPREAD_DELAY (at most SPREAD_DELAY_MAX)
# before taking a new connection from the queue all workers share, so an idle worker takes it:
# four simultaneous associations then go 2 + 2 over two workers, not 3 + 1 or 4 + 0.
SPREAD_DELAY = 0.002
SPREAD_DELAY_MAX = 0.010

# Largest P-DATA PDU we receive. Big PDUs mean fewer Python-level PDU decodes per object; the
# sender still caps them at its own limit (PS3.8 D.1).
MAX_PDU = 1 << 20
QUERY_RETRIEVE = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
)
# pynetdicom's acceptor takes, per context, the first syntax of THIS list that the caller
# proposes (not the caller's first), so the order matters to callers that propose several in
# one context. Explicit VR Little Endian first: the form most files are stored in, kept
# byte-exact and streamed back by C-GET/C-MOVE without conversion; Implicit VR only after it.
_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
STORAGE_SYNTAXES = (
    _EXPLICIT_VR_LE,
    *(str(ts) for ts in AllTransferSyntaxes if str(ts) != _EXPLICIT_VR_LE),
)
COMMAND_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old devices)
)


def tls_context(cert: str, key: str = "", ca: str = "") -> ssl.SSLContext:
    """Server context for the Basic TLS Secure Transport profile (PS3.15 B.12).

    TLS 1.2 and 1.3 only (BCP 195 as PS3.15 B.12 requires); with ``ca`` the caller must present
    a certificate signed by it, which the peer table may bind to an AE title (peers.py).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key or None)
    if ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca)
    return ctx


def build_ae(ae_title: str, *, max_associations: int, response_seconds: int) -> AE:
    # RaceFreeAE: the C-MOVE sub-associations this AE opens send C-STORE after C-STORE.
    ae = RaceFreeAE(ae_title=ae_title)
    ae.maximum_associations = max_associations
    ae.maximum_pdu_size = MAX_PDU
    ae.acse_timeout = 30
    ae.dimse_timeout = response_seconds
    ae.network_timeout = 300
    # A C-MOVE destination that drops packets would otherwise hold the mover for the OS's TCP
    # timeout (about 2 minutes) before its 0xA702 "unreachable".
    ae.connection_timeout = 10
    # The Called AE Title is checked by Handlers.on_requested (dimse_accept_any_called_ae), which
    # logs why; callers are identified by their Calling AE Title and host.
    ae.require_called_aet = False
    ae.add_supported_context(Verification, COMMAND_SYNTAXES)
    OpenStorage(STORAGE_SYNTAXES, scu_role=True, scp_role=True).install(ae)
    for uid in QUERY_RETRIEVE:
        ae.add_supported_context(uid, COMMAND_SYNTAXES)
    ae.add_supported_context(StorageCommitmentPushModel, COMMAND_SYNTAXES)
    return ae


class DimseServer:
    """Start and stop the DIMSE listeners of an Archive (plain, and TLS when configured)."""

    def __init__(self, archive: Archive) -> None:
        s = archive.settings
        self.archive = archive
        self.settings = s
        self.peers = PeerTable(archive.index, s.dimse_peers_cache_seconds)
        self.policy = AccessPolicy(self.peers, s.dimse_unknown_callers)
        self.handlers = Handlers(archive, self.policy, s.ae_title)
        self.ae = build_ae(
            s.ae_title,
            max_associations=s.dimse_max_associations,
            response_seconds=s.dimse_response_seconds,
        )
        self._servers: list[ThreadedAssociationServer] = []
        self._listeners: list[SharedListener] = []
        self.addresses: list[str] = []

    def start(self) -> None:
        s = self.settings
        # pynetdicom's own per-message log handlers decode every identifier, and its service
        # classes log request identifiers: patient data, which no log line may carry
        # (nubis.logs caps pynetdicom's logger too). Our own log says what each operation did.
        _config.LOG_HANDLER_LEVEL = "none"
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.LOG_RESPONSE_IDENTIFIERS = False
        host = s.dimse_host or s.host
        handlers: list[Any] = self.handlers.bindings()
        try:
            if s.dimse_port:
                self._listen((host, s.dimse_port), handlers, None)
                self.addresses.append(f"dicom://{s.ae_title}@{host}:{s.dimse_port}")
            if s.dimse_tls_cert:
                if not s.dimse_tls_ca and any(p.binds_certificate for p in self.peers.all()):
                    log.warning(
                        "DIMSE peers bind client certificates but dimse_tls_ca is not set: "
                        "no certificate is asked for, so those peers are refused"
                    )
                ctx = tls_context(s.dimse_tls_cert, s.dimse_tls_key, s.dimse_tls_ca)
                self._listen((host, s.dimse_tls_port), handlers, ctx)
                self.addresses.append(f"dicom+tls://{s.ae_title}@{host}:{s.dimse_tls_port}")
        except BaseException:
            self.stop()
            raise
        for address in self.addresses:
            log.info("DIMSE listening at %s", address)

    def _listen(
        self, address: tuple[str, int], handlers: list[Any], ssl_context: ssl.SSLContext | None
    ) -> None:
        # One accept queue for all workers of this data folder (see listener.py).
        shared = SharedListener(self.settings.data_dir, *address)
        self._listeners.append(shared)
        server = self.ae.make_server(
            address,
            evt_handlers=handlers,
            ssl_context=ssl_context,
            server_class=_SharedPortServer,
            # Associations that block until there is work instead of polling (see reactor.py).
            request_handler=EventDrivenRequestHandler,
            listener=shared.socket,
            spread=self.settings.worker_count > 1,
        )
        # As AE.start_server does: AssociationServer.shutdown() takes itself off this list.
        self.ae._servers.append(server)
        thread = threading.Thread(
            target=server.serve_forever, name=f"nubis-dimse-{address[1]}", daemon=True
        )
        thread.start()
        self._servers.append(server)

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
        self._servers.clear()
        for shared in self._listeners:
            shared.close()
        self._listeners.clear()
        self.ae.shutdown()


class _SharedPortServer(ThreadedAssociationServer):
    """Every worker process serves the DICOM port, accepting from the listening socket the
    workers share (nubis.dimse.listener), so associations spread over the cores."""

    def __init__(
        self, *args: Any, listener: socket.socket, spread: bool = False, **kwargs: Any
    ) -> None:
        self._listener = listener
        # Several worker processes accept from this socket (see get_request).
        self.spread = spread
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        # Bound and listening already; socketserver's own new socket is not needed.
        if self.socket is not None:
            self.socket.close()
        self.socket = self._listener
        # Workers race for each connection: the losers must find accept() empty, not wait in
        # it (and miss a shutdown request) until the next connection arrives.
        self.socket.settimeout(0.0)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        """Listening already (SharedListener)."""

    def server_close(self) -> None:
        """Close our descriptor only: pynetdicom shuts the socket down, which would stop the
        listening socket for every worker that shares it. SharedListener closes it."""

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection; its TLS handshake happens on the association's first read, in
        the association's own thread. pynetdicom shakes hands here, in the accept loop, with no
        time limit: one peer that connects and says nothing stops every TLS association of the
        process. Reads are bounded by the network timeout, so a peer that stops mid-PDU
        ends its association instead of holding its thread forever."""
        if self.spread:
            # All workers were woken for this connection; one with associations of its own
            # lets the others try first (it loses nothing: the connection stays queued).
            busy = sum(
                1
                for a in self.ae.active_associations
                if not (a.is_released or a.is_aborted or a.is_rejected)  # set up or in use
            )
            if busy:
                time.sleep(min(SPREAD_DELAY * busy, SPREAD_DELAY_MAX))
        client, address = self._listener.accept()
        client.settimeout(self.ae.network_timeout)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Set the association up in the listening thread: the request handler only builds it
        and starts its thread, so socketserver's extra thread per connection (started and
        waited for, then ending at once) only delayed each association's first read."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def service_actions(self) -> None:
        """No forced collection: pynetdicom runs a full ``gc.collect()`` every 60 turns of the
        accept loop (after connections and 0.5 s timeouts alike), 40-80 ms with the GIL held that
        stalls every association of the process. Python's own collector still frees the
        cycles of ended associations; their sockets and pipes are closed when they end."""
