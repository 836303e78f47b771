"""The local keyring: file mode, rotation, crypto-shredding, several processes sharing it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.blobs.filesystem import FileBlobStore
from nubis.cli.main import app
from nubis.crypto.envelope import HEADER_RESERVE, parse_header
from nubis.crypto.local_keys import LocalKeyring
from nubis.errors import BadRequest, BlobUnreadable, KeyErased, KeyUnavailable
from nubis.ports.blobs import BlobContext, PlainFile


def _ctx(sop: str, patient: str, partition: str = "default") -> BlobContext:
    return BlobContext(partition, "1.2.3", "1.2.3.4", sop, "00" * 32, patient_id=patient)


class Archive:
    """An encrypted store over a folder, with helpers to put and read small blobs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = LocalKeyring(root / "keyring.jsonl", durable=False)
        self.store = EncryptedBlobStore(FileBlobStore(root / "blobs", durable=False), self.keys)
        self.n = 0

    def put(self, data: bytes, ctx: BlobContext) -> str:
        self.n += 1
        path = self.root / f"src{self.n}"
        path.write_bytes(data)
        key = self.store.new_key()
        self.store.put_file(key, PlainFile(path, len(data)), context=ctx)
        return key

    def key_id(self, key: str) -> str:
        blob = self.root / "blobs" / key[:2] / key[2:4] / key
        wrapped = parse_header(blob.read_bytes()[:HEADER_RESERVE]).wrapped
        assert wrapped is not None
        return wrapped.key_id


