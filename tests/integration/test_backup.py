"""Backup and restore (issue 13): ``nubis backup --to DIR`` while a live ``nubis serve`` takes
STOW-RS (PS3.18 10.5), ``nubis restore`` into a fresh data folder, ``nubis backup verify``, and
crypto-shredding that a keyring copy older than the shred cannot undo.

The restored archive must hold exactly the objects the snapshot held, each reading back
byte-exact through the encrypted store with the keyring backed up apart, and its audit trail
(the original's chain, continued) must pass ``nubis audit verify``. Backup and restore are
recorded as DICOM Export and Data Import (PS3.15 A.5.3.6, A.5.3.7).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from integration import AUTH
from integration.cli import nubis_cli
from integration.migrate_helpers import nubis, nubis_process
from integration.server import index_rows, multipart_content_type, read_blob, start_server
from nubis.errors import KeyErased
from nubis.tools.synth import PatientSpec, dataset_bytes, make_ct_series, series_datasets
from nubis.web.dicomweb.multipart import new_boundary

EXPORT = "110106"
IMPORT = "110107"


def _instances(seed: int, count: int) -> dict[str, bytes]:
    """``count`` small CT objects of a study of their own: SOP Instance UID -> bytes."""
    return {
        str(ds.SOPInstanceUID): dataset_bytes(ds)
        for ds in series_datasets("CT", n_instances=count, rows=64, columns=64, seed=seed)
    }


def _stow(url: str, objects: dict[str, bytes]) -> None:
    boundary = new_boundary()
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
            for data in objects.values()
        )
        + f"--{boundary}--\r\n".encode()
    )
    response = httpx.post(
        f"{url}/studies",
        content=body,
        headers={**AUTH, "Content-Type": multipart_content_type(boundary)},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def _json(done: object) -> dict[str, object]:
    assert getattr(done, "returncode", None) == 0, getattr(done, "stderr", "")
    text: str = done.stdout  # type: ignore[attr-defined]
    return json.loads(text[text.index("{") :])  # type: ignore[no-any-return]


@dataclass
class Load:
    """STOW-RS requests sent one after another until stopped; what was acknowledged, when."""

    url: str
    stored: dict[str, bytes] = field(default_factory=dict)
    acknowledged_at: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        seed = 100
        while not self.stop.is_set():
            batch = _instances(seed, 2)
            _stow(self.url, batch)
            self.stored.update(batch)
            self.acknowledged_at.append(time.monotonic())
            seed += 1


@dataclass
class BackedUp:
    source: Path
    folder: Path
    stored: dict[str, bytes]
    first: dict[str, object]
    second: dict[str, object]


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory: pytest.TempPathFactory) -> BackedUp:
    """An archive backed up twice into one folder: once while STOW-RS requests keep arriving,
    once after they stopped."""
    root = tmp_path_factory.mktemp("backup")
    source = root / "source"
    server = start_server(source, env={"NUBIS_DURABLE": "false"})
    try:
        stored = _instances(1, 6)
        _stow(server.dicomweb, stored)
        load = Load(server.dicomweb)
        loader = threading.Thread(target=load.run)
        loader.start()
        try:
            began = time.monotonic()
            # In a process of its own, as an operator runs it beside the server: in the test's
            # process the backup and the loader thread would take turns on the GIL.
            first = _json(nubis_process(source, "backup", "--to", str(root / "B")))
            ended = time.monotonic()
        finally:
            load.stop.set()
            loader.join()
        assert any(began < at < ended for at in load.acknowledged_at), "no store during backup"
        stored |= load.stored
        second = _json(nubis(source, "backup", "--to", str(root / "B")))
    finally:
        server.stop()
    return BackedUp(source, root / "B", stored, first, second)


def test_backup_under_load_restores_byte_exact(backed_up: BackedUp, tmp_path: Path) -> None:
    first, second = backed_up.first, backed_up.second
    assert first["absent"] == {} and second["absent"] == {}
    # The second backup copies only what was stored after the first one's snapshot.
    assert second["already_backed_up"] == first["objects"]
    assert second["copied"] == second["objects"] - first["objects"] > 0  # type: ignore[operator]
    held = {row.sop_instance_uid for row in index_rows(backed_up.source)}
    assert second["objects"] == len(held) == len(backed_up.stored)

    restored = tmp_path / "restored"
    source = backed_up.source
    refused = nubis(restored, "restore", "--from", str(backed_up.folder))
    assert refused.returncode == 2 and "give --keyring" in _said(refused)
    assert not restored.exists() or not any(restored.iterdir())
    report = _json(
        nubis(
            restored, "restore", "--from", str(backed_up.folder),
            "--keyring", str(source / "keyring.jsonl"),
            "--audit-key", str(source / "audit-signing.key"),
        )
    )  # fmt: skip
    assert report["objects"] == len(held) and report["problems"] == []
    rows = index_rows(restored)
    assert {row.sop_instance_uid for row in rows} == held
    for row in rows:
        data = read_blob(restored, row)
        assert data == backed_up.stored[row.sop_instance_uid]
        assert hashlib.sha256(data).hexdigest() == row.sha256

    verified = nubis(restored, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "audit trail intact" in verified.stdout
    records = nubis(restored, "audit", "list", "--limit", "100000", "--json")
    events = [json.loads(line) for line in records.stdout.splitlines() if line.strip()]
    described = [(e["event_id"]["code"], e.get("outcome_description", "")) for e in events]
    assert any(code == EXPORT and "backup of the whole archive" in d for code, d in described)
    assert any(code == IMPORT and "restore of the backup" in d for code, d in described)

    again = nubis(restored, "restore", "--from", str(backed_up.folder))
    assert again.returncode == 2 and "is not empty: a restore needs a fresh" in _said(again)


def test_backup_verify_finds_a_damaged_and_a_missing_blob(
    backed_up: BackedUp, tmp_path: Path
) -> None:
    folder = tmp_path / "B"
    shutil.copytree(backed_up.folder, folder)
    intact = _verify(folder)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    blobs = sorted(p for p in (folder / "blobs").rglob("*") if p.is_file())
    damaged, missing = blobs[0], blobs[1]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    missing.unlink()
    report = _json_exit(_verify(folder), 1)
    assert report["problem_count"] == 2
    assert f"blob {damaged.name} differs from the manifest (damaged)" in report["problems"]
    assert f"blob {missing.name} is missing from the backup" in report["problems"]


def _verify(folder: Path) -> subprocess.CompletedProcess[str]:
    """``nubis backup verify FOLDER --json``, which needs no archive."""
    return nubis_cli("backup", "verify", str(folder), "--json")


def _said(done: object) -> str:
    """What a command printed to stderr, with the console's line wrapping undone."""
    return " ".join(str(getattr(done, "stderr", "")).split())


