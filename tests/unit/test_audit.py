"""The audit trail: hash chain, signed checkpoints, tamper detection, concurrency, fail closed."""

from __future__ import annotations

import itertools
import json
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nubis import metrics
from nubis.index.database import Index
from nubis.model.audit import ActiveParticipant, EventOutcome
from nubis.security import audit_events
from nubis.security.audit import (
    GENESIS,
    AuditTrail,
    AuditUnavailable,
    canonical_record,
    load_public_keys,
    public_key_text,
    record_hash,
)

WHO = ActiveParticipant("alice", network_access_point="10.0.0.7", user_name="Alice")


def _index(path: Path) -> Index:
    idx = Index(f"sqlite:///{path}", durable=False)
    idx.migrate()
    idx.open()
    return idx


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "index.sqlite"


@pytest.fixture
def trail(tmp_path: Path, db_path: Path) -> Iterator[AuditTrail]:
    idx = _index(db_path)
    t = AuditTrail(
        idx,
        key_path=tmp_path / "audit-signing.key",
        source_id="NUBIS",
        checkpoint_every=5,
        checkpoint_seconds=0,
    )
    t.open()
    yield t
    idx.close()


def _fill(trail: AuditTrail, n: int) -> None:
    for i in range(n):
        trail.record(
            audit_events.instances_accessed(
                WHO,
                patient_id=f"P{i}",
                study_uids=[f"1.2.3.{i}"],
                front_door="dicomweb",
                request_id=f"r{i}",
            )
        )


def _tamper(db_path: Path, *statements: str) -> None:
    """Change the database behind the archive's back, as someone with the file could."""
    con = sqlite3.connect(db_path)
    for table in ("audit_log", "audit_checkpoints"):
        for verb in ("update", "delete"):
            con.execute(f"DROP TRIGGER IF EXISTS {table}_no_{verb}")
    for sql in statements:
        con.execute(sql)
    con.commit()
    con.close()


