"""The archive's counters and histograms (Prometheus), which every layer may increment.

A leaf like nubis.logs: services, the DIMSE door, the audit trail and the job runner count
here without importing the web door, which exposes them at ``/metrics`` (nubis.web.metrics,
with the gauges read from the index at scrape time).

No label value is ever a UID, a patient's attribute, a user or a raw path: labels are route
templates, DICOM operation names, status classes, job kinds and front doors, sets fixed by
the code, so a label cannot carry patient data and the number of series stays bounded.

Several worker processes (``nubis serve`` with ``workers`` > 1): ``nubis serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers start, so every worker's
values go to files there and whichever worker answers ``/metrics`` adds them all up
(prometheus-client's multiprocess mode; docs/metrics.md).
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Histogram

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds; HTTP requests range from a cached key's QIDO-RS (ms) to a study's download (minutes).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

http_requests = Counter(
    "nubis_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
http_duration = Histogram(
    "nubis_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
dimse_operations = Counter(
    "nubis_dimse_operations",
    "DIMSE operations answered (final responses), by operation, status class and status code.",
    ["operation", "outcome", "status"],
)
ingest_objects = Counter(
    "nubis_ingest_objects",
    "Objects offered for storage, by front door and result (stored, same, refused, failed).",
    ["via", "result"],
)
ingest_bytes = Counter(
    "nubis_ingest_bytes",
    "Bytes of the objects stored (as received), by front door.",
    ["via"],
)
retrieve_bytes = Counter(
    "nubis_retrieve_bytes",
    "Bytes of stored objects sent to clients: whole objects (WADO, C-MOVE, C-GET, ZIP) and frames.",
    ["what"],
)
job_runs = Counter(
    "nubis_job_runs",
    "Job attempts ended on this node, by kind and outcome (done, retried, failed, cancelled).",
    ["kind", "outcome"],
)
audit_append_failures = Counter(
    "nubis_audit_append_failures",
    "Audit records that could not be appended (the access they stand for was refused, or a "
    "read's record waits to be retried).",
)


def multiprocess_dir() -> str | None:
    """The folder of the worker processes' values, when they share one (see the module docs)."""
    return os.environ.get(MULTIPROCESS_ENV) or None


def dimse_outcome(status: int) -> str:
    """The class of a DIMSE status (PS3.7 C): success, warning, cancel or failure."""
    if status == 0x0000:
        return "success"
    if status == 0xFE00:
        return "cancel"
    if 0xB000 <= status <= 0xBFFF or status in (0x0001, 0x0107, 0x0116):
        return "warning"
    return "failure"


__all__ = [
    "LATENCY_BUCKETS",
    "MULTIPROCESS_ENV",
    "audit_append_failures",
    "dimse_operations",
    "dimse_outcome",
    "http_duration",
    "http_requests",
    "ingest_bytes",
    "ingest_objects",
    "job_runs",
    "multiprocess_dir",
    "retrieve_bytes",
]
