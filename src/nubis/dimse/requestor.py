"""Event-driven requested associations: pynetdicom's SCU side without its 1 ms polling.

An association nubis requests runs pynetdicom's two polling threads for as long as it is
open: the DUL thread sleeps 1 ms between looks at its socket and queues, the association
thread 1 ms between looks at its message queue. A migration keeps one association per worker
open for the whole run (and one more for the study listing), so on two cores its idle
associations woke 2,000 times a second each, taking the GIL from the threads storing what
the source sends (issue 12). Here they block instead, as the server's acceptors do
(:mod:`nubis.dimse.reactor`): same state machine, services and events, pynetdicom's own.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from pynetdicom.association import Association

from nubis.dimse.reactor import (
    EventDrivenAssociation,
    EventDrivenDUL,
    FastDIMSE,
    FastSocket,
    RaceFreeAE,
    _RequestQueue,
    _SignallingEvent,
)

if TYPE_CHECKING:
    from pynetdicom.transport import AddressInformation, AssociationSocket

__all__ = ["EventDrivenAE"]


class EventDrivenAE(RaceFreeAE):
    """An AE whose ``associate`` makes :class:`~nubis.dimse.reactor.EventDrivenAssociation`
    requestors (the race-free pause and streamed C-STORE of :class:`RaceFreeAE` included).

    ``AE.associate`` makes a plain ``Association``, hands it to ``_create_socket`` and only
    then negotiates and starts it: its class and its DUL, DIMSE provider and reactor
    checkpoint are replaced there, as ``EventDrivenAssociation.__init__`` makes them for an
    acceptor. Its ACSE stays the plain one (what a requestor proposes is its own list)."""

    def _create_socket(
        self, assoc: Association, address: AddressInformation, tls_args: Any
    ) -> AssociationSocket:
        _make_event_driven(assoc)
        sock = FastSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


def _make_event_driven(assoc: Association) -> None:
    paused = bool(assoc.__dict__.pop("_is_paused", False))
    assoc.__dict__.pop("_kill", None)  # now EventDrivenAssociation's property
    assoc.__class__ = EventDrivenAssociation
    driven: Any = assoc
    driven._nubis_wake = threading.Event()
    driven._killed = False
    driven._init_pause()
    driven._paused = paused
    driven.dul = EventDrivenDUL(assoc, driven._nubis_wake.set)
    # The timeout setters push their values into the DUL's timers: apply them to the new one.
    driven.acse_timeout = driven.acse_timeout
    driven.network_timeout = driven.network_timeout
    driven.dimse = FastDIMSE(assoc)
    driven.dimse.msg_queue = _RequestQueue(driven._nubis_wake.set, driven.dimse.cancel_req)
    driven._reactor_checkpoint = _SignallingEvent(driven._nubis_wake.set)
    driven._reactor_checkpoint.set()
