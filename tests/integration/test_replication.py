"""Asynchronous replication to another nubis over DICOMweb (issue 13, docs/replication.md).

Two ``nubis serve`` processes on loopback, shared by the module's tests in order: a primary
with ``replicate_to`` naming the replica's DICOMweb root, and the replica, read-only
(``replica_of``) for all but the primary's replication credential until promoted. What is
compared is what each serves over WADO-RS as stored (PS3.18 10.4.1, ``transfer-syntax=*``),
byte for byte; what is stored goes in by STOW-RS (PS3.18 10.5), deletes by DELETE (PS3.18
10.4 DELETE, as nubis serves it), corrections and crypto-shreds through the admin API.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

import httpx
import pytest
from typer.testing import CliRunner

from integration import ADMIN_TOKEN, AUTH, CT_PATIENT, DicomFile
from integration.cli import nubis_cli
from integration.dimse_helpers import free_port
from integration.server import (
    ACCEPT_AS_STORED,
    Server,
    multipart_content_type,
    parse_multipart,
    start_server,
)
from nubis.cli.main import app
from nubis.index.database import Index
from nubis.security.users import UserStore
from nubis.web.dicomweb.multipart import new_boundary

_UID_ROOT = "1.2.826.0.1.3680043.8.498.77."


@dataclass
class Site:
    primary: Server
    replica: Server
    primary_env: dict[str, str]
    clerk: dict[str, str]  # the Authorization of an admin of the replica: a client there


def _stow(
    server: Server, objects: list[bytes], auth: dict[str, str] = AUTH, **headers: str
) -> httpx.Response:
    boundary = new_boundary()
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n".encode()
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        + b"\r\n"
        + data
        + b"\r\n"
        for data in objects
    )
    body += f"--{boundary}--\r\n".encode()
    return httpx.post(
        f"{server.dicomweb}/studies",
        content=body,
        headers={**auth, "Content-Type": multipart_content_type(boundary)},
        timeout=60,
    )


def _patient_name(server: Server, study: str) -> str | None:
    """The study's Patient Name as QIDO-RS answers it (PS3.18 10.6), alphabetic group."""
    answer = httpx.get(
        f"{server.dicomweb}/studies",
        params={"StudyInstanceUID": study, "includefield": "00100010"},
        headers=AUTH,
        timeout=30,
    )
    assert answer.status_code in (200, 204), answer.text
    found = answer.json() if answer.status_code == 200 else []
    if not found:
        return None
    return str(found[0]["00100010"]["Value"][0]["Alphabetic"])


def _correct(server: Server, study: str, name: str) -> None:
    answer = httpx.post(
        f"{server.url}/corrections",
        json={
            "action": "update-study",
            "study": study,
            "set": {"PatientName": name},
            "reason": "name misspelt at registration",
        },
        headers=AUTH,
        timeout=30,
    )
    assert answer.status_code == 201, answer.text


def _as_stored(server: Server, study: str, series: str, sop: str) -> bytes | None:
    answer = httpx.get(
        f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}",
        headers={**AUTH, "Accept": ACCEPT_AS_STORED},
        timeout=30,
    )
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    parts = parse_multipart(answer.content, answer.headers["content-type"])
    assert len(parts) == 1
    return parts[0]


def _outbox_rows(server: Server) -> int:
    uri = f"file:{(server.data_dir / 'index.sqlite').resolve()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        return int(conn.execute("SELECT count(*) FROM replication_outbox").fetchone()[0])


def _status(site: Site) -> dict[str, object]:
    data = ("--data-dir", str(site.primary.data_dir))
    done = nubis_cli("replication", "status", "--json", *data, env=site.primary_env, check=True)
    return dict(json.loads(done.stdout))


def _wait(condition: object, timeout: float, what: str) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def _copies(template: DicomFile, count: int, tag: str) -> Iterator[tuple[str, bytes]]:
    """``count`` objects that are ``template`` under new SOP Instance UIDs of its UID's length
    (so the file meta's group length stays right)."""
    old = template.sop_uid
    for n in range(count):
        prefix = f"{_UID_ROOT}{tag}.{n}."
        uid = (prefix + "9" * len(old))[: len(old)]
        assert len(uid) == len(old) and not uid.endswith(".")
        yield uid, template.data.replace(old.encode(), uid.encode())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("replication")
    primary_port = free_port()
    replica = start_server(
        root / "replica",
        env={
            "NUBIS_WORKERS": "1",
            "NUBIS_REPLICA_OF": f"http://127.0.0.1:{primary_port}",
            # The primary replicates with the replica's bootstrap admin key (user admin).
            "NUBIS_REPLICA_WRITER": "admin",
        },
    )
    env = {
        "NUBIS_WORKERS": "1",
        "NUBIS_REPLICATE_TO": replica.dicomweb,
        # The replica's bootstrap admin key (tests/conftest.py gives every server the same).
        "NUBIS_REPLICATE_API_KEY": ADMIN_TOKEN,
        "NUBIS_REPLICATE_EVERY_SECONDS": "1",
        "NUBIS_REPLICATE_RETRY_MAX_SECONDS": "1",
        # The run a SIGKILL interrupted resumes once its job lease ran out.
        "NUBIS_JOBS_LEASE_SECONDS": "3",
    }
    primary = start_server(root / "primary", env=env, port=primary_port)
    found = Site(primary, replica, env, {"Authorization": f"Bearer {_add_clerk(replica)}"})
    try:
        yield found
    finally:
        found.primary.stop()
        found.replica.stop()


