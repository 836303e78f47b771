"""The change feed and webhooks (issue 15; docs/events.md).

The archive runs in-process (Starlette's TestClient) with its real services, index, blob store
and audit trail; the webhook receiver is a small HTTP server on a thread that checks every
signature as a receiver must (HMAC-SHA256 over "<timestamp>.<body>", Nubis-Signature). The
``webhooks`` job's handler is called by the test (no background runner), so each delivery run
is one deterministic step.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pydicom
import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from integration import in_process_archive
from nubis.archive import Archive
from nubis.events.signing import HEADER, sign, verify
from nubis.index.schema import change_feed
from nubis.jobs.context import JobContext
from nubis.jobs.runner import JobRunner
from nubis.jobs.store import Job, JobState
from nubis.tools import synth
from nubis.web.app import create_app

ADMIN = "feed-test-admin-token-0123456789abcdef0123"
DICOM_TYPE = 'multipart/related; type="application/dicom"; boundary=b'


class Receiver:
    """A webhook receiver: answers 500 to the first ``fail_first`` requests, then 204; keeps
    what it took, after checking its signature; can go down and come back on its port."""

    def __init__(self) -> None:
        self.secret = ""
        self.fail_first = 0
        self.always_fail = False
        self.requests = 0
        self.taken: list[dict[str, Any]] = []
        self.delivery_ids: list[str] = []
        self.bad_signatures = 0
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests += 1
                if not verify(receiver.secret, self.headers.get(HEADER, ""), body):
                    receiver.bad_signatures += 1
                    self.send_response(401)
                elif receiver.always_fail or receiver.requests <= receiver.fail_first:
                    self.send_response(500)
                else:
                    batch = json.loads(body)
                    receiver.taken.extend(batch)
                    receiver.delivery_ids.append(self.headers["Nubis-Delivery"])
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.allow_reuse_address = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def down(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None


@dataclass
class World:
    client: TestClient
    archive: Archive
    keys: dict[str, str]
    seed: int = 7000
    names: list[str] = field(default_factory=list)

    def auth(self, who: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def make(self, *, study_uid: str | None = None, modality: str = "CT") -> pydicom.Dataset:
        self.seed += 1
        spec = synth.PatientSpec("FEED-1", "Secret^Patient", "19600101", "F")
        ds = next(
            synth.series_datasets(
                modality, n_instances=1, rows=16, columns=16, seed=self.seed, patient=spec
            )
        )
        if study_uid is not None:
            ds.StudyInstanceUID = study_uid
        return ds

    def store(self, ds: pydicom.Dataset) -> None:
        body = (
            b"--b\r\nContent-Type: application/dicom\r\n\r\n"
            + synth.dataset_bytes(ds)
            + b"\r\n--b--\r\n"
        )
        answer = self.client.post(
            "/dicom-web/studies",
            content=body,
            headers={**self.auth(), "Content-Type": DICOM_TYPE},
        )
        assert answer.status_code == 200, answer.text

    def feed(self, who: str = "admin", since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        answer = self.client.get(
            "/changefeed", params={"since": since, "limit": limit}, headers=self.auth(who)
        )
        assert answer.status_code == 200, answer.text
        return list(answer.json())

    def subscribe(self, name: str, url: str, **body: Any) -> str:
        answer = self.client.post(
            "/webhooks", json={"name": name, "url": url, **body}, headers=self.auth()
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["secret"])

    def deliver(self) -> dict[str, Any]:
        """One run of the webhooks job, as a runner would make it."""
        jobs = self.archive.jobs
        job = jobs.claim("test", 60, ["webhooks"], job_id=jobs.enqueue("webhooks"))
        assert job is not None
        result = self.archive.webhook_delivery.run(JobContext(job, threading.Event()))
        assert jobs.finish(job.id, "test", JobState.DONE)
        return result


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    archive = in_process_archive(tmp_path_factory.mktemp("feed") / "data", ADMIN, jobs="false")
    # Retries within milliseconds rather than seconds: the test steps through them.
    archive.webhook_delivery.retry_base_seconds = 0.01
    archive.webhook_delivery.retry_max_seconds = 0.05
    with TestClient(create_app(archive)) as client:
        keys = {"admin": ADMIN}
        archive.users.add_user("ref", tenant="default", roles="referrer")
        keys["ref"] = archive.users.create_api_key("ref")[1]
        yield World(client, archive, keys)


def _until(world: World, done: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "deliveries did not complete"
        world.deliver()
        time.sleep(0.02)


def test_a_receiver_gets_every_event_as_the_feed_lists_it(world: World) -> None:
    """Stores, a correction, a delete: each reaches the receiver once it answers, in feed
    order, signed, through its 500s and its own downtime (at least once, never out of order)."""
    receiver = Receiver()
    receiver.fail_first = 3
    start = world.client.get("/changefeed/latest", headers=world.auth()).json()["Sequence"]
    receiver.secret = world.subscribe("everything", receiver.url)

    first, second = world.make(), world.make()
    world.store(first)
    world.store(second)
    world.store(world.make(study_uid=str(first.StudyInstanceUID), modality="MR"))
    answer = world.client.post(
        "/corrections",
        json={"action": "update-study", "study": str(first.StudyInstanceUID),
              "set": {"StudyDescription": "CHEST"}, "reason": "typo"},
        headers=world.auth(),
    )  # fmt: skip
    assert answer.status_code == 201, answer.text
    deleted = world.client.delete(
        f"/dicom-web/studies/{second.StudyInstanceUID}", headers=world.auth()
    )
    assert deleted.status_code in (200, 202, 204), deleted.text
    _until(world, lambda: len(receiver.taken) == 5)
    assert receiver.requests == 4  # three refusals, then taken

    receiver.down()
    world.store(world.make())
    world.store(world.make())
    for _ in range(3):
        world.deliver()  # connection refused: retried later, nothing lost
        time.sleep(0.02)
    receiver.up()
    _until(world, lambda: len(receiver.taken) == 7)

    listed = world.feed(since=start)
    assert [e["Action"] for e in listed] == [
        "create", "create", "create", "update", "delete", "create", "create"
    ]  # fmt: skip
    assert receiver.taken == listed
    assert receiver.bad_signatures == 0
    # Two requests took everything: the first five in one batch, then the two stored while
    # the receiver was down (a body is a JSON array of entries in feed order).
    assert receiver.delivery_ids == [
        f"everything:{listed[0]['Sequence']}-{listed[4]['Sequence']}",
        f"everything:{listed[5]['Sequence']}-{listed[6]['Sequence']}",
    ]
    # UIDs and the event only: nothing that names the patient.
    for body in receiver.taken:
        assert "Secret" not in json.dumps(body) and "FEED-" not in json.dumps(body)
    listing = world.client.get("/webhooks", headers=world.auth()).json()
    (sub,) = [s for s in listing if s["name"] == "everything"]
    assert sub["cursor"] == listed[-1]["Sequence"] and "secret" not in sub
    receiver.down()
    assert world.client.delete("/webhooks/everything", headers=world.auth()).status_code == 204


def test_signatures_refuse_a_changed_body_and_an_old_timestamp() -> None:
    body = b'{"Sequence":1}'
    header = sign("s3cret", body)
    assert verify("s3cret", header, body)
    assert not verify("s3cret", header, b'{"Sequence":2}')
    assert not verify("other", header, body)
    old = sign("s3cret", body, timestamp=int(time.time()) - 3600)
    assert not verify("s3cret", old, body)  # a captured request sent again later


def test_filters_and_dead_letters_and_replay(world: World) -> None:
    """Only MR creates reach an MR subscription; an entry refused webhook_max_attempts times
    becomes a dead letter, listed, and a replay sends it once the receiver takes it."""
    receiver = Receiver()
    receiver.secret = world.subscribe("mr-only", receiver.url, events=["create"],
                                      modalities=["MR"])  # fmt: skip
    receiver.always_fail = True
    world.archive.webhook_delivery.max_attempts = 2
    try:
        world.store(world.make())  # CT: filtered out
        mr = world.make(modality="MR")
        world.store(mr)
        _until(world, lambda: _dead(world, "mr-only"))
        (letter,) = _dead(world, "mr-only")
        assert letter["attempts"] == 2 and "HTTP 500" in letter["last_error"]
        receiver.always_fail = False
        answer = world.client.post("/webhooks/mr-only/replay", json={}, headers=world.auth())
        assert answer.json() == {"replay": 1}
        _until(world, lambda: not _dead(world, "mr-only"))
        (body,) = receiver.taken
        assert body["SopInstanceUid"] == str(mr.SOPInstanceUID) and body["Modality"] == "MR"
        assert body["Sequence"] == letter["sequence"]
    finally:
        world.archive.webhook_delivery.max_attempts = 8
        receiver.down()
        world.client.delete("/webhooks/mr-only", headers=world.auth())


def _dead(world: World, name: str) -> list[dict[str, Any]]:
    answer = world.client.get(f"/webhooks/{name}/deliveries", headers=world.auth())
    assert answer.status_code == 200, answer.text
    return list(answer.json())


def test_a_referrer_sees_only_its_granted_studies(world: World) -> None:
    """The feed is scoped like every read: a referrer's holds the studies granted to it,
    a referrer-role webhook's those granted to webhook:<name>."""
    granted, other = world.make(), world.make()
    start = world.feed()[-1]["Sequence"] if world.feed() else 0
    world.store(granted)
    world.store(other)
    world.archive.users.grant("ref", tenant="default", study_uid=str(granted.StudyInstanceUID))
    mine = world.feed("ref", since=start)
    assert [e["StudyInstanceUid"] for e in mine] == [str(granted.StudyInstanceUID)]
    everything = world.feed(since=start)
    assert {e["StudyInstanceUid"] for e in everything} == {
        str(granted.StudyInstanceUID), str(other.StudyInstanceUID)
    }  # fmt: skip
    latest = world.client.get("/changefeed/latest", headers=world.auth("ref")).json()
    assert latest["StudyInstanceUid"] == str(granted.StudyInstanceUID)

    receiver = Receiver()
    receiver.secret = world.subscribe("ref-hook", receiver.url, role="referrer")
    try:
        world.archive.users.grant(
            "webhook:ref-hook", tenant="default", study_uid=str(other.StudyInstanceUID)
        )
        world.store(world.make(study_uid=str(granted.StudyInstanceUID)))
        world.store(world.make(study_uid=str(other.StudyInstanceUID)))
        _until(world, lambda: len(receiver.taken) == 1)
        world.deliver()
        assert [b["StudyInstanceUid"] for b in receiver.taken] == [str(other.StudyInstanceUID)]
    finally:
        receiver.down()
        world.client.delete("/webhooks/ref-hook", headers=world.auth())


