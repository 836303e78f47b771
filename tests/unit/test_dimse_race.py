"""nubis's own associations (scu.py, C-MOVE sub-associations, storage commitment reports)
pause their reactor without pynetdicom's race: a request sent while the reactor is between its
checkpoint and its next look at the message queue (PS3.7 9.3: the reply is the sender's, by
Message ID Being Responded To) must not have its reply taken by the reactor."""

from __future__ import annotations

import threading

from pynetdicom import AE, evt
from pynetdicom._globals import MODE_REQUESTOR
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from nubis.dimse import scu
from nubis.dimse.reactor import RaceFreeAE, RaceFreePause, RaceFreeRequestor
from nubis.dimse.server import build_ae


def _leave_pause(assoc: Association) -> threading.Thread:
    """The reactor's step after its checkpoint (``_is_paused = False``), in its own thread."""
    thread = threading.Thread(target=setattr, args=(assoc, "_is_paused", False), daemon=True)
    thread.start()
    thread.join(0.2)
    return thread


def test_reactor_stays_paused_while_a_sender_holds_the_association() -> None:
    # pynetdicom's own: the reactor leaves its pause although a sender has just asked for it,
    # so the sender's `while not _is_paused` may have read the stale True and gone ahead.
    stock = Association(AE(), MODE_REQUESTOR)
    stock._is_paused = True
    stock._reactor_checkpoint.clear()
    assert not _leave_pause(stock).is_alive() and stock._is_paused is False

    fixed = RaceFreeRequestor(AE(), MODE_REQUESTOR)
    fixed._is_paused = True
    fixed._reactor_checkpoint.clear()  # a sender wants the association
    reactor = _leave_pause(fixed)
    assert reactor.is_alive() and fixed._is_paused is True  # held until the sender is done
    fixed._reactor_checkpoint.set()
    reactor.join(2)
    assert not reactor.is_alive() and fixed._is_paused is False


def test_nubis_associations_are_race_free() -> None:
    """scu.py's AE and the server's AE (which pynetdicom's Move SCP uses for the C-MOVE
    sub-associations) make race-free associations, and they still work (C-ECHO, PS3.7 9.1.5)."""
    assert isinstance(build_ae("NUBIS", max_associations=1, response_seconds=60), RaceFreeAE)
    remote = scu.Remote("127.0.0.1", 0, "ECHOSCP", "NUBIS")
    assert isinstance(scu._ae(remote), RaceFreeAE)

    classes: list[type] = []
    scp = AE(ae_title="ECHOSCP")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        port = server.server_address[1]
        ae = RaceFreeAE(ae_title="NUBIS")
        ae.add_requested_context(Verification)
        handlers = [(evt.EVT_CONN_OPEN, lambda event: classes.append(type(event.assoc)))]
        assoc = ae.associate("127.0.0.1", port, ae_title="ECHOSCP", evt_handlers=handlers)
        try:
            assert assoc.is_established and isinstance(assoc, RaceFreePause)
            for _ in range(20):
                assert int(assoc.send_c_echo().Status) == 0x0000
        finally:
            assoc.release()
        assert scu.echo(scu.Remote("127.0.0.1", port, "ECHOSCP", "NUBIS")) == 0x0000
    finally:
        server.shutdown()
    assert classes and all(issubclass(c, RaceFreePause) for c in classes)
