"""S3 tiers kept in buckets of their own (nubis.blobs.bucket_tiers), on the suite's real Ceph RGW.

The archive runs as deployed by default (encryption at rest, the ``tier`` job through the job
runner) with ``hot`` in the blobs bucket, ``cold`` in a second bucket and ``archive`` in a third
with storage class GLACIER. What the store did is checked behind its back with a plain boto3
client: each object in exactly one bucket, the one its tier names. Ceph keeps GLACIER objects
readable (no restore semantics); the restore path through tier buckets is proved against a stub
in tests/unit/test_blobs_s3.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from contract import Ceph
from nubis.archive import Archive
from nubis.blobs import s3
from nubis.blobs.bucket_tiers import BucketTierStore
from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.cli.main import app
from nubis.config import load_settings
from nubis.errors import StorageUnavailable
from nubis.index.schema import studies
from nubis.ports.blobs import BlobContext, PlainFile
from nubis.security.policy import system_principal
from nubis.services.retrieve import AS_STORED
from nubis.tiers.rules import parse_tiers
from nubis.tools.synth import dataset_bytes, series_datasets

DAY_MS = 86_400_000
RULES = "modality=MG age<730d -> hot; unread>365d -> archive; unread>30d -> cold"
WHO = system_principal()
MiB = 1 << 20
CONTEXT = BlobContext("default", "1.2", "1.2.3", "1.2.3.4", "0" * 64)


@dataclass(eq=False)  # one study is one object: a key of dictionaries by identity
class Study:
    uid: str
    files: dict[str, bytes]  # SOP Instance UID -> the file as sent


@dataclass(frozen=True)
class Place:
    """A bucket and key prefix, as a plain client sees it."""

    bucket: str
    prefix: str  # ends with "/"

    def objects(self, ceph: Ceph) -> dict[str, str]:
        """Key (without the prefix) -> storage class of every object there."""
        found = {}
        pages = ceph.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", ()):
                found[item["Key"][len(self.prefix) :]] = item.get("StorageClass") or "STANDARD"
        return found


@dataclass(frozen=True)
class Setup:
    archive: Archive
    settings: list[str]  # --set arguments of the same archive, for the CLI
    hot: Place
    cold: Place
    deep: Place  # the archive tier


@pytest.fixture
def setup(ceph: Ceph, new_bucket: Callable[[str], str], tmp_path: Path) -> Iterator[Setup]:
    run = time.time_ns()
    hot = Place(ceph.bucket, f"tier-buckets/{run}/")
    cold = Place(new_bucket("cold"), "cold/")
    deep = Place(new_bucket("archive"), "deep/")
    settings = {
        "durable": "false",
        "jobs_schedule": "",
        "blobs": ceph.url(hot.prefix.rstrip("/")),
        "tiers": f"hot=STANDARD, cold=s3://{cold.bucket}/cold, "
        f"archive=s3://{deep.bucket}/deep?storage_class=GLACIER",
        "lifecycle": RULES,
    }
    archive = Archive(
        load_settings(environ={}, overrides={"data_dir": str(tmp_path / "data"), **settings})
    )
    assert isinstance(archive.blobs, EncryptedBlobStore)
    assert isinstance(archive.blobs.inner, BucketTierStore)
    archive.index.migrate()
    archive.index.open()
    cli = ["--data-dir", str(tmp_path / "data")]
    for name, value in settings.items():
        cli += ["--set", f"{name}={value}"]
    yield Setup(archive, cli, hot, cold, deep)
    archive.index.close()


def _store(archive: Archive, modality: str, seed: int, n: int = 3) -> Study:
    files = {}
    study_uid = ""
    for ds in series_datasets("CT", n_instances=n, rows=32, columns=32, seed=seed):
        ds.Modality = modality
        data = dataset_bytes(ds)
        with archive.spool.writer() as writer:
            writer.write(data)
            spooled = writer.finish()
        outcome = archive.store.store(spooled, principal=WHO)
        assert outcome.ok, outcome.error
        files[ds.SOPInstanceUID] = data
        study_uid = ds.StudyInstanceUID
    return Study(study_uid, files)


def _age(archive: Archive, study: Study, days: int) -> None:
    """Make the study look stored ``days`` ago and never read since."""
    at = int(time.time() * 1000) - days * DAY_MS
    archive.index.write(
        lambda c: c.execute(
            update(studies).where(studies.c.study_uid == study.uid).values(created_at=at)
        )
    )


def _keys(archive: Archive, study: Study) -> set[str]:
    return {inst.blob_key for inst in archive.retrieve.instances(WHO, study.uid)}


def _read_all(archive: Archive, *studies_read: Study) -> None:
    """Retrieve each study whole, byte for byte as stored (the WADO-RS / C-MOVE path)."""
    for study in studies_read:
        for inst in archive.retrieve.instances(WHO, study.uid):
            data = b"".join(archive.retrieve.instance_chunks(inst, AS_STORED))
            assert data == study.files[inst.sop_instance_uid]


def _run_tier_job(archive: Archive) -> dict[str, Any]:
    assert archive.job_runner is not None
    job_id = archive.jobs.enqueue("tier", {})
    assert archive.job_runner.run_once()
    job = archive.jobs.get(job_id)
    assert job is not None and job.state.value == "done", job and job.last_error
    return dict(job.result or {})


def test_the_tier_job_moves_objects_between_buckets(setup: Setup, ceph: Ceph) -> None:
    archive = setup.archive
    ct = _store(archive, "CT", seed=11)
    old = _store(archive, "CT", seed=12)
    fresh = _store(archive, "CT", seed=13)
    _age(archive, ct, 40)
    _age(archive, old, 400)

    def expect(where: dict[Study, str]) -> None:
        """Each study's blobs in exactly the place (and class) its tier names, and no other
        blob anywhere."""
        places = {"hot": setup.hot, "cold": setup.cold, "archive": setup.deep}
        for tier, place in places.items():
            wanted = set().union(*(_keys(archive, s) for s, t in where.items() if t == tier))
            found = place.objects(ceph)
            assert set(found) == wanted, tier
            assert set(found.values()) <= {"GLACIER" if tier == "archive" else "STANDARD"}
        assert archive.lifecycle.mover is not None
        for study, tier in where.items():
            assert {archive.lifecycle.mover.where(k) for k in _keys(archive, study)} == {tier}

    expect({ct: "hot", old: "hot", fresh: "hot"})
    summary = _run_tier_job(archive)
    assert summary["moved_to_cold"] == 3 and summary["moved_to_archive"] == 3
    expect({ct: "cold", old: "archive", fresh: "hot"})
    _read_all(archive, ct, old, fresh)  # every bucket serves the bytes as stored
    assert _run_tier_job(archive) == {"studies": 3}  # nothing left to do

    # Back out of a tier bucket into the blobs bucket, and from one tier bucket to another.
    assert archive.lifecycle.pin("default", ct.uid, "hot")
    assert archive.lifecycle.pin("default", old.uid, "cold")
    summary = _run_tier_job(archive)
    assert summary["moved_to_hot"] == 3 and summary["moved_to_cold"] == 3
    expect({ct: "hot", old: "cold", fresh: "hot"})
    _read_all(archive, ct, old, fresh)

    # The storage report counts by tier from the index and prices a bucket by its class.
    runner = CliRunner()
    result = runner.invoke(app, ["storage", "report", "--json", *setup.settings])
    assert result.exit_code == 0, result.output
    report = {t["tier"]: t for t in json.loads(result.output)["tiers"]}
    sizes = {name: sum(map(len, s.files.values())) for name, s in (("ct", ct), ("old", old))}
    assert (report["cold"]["objects"], report["cold"]["bytes"]) == (3, sizes["old"])
    assert report["hot"]["objects"] == 6 and report["archive"]["objects"] == 0
    assert report["archive"]["target"] == f"s3://{setup.deep.bucket}/deep?storage_class=GLACIER"
    assert report["archive"]["price_per_gb_month"] == 0.0036  # GLACIER's list price
    assert report["cold"]["price_per_gb_month"] == 0.023  # no class named: STANDARD


def test_delete_and_reaper_cover_tier_buckets(setup: Setup, ceph: Ceph) -> None:
    archive = setup.archive
    ct = _store(archive, "CT", seed=21)
    mg = _store(archive, "MG", seed=22, n=2)
    _age(archive, ct, 40)
    assert archive.lifecycle.run()["moved_to_cold"] == 3
    assert set(setup.cold.objects(ceph)) == _keys(archive, ct)

    # An orphan in the tier bucket (a blob no index row names) is reaped; the referenced
    # blobs beside it, and objects not named like our keys, are not.
    client = ceph.client()
    orphan = "f" * 32
    client.put_object(Bucket=setup.cold.bucket, Key=setup.cold.prefix + orphan, Body=b"lost")
    client.put_object(Bucket=setup.cold.bucket, Key=setup.cold.prefix + "README", Body=b"x")
    assert len(list(archive.blobs.list())) == 6  # 5 blobs and the orphan, each once
    report = archive.maintenance.reap(grace_seconds=0)
    assert report.orphans_deleted == 1 and report.doomed_deleted == 0
    assert set(setup.cold.objects(ceph)) == _keys(archive, ct) | {"README"}
    assert set(setup.hot.objects(ceph)) == _keys(archive, mg)
    _read_all(archive, ct, mg)

    # Deleting a study removes its blobs from the tier bucket they are in.
    assert archive.maintenance.delete(WHO, ct.uid) == 3
    assert set(setup.cold.objects(ceph)) == {"README"}
    assert set(setup.hot.objects(ceph)) == _keys(archive, mg)
    assert len(list(archive.blobs.list())) == 2


@pytest.fixture
def two_buckets(
    ceph: Ceph, new_bucket: Callable[[str], str]
) -> tuple[BucketTierStore, Place, Place]:
    """A store with ``hot`` in a prefix of the blobs bucket and ``cold`` in a bucket of its own."""
    main = s3.S3BlobStore(ceph.bucket, f"tier-buckets/{time.time_ns()}", endpoint_url=ceph.endpoint)
    cold = Place(new_bucket("cold"), "cold/")
    store = BucketTierStore(main, parse_tiers(f"hot=STANDARD,cold=s3://{cold.bucket}/cold"))
    return store, Place(main.bucket, main.prefix), cold


def _put(store: BucketTierStore, tmp_path: Path, data: bytes) -> str:
    path = tmp_path / f"spooled-{time.time_ns()}"
    path.write_bytes(data)
    key = store.new_key()
    store.put_file(key, PlainFile(path, len(data)), context=CONTEXT)
    return key


def test_a_move_deletes_the_source_only_once_its_copy_is_checked(
    two_buckets: tuple[BucketTierStore, Place, Place],
    ceph: Ceph,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, hot, cold = two_buckets
    client = ceph.client()

    # A move cut short after its copy (two copies): the next one only deletes the source.
    key = _put(store, tmp_path, b"moved before a crash")
    client.copy_object(
        Bucket=cold.bucket,
        Key=cold.prefix + key,
        CopySource={"Bucket": hot.bucket, "Key": hot.prefix + key},
    )
    store.move(key, "cold")
    assert key not in hot.objects(ceph) and key in cold.objects(ceph)
    assert store.read(key, context=CONTEXT) == b"moved before a crash"

    # Another object under the key in the target (no copy of ours): both are kept.
    key = _put(store, tmp_path, b"the real blob")
    client.put_object(Bucket=cold.bucket, Key=cold.prefix + key, Body=b"something else")
    with pytest.raises(StorageUnavailable, match="not whole"):
        store.move(key, "cold")
    assert key in hot.objects(ceph) and key in cold.objects(ceph)

    # A copy that did not arrive: the source is kept.
    key = _put(store, tmp_path, b"never copied")
    monkeypatch.setattr(s3.S3BlobStore, "copy_from", lambda *args: None)
    with pytest.raises(StorageUnavailable, match="not whole"):
        store.move(key, "cold")
    assert key in hot.objects(ceph) and key not in cold.objects(ceph)
    assert store.read(key, context=CONTEXT) == b"never copied"


def test_reads_follow_a_blob_that_moves(
    two_buckets: tuple[BucketTierStore, Place, Place],
    ceph: Ceph,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, hot, cold = two_buckets
    data = bytes(range(256)) * (3 * MiB // 256)
    key = _put(store, tmp_path, data)

    # Moved back to the blobs bucket between a look there and a look in the tier bucket: the
    # read looks again.
    store.move(key, "cold")
    tier_bucket = store.tiers["cold"].store
    looked = tier_bucket.read

    def moved_meanwhile(*args: Any, **kwargs: Any) -> bytes:
        monkeypatch.setattr(tier_bucket, "read", looked)
        store.move(key, "hot")
        return looked(*args, **kwargs)

    monkeypatch.setattr(tier_bucket, "read", moved_meanwhile)
    assert store.read(key, 5, 10, context=CONTEXT) == data[5:15]
    assert store.tier_of(key) == "hot" and key in hot.objects(ceph)

    # A file opened in one bucket reads on after the blob moved to another.
    with store.open(key, context=CONTEXT) as f:
        assert f.read(100) == data[:100]
        store.move(key, "cold")
        f.seek(2 * MiB)
        assert f.read(MiB) == data[2 * MiB : 3 * MiB]
    assert store.tier_of(key) == "cold" and key in cold.objects(ceph)


def test_large_objects_move_part_by_part(
    two_buckets: tuple[BucketTierStore, Place, Place],
    ceph: Ceph,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Objects too large for one CopyObject (5 GiB on S3; 8 MiB here) are copied between
    buckets in parts (UploadPartCopy), checked, and only then deleted from the source."""
    monkeypatch.setattr(s3, "_MAX_COPY", 8 * MiB)
    monkeypatch.setattr(s3, "_COPY_PART", 5 * MiB)
    store, hot, cold = two_buckets
    data = bytes(range(256)) * (21 * MiB // 256) + b"tail"
    key = _put(store, tmp_path, data)

    store.move(key, "cold")
    head = ceph.client().head_object(Bucket=cold.bucket, Key=cold.prefix + key)
    assert head["ContentLength"] == len(data) and head["ETag"].strip('"').endswith("-5")
    assert hot.objects(ceph) == {}
    assert store.read(key, context=CONTEXT) == data

    store.move(key, "hot")
    assert hot.objects(ceph) == {key: "STANDARD"} and cold.objects(ceph) == {}
    assert b"".join(store.iter_chunks(key, context=CONTEXT)) == data
