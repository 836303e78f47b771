"""Stateless nodes (issue 5): two ``nubis serve`` processes share a PostgreSQL index and a Ceph
RGW bucket, and nothing else a request needs. What one node stores, the other serves, finds and
deletes; a node SIGKILLed in the middle of ingest loses no acknowledged object, leaves no index
row without its blob, and the orphans it leaves are reaped when it comes back. The change feed
(issue 15) is read on the surviving node across that SIGKILL, and misses or repeats no entry.

Both nodes are given the same read-only secrets, as every node of a deployment is: the KEK
secret of the index keyring (patient keys live in the index, so no node writes a key file) and
the audit signing key. Neither node writes to them, and each has its own data folder for its
temporary spool.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pydicom
import pytest

from contract import Ceph
from contract.test_s3_archive import stow
from integration import AUTH
from integration.cli import nubis_cli
from integration.server import ACCEPT_AS_STORED, Server, parse_multipart, start_server
from integration.test_durability import BATCH, Ledger, UidMaker, _client, _templates
from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.blobs.registry import open_blob_store
from nubis.crypto.index_keys import KekSecret
from nubis.crypto.registry import open_key_provider
from nubis.index.database import Index
from nubis.ports.blobs import BlobContext
from nubis.security.audit import SigningKey
from nubis.tools import synth


@dataclass
class Cluster:
    index_url: str
    blobs_url: str
    secrets: Path
    env: dict[str, str]
    nodes: list[Server]

    def secrets_as_given(self) -> dict[str, tuple[int, bytes]]:
        """Every file of the secrets folder: mode and content (to show no node wrote there)."""
        return {p.name: (p.stat().st_mode, p.read_bytes()) for p in self.secrets.iterdir()}

    def start(self, tmp_path: Path, name: str, **extra: str) -> Server:
        node = start_server(tmp_path / name, env={**self.env, **extra}, log_level="warning")
        self.nodes.append(node)
        return node

    def rows(self) -> list[tuple[str, str, int, str, str, str, str]]:
        """(SOP UID, blob key, size, SHA-256, partition, study, series) of every instance."""
        with psycopg.connect(self.index_url) as conn:
            return list(
                conn.execute(
                    "SELECT i.sop_instance_uid, i.blob_key, i.size, i.sha256, i.partition, "
                    "st.study_uid, se.series_uid FROM instances i "
                    "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk"
                )
            )

    def patient_refs(self) -> list[str]:
        with psycopg.connect(self.index_url) as conn:
            return [r[0] for r in conn.execute("SELECT ref FROM patient_keys")]

    def doomed(self) -> set[str]:
        with psycopg.connect(self.index_url) as conn:
            return {r[0] for r in conn.execute("SELECT blob_key FROM doomed_blobs")}

    def feed_seqs(self) -> list[int]:
        """Every Sequence the change feed's table holds: the entries that committed."""
        with psycopg.connect(self.index_url) as conn:
            return [r[0] for r in conn.execute("SELECT seq FROM change_feed ORDER BY seq")]


@dataclass
class FeedReader:
    """A client of ``GET /changefeed`` paging with its cursor, as docs/events.md tells one to:
    the next page starts after the last Sequence listed, a short page means up to date."""

    server: Server
    limit: int = 7  # small pages: many cursor steps while the clients ingest
    entries: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def read(self, stop: threading.Event) -> None:
        """Page continuously; once ``stop`` is set, page to the end and return."""
        since = 0
        with httpx.Client(timeout=60, headers=AUTH) as client:
            while True:
                last_round = stop.is_set()
                response = client.get(
                    f"{self.server.url}/changefeed", params={"since": since, "limit": self.limit}
                )
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text[:300]}")
                    return
                page = response.json()
                self.entries.extend(page)
                if page:
                    since = page[-1]["Sequence"]
                if len(page) < self.limit:
                    if last_round:
                        return
                    time.sleep(0.005)