def test_paging_by_cursor_is_exact(world: World) -> None:
    for _ in range(5):
        world.store(world.make())
    whole = world.feed()
    pages: list[dict[str, Any]] = []
    since = 0
    while page := world.feed(since=since, limit=2):
        assert len(page) <= 2
        pages += page
        since = page[-1]["Sequence"]
    assert pages == whole
    sequences = [e["Sequence"] for e in whole]
    assert sequences == sorted(set(sequences))


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"since": "abc"}, "since must be a whole number"),
        ({"since": "-1"}, "since must be a whole number"),
        ({"limit": "0"}, "limit must be 1 to 1000"),
        ({"limit": "5000"}, "limit must be 1 to 1000"),
        ({"offset": "3"}, "unknown parameter(s) offset"),
    ],
)
def test_bad_cursors_are_400_with_the_reason(
    world: World, params: dict[str, str], reason: str
) -> None:
    answer = world.client.get("/changefeed", params=params, headers=world.auth())
    assert answer.status_code == 400 and reason in answer.text, answer.text


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"events": ["created"]}, "unknown event type(s) created"),
        ({"modalities": ["C T"]}, "not a modality code"),
        ({"match": "PatientNam=X"}, "PatientNam"),
        ({"match": "limit=3"}, "'limit' is not a matching key"),
        ({"url": "ftp://example.org/"}, "http:// or https://"),
        ({"role": "superuser"}, "unknown role"),
        ({"name": "bad name"}, "a webhook's name"),
    ],
)
def test_bad_filters_are_400_with_the_reason(
    world: World, body: dict[str, Any], reason: str
) -> None:
    answer = world.client.post(
        "/webhooks",
        json={"name": "bad", "url": "http://127.0.0.1:9/", **body},
        headers=world.auth(),
    )
    assert answer.status_code == 400 and reason in answer.text, answer.text


