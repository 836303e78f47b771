"""Encryption at rest, end to end, on a real ``nubis serve`` with its defaults (encryption on).

What a thief of the data folder (without the keyring) would see: no patient name or ID and no
run of pixel data in any file, spool included, while clients get every byte back. The index
(index.sqlite) is the exception by design: it holds the metadata that QIDO-RS searches, in the
clear, and is excluded from the scan (see docs/architecture.md, "Encryption at rest").
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from integration import AUTH, DicomFile
from integration.cli import nubis_cli
from integration.server import (
    ACCEPT_AS_STORED,
    Server,
    blob_path,
    index_rows,
    multipart_content_type,
    parse_multipart,
    start_server,
)
from nubis.crypto.envelope import HEADER_RESERVE, MAGIC, parse_header
from nubis.tools.synth import PatientSpec, dataset_bytes, make_large_instance, series_datasets
from nubis.web.dicomweb.multipart import iter_multipart, new_boundary

PATIENT = PatientSpec("ENC-PID-4711", "Quokkaface^Zyxwvut", "19610203", "F")
OTHER = PatientSpec("ENC-PID-0815", "Wombatson^Yolanda", "19700405", "M")
DICOM_JSON = "application/dicom+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("encrypted") / "data", log_level="warning")
    try:
        yield srv
    finally:
        srv.stop()


def _stow(server: Server, objects: list[bytes]) -> None:
    boundary = new_boundary()
    body = b"".join(
        iter_multipart([({"Content-Type": "application/dicom"}, [o]) for o in objects], boundary)
    )
    response = httpx.post(
        f"{server.dicomweb}/studies",
        content=body,
        headers={**AUTH, "Content-Type": multipart_content_type(boundary), "Accept": DICOM_JSON},
        timeout=60,
    )
    assert response.status_code == 200, response.text[:500]


def _instance_url(server: Server, ds: pydicom.Dataset) -> str:
    return (
        f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _get_instance(server: Server, ds: pydicom.Dataset) -> httpx.Response:
    return httpx.get(
        _instance_url(server, ds), headers={**AUTH, "Accept": ACCEPT_AS_STORED}, timeout=60
    )


def _needles(ds: pydicom.Dataset, data: bytes) -> dict[str, bytes]:
    """Byte strings that must not appear on disk: names, IDs, and runs of pixel data."""
    found: dict[str, bytes] = {}
    for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
        value = str(ds.get(keyword, "") or "")
        if len(value) >= 6:  # shorter values occur by chance in any large file
            found[keyword] = value.encode()
    if "PixelData" in ds:
        pixels = ds.PixelData
        for fraction in (0.25, 0.5, 0.75):
            run = bytes(pixels[int(len(pixels) * fraction) :][:48])
            if len(run) == 48 and len(set(run)) > 12:  # skip flat runs (air, zero padding)
                assert run in data
                found[f"pixels@{fraction}"] = run
    return found


def _scan(folder: Path, needles: dict[str, bytes]) -> list[str]:
    hits = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.startswith("index.sqlite"):
            continue
        content = path.read_bytes()
        hits += [
            f"{name} in {path.relative_to(folder)}" for name, n in needles.items() if n in content
        ]
    return hits


def test_no_plaintext_in_the_data_folder_spool_included(
    server: Server, pydicom_files: dict[str, DicomFile], tmp_path: Path
) -> None:
    ct = list(series_datasets("CT", n_instances=3, patient=PATIENT, seed=41, accession="ENC1"))
    sent = [dataset_bytes(ds) for ds in ct]
    files = {key: f.path.read_bytes() for key, f in pydicom_files.items()}
    _stow(server, sent)
    _stow(server, list(files.values()))

    needles: dict[str, bytes] = {}
    for ds, data in zip(ct, sent, strict=True):
        needles |= {f"CT {k}": v for k, v in _needles(ds, data).items()}
    for key, data in files.items():
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        needles |= {f"{key} {k}": v for k, v in _needles(ds, data).items()}
    assert {"CT PatientName", "CT PatientID", "CT pixels@0.5", "explicit_le pixels@0.5"} <= set(
        needles
    )

    # Everything comes back byte-exact: the encryption is invisible to clients.
    for ds, data in zip(ct, sent, strict=True):
        response = _get_instance(server, ds)
        assert response.status_code == 200
        assert parse_multipart(response.content, response.headers["content-type"]) == [data]

    # Mid-request: a STOW-RS part half sent sits in the spool; it must be ciphertext too.
    [big] = series_datasets("CT", n_instances=1, patient=OTHER, seed=42, accession="ENC2")
    big_bytes = dataset_bytes(big)
    needles |= {f"spooled {k}": v for k, v in _needles(big, big_bytes).items()}
    half_sent, finish = threading.Event(), threading.Event()

    def body() -> Iterator[bytes]:
        boundary_chunks = iter_multipart(
            [({"Content-Type": "application/dicom"}, [big_bytes])], boundary
        )
        data = b"".join(boundary_chunks)
        cut = len(data) * 3 // 4
        yield data[:cut]
        half_sent.set()
        finish.wait(30)
        yield data[cut:]

    boundary = new_boundary()
    result: dict[str, int] = {}

    def post() -> None:
        response = httpx.post(
            f"{server.dicomweb}/studies",
            content=body(),
            headers={
                **AUTH,
                "Content-Type": multipart_content_type(boundary),
                "Accept": DICOM_JSON,
            },
            timeout=60,
        )
        result["status"] = response.status_code

    thread = threading.Thread(target=post)
    thread.start()
    try:
        assert half_sent.wait(30)
        spool = server.data_dir / "spool"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # wait until the server has spooled most of it
            sizes = [p.stat().st_size for p in spool.iterdir()] if spool.exists() else []
            if sizes and max(sizes) > len(big_bytes) // 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the half-sent part never reached the spool")
        hits = _scan(spool, needles)
        assert hits == [], hits
    finally:
        finish.set()
        thread.join(60)
    assert result.get("status") == 200

    hits = _scan(server.data_dir, needles)
    assert hits == [], hits
    # Every blob is in the encrypted format (the scan above did not pass vacuously).
    for row in index_rows(server.data_dir):
        assert blob_path(server.data_dir, row.blob_key).read_bytes()[:8] == MAGIC


def test_frames_rendered_and_transcoded_from_encrypted_blobs(
    server: Server, multiframe: DicomFile
) -> None:
    data = multiframe.path.read_bytes()
    ds = pydicom.dcmread(multiframe.path)
    _stow(server, [data])
    url = _instance_url(server, ds)
    with httpx.Client(timeout=60, headers=AUTH) as client:
        frame = client.get(
            f"{url}/frames/3",
            headers={"Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert frame.status_code == 200
        [got] = parse_multipart(frame.content, frame.headers["content-type"])
        assert got == ds.pixel_array[2].astype("<u2").tobytes()
        rendered = client.get(f"{url}/frames/2/rendered", headers={"Accept": "image/png"})
        assert rendered.status_code == 200 and rendered.content[:4] == b"\x89PNG"
        accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'
        converted = client.get(url, headers={"Accept": accept})
        assert converted.status_code == 200
        [part] = parse_multipart(converted.content, converted.headers["content-type"])
        assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(part)).pixel_array.tobytes() == (
            ds.pixel_array.tobytes()
        )


def test_a_blob_moved_under_another_instance_is_an_error_never_its_bytes(
    server: Server,
) -> None:
    a, b = series_datasets("CT", n_instances=2, patient=PATIENT, seed=43, accession="ENC3")
    _stow(server, [dataset_bytes(a), dataset_bytes(b)])
    rows = {r.sop_instance_uid: r for r in index_rows(server.data_dir)}
    path_a = blob_path(server.data_dir, rows[a.SOPInstanceUID].blob_key)
    path_b = blob_path(server.data_dir, rows[b.SOPInstanceUID].blob_key)
    path_a.write_bytes(path_b.read_bytes())  # as an attacker or a bad restore would
    response = _get_instance(server, a)
    assert response.status_code == 500
    assert "integrity check" in response.json()["reason"]
    for suffix, accept in [
        ("/frames/1", 'multipart/related; type="application/octet-stream"'),
        ("/rendered", "image/jpeg"),
    ]:
        response = httpx.get(_instance_url(server, a) + suffix, headers={**AUTH, "Accept": accept})
        assert response.status_code == 500, suffix
        assert b"\x00" * 16 not in response.content
    assert _get_instance(server, b).status_code == 200


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return nubis_cli(*args, "--data-dir", str(server.data_dir))


def _key_id(server: Server, sop_uid: str) -> str:
    row = {r.sop_instance_uid: r for r in index_rows(server.data_dir)}[sop_uid]
    blob = blob_path(server.data_dir, row.blob_key).read_bytes()[:HEADER_RESERVE]
    wrapped = parse_header(blob).wrapped
    assert wrapped is not None
    return wrapped.key_id


def test_rotation_and_shredding_through_the_cli_reach_the_running_server(
    server: Server,
) -> None:
    doomed = PatientSpec("ENC-SHRED-1", "Shreddable^Sam", "19800101", "M")
    kept = PatientSpec("ENC-KEEP-1", "Keepable^Kim", "19800101", "F")
    old = list(series_datasets("CT", n_instances=2, patient=doomed, seed=44, accession="S1"))
    _stow(server, [dataset_bytes(ds) for ds in old])
    before = _key_id(server, old[0].SOPInstanceUID)

    rotated = _cli(server, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new_key_id = rotated.stdout.split()[-1]
    assert new_key_id != before
    new = list(series_datasets("CT", n_instances=1, patient=doomed, seed=45, accession="S2"))
    other = list(series_datasets("CT", n_instances=1, patient=kept, seed=46, accession="S3"))
    _stow(server, [dataset_bytes(ds) for ds in new + other])
    assert _key_id(server, new[0].SOPInstanceUID) == new_key_id
    assert _key_id(server, old[0].SOPInstanceUID) == before
    for ds in old + new + other:
        assert _get_instance(server, ds).status_code == 200

    shredded = _cli(server, "keys", "shred-patient", doomed.patient_id, "--yes")
    assert shredded.returncode == 0, shredded.stderr
    for ds in old + new:
        response = _get_instance(server, ds)
        assert response.status_code == 410, response.text[:200]
        assert "crypto-shredded" in response.json()["reason"]
        frame = httpx.get(
            _instance_url(server, ds) + "/frames/1",
            headers={**AUTH, "Accept": 'multipart/related; type="application/octet-stream"'},
        )
        assert frame.status_code == 410
    assert _get_instance(server, other[0]).status_code == 200
    assert doomed.patient_id.encode() not in (server.data_dir / "keyring.jsonl").read_bytes()


def _group_peak_rss(server: Server) -> int:
    """Largest VmHWM among the server's processes (the parent and its HTTP workers)."""
    peak = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            pgid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[2])
            if pgid != server.pid:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, ValueError, IndexError):
            continue
    return peak