@pytest.fixture
def cluster(postgres, ceph: Ceph, tmp_path: Path) -> Iterator[Cluster]:  # type: ignore[no-untyped-def]
    index_url = postgres.database(f"scale_out_{time.monotonic_ns()}")
    blobs_url = ceph.url(f"scale-out-{time.monotonic_ns()}")
    # Made before any node starts, as a deployment provisions them (nubis keys new-secret,
    # nubis audit key), and read-only from then on.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "nubis-keks").write_text(KekSecret.new().render())
    SigningKey.load_or_create(secrets / "audit-signing.key")
    for path in secrets.iterdir():
        path.chmod(0o400)
    env = {
        "NUBIS_INDEX": index_url,
        "NUBIS_BLOBS": blobs_url,
        "NUBIS_KEYRING": "index+" + (secrets / "nubis-keks").as_uri(),
        "NUBIS_AUDIT_KEY": str(secrets / "audit-signing.key"),
        "NUBIS_WORKERS": "1",
        "NUBIS_DURABLE": "false",
    }
    running = Cluster(index_url, blobs_url, secrets, env, [])
    given = running.secrets_as_given()
    try:
        yield running
    finally:
        for node in running.nodes:
            node.kill()
    assert running.secrets_as_given() == given
    for node in running.nodes:
        assert not list(node.data_dir.glob("keyring*")), "a node made a local keyring"


def _get(client: httpx.Client, url: str, **headers: str) -> httpx.Response:
    return client.get(url, headers={**AUTH, **headers}, timeout=60)


def test_store_on_one_node_read_query_delete_on_the_other(cluster: Cluster, tmp_path: Path) -> None:
    a = cluster.start(tmp_path, "node-a")
    b = cluster.start(tmp_path, "node-b")
    patient = synth.PatientSpec("NUBIS-SCALE-01", "Scale^Out", "19700101", "F")
    files = synth.make_ct_series(
        tmp_path / "ct", n_instances=6, rows=128, columns=128, patient=patient
    )
    response = stow(a, files)
    assert response.status_code == 200, response.text
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    with httpx.Client() as client:
        found = _get(client, f"{b.dicomweb}/studies?PatientID={patient.patient_id}")
        assert found.status_code == 200 and len(found.json()) == 1
        assert found.json()[0]["00201208"]["Value"] == [6]  # NumberOfStudyRelatedInstances
        whole = _get(client, f"{b.dicomweb}/studies/{study}", Accept=ACCEPT_AS_STORED)
        assert whole.status_code == 200
        got = parse_multipart(whole.content, whole.headers["content-type"])
        assert sorted(got) == sorted(p.read_bytes() for p in files)

        # The patient's key is in the index, so a shred run from an operator's machine (given
        # the same secrets, sharing no disk with the nodes) reaches both at their next read.
        assert len(cluster.patient_refs()) == 1
        shred = nubis_cli("keys", "shred-patient", patient.patient_id, "--yes",
                          "--data-dir", str(tmp_path / "operator"), env=cluster.env)  # fmt: skip
        assert shred.returncode == 0, shred.stdout + shred.stderr
        assert cluster.patient_refs() == []
        for node in (a, b):
            erased = _get(client, f"{node.dicomweb}/studies/{study}", Accept=ACCEPT_AS_STORED)
            assert erased.status_code == 410, erased.text

        deleted = client.delete(f"{b.dicomweb}/studies/{study}", headers=AUTH)
        assert deleted.status_code in (200, 204), deleted.text
        assert _get(client, f"{a.dicomweb}/studies?PatientID={patient.patient_id}").json() == []
        gone = _get(client, f"{a.dicomweb}/studies/{study}", Accept=ACCEPT_AS_STORED)
        assert gone.status_code == 404
    assert cluster.rows() == []


