"""``GET /metrics`` in the Prometheus text format, and the count of every HTTP request.

The counters and histograms are nubis.metrics' (incremented by the services, the DIMSE door,
the audit trail and the job runner, and by :class:`HttpMetricsMiddleware` here). The archive's
state (jobs, storage per tier, audit chain length, replication lag, free disk) is read from the
index at each scrape by :class:`ArchiveCollector`, through nubis.services.gauges, which
authorizes the caller (Action.MONITOR: the monitor role, the home tenant's admins).

Requests are labelled by their route's template (``/dicom-web/studies/{study}/metadata``),
never their path: no UID, share token or patient data becomes a label value, and the number of
series stays bounded. A request that matched no route is ``<unmatched>``; one answered before
routing (refused by authentication, a CORS preflight) is ``<unrouted>``.

With several worker processes the values of all of them are added up at each scrape
(nubis.metrics; docs/metrics.md): whichever worker answers, the figures are the server's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nubis import metrics
from nubis.archive import Archive
from nubis.security.policy import Principal
from nubis.services.gauges import Reading
from nubis.web.dicomweb.common import principal_of

# The text format every Prometheus server reads (prometheus-client's newest is 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "<unmatched>"
UNROUTED = "<unrouted>"


def route_template(scope: Scope) -> str:
    """The template of the route that answered (see the module docs)."""
    route = scope.get("route")
    if route is None:
        return UNMATCHED if "router" in scope else UNROUTED
    # A mount's routes see root_path grow by the mount's path (no mount here has parameters).
    root = scope.get("root_path", "")
    prefix = root[len(scope.get("app_root_path", root)) :]
    if isinstance(route, Mount):
        return f"{prefix}{route.path}/{{path}}"
    if isinstance(route, Route):
        return prefix + route.path
    return UNMATCHED


class HttpMetricsMiddleware:
    """Count each HTTP request by method, route template and status, and time it to the end
    of its response (outside authentication: refusals are counted too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the application fails before a response

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            route = route_template(scope)
            metrics.http_requests.labels(method, route, str(status)).inc()
            metrics.http_duration.labels(method, route).observe(time.perf_counter() - started)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class ArchiveCollector(Collector):
    """The gauges of one reading of nubis.services.gauges, for one scrape."""

    def __init__(self, reading: Reading | None) -> None:
        self.reading = reading

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("nubis_index_up", "1 when the index answered this scrape.")
        up.add_metric([], 0 if self.reading is None else 1)
        yield up
        reading = self.reading
        if reading is None:
            return
        jobs = GaugeMetricFamily(
            "nubis_jobs", "Jobs in the index by kind and state.", labels=["kind", "state"]
        )
        for (kind, state), count in sorted(reading.jobs.items()):
            jobs.add_metric([kind, state], count)
        yield jobs
        objects = GaugeMetricFamily(
            "nubis_storage_objects", "Stored objects by storage tier.", labels=["tier"]
        )
        size = GaugeMetricFamily(
            "nubis_storage_bytes", "Bytes of the stored objects by storage tier.", labels=["tier"]
        )
        for tier, (count, total) in sorted(reading.storage.items()):
            objects.add_metric([tier], count)
            size.add_metric([tier], total)
        yield objects
        yield size
        yield GaugeMetricFamily(
            "nubis_storage_count_age_seconds",
            "Age of the storage figures (counted again every few minutes).",
            value=reading.storage_age_seconds,
        )
        yield GaugeMetricFamily(
            "nubis_audit_records", "Records in the audit chain.", value=reading.audit_records
        )
        if reading.replication_lag_seconds is not None:
            yield GaugeMetricFamily(
                "nubis_replication_lag_seconds",
                "Age of the oldest change due at the replica and not yet confirmed.",
                value=reading.replication_lag_seconds,
            )
            yield GaugeMetricFamily(
                "nubis_replication_backlog",
                "Changes due at the replica and not yet confirmed.",
                value=reading.replication_backlog or 0,
            )
            yield GaugeMetricFamily(
                "nubis_replication_parked",
                "Changes the replica refused too often, waiting for `nubis replication retry`.",
                value=reading.replication_parked or 0,
            )
        free = GaugeMetricFamily(
            "nubis_disk_free_bytes",
            "Free bytes (for unprivileged users) of the file system of each local folder.",
            labels=["folder"],
        )
        size_of = GaugeMetricFamily(
            "nubis_disk_size_bytes",
            "Size of the file system of each local folder.",
            labels=["folder"],
        )
        for role, disk in sorted(reading.disks.items()):
            free.add_metric([role], disk.free_bytes)
            size_of.add_metric([role], disk.total_bytes)
        yield free
        yield size_of


def exposition(archive: Archive, who: Principal) -> bytes:
    """The whole text a scrape answers: this server's counters, then the archive's gauges.
    Forbidden (recorded) for a caller who may not read metrics."""
    reading = archive.gauges.read(who)
    folder = metrics.multiprocess_dir()
    if folder is None:
        counters = generate_latest(REGISTRY)
    else:
        workers = CollectorRegistry()
        MultiProcessCollector(workers, path=folder)
        counters = generate_latest(workers)
    gauges = CollectorRegistry()
    gauges.register(ArchiveCollector(reading))
    return counters + generate_latest(gauges)


async def scrape(request: Request) -> Response:
    """``GET /metrics`` (see the module docs)."""
    archive: Archive = request.app.state.archive
    body = await run_in_threadpool(exposition, archive, principal_of(request))
    return Response(body, media_type=CONTENT_TYPE, headers={"cache-control": "no-store"})


def metrics_routes() -> list[Route]:
    return [Route("/metrics", scrape, methods=["GET"])]


__all__ = [
    "UNMATCHED",
    "UNROUTED",
    "ArchiveCollector",
    "HttpMetricsMiddleware",
    "exposition",
    "metrics_routes",
    "route_template",
]