def test_keyring_is_created_private_and_names_no_patient(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.put(b"x", _ctx("1.1", "PATIENT-SECRET-ID"))
    path = tmp_path / "keyring.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"PATIENT-SECRET-ID" not in path.read_bytes()
    assert archive.keys.key_ids() == ["k1"]


def test_a_keyring_others_can_read_is_refused(tmp_path: Path) -> None:
    LocalKeyring(tmp_path / "keyring.jsonl")
    os.chmod(tmp_path / "keyring.jsonl", 0o644)
    with pytest.raises(KeyUnavailable, match="chmod 600"):
        LocalKeyring(tmp_path / "keyring.jsonl")


def test_missing_keyring_is_unavailable_when_not_created(tmp_path: Path) -> None:
    with pytest.raises(KeyUnavailable):
        LocalKeyring(tmp_path / "keyring.jsonl", create=False)


def test_rotation_keeps_old_blobs_readable_and_new_ones_use_the_new_key(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    old = archive.put(b"before", _ctx("1.1", "P1"))
    assert archive.key_id(old) == "k1"
    assert archive.keys.rotate() == "k2"
    new = archive.put(b"after", _ctx("1.2", "P1"))
    assert archive.key_id(new) == "k2"
    assert archive.keys.current_key_id == "k2"
    assert archive.store.read(old, context=_ctx("1.1", "P1")) == b"before"
    assert archive.store.read(new, context=_ctx("1.2", "P1")) == b"after"
    # A fresh process sees both versions.
    again = LocalKeyring(tmp_path / "keyring.jsonl")
    assert again.key_ids() == ["k1", "k2"] and again.current_key_id == "k2"


def test_rotation_by_another_process_reaches_a_running_one(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.put(b"x", _ctx("1.1", "P1"))
    LocalKeyring(tmp_path / "keyring.jsonl").rotate()  # e.g. `nubis keys rotate`
    assert archive.key_id(archive.put(b"y", _ctx("1.2", "P1"))) == "k2"


def test_shredding_a_patient_makes_only_their_blobs_unreadable(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    mine = [archive.put(b"mine %d" % i, _ctx(f"1.{i}", "DOOMED")) for i in range(3)]
    archive.keys.rotate()  # a patient's blobs under two KEK versions
    mine.append(archive.put(b"mine 3", _ctx("1.3", "DOOMED")))
    theirs = archive.put(b"theirs", _ctx("2.1", "KEPT"))
    same_id_other_tenant = archive.put(b"tenant", _ctx("3.1", "DOOMED", partition="t2"))
    # Shredded from another process (the CLI) while this one holds cached keys.
    assert LocalKeyring(tmp_path / "keyring.jsonl").shred_patient("default", "DOOMED") == 1
    for i, key in enumerate(mine):
        with pytest.raises(KeyErased) as info:
            archive.store.read(key, context=_ctx(f"1.{i}", "DOOMED"))
        assert info.value.http_status == 410
        with pytest.raises(KeyErased):
            archive.store.iter_chunks(key, context=_ctx(f"1.{i}", "DOOMED"))
    assert archive.store.read(theirs, context=_ctx("2.1", "KEPT")) == b"theirs"
    tenant_ctx = _ctx("3.1", "DOOMED", partition="t2")
    assert archive.store.read(same_id_other_tenant, context=tenant_ctx) == b"tenant"
    # The key bytes are gone from the file, and a new object of the patient gets a new key.
    assert archive.keys.shred_patient("default", "DOOMED") == 0
    again = archive.put(b"new", _ctx("1.9", "DOOMED"))
    assert archive.store.read(again, context=_ctx("1.9", "DOOMED")) == b"new"
    with pytest.raises(KeyErased):
        archive.store.read(mine[0], context=_ctx("1.0", "DOOMED"))


def test_shred_removes_the_key_material_from_the_file(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.put(b"x", _ctx("1.1", "DOOMED"))
    lines = (tmp_path / "keyring.jsonl").read_text().splitlines()
    [patient_line] = [line for line in lines if '"t":"patient"' in line]
    wrapped_key = patient_line.split('"key":"')[1].split('"')[0]
    archive.keys.shred_patient("default", "DOOMED")
    text = (tmp_path / "keyring.jsonl").read_text()
    assert wrapped_key not in text and '"t":"shredded"' in text
    assert stat.S_IMODE((tmp_path / "keyring.jsonl").stat().st_mode) == 0o600


def test_a_blob_needs_the_keyring_it_was_written_with(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "a")
    key = archive.put(b"x", _ctx("1.1", "P1"))
    other = LocalKeyring(tmp_path / "other.jsonl")
    stranger = EncryptedBlobStore(FileBlobStore(tmp_path / "a" / "blobs"), other)
    with pytest.raises((KeyUnavailable, BlobUnreadable)):
        stranger.read(key, context=_ctx("1.1", "P1"))


def test_keys_cli_list_rotate_and_shred(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    key = archive.put(b"x", _ctx("1.1", "CLI-PATIENT"))
    runner = CliRunner()
    args = ["--data-dir", str(tmp_path)]
    result = runner.invoke(app, ["keys", "rotate", *args])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["keys", "list", *args])
    assert result.output.split() == ["k1", "k2", "(current)"]
    result = runner.invoke(app, ["keys", "shred-patient", "CLI-PATIENT", *args], input="n\n")
    assert result.exit_code != 0
    assert archive.store.read(key, context=_ctx("1.1", "CLI-PATIENT")) == b"x"
    result = runner.invoke(app, ["keys", "shred-patient", "CLI-PATIENT", "--yes", *args])
    assert result.exit_code == 0, result.output
    with pytest.raises(KeyErased):
        archive.store.read(key, context=_ctx("1.1", "CLI-PATIENT"))
    result = runner.invoke(app, ["keys", "shred-patient", "CLI-PATIENT", "--yes", *args])
    assert result.exit_code == 1


def test_a_rewrite_that_reuses_the_inode_is_still_seen(tmp_path: Path) -> None:
    """A worker that read the keyring before a shred must not keep the shredded key, even if
    the rewritten file came back under the inode number it remembers."""
    archive = Archive(tmp_path)
    key = archive.put(b"x", _ctx("1.1", "DOOMED"))
    path = tmp_path / "keyring.jsonl"
    shredder = LocalKeyring(path)
    for _ in range(3):
        shredder.rotate()  # the stale worker has not read these appends yet ...
    shredder.shred_patient("default", "DOOMED")  # ... nor this rewrite (new inode)
    rewritten = path.read_bytes()
    # The rewritten content under the identity the worker remembers, longer than it read.
    path.unlink()
    path.write_bytes(rewritten)
    path.chmod(0o600)
    assert len(rewritten) > archive.keys._offset  # so a stale reader would take a "tail"
    archive.keys._identity = (path.stat().st_dev, path.stat().st_ino)  # as if it came back
    with pytest.raises(KeyErased):
        archive.store.read(key, context=_ctx("1.1", "DOOMED"))
    # It re-read the whole file rather than a "tail" of another file's bytes.
    assert archive.keys._lines == LocalKeyring(path)._lines


def test_a_kek_is_removed_only_once_nothing_in_the_keyring_needs_it(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    key = archive.put(b"x", _ctx("1.1", "P1"))
    path = tmp_path / "keyring.jsonl"
    LocalKeyring(path).rotate()
    with pytest.raises(BadRequest, match="still wraps"):
        LocalKeyring(path).remove_kek("k1")  # P1's patient key
    with pytest.raises(BadRequest, match="current"):
        LocalKeyring(path).remove_kek("k2")
    assert LocalKeyring(path).retire("k1") == 1
    LocalKeyring(path).remove_kek("k1")
    assert archive.keys.key_ids() == ["k2"]  # a running process sees the rewrite
    assert b'"kek":"k1"' not in path.read_bytes()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyUnavailable, match="'k1' is not in the keyring"):
        archive.store.read(key, context=_ctx("1.1", "P1"))  # its header names k1
    new = archive.put(b"y", _ctx("1.2", "P1"))
    assert archive.store.read(new, context=_ctx("1.2", "P1")) == b"y"
