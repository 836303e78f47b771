"""The HTTP front door: DICOMweb under /dicom-web, WADO-URI at /wado, health, login at /-/,
the audit trail for auditors at /audit/, metrics at /metrics, FHIR ImagingStudy at /fhir/, the
web face for people at /ui/ (web/ui).

Every route but the health probes requires authentication (web/auth.py); routes pass the
caller to the services, which authorize (nubis.services.guard).

create_app() only wires routes to handlers; the Archive (composition root) is started and
stopped with the application's lifespan.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from nubis import __version__
from nubis.archive import Archive
from nubis.errors import NubisError
from nubis.model.query import Level
from nubis.web import auth, errors
from nubis.web.audit_routes import audit_routes
from nubis.web.changefeed_routes import changefeed_routes
from nubis.web.correction_routes import correction_routes
from nubis.web.cors import cors_middleware
from nubis.web.dicomweb import qido, research, stow, wado, wado_uri
from nubis.web.dicomweb.ups import ups_routes
from nubis.web.dicomweb.ups_events import event_channel_routes
from nubis.web.fhir import fhir_routes
from nubis.web.hold_routes import hold_routes
from nubis.web.metrics import HttpMetricsMiddleware, metrics_routes
from nubis.web.proxies import ForwardedHeadersMiddleware, TrustedProxies, parse_trusted_proxies
from nubis.web.quarantine_routes import quarantine_routes
from nubis.web.request_ids import RequestIdMiddleware
from nubis.web.research_routes import research_routes
from nubis.web.shred_routes import shred_routes
from nubis.web.slow_clients import STATE_KEY, ClientTimeouts
from nubis.web.ui import ui_routes
from nubis.web.ui.common import SignInRequired, sign_in_redirect
from nubis.web.ui.headers import SecurityHeadersMiddleware
from nubis.web.webhook_routes import webhook_routes

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"


def dicomweb_routes() -> list[BaseRoute]:
    """Every DICOMweb resource (PS3.18 Table 10.1-1 and its per-service tables, Table 11.1-1
    for UPS-RS)."""
    routes: list[BaseRoute] = [
        Route("/studies", stow.store_instances, methods=["POST"]),
        Route(_STUDY, stow.store_instances, methods=["POST"]),
        Route("/studies", qido.search(Level.STUDY), methods=["GET"]),
        Route("/series", qido.search(Level.SERIES), methods=["GET"]),
        Route("/instances", qido.search(Level.INSTANCE), methods=["GET"]),
        Route(_STUDY + "/series", qido.search(Level.SERIES), methods=["GET"]),
        Route(_STUDY + "/instances", qido.search(Level.INSTANCE), methods=["GET"]),
        Route(_SERIES + "/instances", qido.search(Level.INSTANCE), methods=["GET"]),
    ]
    for resource in (_STUDY, _SERIES, _INSTANCE):
        routes += [
            Route(resource, wado.retrieve_instances, methods=["GET"]),
            Route(resource, wado.delete_resource, methods=["DELETE"]),
            Route(resource + "/metadata", wado.retrieve_metadata, methods=["GET"]),
            Route(resource + "/thumbnail", wado.retrieve_thumbnail, methods=["GET"]),
        ]
    routes += [
        Route(_INSTANCE + "/rendered", wado.retrieve_rendered, methods=["GET"]),
        Route(_INSTANCE + "/frames/{frames}", wado.retrieve_frames, methods=["GET"]),
        Route(_INSTANCE + "/frames/{frames}/rendered", wado.retrieve_rendered, methods=["GET"]),
        Route(_INSTANCE + "/frames/{frames}/thumbnail", wado.retrieve_thumbnail, methods=["GET"]),
        Route(_INSTANCE + "/bulk/{path:path}", wado.retrieve_bulkdata, methods=["GET"]),
    ]
    # The Worklist Service (UPS-RS, PS3.18 11) and its event channel.
    return [*routes, *ups_routes(), *event_channel_routes()]


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


async def ready(request: Request) -> Response:
    archive: Archive = request.app.state.archive
    if not archive.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    try:
        await run_in_threadpool(archive.index.schema_version)
    except Exception:
        return JSONResponse({"status": "index unavailable"}, status_code=503)
    return JSONResponse({"status": "ready"})


async def _sign_in(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return sign_in_redirect(exc.next_path)


def app_from_environment() -> Starlette:
    """Application factory for uvicorn worker processes: settings come from NUBIS_* variables,
    which ``nubis serve`` sets from everything it resolved."""
    from nubis.config import load_settings
    from nubis.logs import configure_logging
    from nubis.web import fair_accept

    settings = load_settings()
    # Before uvicorn starts serving in this worker: connections go to the least busy worker.
    fair_accept.install()
    # A worker process starts with uvicorn's loggers only: without this, nubis's own log lines
    # below WARNING would be lost, and the limits on third-party loggers would not hold.
    configure_logging(settings.log_level, settings.log_format)
    return create_app(Archive(settings), prepare=False, dimse=True)


def create_app(
    archive: Archive, *, manage_lifespan: bool = True, prepare: bool = True, dimse: bool = False
) -> Starlette:
    """The ASGI application; ``prepare`` runs the archive's one-time start-up work first (off
    in worker processes, whose parent did it); ``dimse`` also serves the DICOM port(s) from
    this process (every worker shares them)."""
    from nubis.dimse.server import DimseServer

    dimse_server = DimseServer(archive) if dimse and archive.dimse_enabled else None

    timeouts = ClientTimeouts(
        header_seconds=archive.settings.http_header_timeout_seconds,
        body_seconds=archive.settings.http_body_timeout_seconds,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if manage_lifespan:
            if prepare:
                await run_in_threadpool(archive.prepare)
            await run_in_threadpool(archive.start)
        if dimse_server is not None:
            await run_in_threadpool(dimse_server.start)
        try:
            # Lifespan state reaches uvicorn's per-connection protocol (web/slow_clients.py).
            yield {STATE_KEY: timeouts}
        finally:
            if dimse_server is not None:
                await run_in_threadpool(dimse_server.stop)
            if manage_lifespan:
                await run_in_threadpool(archive.stop)

    app = Starlette(
        routes=[
            Mount("/dicom-web", routes=dicomweb_routes()),
            Mount(research.PREFIX, routes=research.research_routes()),
            Mount(research.SHARE_PREFIX, routes=research.research_routes()),
            Route("/wado", wado_uri.wado_uri, methods=["GET"]),
            Route("/-/health", health, methods=["GET"]),
            Route("/-/ready", ready, methods=["GET"]),
            Route("/-/login", auth.login, methods=["POST"]),
            Route("/-/whoami", auth.whoami, methods=["GET"]),
            *audit_routes(),
            *changefeed_routes(),
            *correction_routes(),
            *hold_routes(),
            *quarantine_routes(),
            *metrics_routes(),
            *fhir_routes(),
            *shred_routes(),
            *research_routes(),
            *webhook_routes(),
            *ui_routes(),
        ],
        middleware=[
            # Outermost: every log line and audit record of the request names its id.
            Middleware(RequestIdMiddleware),
            # Before authentication, so refusals are counted too.
            Middleware(HttpMetricsMiddleware),
            # Everything below sees the caller's address as the setting allows.
            Middleware(
                ForwardedHeadersMiddleware,
                trusted=TrustedProxies(parse_trusted_proxies(archive.settings.trusted_proxies)),
            ),
            Middleware(SecurityHeadersMiddleware),
            # Preflights are answered here, before authentication (web/cors.py).
            *cors_middleware(archive.settings.cors_origins),
            # Nothing below runs for a caller who has not authenticated (the web face's pages
            # run, and send the browser to sign in).
            Middleware(auth.AuthMiddleware, archive=archive),
        ],
        exception_handlers={
            SignInRequired: _sign_in,
            NubisError: errors.nubis_error,
            HTTPException: errors.http_error,
            Exception: errors.unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.archive = archive
    return app
