"""The audit trail over HTTP: ``GET /audit/records`` and ``GET /audit/verify`` (issue 4).

HIPAA 164.312(b) (audit controls: examine activity) and PS3.15 A.5.3.1 (Audit Log Used: a
read of the log is itself recorded). The archive runs in-process with the real index and
trail, as in test_authz.py.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from starlette.testclient import TestClient

from integration import in_process_archive
from nubis.archive import Archive
from nubis.security.audit import AuditUnavailable, canonical_record
from nubis.security.policy import AUDIT_HOME_TENANT_ONLY
from nubis.tools import synth
from nubis.web.app import create_app

ADMIN = "audit-routes-admin-token-0123456789abcdef"
AUDIT_LOG_USED = "110101"
USE_OF_RESTRICTED_FUNCTION = "110132"


@dataclass
class World:
    client: TestClient
    archive: Archive
    keys: dict[str, str]

    def get(self, who: str, path: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[who]}"} if who in self.keys else {}
        return self.client.get(path, params=params, headers=headers)

    def last_records(self, n: int) -> list[dict[str, Any]]:
        head = self.archive.audit.head()[0]
        return [r.event_dict for r in self.archive.audit.scan(max(0, head - n), n)]


def _world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("audit-routes")
    archive = in_process_archive(tmp / "data", ADMIN)
    with TestClient(create_app(archive)) as client:
        keys = {"admin": ADMIN}
        for name, tenant, role in (
            ("auditor", "default", "auditor"),
            ("radiologist", "default", "radiologist"),
            ("other-auditor", "other", "auditor"),
        ):
            archive.users.add_user(name, tenant=tenant, roles=role)
            keys[name] = archive.users.create_api_key(name)[1]
        world = World(client, archive, keys)
        # Something to audit: two patients' studies stored and read by the radiologist.
        for n, patient in enumerate(("P-AUD-1", "P-AUD-2")):
            path = synth.make_multiframe(
                tmp / f"{n}.dcm",
                frames=1,
                rows=16,
                columns=16,
                seed=n,
                patient=synth.PatientSpec(patient, "Doe^Jo", "19700101", "F"),
            )
            body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes()
            stored = client.post(
                "/dicom-web/studies",
                content=body + b"\r\n--b--\r\n",
                headers={
                    "Authorization": f"Bearer {keys['radiologist']}",
                    "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
                },
            )
            assert stored.status_code == 200, stored.text
        assert world.get("radiologist", "/dicom-web/studies").status_code == 200
        yield world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from _world(tmp_path_factory)


@pytest.fixture
def own_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A world of the test's own, for a test that damages it."""
    yield from _world(tmp_path_factory)


def test_auditor_reads_records_that_verify_on_their_own(world: World) -> None:
    """The stored form lets a client recompute every hash and the chain's links."""
    response = world.get("auditor", "/audit/records", limit=1000)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    records = body["records"]
    assert body["next_after"] is None and len(records) >= 4
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    previous = "0" * 64
    for r in records:
        text = canonical_record(r["seq"], r["prev_hash"], r["event"])
        assert hashlib.sha256(text.encode()).hexdigest() == r["hash"]
        assert r["prev_hash"] == previous
        previous = r["hash"]


def test_the_read_is_recorded_before_the_answer(world: World) -> None:
    """PS3.15 A.5.3.1: Audit Log Used, naming the auditor, from the web API."""
    head = world.archive.audit.head()[0]
    records = world.get("auditor", "/audit/records", after=head).json()["records"]
    # The page already holds the record of this very read.
    [used] = [r["event"] for r in records]
    assert used["event_id"]["code"] == AUDIT_LOG_USED
    assert used["participants"][0]["user_id"] == "auditor"
    assert used["front_door"] == "web"