def test_a_node_killed_mid_ingest_loses_nothing_acknowledged(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Clients ingest on node A (and one on node B, so both nodes' commits interleave in the
    feed) while a reader pages the change feed on node B; A is SIGKILLed mid-ingest.

    The change feed across the kill (issue 15, "How it is tested": no gap, no duplicate):
    on PostgreSQL a Sequence is an identity drawn at insert time, so a transaction that rolls
    back (the killed node's in-flight stores) burns its number and leaves a hole in the
    numbers, which nubis.index.feed_sql allows: it hides nothing. "No gap" is therefore "no
    committed entry skipped by the reader": what it read is exactly what the feed's table holds
    once things settle, every acknowledged instance has one create entry, and no entry names
    an instance the index lacks (the killed transactions' entries never appear).
    """
    # Orphans are reaped at start, however young: in this test nothing writes while a node
    # starts (in production the grace period protects other nodes' in-flight stores).
    a = cluster.start(tmp_path, "node-a", NUBIS_ORPHAN_GRACE_SECONDS="0")
    b = cluster.start(tmp_path, "node-b")
    templates = [_templates(tmp_path / f"tpl{i}", seed=300 + i) for i in range(4)]
    ledger, on_b, uids, stop = Ledger(), Ledger(), UidMaker(), threading.Event()
    clients = [
        threading.Thread(target=_client, args=(node, t, uids, got, stop))
        for (node, got), t in zip(((a, ledger),) * 3 + ((b, on_b),), templates, strict=True)
    ]
    feed, feed_read = FeedReader(b), threading.Event()
    reader = threading.Thread(target=feed.read, args=(feed_read,))
    reader.start()
    for thread in clients:
        thread.start()
    # Killed once a few batches are acknowledged, with the clients' next ones in flight: as
    # soon as there is something to lose, rather than after a fixed time.
    deadline = time.monotonic() + 60
    while len(ledger.acknowledged) < 3 * BATCH and time.monotonic() < deadline:
        time.sleep(0.02)
    a.kill()
    stop.set()
    for thread in clients:
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert ledger.acknowledged, "node A acknowledged nothing before the kill"
    assert ledger.interrupted, "the kill cut no request"
    assert ledger.unexpected == []
    assert not on_b.interrupted and on_b.unexpected == []
    # From here on, what either node was sent and acknowledged.
    ledger.sent.update(on_b.sent)
    ledger.acknowledged.update(on_b.acknowledged)
    # Settled: nothing writes any more; the reader pages to the end of the feed.
    feed_read.set()
    reader.join(timeout=60)
    assert not reader.is_alive() and feed.failures == []

    # Every acknowledged object is served, byte-exact, by the node that survived.
    with httpx.Client(timeout=60, headers=AUTH) as client, ThreadPoolExecutor(4) as pool:
        acknowledged = list(ledger.acknowledged.values())
        bodies = list(
            pool.map(
                lambda s: client.get(s.url(b), headers={"Accept": ACCEPT_AS_STORED}),
                acknowledged,
            )
        )
    for sent, response in zip(acknowledged, bodies, strict=True):
        assert response.status_code == 200, (sent.sop_uid, response.status_code)
        [data] = parse_multipart(response.content, response.headers["content-type"])
        assert data == sent.data()

    # Every index row has its blob in the bucket, holding exactly what a client sent, under
    # keys that only the index and the KEK secret hold.
    store = open_blob_store(cluster.blobs_url)
    index = Index(cluster.index_url)
    keys = open_key_provider(cluster.env["NUBIS_KEYRING"], index=index)
    plain = EncryptedBlobStore(store, keys)
    rows = cluster.rows()
    assert set(ledger.acknowledged) <= {r[0] for r in rows}

    # The change feed as the reader paged it across the kill: no entry twice, in order, none
    # of the committed ones skipped, one create per acknowledged instance and none for an
    # instance the index lacks.
    seqs = [e["Sequence"] for e in feed.entries]
    assert len(seqs) == len(set(seqs)), "an entry was listed twice"
    assert seqs == sorted(seqs), "the feed went back in Sequence"
    assert seqs == cluster.feed_seqs(), "the reader skipped a committed entry"
    creates = Counter(e["SopInstanceUid"] for e in feed.entries if e["Action"] == "create")
    assert {sop: creates[sop] for sop in ledger.acknowledged} == dict.fromkeys(
        ledger.acknowledged, 1
    )
    assert set(creates) <= {r[0] for r in rows}, "an entry names an instance never stored"
    for sop, key, size, sha, partition, study, series in rows:
        data = plain.read(key, context=BlobContext(partition, study, series, sop, sha))
        assert len(data) == size and hashlib.sha256(data).hexdigest() == sha
        assert data == ledger.sent[sop].data()
    index.close()

    # Node A comes back: whatever its crash left in the bucket without an index row is reaped.
    cluster.nodes.remove(a)
    cluster.start(tmp_path, "node-a", NUBIS_ORPHAN_GRACE_SECONDS="0")
    referenced = {r[1] for r in rows} | cluster.doomed()
    assert {info.key for info in store.list()} <= referenced
