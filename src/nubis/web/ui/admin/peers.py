"""The DIMSE peer table: ``/ui/admin/peers`` (list, add or replace, remove).

The same table ``nubis dimse peers`` edits (nubis.dimse.peers, in the index: every node sees a
change within ``dimse_peers_cache_seconds``), through nubis.services.operations: admins of the
home tenant only (the table admits callers into any tenant), each change recorded as a
Security Alert (Security Configuration) naming the peer. The AE title to remove is a form
field, not a path segment: AE titles may hold spaces and slashes.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nubis.dimse.peers import Peer, PeerError
from nubis.errors import BadRequest
from nubis.web.ui.admin.common import admin_page, call, checked, redirect
from nubis.web.ui.common import archive_of, field, signed_in, ui_form

_EMPTY = {"ae_title": "", "host": "", "port": "", "store": True, "query": True, "retrieve": True,
          "tls_subject": "", "tls_fingerprint": ""}  # fmt: skip


async def _page(
    request: Request,
    *,
    error: str | None = None,
    entered: dict[str, object] | None = None,
    status_code: int = 200,
) -> Response:
    principal = signed_in(request)
    archive = archive_of(request)
    peers = await call(archive.operations.peers, principal)
    params = request.query_params
    notice = None
    ae = params.get("ae", "")
    if ae and len(ae) <= 16 and ae.isprintable():
        notice = {"saved": f"{ae} saved.", "removed": f"{ae} removed."}.get(params.get("done", ""))
    return admin_page(
        request,
        "admin/peers.html",
        {
            "peers": peers,
            "entered": entered or _EMPTY,
            "notice": notice,
            "error": error,
            "unknown_callers": archive.settings.dimse_unknown_callers,
            "cache_seconds": archive.settings.dimse_peers_cache_seconds,
        },
        section="peers",
        status_code=status_code,
    )


async def list_peers(request: Request) -> Response:
    return await _page(request)


async def put_peer(request: Request) -> Response:
    principal = signed_in(request)
    form = await ui_form(request)
    await call(archive_of(request).operations.authorize, principal, "set a DIMSE peer")
    entered: dict[str, object] = {
        "ae_title": field(form, "ae_title", max_length=64, required=False),
        "host": field(form, "host", max_length=255, required=False),
        "port": field(form, "port", max_length=5, required=False),
        "store": checked(form, "store"),
        "query": checked(form, "query"),
        "retrieve": checked(form, "retrieve"),
        "tls_subject": field(form, "tls_subject", max_length=1024, required=False),
        "tls_fingerprint": field(form, "tls_fingerprint", max_length=128, required=False),
    }
    try:
        port_text = str(entered["port"])
        if port_text and not port_text.isdigit():
            raise BadRequest("port is a number, 0-65535")
        try:
            peer = Peer(
                str(entered["ae_title"]),
                str(entered["host"]),
                int(port_text or 0),
                bool(entered["store"]),
                bool(entered["query"]),
                bool(entered["retrieve"]),
                str(entered["tls_subject"]),
                str(entered["tls_fingerprint"]),
            )
        except PeerError as exc:
            raise BadRequest(str(exc)) from None
        await call(archive_of(request).operations.put_peer, principal, peer)
    except BadRequest as exc:
        return await _page(request, error=exc.reason, entered=entered, status_code=400)
    return redirect(f"/ui/admin/peers?done=saved&ae={_quote(peer.ae_title)}")


async def remove_peer(request: Request) -> Response:
    principal = signed_in(request)
    form = await ui_form(request)
    await call(archive_of(request).operations.authorize, principal, "remove a DIMSE peer")
    ae_title = field(form, "ae_title", max_length=64)
    await call(archive_of(request).operations.remove_peer, principal, ae_title)
    return redirect(f"/ui/admin/peers?done=removed&ae={_quote(ae_title)}")


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def routes() -> list[Route]:
    return [
        Route("/ui/admin/peers", list_peers, methods=["GET"]),
        Route("/ui/admin/peers", put_peer, methods=["POST"]),
        Route("/ui/admin/peers/remove", remove_peer, methods=["POST"]),
    ]


__all__ = ["routes"]