@pytest.mark.slow
def test_200_mb_object_streams_through_encryption_with_bounded_memory(
    server: Server, tmp_path: Path
) -> None:
    path = make_large_instance(tmp_path / "large.dcm", size_bytes=200 << 20, seed=7)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    size = path.stat().st_size
    idle = _group_peak_rss(server)

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    boundary = new_boundary()
    with httpx.Client(timeout=httpx.Timeout(300, connect=10), headers=AUTH) as client:
        response = client.post(
            f"{server.dicomweb}/studies",
            content=iter_multipart([({"Content-Type": "application/dicom"}, chunks())], boundary),
            headers={"Content-Type": multipart_content_type(boundary), "Accept": DICOM_JSON},
        )
        assert response.status_code == 200, response.text[:300]
        assert json.loads(response.content)["00081199"]["Value"]
        digest, got = hashlib.sha256(), 0
        with client.stream(
            "GET", _instance_url(server, header), headers={"Accept": ACCEPT_AS_STORED}
        ) as r:
            assert r.status_code == 200
            pending = b""
            for chunk in r.iter_bytes(1 << 20):
                pending += chunk
                # Hash the body of the single part, holding back only its framing.
                if not got and b"\r\n\r\n" in pending:
                    pending = pending[pending.index(b"\r\n\r\n") + 4 :]
                    got = 1
                if got and len(pending) > 256:
                    digest.update(pending[:-256])
                    got += len(pending) - 256
                    pending = pending[-256:]
            tail = pending[: pending.rindex(b"\r\n--")]
            digest.update(tail)
            got += len(tail) - 1
    assert (got, digest.hexdigest()) == (size, expected)
    peak = _group_peak_rss(server)
    print(f"\n200 MB encrypted round trip: peak RSS {idle >> 20} MB before, {peak >> 20} MB after")
    assert peak - idle < 120 << 20, (idle >> 20, peak >> 20)