def test_only_admins_manage_webhooks(world: World) -> None:
    answer = world.client.get("/webhooks", headers=world.auth("ref"))
    assert answer.status_code == 403
    answer = world.client.post(
        "/webhooks", json={"name": "x", "url": "http://127.0.0.1:9/"}, headers=world.auth("ref")
    )
    assert answer.status_code == 403


def test_expired_entries_are_gone_with_a_reason(world: World) -> None:
    """Past change_feed_retention_days entries are removed by the expiry job's step; a
    cursor before them is 410 (it would miss entries), the point after them pages on."""
    world.store(world.make())
    newest = world.feed()[-1]["Sequence"]
    world.archive.index.write(
        lambda conn: conn.execute(
            update(change_feed).where(change_feed.c.seq < newest).values(created_at=1000)
        )
    )
    runner = world.archive.new_job_runner(scheduled=False)
    assert runner.schedule_while["changefeed-expire"]()  # the expiry job would be queued
    result = runner.handlers["changefeed-expire"](JobContext(_job(world), threading.Event()))
    assert result is not None and result["entries_removed"] > 0
    assert not runner.schedule_while["changefeed-expire"]()
    answer = world.client.get("/changefeed", params={"since": 0}, headers=world.auth())
    assert answer.status_code == 410 and f"since={newest - 1}" in answer.text, answer.text
    rest = world.feed(since=newest - 1)
    assert [e["Sequence"] for e in rest] == [newest]