def _add_clerk(replica: Server) -> str:
    """An API key of ``clerk``, an admin of the replica who is not its replication writer."""
    index = Index(f"sqlite:///{(replica.data_dir / 'index.sqlite').resolve()}")
    index.open()
    try:
        users = UserStore(index)
        users.add_user("clerk", roles="admin")
        return users.create_api_key("clerk", expires_in_days=None)[1]
    finally:
        index.close()


def test_stores_reach_the_replica_byte_exact(site: Site, ct_series: list[DicomFile]) -> None:
    assert _stow(site.primary, [f.data for f in ct_series]).status_code == 200
    first = ct_series[0]

    def all_there() -> bool:
        return _outbox_rows(site.primary) == 0

    took = _wait(all_there, 20, "the 20 CT objects reach the replica")
    print(f"20 objects (10 MB) replicated {took:.2f} s after the STOW-RS answer")
    for f in ct_series:
        assert _as_stored(site.replica, *f.uids) == f.data, f.sop_uid
    assert first.study_uid
    status = _status(site)
    assert status["backlog"] == 0 and status["lag_seconds"] == 0
    assert isinstance(status["verified_seq"], int) and status["verified_seq"] >= 20


def test_a_part_whose_content_digest_differs_is_refused(
    site: Site, mr_series: list[DicomFile]
) -> None:
    """The replica's half of verification: RFC 9530 Content-Digest names other bytes -> 409
    (PS3.18 10.5.3 failure), nothing stored."""
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    answer = _stow(site.replica, [mr_series[0].data], **{"Content-Digest": f"sha-256=:{wrong}:"})
    assert answer.status_code == 409, answer.text
    assert "Content-Digest" in answer.headers.get("warning", "")
    assert _as_stored(site.replica, *mr_series[0].uids) is None
    right = base64.b64encode(hashlib.sha256(mr_series[0].data).digest()).decode()
    answer = _stow(site.replica, [mr_series[0].data], **{"Content-Digest": f"sha-256=:{right}:"})
    assert answer.status_code == 200, answer.text


def test_an_outage_grows_the_lag_and_the_backlog_drains_after(
    site: Site, mr_series: list[DicomFile]
) -> None:
    site.replica.stop()
    # mr_series[0] is on the replica already (the test before): answered as already stored.
    assert _stow(site.primary, [f.data for f in mr_series]).status_code == 200
    # A correction of the study after its stores: applied after them at the replica (order
    # per study), once it is back.
    _correct(site.primary, mr_series[0].study_uid, "Tanaka^Yuko")
    time.sleep(1.5)
    before = _status(site)
    assert before["backlog"] == len(mr_series) + 1, before
    assert "cannot be reached" in str(before["last_error"]), before
    time.sleep(1)
    after = _status(site)
    assert float(after["lag_seconds"]) > float(before["lag_seconds"]) >= 1.0  # type: ignore[arg-type]
    site.replica = start_server(site.replica.data_dir, env=site.replica.env, port=site.replica.port)
    took = _wait(lambda: _outbox_rows(site.primary) == 0, 30, "the backlog drains")
    print(f"backlog of {len(mr_series)} drained {took:.2f} s after the replica came back")
    # Both serve the objects under the correction's overlay, the same bytes.
    for f in mr_series:
        served = _as_stored(site.primary, *f.uids)
        assert served is not None and served != f.data
        assert _as_stored(site.replica, *f.uids) == served, f.sop_uid
    assert _patient_name(site.replica, mr_series[0].study_uid) == "Tanaka^Yuko"
    assert _status(site)["lag_seconds"] == 0


def test_a_delete_reaches_the_replica(site: Site, mr_series: list[DicomFile]) -> None:
    study = mr_series[0].study_uid
    answer = httpx.delete(f"{site.primary.dicomweb}/studies/{study}", headers=AUTH, timeout=30)
    assert answer.status_code in (200, 204), answer.text
    _wait(
        lambda: _as_stored(site.replica, *mr_series[0].uids) is None,
        20,
        "the delete reaches the replica",
    )
    assert all(_as_stored(site.replica, *f.uids) is None for f in mr_series)


