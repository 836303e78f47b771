"""The key provider contract: every keyring passes the same tests.

Run over the local keyring (one file, flock'ed) and the index keyring (patient keys in the
index, KEKs in a read-only secret) on SQLite and on PostgreSQL. A *node* is a second provider
object on the same keys (another worker process, another machine), so what one node does the
other must see: a rotation, a shred, a retirement, a patient key made at the same moment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from sqlalchemy import Connection, func, select, update

from nubis.crypto import index_keys
from nubis.crypto.index_keys import IndexKeyring, KekSecret, SecretSource
from nubis.crypto.local_keys import LocalKeyring
from nubis.crypto.patient_keys import PatientKey
from nubis.errors import BadRequest, BlobUnreadable, KeyErased, KeyUnavailable
from nubis.index.database import Index
from nubis.index.schema import patient_keys
from nubis.ports.keys import KeyProvider, WrappedKey

DEK = bytes(range(32))
AAD = b"the object's identity"


@dataclass
class Keyring:
    """One keyring and the nodes that share it; ``rotate`` and ``drop`` act as an operator."""

    kind: str
    make_node: Callable[[], KeyProvider]
    rotate: Callable[[], str]
    drop: Callable[[str], None]  # remove a KEK once nothing needs it
    tamper_patient_key: Callable[[str], None]
    nodes: list[KeyProvider] = field(default_factory=list)

    def node(self) -> KeyProvider:
        provider = self.make_node()
        self.nodes.append(provider)
        return provider


def _local(tmp_path: Path) -> Keyring:
    path = tmp_path / "keyring.jsonl"
    LocalKeyring(path, durable=False)

    def tamper(subject: str) -> None:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if f'"id":"{subject}"' in line and '"t":"patient"' in line:
                # Another valid base64 key of the same length: only the tag can tell.
                start = line.index('"key":"') + 7
                lines[i] = line[:start] + ("B" if line[start] == "A" else "A") + line[start + 1 :]
        path.write_text("\n".join(lines) + "\n")

    return Keyring(
        "local",
        lambda: LocalKeyring(path, durable=False, create=False),
        lambda: LocalKeyring(path, durable=False).rotate(),
        lambda kek_id: LocalKeyring(path, durable=False).remove_kek(kek_id),
        tamper,
    )


def _index(url: str, tmp_path: Path, kind: str) -> Iterator[Keyring]:
    secret = tmp_path / "nubis-keks"
    secret.write_text(KekSecret.new().render())
    secret.chmod(0o400)
    indexes: list[Index] = []

    def node() -> IndexKeyring:
        index = Index(url, durable=False)
        index.migrate()  # every node migrates at start; the second finds nothing to do
        index.open()
        indexes.append(index)
        return IndexKeyring(index, SecretSource(path=secret))

    def replace_secret(new: KekSecret) -> None:
        # As a secret manager updates a mounted secret: a new file renamed into place.
        staged = tmp_path / ".nubis-keks.new"
        staged.write_text(new.render())
        staged.chmod(0o400)
        staged.replace(secret)

    def rotate() -> str:
        new = KekSecret.parse(secret.read_text(), "test").rotated()
        replace_secret(new)
        return new.current

    def drop(kek_id: str) -> None:
        replace_secret(KekSecret.parse(secret.read_text(), "test").without(kek_id))

    def tamper(subject: str) -> None:
        def job(conn):  # type: ignore[no-untyped-def]
            sealed = conn.scalar(
                select(patient_keys.c.wrapped).where(patient_keys.c.subject == subject)
            )
            changed = bytes(sealed[:-1]) + bytes([sealed[-1] ^ 1])
            where = patient_keys.c.subject == subject
            conn.execute(update(patient_keys).where(where).values(wrapped=changed))

        indexes[0].write(job)

    keyring = Keyring(kind, node, rotate, drop, tamper)
    try:
        yield keyring
    finally:
        for index in indexes:
            index.close()


@pytest.fixture(params=["local", "index-sqlite", "index-postgresql"])
def keyring(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Keyring]:
    if request.param == "local":
        yield _local(tmp_path)
    elif request.param == "index-sqlite":
        yield from _index(f"sqlite:///{tmp_path / 'index.sqlite'}", tmp_path, request.param)
    else:
        postgres = request.getfixturevalue("postgres")
        url = postgres.database(f"keys_{abs(hash(request.node.nodeid)):x}")
        yield from _index(url, tmp_path, request.param)


def _wrap(node: KeyProvider, patient: str, partition: str = "default") -> WrappedKey:
    return node.wrap(DEK, partition=partition, patient_id=patient, aad=AAD)


def test_wrap_unwrap_one_key_per_patient(keyring: Keyring) -> None:
    node = keyring.node()
    first = _wrap(node, "P1")
    assert node.unwrap(first, aad=AAD) == DEK
    assert first.key_id == node.current_key_id == "k1"
    assert _wrap(node, "P1").subject == first.subject
    assert _wrap(node, "P2").subject != first.subject
    assert _wrap(node, "P1", partition="other").subject != first.subject
    assert b"P1" not in first.subject.encode()
    # Another node reads it, and its own wrap for the patient uses the same key.
    other = keyring.node()
    assert other.unwrap(first, aad=AAD) == DEK
    assert _wrap(other, "P1").subject == first.subject
    with pytest.raises(BlobUnreadable):
        node.unwrap(first, aad=b"another object's identity")
    # The id a header names for a patient, without wrapping (what a re-key compares), on any
    # node; a patient's key is made on first use, as a wrap makes it.
    assert node.patient_key_id("default", "P1") == other.patient_key_id("default", "P1")
    assert other.patient_key_id("default", "P1") == first.subject
    fresh = other.patient_key_id("default", "P3")
    assert _wrap(node, "P3").subject == fresh != first.subject


def test_rotation_keeps_old_blobs_readable(keyring: Keyring) -> None:
    node, other = keyring.node(), keyring.node()
    old = _wrap(node, "P1")
    assert keyring.rotate() == "k2"
    # Both nodes see the new version without a restart.
    for provider in (node, other):
        assert provider.current_key_id == "k2"
        assert provider.key_ids() == ["k1", "k2"]
    new = _wrap(other, "P1")
    assert new.key_id == "k2" and new.subject == old.subject
    for provider in (node, other):
        assert provider.unwrap(old, aad=AAD) == DEK
        assert provider.unwrap(new, aad=AAD) == DEK


def test_a_shred_commits_its_companion_only_when_it_erases(keyring: Keyring) -> None:
    """``also`` (the replication outbox's entries, nubis.services.shredding) runs in the write
    that lists the erased keys in the index, and not for a shred that erases nothing. The
    local keyring of this fixture has no index (an archive's has): nothing to commit with."""
    node = keyring.node()
    _wrap(node, "DOOMED")
    calls: list[object] = []
    assert node.shred_patient("default", "DOOMED", also=calls.append) == 1
    assert len(calls) == (0 if keyring.kind == "local" else 1)
    assert node.shred_patient("default", "DOOMED", also=calls.append) == 0
    assert len(calls) == (0 if keyring.kind == "local" else 1)


def test_shredding_makes_only_that_patients_blobs_unreadable(keyring: Keyring) -> None:
    node, shredder = keyring.node(), keyring.node()
    doomed = [_wrap(node, "DOOMED")]
    keyring.rotate()  # a patient's blobs under two KEK versions
    doomed.append(_wrap(node, "DOOMED"))
    kept = _wrap(node, "KEPT")
    same_id_other_tenant = _wrap(node, "DOOMED", partition="t2")
    for wrapped in doomed:  # read once, so a node that caches would have it cached
        assert node.unwrap(wrapped, aad=AAD) == DEK

    assert shredder.shred_patient("default", "DOOMED") == 1
    for provider in (node, shredder):
        for wrapped in doomed:
            with pytest.raises(KeyErased) as info:
                provider.unwrap(wrapped, aad=AAD)
            assert info.value.http_status == 410
        assert provider.unwrap(kept, aad=AAD) == DEK
        assert provider.unwrap(same_id_other_tenant, aad=AAD) == DEK
    assert node.shred_patient("default", "DOOMED") == 0
    # A later object of the patient gets a new key; the old blobs stay erased.
    again = _wrap(node, "DOOMED")
    assert again.subject != doomed[0].subject
    assert shredder.unwrap(again, aad=AAD) == DEK
    with pytest.raises(KeyErased):
        shredder.unwrap(doomed[0], aad=AAD)


def test_tampered_keys_fail(keyring: Keyring) -> None:
    node = keyring.node()
    wrapped = _wrap(node, "P1")
    altered = bytes([wrapped.ciphertext[0] ^ 1]) + wrapped.ciphertext[1:]
    with pytest.raises(BlobUnreadable):
        node.unwrap(replace(wrapped, ciphertext=altered), aad=AAD)
    keyring.rotate()
    with pytest.raises(BlobUnreadable):  # relabelled with another KEK the keyring has
        node.unwrap(replace(wrapped, key_id="k2"), aad=AAD)
    other = _wrap(node, "P2")
    with pytest.raises(BlobUnreadable):  # moved under another patient's key
        node.unwrap(replace(wrapped, subject=other.subject), aad=AAD)
    with pytest.raises(KeyUnavailable):
        node.unwrap(replace(wrapped, key_id="k9"), aad=AAD)
    with pytest.raises(KeyUnavailable):
        node.unwrap(replace(wrapped, subject="0" * 32), aad=AAD)
    # The stored patient key itself altered: refused, never a wrong key.
    keyring.tamper_patient_key(wrapped.subject)
    with pytest.raises(KeyUnavailable, match="does not authenticate"):
        keyring.node().unwrap(wrapped, aad=AAD)


def test_two_nodes_making_a_patients_first_key_at_once_agree(
    keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = [keyring.node(), keyring.node()]
    lost: list[str] = []  # index keyring: inserts that found the ref taken and read it back
    insert = index_keys._insert

    def counting_insert(conn: Connection, ref: str, fresh: PatientKey) -> PatientKey:
        got = insert(conn, ref, fresh)
        if got.subject != fresh.subject:
            lost.append(ref)
        return got

    monkeypatch.setattr(index_keys, "_insert", counting_insert)
    threads_per_node = 4
    patients = [f"RACE-{n}" for n in range(10)]
    subjects: dict[str, list[str]] = {p: [] for p in patients}
    errors: list[BaseException] = []
    barriers = {p: threading.Barrier(len(nodes) * threads_per_node) for p in patients}

    def run(node: KeyProvider) -> None:
        try:
            for patient in patients:
                barriers[patient].wait(timeout=60)  # every thread asks at the same moment
                subjects[patient].append(_wrap(node, patient).subject)
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(node,))
        for node in nodes
        for _ in range(threads_per_node)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    for patient in patients:
        assert len(subjects[patient]) == len(threads)
        assert len(set(subjects[patient])) == 1, patient
    if isinstance(nodes[0], IndexKeyring):
        with nodes[0].index.reading() as conn:
            count = conn.scalar(select(func.count()).select_from(patient_keys))
        assert count == len(patients)
        assert lost, "no insert lost a race: the test did not make two at once"


def test_retirement_rewraps_patient_keys_so_the_old_kek_can_go(keyring: Keyring) -> None:
    node, other = keyring.node(), keyring.node()
    under_k1 = _wrap(node, "P1")  # P1's patient key and this blob's DEK: both under k1
    keyring.rotate()
    under_k2 = _wrap(node, "P1")  # the DEK under k2, the patient key still wrapped by k1
    assert node.unwrap(under_k2, aad=AAD) == DEK  # a node that caches has it, wrapped by k1
    with pytest.raises(BadRequest):
        node.retire("k2")  # the current one
    with pytest.raises(KeyUnavailable):
        node.retire("k7")
    assert other.wrapped_by("k1") == 1
    assert other.retire("k1") == 1
    assert node.wrapped_by("k1") == 0 and node.wrapped_by("k2") == 1
    assert other.retire("k1") == 0  # nothing left: idempotent
    for provider in (node, other):  # nothing changed for readers
        assert provider.unwrap(under_k1, aad=AAD) == DEK
        assert provider.unwrap(under_k2, aad=AAD) == DEK
    # k1 goes: the blob naming k2 needs only k2 now; the one naming k1 cannot be read, which is
    # why `nubis keys retire` checks every stored object's header before it lets k1 go.
    keyring.drop("k1")
    for provider in (node, other):
        assert provider.key_ids() == ["k2"]
        assert provider.unwrap(under_k2, aad=AAD) == DEK
        with pytest.raises(KeyUnavailable):
            provider.unwrap(under_k1, aad=AAD)
        assert provider.unwrap(_wrap(provider, "P2"), aad=AAD) == DEK
