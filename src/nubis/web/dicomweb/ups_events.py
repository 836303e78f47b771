"""The UPS-RS event channel (PS3.18 11, Open Event Channel): a WebSocket at
``/ws/subscribers/{aetitle}`` under the DICOMweb root, over which the event reports queued for
the AE's subscriptions are sent, one DICOM JSON object per text message, oldest first.

Thin: the handshake is authenticated by nubis.web.auth (credentials headers only), and
nubis.services.worklist_events authorizes, scopes and records. Reports are queued in the index
by the change they report, on whichever worker or node made it; the channel polls the queue
every :data:`POLL_SECONDS`, so a report reaches its subscriber within that (plus a query)
whatever worker it is connected to. A report is deleted once sent: a subscriber that
reconnects receives what was queued meanwhile. Messages from the client are read and ignored
(the standard defines none).
"""

from __future__ import annotations

import json

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from nubis.errors import NubisError
from nubis.security.policy import Principal
from nubis.web.dicomweb.common import archive_of

__all__ = ["POLL_SECONDS", "event_channel_routes"]

POLL_SECONDS = 0.5
# RFC 6455 7.4.1: 1008, the policy refuses; 1011, the server cannot go on.
_POLICY = 1008
_SERVER_ERROR = 1011


def event_channel_routes() -> list[WebSocketRoute]:
    return [WebSocketRoute("/ws/subscribers/{aetitle}", event_channel)]


async def event_channel(websocket: WebSocket) -> None:
    """Open Event Channel: accept, then send the AE's reports until the client leaves."""
    who = websocket.scope.get("nubis.principal")
    archive = archive_of(websocket)
    if not isinstance(who, Principal):
        await websocket.close(code=_POLICY)
        return
    try:
        ae_title = await run_in_threadpool(
            archive.worklist_events.open, who, str(websocket.path_params["aetitle"])
        )
    except NubisError as refused:
        await websocket.close(code=_POLICY, reason=refused.reason[:120])
        return
    await websocket.accept()
    async with anyio.create_task_group() as tasks:

        async def until_closed() -> None:
            try:
                while True:
                    await websocket.receive_text()
            except (WebSocketDisconnect, RuntimeError, KeyError):
                tasks.cancel_scope.cancel()

        tasks.start_soon(until_closed)
        try:
            await _send_reports(websocket, who, ae_title)
        except WebSocketDisconnect:
            pass
        except NubisError as stopped:  # e.g. the key was revoked: READ refused
            await websocket.close(code=_POLICY, reason=stopped.reason[:120])
        except Exception:
            await websocket.close(code=_SERVER_ERROR)
            raise
        tasks.cancel_scope.cancel()


async def _send_reports(websocket: WebSocket, who: Principal, ae_title: str) -> None:
    service = archive_of(websocket).worklist_events
    hidden: frozenset[int] = frozenset()
    while True:
        batch = await run_in_threadpool(service.next_batch, who, ae_title, hidden)
        for report in batch.reports:
            await websocket.send_text(json.dumps(report, separators=(",", ":")))
        await run_in_threadpool(service.sent, batch.ids)
        if not batch.ids and batch.hidden == hidden:
            await anyio.sleep(POLL_SECONDS)
        hidden = batch.hidden
