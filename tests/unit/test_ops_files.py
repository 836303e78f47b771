"""The shipped Prometheus alert rules and Grafana dashboard (docs/ops/, issue 15): loadable,
and every metric they use is one nubis exports (a renamed metric would silence an alert)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

OPS = Path(__file__).resolve().parents[2] / "docs" / "ops"
# What /metrics exposes (nubis.metrics, nubis.web.metrics) and Prometheus' own `up`.
EXPORTED = {
    "up",
    "nubis_http_requests_total",
    "nubis_http_request_duration_seconds_bucket",
    "nubis_dimse_operations_total",
    "nubis_ingest_objects_total",
    "nubis_ingest_bytes_total",
    "nubis_retrieve_bytes_total",
    "nubis_job_runs_total",
    "nubis_audit_append_failures_total",
    "nubis_index_up",
    "nubis_jobs",
    "nubis_storage_bytes",
    "nubis_audit_records",
    "nubis_replication_lag_seconds",
    "nubis_disk_free_bytes",
    "nubis_disk_size_bytes",
}
_METRIC = re.compile(r"\b(up|nubis_[a-z_]+)\b")


def test_alert_rules_have_prometheus_structure() -> None:
    rules = yaml.safe_load((OPS / "prometheus-alerts.yml").read_text())
    (group,) = rules["groups"]
    assert group["name"] and group["rules"]
    names = set()
    for rule in group["rules"]:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"]
        assert rule["labels"]["severity"] in ("page", "ticket")
        assert set(_METRIC.findall(rule["expr"])) <= EXPORTED, rule["alert"]
        names.add(rule["alert"])
    # What issue 15 asks to be paged for: store down, audit append failing, jobs, disk.
    assert {
        "NubisStoreDown",
        "NubisAuditAppendFailing",
        "NubisJobsFailing",
        "NubisDiskFilling",
    } <= names


def test_dashboard_queries_exported_metrics() -> None:
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    for expr in exprs:
        assert set(_METRIC.findall(expr)) <= EXPORTED, expr
