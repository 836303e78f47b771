"""The index keyring's own parts: its KEK secret (format, file mode, environment variable),
what the index holds, and a node left with an old secret after a retirement."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubis.crypto.index_keys import IndexKeyring, KekSecret, SecretSource
from nubis.crypto.patient_keys import b64
from nubis.crypto.registry import open_key_provider
from nubis.errors import BadRequest, KeyUnavailable
from nubis.index.database import Index

DEK = bytes(32)
KEY = b64(bytes(range(32)))


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    idx = Index(f"sqlite:///{tmp_path / 'index.sqlite'}", durable=False)
    idx.migrate()
    idx.open()
    yield idx
    idx.close()


def _secret_file(path: Path, secret: KekSecret, mode: int = 0o400) -> Path:
    path.write_text(secret.render())
    path.chmod(mode)
    return path


def test_secret_round_trip_rotation_and_removal() -> None:
    secret = KekSecret.new()
    assert KekSecret.parse(secret.render(), "t") == secret
    rotated = secret.rotated().rotated()
    assert rotated.ids == ["k1", "k2", "k3"] and rotated.current == "k3"
    assert rotated.ref_key == secret.ref_key  # never changes: it finds every patient's key
    assert rotated.without("k1").ids == ["k2", "k3"]
    assert rotated.without("k1").rotated().current == "k4"  # an id is never handed out twice
    with pytest.raises(BadRequest):
        rotated.without("k3")
    # Environment variables: the same content on one line.
    assert KekSecret.parse(f"ref={KEY} k1={KEY}  k3={KEY}", "t").current == "k3"


@pytest.mark.parametrize(
    "text",
    [
        "",
        f"ref={KEY}",  # no KEK
        f"k1={KEY}",  # no ref
        f"ref={KEY} ref={KEY} k1={KEY}",
        f"ref={KEY} k2={KEY} k1={KEY}",  # the last must be the newest
        f"ref={KEY} k1={KEY} k1={KEY}",
        f"ref={KEY} k1={b64(bytes(16))}",  # not 32 bytes
        f"ref={KEY} k1=not-base64!",
        f"ref={KEY} k1",
        f"ref={KEY} key1={KEY}",
        f"ref={KEY} k0={KEY}",
    ],
)
def test_a_doubtful_secret_is_refused(text: str) -> None:
    with pytest.raises(KeyUnavailable, match="KEK secret"):
        KekSecret.parse(text, "test")


def test_a_secret_file_others_may_read_or_a_group_write_is_refused(tmp_path: Path) -> None:
    path = _secret_file(tmp_path / "keks", KekSecret.new(), 0o644)
    with pytest.raises(KeyUnavailable, match="chmod 0640"):
        SecretSource(path=path).get()
    path.chmod(0o660)
    with pytest.raises(KeyUnavailable, match="chmod 0640"):
        SecretSource(path=path).get()
    path.chmod(0o440)  # group-readable is how Kubernetes gives a secret to an fsGroup
    assert SecretSource(path=path).get().ids == ["k1"]
    with pytest.raises(KeyUnavailable, match="cannot be read"):
        SecretSource(path=tmp_path / "missing").get()


def test_keyring_urls(tmp_path: Path, index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = KekSecret.new()
    path = _secret_file(tmp_path / "nubis keks", secret)
    by_file = open_key_provider(path.as_uri().replace("file:", "index+file:"), index=index)
    assert isinstance(by_file, IndexKeyring) and by_file.secret.path == path
    monkeypatch.setenv("NUBIS_TEST_KEKS", secret.render())
    by_env = open_key_provider("index+env:NUBIS_TEST_KEKS", index=index)
    wrapped = by_file.wrap(DEK, partition="p", patient_id="P1", aad=b"")
    assert by_env.unwrap(wrapped, aad=b"") == DEK  # the same secret, however it is given
    monkeypatch.delenv("NUBIS_TEST_KEKS")
    with pytest.raises(KeyUnavailable, match="is not set"):
        open_key_provider("index+env:NUBIS_TEST_KEKS", index=index)
    with pytest.raises(BadRequest, match="nubis keys rotate"):
        by_file.rotate()  # nubis reads the secret, never writes it


def test_the_index_names_no_patient_and_holds_no_usable_key(tmp_path: Path, index: Index) -> None:
    path = _secret_file(tmp_path / "keks", KekSecret.new())
    keys = IndexKeyring(index, SecretSource(path=path))
    keys.wrap(DEK, partition="default", patient_id="PATIENT-SECRET-ID", aad=b"")
    secret = KekSecret.parse(path.read_text(), "t")
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("index.sqlite*"))
    assert b"PATIENT-SECRET-ID" not in raw
    assert secret.get("k1") not in raw and secret.ref_key not in raw
    with sqlite3.connect(tmp_path / "index.sqlite") as conn:
        [(ref, kek_id)] = conn.execute("SELECT ref, kek_id FROM patient_keys").fetchall()
    assert kek_id == "k1" and ref == keys.patient_ref("default", "PATIENT-SECRET-ID")


def test_a_node_left_with_an_old_secret_refuses_a_retired_kek(tmp_path: Path, index: Index) -> None:
    old = KekSecret.new()
    current = IndexKeyring(index, SecretSource(path=_secret_file(tmp_path / "new", old.rotated())))
    stale = IndexKeyring(index, SecretSource(path=_secret_file(tmp_path / "old", old)))
    known = stale.wrap(DEK, partition="p", patient_id="KNOWN", aad=b"")
    assert current.retire("k1") == 1
    # Keys or blobs made under k1 now would need the KEK the operator is about to remove.
    for patient in ("KNOWN", "NEW"):
        with pytest.raises(KeyUnavailable, match="retired"):
            stale.wrap(DEK, partition="p", patient_id=patient, aad=b"")
    # Nor can it read: the patient key is wrapped by k2 now, which its secret lacks. Hence
    # "retire only once every node has the current secret".
    with pytest.raises(KeyUnavailable, match="'k2' is not in the KEK secret"):
        stale.unwrap(known, aad=b"")
    assert current.unwrap(known, aad=b"") == DEK
    assert current.wrap(DEK, partition="p", patient_id="NEW", aad=b"").key_id == "k2"
