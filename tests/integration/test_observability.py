"""/metrics, request ids and JSON logs (issue 15), in-process over the real services.

The exposition is read with prometheus-client's own parser; every label value is checked to
hold no UID, patient ID or name. Request ids: returned as X-Request-ID, taken from the client
when it is a safe token, written into the audit record of the request and into each log line.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom.dimse_messages import C_ECHO_RSP, C_FIND_RSP
from starlette.testclient import TestClient

from integration import in_process_archive
from nubis import metrics
from nubis.archive import Archive
from nubis.dimse.handlers import _count_response
from nubis.jobs.context import JobContext, JobFailed
from nubis.jobs.runner import JobRunner
from nubis.logs import JsonFormatter, TextFormatter, request_id
from nubis.tools import synth
from nubis.web.app import create_app

ADMIN = "metrics-test-admin-token-0123456789abcdef"
PATIENT_ID = "P-METRICS-7"
PATIENT_NAME = "Secretname^Metrics"
UID_LIKE = re.compile(r"\d+(\.\d+){3,}")


class World:
    def __init__(self, client: TestClient, archive: Archive, keys: dict[str, str]) -> None:
        self.client = client
        self.archive = archive
        self.keys = keys
        self.study = ""
        self.series = ""
        self.instance = ""

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("observability")
    archive = in_process_archive(tmp / "data", ADMIN)
    with TestClient(create_app(archive)) as client:
        keys = {"admin": ADMIN}
        for role in ("monitor", "referrer"):
            archive.users.add_user(role, tenant="default", roles=role)
            keys[role] = archive.users.create_api_key(role)[1]
        archive.users.add_user("other-admin", tenant="other", roles="admin")
        keys["other-admin"] = archive.users.create_api_key("other-admin")[1]
        world = World(client, archive, keys)
        path = synth.make_multiframe(
            tmp / "obj.dcm",
            frames=2,
            rows=16,
            columns=16,
            seed=5,
            patient=synth.PatientSpec(PATIENT_ID, PATIENT_NAME, "19700101", "F"),
        )
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        world.study, world.series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        world.instance = str(ds.SOPInstanceUID)
        _stow(client, world.auth("admin"), path)
        yield world


def _stow(client: TestClient, headers: dict[str, str], path: Path) -> None:
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n--b--\r\n"
    response = client.post(
        "/dicom-web/studies",
        content=body,
        headers={
            **headers,
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
        },
    )
    assert response.status_code == 200, response.text


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _value(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(v for have, v in samples.get(name, []) if labels.items() <= have.items())


def test_metrics_require_the_monitor_action(world: World) -> None:
    assert world.client.get("/metrics").status_code == 401
    # Only the metrics' readers: a referrer reads studies, an admin of another tenant runs
    # its tenant, not the archive whose every tenant the figures count.
    assert world.client.get("/metrics", headers=world.auth("referrer")).status_code == 403
    assert world.client.get("/metrics", headers=world.auth("other-admin")).status_code == 403
    for who in ("monitor", "admin"):
        response = world.client.get("/metrics", headers=world.auth(who))
        assert response.status_code == 200, who
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_metrics_report_requests_ingest_retrieval_and_the_archive(world: World) -> None:
    client, admin = world.client, world.auth("admin")
    url = f"/dicom-web/studies/{world.study}"
    assert client.get(f"{url}/metadata", headers=admin).status_code == 200
    whole = client.get(
        url, headers={**admin, "Accept": 'multipart/related; type="application/dicom"'}
    )
    assert whole.status_code == 200
    assert client.get("/dicom-web/studies/1.2.3.999/metadata", headers=admin).status_code == 404
    assert client.get(f"{url}/metadata").status_code == 401  # refused before routing
    text = client.get("/metrics", headers=world.auth("monitor")).text
    samples = _samples(text)

    metadata = "/dicom-web/studies/{study}/metadata"
    assert _value(samples, "nubis_http_requests_total", route=metadata, status="200") >= 1
    assert _value(samples, "nubis_http_requests_total", route=metadata, status="404") >= 1
    assert _value(samples, "nubis_http_request_duration_seconds_count", route=metadata) >= 2
    assert _value(samples, "nubis_http_requests_total", route="<unrouted>", status="401") >= 1
    assert _value(samples, "nubis_ingest_objects_total", via="dicomweb", result="stored") >= 1
    assert _value(samples, "nubis_ingest_bytes_total", via="dicomweb") > 0
    assert _value(samples, "nubis_retrieve_bytes_total", what="instances") >= len(whole.content) / 2
    assert _value(samples, "nubis_index_up") == 1
    assert _value(samples, "nubis_storage_objects", tier="hot") >= 1
    assert _value(samples, "nubis_audit_records") >= 3
    assert "nubis_disk_free_bytes" in samples
    assert "nubis_jobs" in text  # the family is always there, even with no job queued
    assert "nubis_replication_lag_seconds" not in samples  # no replica configured

    for name, labelled in samples.items():
        for labels, _ in labelled:
            for value in labels.values():
                assert not UID_LIKE.search(value), (name, labels)
                for secret in (world.study, PATIENT_ID, "Secretname"):
                    assert secret not in value, (name, labels)


def test_dimse_final_responses_are_counted_by_operation_and_status() -> None:
    """PS3.7 C: 0x0000 success, 0xFF00 pending (a C-FIND match, not an operation), 0xA700
    failure."""
    before = metrics.dimse_operations.labels("C-ECHO", "success", "0x0000")._value.get()
    echo = C_ECHO_RSP()
    echo.command_set.Status = 0x0000
    _count_response("C_ECHO_RSP", echo)
    assert metrics.dimse_operations.labels("C-ECHO", "success", "0x0000")._value.get() == before + 1
    pending = C_FIND_RSP()
    pending.command_set.Status = 0xFF00
    failed_before = metrics.dimse_operations.labels("C-FIND", "failure", "0xA700")._value.get()
    _count_response("C_FIND_RSP", pending)
    assert metrics.dimse_operations.labels("C-FIND", "pending", "0xFF00")._value.get() == 0
    pending.command_set.Status = 0xA700
    _count_response("C_FIND_RSP", pending)
    assert (
        metrics.dimse_operations.labels("C-FIND", "failure", "0xA700")._value.get()
        == failed_before + 1
    )


def _audit_of(archive: Archive, request_id: str) -> list[dict[str, object]]:
    archive.audit.flush_reads()
    return [
        record.event_dict
        for record in archive.audit.scan(0, limit=100000)
        if record.event_dict.get("request_id") == request_id
    ]


def test_request_id_is_returned_and_recorded(world: World) -> None:
    client, admin = world.client, world.auth("admin")
    mine = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    response = client.get(
        "/dicom-web/studies",
        params={"PatientID": PATIENT_ID},
        headers={**admin, "X-Request-ID": mine},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == mine
    records = _audit_of(world.archive, mine)
    assert len(records) == 1 and records[0]["event_id"]["code"] == "110112"  # Query

    # Free text could carry a patient's name into the log and the audit trail: replaced.
    response = client.get("/dicom-web/studies", headers={**admin, "X-Request-ID": PATIENT_NAME})
    given = response.headers["x-request-id"]
    assert given != PATIENT_NAME and re.fullmatch(r"[0-9a-f]{16}", given)
    assert len(_audit_of(world.archive, given)) == 1
    # Every answer has one, refusals too.
    assert re.fullmatch(r"[0-9a-f]{16}", client.get("/metrics").headers["x-request-id"])


def test_json_log_lines_carry_the_request_id_and_no_patient_data(world: World) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.INFO)
    mine = "aaaabbbbccccdddd1111"
    try:
        # Break-glass access is logged at WARNING by the services (nubis.services.guard).
        response = world.client.get(
            f"/dicom-web/studies/{world.study}/metadata",
            headers={
                **world.auth("referrer"),
                "X-Request-ID": mine,
                "X-Nubis-Break-Glass": "emergency in the ward",
            },
        )
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert response.status_code == 200
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines, "the break-glass access logged nothing"
    ours = [line for line in lines if line["logger"].startswith("nubis")]
    assert ours and all(line["request_id"] == mine for line in ours), ours
    assert {"time", "level", "logger", "message"} <= set(ours[0])
    text = stream.getvalue()
    assert PATIENT_ID not in text and "Secretname" not in text


def test_jobs_are_reported_by_kind_and_state(world: World) -> None:
    """A job failing for good counts in nubis_job_runs_total and shows as failed in nubis_jobs;
    a job no runner handles stays queued."""

    def fail(ctx: JobContext) -> None:
        raise JobFailed("the metrics test's job fails", retry_in=None)

    store = world.archive.jobs
    runner = JobRunner(store, {"metrics-fail": fail}, owner="metrics-test")
    store.enqueue("metrics-fail")
    store.enqueue("metrics-idle")
    assert runner.run_once()
    samples = _samples(world.client.get("/metrics", headers=world.auth("monitor")).text)
    assert _value(samples, "nubis_jobs", kind="metrics-fail", state="failed") == 1
    assert _value(samples, "nubis_jobs", kind="metrics-idle", state="queued") == 1
    assert _value(samples, "nubis_job_runs_total", kind="metrics-fail", outcome="failed") == 1


def test_text_log_lines_name_the_request() -> None:
    record = logging.LogRecord("nubis.test", logging.INFO, __file__, 1, "stored", None, None)
    formatter = TextFormatter()
    assert formatter.format(record).endswith(" INFO nubis.test: stored")
    token = request_id.set("0123abcd0123abcd")
    try:
        line = formatter.format(record)
    finally:
        request_id.reset(token)
    assert line.endswith(" INFO nubis.test [request 0123abcd0123abcd]: stored")


def test_replication_lag_is_reported_with_a_replica(tmp_path: Path) -> None:
    """With replicate_to set, a store waits in the outbox: backlog 1, its age the lag (no job
    runs here to send it)."""
    archive = in_process_archive(
        tmp_path / "data", ADMIN, replicate_to="http://127.0.0.1:9/dicom-web", jobs="false"
    )
    with TestClient(create_app(archive)) as client:
        path = synth.make_multiframe(tmp_path / "one.dcm", frames=1, rows=8, columns=8, seed=9)
        _stow(client, {"Authorization": f"Bearer {ADMIN}"}, path)
        samples = _samples(
            client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
        )
    assert _value(samples, "nubis_replication_backlog") == 1
    assert _value(samples, "nubis_replication_lag_seconds") >= 0
    assert _value(samples, "nubis_replication_parked") == 0