def _job(world: World) -> Job:
    job = world.archive.jobs.get(world.archive.jobs.enqueue("changefeed-expire"))
    assert job is not None
    return job


def test_reads_of_the_feed_are_audited(world: World) -> None:
    """Each page is recorded as a Query (PS3.15 A.5.3.10) naming the caller and the cursor."""
    newest = world.client.get("/changefeed/latest", headers=world.auth()).json()["Sequence"]
    before = world.archive.audit.head()[0]
    world.feed("ref", since=newest)
    world.archive.audit.flush_reads()
    asked = base64.b64encode(f"changefeed?since={newest}&limit=1000".encode()).decode()
    found = [
        r.event.to_dict()
        for r in world.archive.audit.scan(before, 1000)
        if asked in json.dumps(r.event.to_dict())
    ]
    assert len(found) == 1 and "ref" in json.dumps(found[0]), found


def test_the_webhooks_job_runs_only_while_a_subscription_exists(world: World) -> None:
    """No subscription, no webhooks runs: an archive that needs none has no job rows of it."""
    runs: list[int] = []
    wiring = world.archive.new_job_runner().schedule_while
    assert not wiring["webhooks"]()  # the other tests removed theirs
    wanted = threading.Event()
    runner = JobRunner(
        world.archive.jobs,
        {"webhooks": lambda ctx: runs.append(ctx.job.id) or {}},
        poll_seconds=1,
        schedule={"webhooks": 1},
        schedule_while={"webhooks": wanted.is_set},
    )
    runner.start()
    try:
        time.sleep(1.2)
        assert runs == []
        wanted.set()
        deadline = time.monotonic() + 5
        while not runs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runs
    finally:
        runner.stop()
    world.subscribe("wired", "http://127.0.0.1:9/")
    assert wiring["webhooks"]()
    world.client.delete("/webhooks/wired", headers=world.auth())


def test_a_qido_match_picks_the_studies(world: World) -> None:
    """A subscription's match is a QIDO-RS study query (PS3.18 10.6.1.2), run as the
    subscription against the study as it stands: only matching studies are sent."""
    receiver = Receiver()
    receiver.secret = world.subscribe("chest", receiver.url, match="StudyDescription=*CHEST*")
    try:
        chest, head = world.make(), world.make()
        chest.StudyDescription, head.StudyDescription = "CT CHEST", "CT HEAD"
        world.store(chest)
        world.store(head)
        _until(world, lambda: len(receiver.taken) == 1)
        world.deliver()
        assert [b["StudyInstanceUid"] for b in receiver.taken] == [str(chest.StudyInstanceUID)]
    finally:
        receiver.down()
        world.client.delete("/webhooks/chest", headers=world.auth())


def test_a_store_wakes_the_webhooks_job_at_once(world: World) -> None:
    """A store that adds a feed entry asks the runner for a webhooks run: it comes within a
    fraction of a second, not at the next period or poll, and only while one is wanted."""
    runs: list[float] = []
    wanted = threading.Event()
    runner = JobRunner(
        world.archive.jobs,
        {"webhooks": lambda ctx: runs.append(time.monotonic()) or {}},
        poll_seconds=60,
        schedule_while={"webhooks": wanted.is_set},
    )
    runner.start()
    world.archive.index.on_feed_change = lambda: runner.request("webhooks")
    try:
        time.sleep(0.3)  # the runner's first look, with nothing queued
        wanted.set()
        stored = time.monotonic()
        world.store(world.make())
        deadline = stored + 5
        while not runs and time.monotonic() < deadline:
            time.sleep(0.02)
        assert runs and runs[0] - stored < 2, runs
        wanted.clear()  # the subscription is gone: a store's request is dropped
        time.sleep(0.3)
        world.store(world.make())
        time.sleep(0.6)
        assert len(runs) == 1, runs
    finally:
        world.archive.index.on_feed_change = None
        runner.stop()