def test_filters_and_paging(world: World) -> None:
    stores = world.get("auditor", "/audit/records", event="110104", user="radiologist").json()
    patients = {r["event"]["objects"][0]["id"] for r in stores["records"]}
    assert patients == {"P-AUD-1", "P-AUD-2"}
    one = world.get("auditor", "/audit/records", patient="P-AUD-2").json()["records"]
    assert one and all(any(o["id"] == "P-AUD-2" for o in r["event"]["objects"]) for r in one)
    assert world.get("auditor", "/audit/records", since="2999-01-01").json()["records"] == []
    assert world.get("auditor", "/audit/records", until="2000-01-01T00:00:00Z").json() == {
        "records": [],
        "next_after": None,
    }
    today = world.last_records(1)[0]["at"][:10]
    assert world.get("auditor", "/audit/records", since=today + "T00:00Z").json()["records"]
    seen: list[int] = []
    after = 0
    while True:
        page = world.get("auditor", "/audit/records", after=after, limit=2, event="110104").json()
        seen += [r["seq"] for r in page["records"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == [r["seq"] for r in stores["records"]]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"after": "-1"},
        {"after": "9" * 40},
        {"since": "yesterday"},
        {"until": "2024-02-30"},
        {"since": "2024-01-01T00:00:00+02:00"},
        {"event": "110103; DROP TABLE"},
        {"patientid": "P-AUD-1"},
    ],
)
def test_bad_parameters_are_named(world: World, params: dict[str, str]) -> None:
    response = world.get("auditor", "/audit/records", **params)
    assert response.status_code == 400, response.text
    assert next(iter(params)) in response.json()["reason"]


def test_who_may_not_is_refused_first_and_recorded(world: World) -> None:
    """HIPAA 164.312(a)(1): default deny; PS3.15 A.5.3.11 Use of Restricted Function."""
    for who in ("radiologist", "other-auditor"):
        for path in ("/audit/records", "/audit/verify"):
            # Bad parameters too: the refusal comes before anything about the request.
            response = world.get(who, path, limit="0")
            assert response.status_code == 403, (who, path, response.text)
            [refusal] = world.last_records(1)
            assert refusal["event_id"]["code"] == "110113"
            assert refusal["event_types"][0]["code"] == USE_OF_RESTRICTED_FUNCTION
            assert refusal["participants"][0]["user_id"] == who
    reason = world.get("other-auditor", "/audit/records").json()["reason"]
    assert reason == AUDIT_HOME_TENANT_ONLY
    assert world.get("anonymous", "/audit/verify").status_code == 401
    assert world.get("admin", "/audit/verify").status_code == 200


def test_verify_reports_a_tampered_trail(own_world: World) -> None:
    world = own_world
    report = world.get("auditor", "/audit/verify").json()
    assert report["ok"] is True and report["first_bad_seq"] is None
    assert report["records"] >= 4 and report["problem"] is None
    [used] = world.last_records(1)
    assert used["event_id"]["code"] == AUDIT_LOG_USED
    # Someone with the database file changes a record behind the archive's back.
    con = sqlite3.connect(world.archive.settings.data_dir / "index.sqlite")
    con.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
    [(seq,)] = con.execute("SELECT min(seq) FROM audit_log WHERE record LIKE '%P-AUD-1%'")
    con.execute(
        "UPDATE audit_log SET record = replace(record, 'P-AUD-1', 'P-AUD-9') WHERE seq = ?", (seq,)
    )
    con.commit()
    con.close()
    report = world.get("auditor", "/audit/verify").json()
    assert report["ok"] is False
    assert report["first_bad_seq"] == seq and "altered" in report["problem"]
    alert = world.last_records(1)[0]
    assert alert["event_id"]["code"] == "110113" and alert["outcome"] == 8


def test_no_record_of_the_read_no_records(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail closed (HIPAA 164.312(b)): a read that cannot be recorded answers nothing."""

    def down(event: object) -> object:
        raise AuditUnavailable("the access could not be recorded in the audit trail")

    monkeypatch.setattr(world.archive.audit, "record", down)
    for path in ("/audit/records", "/audit/verify"):
        response = world.get("auditor", path)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        assert "records" not in response.json() and "ok" not in response.json()