def test_records_chain_and_verify(trail: AuditTrail) -> None:
    receipts = [
        trail.record(audit_events.query(WHO, "PatientID=P1", front_door="dicomweb"))
        for _ in range(3)
    ]
    assert [r.seq for r in receipts] == [1, 2, 3]
    records = trail.scan()
    assert records[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(records):
        assert after.prev_hash == before.hash
        assert record_hash(after.text) == after.hash
    content = json.loads(records[1].text)
    assert records[1].text == canonical_record(2, records[0].hash, content["event"])
    event = records[0].event
    assert event.source_id == "NUBIS"
    assert event.objects[0].query == b"PatientID=P1"
    report = trail.verify()
    assert report.ok and report.records == 3 and report.first_bad_seq is None


def test_checkpoint_every_n_records_and_signature(trail: AuditTrail, tmp_path: Path) -> None:
    _fill(trail, 12)
    assert [c.seq for c in trail.checkpoints()] == [5, 10]
    assert trail.checkpoint() is not None  # signs the unsigned tail
    assert trail.checkpoint() is None  # nothing new to sign
    report = trail.verify()
    assert report.ok and report.checkpoints == 3 and report.last_signed_seq == 12
    # A key kept elsewhere: the file format round-trips.
    pub = tmp_path / "kept.pub"
    pub.write_text(public_key_text(trail.key.public))
    assert trail.verify(public_keys=load_public_keys(pub)).ok
    # Another key does not vouch for these checkpoints.
    stranger = Ed25519PrivateKey.generate().public_key()
    bad = trail.verify(public_keys={"x": stranger})
    assert not bad.ok and "unknown key" in (bad.problem or "")


def test_signing_key_is_private(trail: AuditTrail) -> None:
    mode = stat.S_IMODE(trail.key_path.stat().st_mode)
    assert mode == 0o600
    assert trail.key_path.with_suffix(".pub").read_text().startswith("ed25519 ")


def test_triggers_refuse_update_and_delete(trail: AuditTrail, db_path: Path) -> None:
    _fill(trail, 2)
    con = sqlite3.connect(db_path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE audit_log SET user_id = 'mallory' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM audit_log WHERE seq = 2")
    con.close()


def test_edited_field_is_named(trail: AuditTrail, db_path: Path) -> None:
    _fill(trail, 8)
    _tamper(db_path, "UPDATE audit_log SET record = replace(record, 'P3', 'P9') WHERE seq = 4")
    report = trail.verify()
    assert not report.ok and report.first_bad_seq == 4
    assert "altered" in (report.problem or "")


def test_edited_listing_column_is_named(trail: AuditTrail, db_path: Path) -> None:
    _fill(trail, 8)
    _tamper(db_path, "UPDATE audit_log SET user_id = 'bob' WHERE seq = 6")
    report = trail.verify()
    assert report.first_bad_seq == 6 and "listing columns" in (report.problem or "")


def test_edit_with_recomputed_hash_is_named(trail: AuditTrail, db_path: Path) -> None:
    _fill(trail, 8)
    rec = trail.scan()[2]
    forged = rec.text.replace("P2", "P7")
    _tamper(
        db_path,
        f"UPDATE audit_log SET record = '{forged}', hash = '{record_hash(forged)}', "
        "patient_id = 'P7' WHERE seq = 3",
    )
    report = trail.verify()
    assert report.first_bad_seq == 4  # record 3 is self-consistent; 4 no longer follows it
    assert "does not follow record 3" in (report.problem or "")


def test_deleted_middle_record_is_named(trail: AuditTrail, db_path: Path) -> None:
    _fill(trail, 8)
    _tamper(db_path, "DELETE FROM audit_log WHERE seq = 5")
    report = trail.verify()
    assert report.first_bad_seq == 5 and "missing" in (report.problem or "")


def test_deleted_tail_is_caught_by_signed_head(trail: AuditTrail, db_path: Path) -> None:
    _fill(trail, 8)
    trail.checkpoint()
    _tamper(db_path, "DELETE FROM audit_log WHERE seq > 6")
    report = trail.verify()
    assert not report.ok and report.first_bad_seq == 7
    assert "removed" in (report.problem or "")


def test_inserted_forged_record_is_named(trail: AuditTrail, db_path: Path) -> None:
    _fill(trail, 6)
    records = trail.scan()
    # Make room after record 3 and slip in a well-formed, correctly chained forgery.
    forged_event = json.loads(records[2].text)["event"]
    forged_event["participants"][0]["user_id"] = "alice-was-here"
    forged = canonical_record(4, records[2].hash, forged_event)
    _tamper(
        db_path,
        "UPDATE audit_log SET seq = seq + 100 WHERE seq >= 4",
        "UPDATE audit_log SET seq = seq - 99 WHERE seq >= 100",
        "INSERT INTO audit_log (seq, at, event_code, outcome, user_id, patient_id, record, "
        f"prev_hash, hash) VALUES (4, '{forged_event['at']}', '110103', 0, 'alice-was-here', "
        f"'P2', '{forged}', '{records[2].hash}', '{record_hash(forged)}')",
    )
    report = trail.verify()
    assert not report.ok and report.first_bad_seq == 5
    assert "numbered 4" in (report.problem or "")


def test_appended_forgery_with_bad_hash_is_named(trail: AuditTrail, db_path: Path) -> None:
    _fill(trail, 3)
    text = trail.scan()[2].text
    _tamper(
        db_path,
        "INSERT INTO audit_log (seq, at, event_code, outcome, user_id, patient_id, record, "
        f"prev_hash, hash) VALUES (4, 'x', '110103', 0, 'm', NULL, '{text}', 'ab', 'cd')",
    )
    assert trail.verify().first_bad_seq == 4


def test_swapped_records_are_named(trail: AuditTrail, db_path: Path) -> None:
    _fill(trail, 8)
    _tamper(
        db_path,
        "UPDATE audit_log SET seq = 100 WHERE seq = 3",
        "UPDATE audit_log SET seq = 3 WHERE seq = 4",
        "UPDATE audit_log SET seq = 4 WHERE seq = 100",
    )
    report = trail.verify()
    assert report.first_bad_seq == 3


def test_rewritten_chain_is_caught_by_checkpoint(trail: AuditTrail, db_path: Path) -> None:
    _fill(trail, 10)  # checkpoints at 5 and 10
    # Rewrite record 7 and re-chain everything after it: the chain is consistent again,
    # but no longer matches the signed head at record 10.
    records = trail.scan()
    statements, prev = [], records[5].hash
    for rec in records[6:]:
        content = json.loads(rec.text)
        if rec.seq == 7:
            content["event"]["outcome"] = 0
            content["event"]["outcome_description"] = "nothing to see"
        text = canonical_record(rec.seq, prev, content["event"])
        digest = record_hash(text)
        statements.append(
            f"UPDATE audit_log SET record = '{text}', prev_hash = '{prev}', hash = '{digest}' "
            f"WHERE seq = {rec.seq}"
        )
        prev = digest
    _tamper(db_path, *statements)
    report = trail.verify()
    assert not report.ok and report.first_bad_seq == 6
    assert "rewritten" in (report.problem or "")


def test_forged_checkpoint_signature(trail: AuditTrail, db_path: Path) -> None:
    _fill(trail, 5)
    _tamper(db_path, "UPDATE audit_checkpoints SET seq = 4 WHERE seq = 5")
    report = trail.verify()
    assert not report.ok and "bad signature" in (report.problem or "")


def test_concurrent_recording_keeps_the_chain(trail: AuditTrail) -> None:
    def worker(n: int) -> None:
        for i in range(25):
            trail.record(audit_events.study_deleted(f"user{n}", study_uids=[f"1.{n}.{i}"]))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = trail.verify()
    assert report.ok and report.records == 400
    assert [c.seq for c in trail.checkpoints()] == list(range(5, 401, 5))


def test_two_processes_share_one_chain(tmp_path: Path, trail: AuditTrail, db_path: Path) -> None:
    # A second Index on the same file has its own writer thread, as a worker process does.
    other_index = _index(db_path)
    other = AuditTrail(
        other_index,
        key_path=trail.key_path,
        source_id="NUBIS",
        checkpoint_every=5,
        checkpoint_seconds=0,
    )
    other.open()
    try:

        def worker(t: AuditTrail, name: str) -> None:
            for _ in range(40):
                t.record(audit_events.user_authentication(name, front_door="dicomweb"))

        threads = [
            threading.Thread(target=worker, args=(t, n))
            for t, n in ((trail, "a"), (other, "b"), (trail, "c"), (other, "d"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other_index.close()
    report = trail.verify()
    assert report.ok and report.records == 160


def test_record_many_is_one_commit_in_order(trail: AuditTrail) -> None:
    events = [audit_events.user_authentication(f"u{i}", front_door="cli") for i in range(3)]
    receipts = trail.record_many(events)
    assert [r.seq for r in receipts] == [1, 2, 3]
    assert [r.event.requestor.user_id for r in trail.scan()] == ["u0", "u1", "u2"]


def test_record_fails_closed(trail: AuditTrail) -> None:
    failures = metrics.audit_append_failures._value.get()
    trail.index.close()
    with pytest.raises(AuditUnavailable) as info:
        trail.record(audit_events.user_authentication("alice", front_door="cli"))
    assert info.value.http_status == 503
    # What the NubisAuditAppendFailing alert (docs/ops/prometheus-alerts.yml) watches.
    assert metrics.audit_append_failures._value.get() == failures + 1


def test_reading_the_log_is_audited(trail: AuditTrail) -> None:
    _fill(trail, 3)
    records = trail.read(WHO, front_door="cli", patient_id="P1")
    assert [r.seq for r in records] == [2]
    last = trail.scan()[-1].event
    assert last.event_id.code == "110101" and last.requestor.user_id == "alice"
    assert trail.verify(used_by=WHO, front_door="cli").ok
    assert trail.scan()[-1].event.event_id.code == "110101"


def test_failed_verification_raises_a_security_alert(trail: AuditTrail, db_path: Path) -> None:
    _fill(trail, 4)
    _tamper(db_path, "DELETE FROM audit_log WHERE seq = 2")
    report = trail.verify(used_by=WHO, front_door="cli")
    assert report.first_bad_seq == 2
    alert = trail.scan()[-1].event
    assert alert.event_id.code == "110113" and alert.outcome == EventOutcome.SERIOUS_FAILURE


def test_principal_like_objects(trail: AuditTrail) -> None:
    class Principal:
        id = "dr-who"
        roles = ("radiologist",)
        via = "dimse"
        peer = ("192.168.1.20", 104)
        ae_title = "MODALITY1 "

    event = audit_events.instances_accessed(
        Principal(), patient_id="P", study_uids=["1.2"], break_glass_reason="stroke code"
    )
    p = event.requestor
    assert p.user_id == "dr-who" and p.network_access_point == "192.168.1.20"
    assert p.network_access_point_type == 2
    assert p.alternative_user_id == "AETITLES=MODALITY1"
    assert p.roles[0].code == "radiologist"
    assert event.front_door == "dimse" and event.break_glass_reason == "stroke code"
    trail.record(event)
    stored = trail.scan()[0].event
    assert stored.requestor == p and stored.objects == event.objects
    assert stored.source_id == "NUBIS" and stored.break_glass_reason == "stroke code"


def test_checkpoint_timer_and_close_sign_the_tail(tmp_path: Path) -> None:
    idx = _index(tmp_path / "timer.sqlite")
    timed = AuditTrail(
        idx,
        key_path=tmp_path / "k",
        source_id="NUBIS",
        checkpoint_every=0,
        checkpoint_seconds=0.1,
    )
    timed.open()
    try:
        _fill(timed, 3)
        deadline = time.monotonic() + 5
        while not timed.checkpoints() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [c.seq for c in timed.checkpoints()] == [3]
        _fill(timed, 1)
        timed.close()  # a clean stop signs what is unsigned
        assert timed.checkpoints()[-1].seq == 4
        assert timed.verify().unsigned == 0
    finally:
        idx.close()


def test_a_disabled_trail_records_only_that_it_is_off(tmp_path: Path, db_path: Path) -> None:
    """audit_trail=false (benchmarks on loopback only): the chain gets Audit Recording Stopped
    (PS3.15 A.5.3.11) when the trail opens, then nothing."""
    idx = _index(db_path)
    off = AuditTrail(
        idx, key_path=tmp_path / "off.key", source_id="NUBIS", checkpoint_seconds=0, enabled=False
    )
    off.open()
    _fill(off, 3)
    event = audit_events.instances_accessed(
        WHO, patient_id="P", study_uids=["1.2.3"], front_door="dicomweb", request_id="r"
    )
    assert idx.write(off.append_job([event])) == [off.record(event)]
    off.close()
    records = off.scan()
    assert len(records) == 1 and off.head()[0] == 1
    assert records[0].event_dict["event_types"][0]["code"] == "110133"
    assert off.verify().ok
    idx.close()