def _json_exit(done: object, code: int) -> dict[str, object]:
    assert getattr(done, "returncode", None) == code, getattr(done, "stderr", "")
    return json.loads(done.stdout)  # type: ignore[attr-defined, no-any-return]


def test_a_shred_survives_a_restore_with_an_older_keyring(tmp_path: Path) -> None:
    """The keyring backed up before a shred still holds the patient's key; the restored index
    lists it as shredded, so the restore shreds it again (and so does any open of the archive
    whose keyring was put back from that copy)."""
    files = tmp_path / "files"
    erased = PatientSpec(patient_id="SHRED-ME", patient_name="Erased^Patient")
    kept = PatientSpec(patient_id="KEEP-ME", patient_name="Kept^Patient")
    make_ct_series(files / "a", n_instances=2, rows=64, columns=64, patient=erased, seed=7)
    make_ct_series(files / "b", n_instances=2, rows=64, columns=64, patient=kept, seed=8)
    source = tmp_path / "source"
    assert nubis(source, "import", str(files)).returncode == 0
    old_keyring = tmp_path / "keyring-before-the-shred.jsonl"
    shutil.copy2(source / "keyring.jsonl", old_keyring)
    shred = nubis(source, "keys", "shred-patient", "SHRED-ME", "--yes")
    assert shred.returncode == 0, shred.stdout + shred.stderr
    assert nubis(source, "backup", "--to", str(tmp_path / "B")).returncode == 0

    restored = tmp_path / "restored"
    report = _json(
        nubis(
            restored, "restore", "--from", str(tmp_path / "B"),
            "--keyring", str(old_keyring), "--audit-key", str(source / "audit-signing.key"),
        )
    )  # fmt: skip
    assert report["keys_shredded_again"] == 1
    assert report["erased"] == 2 and report["problems"] == []
    for archive in (restored, source):
        if archive is source:  # the old copy put back into the live archive's data folder
            shutil.copy2(old_keyring, source / "keyring.jsonl")
            assert nubis(source, "audit", "verify").returncode == 0
        rows = index_rows(archive)
        assert len(rows) == 4
        for row in rows:
            if row.sop_instance_uid in _sops(files / "a"):
                with pytest.raises(KeyErased):
                    read_blob(archive, row)
            else:
                assert hashlib.sha256(read_blob(archive, row)).hexdigest() == row.sha256


def _sops(folder: Path) -> set[str]:
    import pydicom

    return {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.iterdir()
    }