def test_every_acknowledged_object_reaches_the_replica_across_a_sigkill(
    site: Site, ct_series: list[DicomFile]
) -> None:
    """The outbox entry commits with the object: with the replica down, every object the
    primary acknowledged before its SIGKILL is in its outbox, and at the replica once both run
    again."""
    site.replica.stop()
    copies = list(_copies(ct_series[0], 200, "5"))
    acknowledged: list[tuple[str, bytes]] = []
    stop = threading.Event()

    def ingest() -> None:
        for uid, data in copies:
            if stop.is_set():
                return
            try:
                if _stow(site.primary, [data]).status_code == 200:
                    acknowledged.append((uid, data))
            except httpx.TransportError:
                return

    sender = threading.Thread(target=ingest)
    sender.start()
    _wait(lambda: len(acknowledged) >= 15, 60, "15 objects acknowledged")
    site.primary.kill()
    stop.set()
    sender.join()
    assert len(acknowledged) < len(copies), "the kill came after the last store"
    # Committed and not sent: one entry per acknowledged object (and per one committed as
    # the kill cut its answer off).
    assert len(acknowledged) <= _outbox_rows(site.primary) <= len(acknowledged) + 1
    site.replica = start_server(site.replica.data_dir, env=site.replica.env, port=site.replica.port)
    site.primary = start_server(site.primary.data_dir, env=site.primary_env, port=site.primary.port)
    took = _wait(lambda: _outbox_rows(site.primary) == 0, 60, "the outbox drains after restart")
    print(f"{len(acknowledged)} acknowledged objects replicated {took:.2f} s after the restart")
    study, series = ct_series[0].study_uid, ct_series[0].series_uid
    for uid, data in acknowledged:
        assert _as_stored(site.replica, study, series, uid) == data, uid


def test_a_correction_reaches_the_replica(site: Site, ct_series: list[DicomFile]) -> None:
    study = ct_series[0].study_uid
    _correct(site.primary, study, "Mueller^Hans")
    took = _wait(
        lambda: _patient_name(site.replica, study) == "Mueller^Hans",
        20,
        "the correction reaches the replica",
    )
    print(f"correction at the replica {took:.2f} s after the primary's answer")


def test_the_replica_refuses_changes_but_the_primarys(
    site: Site, ct_series: list[DicomFile]
) -> None:
    """A client of the read-only replica reads; its store, delete and correction are refused
    with 403 naming the primary (RFC 9110 15.5.4), nothing changed."""
    study = ct_series[0].study_uid
    answer = _stow(site.replica, [ct_series[0].data], auth=site.clerk)
    assert answer.status_code == 403, answer.text
    assert "read-only replica of" in answer.text
    assert str(site.primary.port) in answer.text
    answer = httpx.delete(
        f"{site.replica.dicomweb}/studies/{study}", headers=site.clerk, timeout=30
    )
    assert answer.status_code == 403, answer.text
    answer = httpx.post(
        f"{site.replica.url}/corrections",
        json={"action": "update-study", "study": study, "set": {"PatientSex": "O"},
              "reason": "a client's correction"},
        headers=site.clerk,
        timeout=30,
    )  # fmt: skip
    assert answer.status_code == 403, answer.text
    answer = httpx.get(
        f"{site.replica.dicomweb}/studies/{study}/metadata", headers=site.clerk, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert _patient_name(site.replica, study) == "Mueller^Hans"


def test_a_shred_reaches_the_replica(site: Site, ct_series: list[DicomFile]) -> None:
    """Erasure reaches the replica: the patient's key is shredded there, so its objects answer
    410 Gone (as on the primary)."""
    first = ct_series[0]
    assert _as_stored(site.replica, *first.uids) is not None  # readable there before
    answer = httpx.post(
        f"{site.primary.url}/keys/shred-patient",
        json={"patient": CT_PATIENT.patient_id},
        headers=AUTH,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["keys"] == 1

    def gone() -> bool:
        url = f"{site.replica.dicomweb}/studies/{first.study_uid}/series/{first.series_uid}"
        got = httpx.get(
            f"{url}/instances/{first.sop_uid}",
            headers={**AUTH, "Accept": ACCEPT_AS_STORED},
            timeout=30,
        )
        return got.status_code == 410

    took = _wait(gone, 20, "the shred reaches the replica")
    print(f"crypto-shred at the replica {took:.2f} s after the primary's answer")


def test_promotion_opens_the_replica_to_clients(site: Site, mr_series: list[DicomFile]) -> None:
    """``nubis replication promote`` on the replica's data: its running server takes a
    client's store within the role's recheck (2 s); measured as the RTO's last step."""
    assert _stow(site.replica, [mr_series[0].data], auth=site.clerk).status_code == 403
    args = ["--data-dir", str(site.replica.data_dir)]
    args += ["--set", f"replica_of={site.replica.env['NUBIS_REPLICA_OF']}"]
    start = time.monotonic()
    promoted = CliRunner().invoke(app, ["replication", "promote", "--yes", *args])
    assert promoted.exit_code == 0, promoted.output
    took = _wait(
        lambda: _stow(site.replica, [mr_series[0].data], auth=site.clerk).status_code == 200,
        10,
        "the promoted replica takes a client's store",
    )
    print(
        f"promoted: CLI {time.monotonic() - start - took:.2f} s, a client's store taken "
        f"{took:.2f} s later"
    )
