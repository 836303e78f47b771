"""Associations nubis requests (nubis.dimse.requestor) block while idle instead of polling:
a migration keeps them open for its whole run, beside the threads storing what comes in."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from nubis.dimse.reactor import EventDrivenAssociation, EventDrivenRequestHandler, RaceFreeAE
from nubis.dimse.requestor import EventDrivenAE

_IDLE_SECONDS = 0.5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _verification_scp() -> Iterator[int]:
    """An event-driven Verification SCP (as nubis runs them) on a free port."""
    scp = AE(ae_title="SCP")
    scp.add_supported_context(Verification)
    port = _free_port()
    server = scp.make_server(("127.0.0.1", port), request_handler=EventDrivenRequestHandler)
    scp._servers.append(server)  # as start_server does: its shutdown takes it off the list
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        thread.join(5)


def _idle_cpu(requestor: type[AE]) -> float:
    """CPU seconds this process spends while four associations ``requestor`` made with an
    event-driven acceptor sit idle; each is checked usable (C-ECHO, PS3.7 9.1.5) first."""
    with _verification_scp() as port:
        return _idle_cpu_of(requestor, port)


def _idle_cpu_of(requestor: type[AE], port: int) -> float:
    scu = requestor(ae_title="SCU")
    scu.add_requested_context(Verification)
    assocs = [scu.associate("127.0.0.1", port, ae_title="SCP") for _ in range(4)]
    try:
        for assoc in assocs:
            assert assoc.is_established
            status = assoc.send_c_echo()
            assert status is not None and status.Status == 0x0000
        time.sleep(0.2)  # the start-up work settles
        before = time.process_time()
        time.sleep(_IDLE_SECONDS)
        return time.process_time() - before
    finally:
        for assoc in assocs:
            assoc.release()
            assert assoc.is_released


@pytest.mark.parametrize("requestor", [RaceFreeAE, EventDrivenAE])
def test_idle_requested_associations(requestor: type[AE]) -> None:
    used = _idle_cpu(requestor)
    if requestor is EventDrivenAE:
        # A wake-up every TICK (0.1 s) per thread: ~0.005 s here, the sleeping test included.
        assert used < 0.02, f"4 idle event-driven associations used {used:.3f} s CPU"
    else:
        # pynetdicom's two threads per association wake every millisecond: 0.05 to 0.06 s
        # here (load average 11 on two cores), what the event-driven requestor saves.
        assert used > 0.02, f"4 idle polling associations used only {used:.3f} s CPU"


def test_requested_association_is_event_driven() -> None:
    scu = EventDrivenAE(ae_title="SCU")
    scu.add_requested_context(Verification)
    with _verification_scp() as port:
        assoc = scu.associate("127.0.0.1", port, ae_title="SCP")
        assert isinstance(assoc, EventDrivenAssociation) and assoc.is_established
        assoc.release()
        assert assoc.is_released
