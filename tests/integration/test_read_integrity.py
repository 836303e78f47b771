"""A stored object whose bytes changed on disk is never served as if it were good.

Plaintext stores (``encrypt_at_rest=false``) check the SHA-256 recorded at ingest while the
object streams out (``verify_reads``); encrypted stores get the same guarantee from the
AES-GCM tags (the plaintext's digest is bound into each blob's key), so they skip the re-hash.
Either way a flipped byte ends in an error, not in a 200 with wrong bytes (PS3.18 10.4: the
origin server returns the stored instance, or an error).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from integration import AUTH
from integration.server import (
    ACCEPT_AS_STORED,
    Server,
    blob_path,
    index_rows,
    start_server,
    wait_rekeyed,
)
from nubis.tools.synth import dataset_bytes, series_datasets
from nubis.web.dicomweb.multipart import iter_multipart, new_boundary


@pytest.fixture(scope="module", params=["plaintext", "encrypted"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    env = {"NUBIS_ENCRYPT_AT_REST": "false"} if request.param == "plaintext" else {}
    srv = start_server(
        tmp_path_factory.mktemp(request.param) / "data", env=env, log_level="warning"
    )
    try:
        yield srv
    finally:
        srv.stop()


def _store(server: Server, data: bytes) -> None:
    boundary = new_boundary()
    body = b"".join(iter_multipart([({"Content-Type": "application/dicom"}, [data])], boundary))
    response = httpx.post(
        f"{server.dicomweb}/studies",
        content=body,
        headers={
            **AUTH,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text[:300]


def test_flipped_byte_is_never_served(server: Server, tmp_path: Path) -> None:
    ds = next(series_datasets("CT", n_instances=1, rows=64, columns=64, seed=91))
    data = dataset_bytes(ds)
    _store(server, data)
    url = (
        f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    good = httpx.get(url, headers={**AUTH, "Accept": ACCEPT_AS_STORED}, timeout=30)
    assert good.status_code == 200 and data in good.content

    [row] = [r for r in index_rows(server.data_dir) if r.sop_instance_uid == ds.SOPInstanceUID]
    path = blob_path(server.data_dir, row.blob_key)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit, in the pixel data (or its ciphertext)
    path.write_bytes(bytes(raw))

    try:
        bad = httpx.get(url, headers={**AUTH, "Accept": ACCEPT_AS_STORED}, timeout=30)
    except httpx.RemoteProtocolError:
        return  # the stream was cut before its end: no client takes it for the object
    assert bad.status_code == 500, bad.status_code
    assert "integrity" in bad.json()["reason"]
    assert raw[: len(raw) // 2] not in bad.content


def test_a_corrected_object_is_checked_before_its_correction(server: Server) -> None:
    """A corrected object leaves with other bytes than stored (docs/corrections.md); the
    stored bytes are still checked as they are read, so a flipped bit ends in an error, not in
    a corrected object made of bad bytes."""
    ds = next(series_datasets("CT", n_instances=1, rows=64, columns=64, seed=92))
    data = dataset_bytes(ds)
    _store(server, data)
    corrected = httpx.post(
        f"{server.url}/corrections",
        json={"action": "update-study", "study": str(ds.StudyInstanceUID),
              "set": {"PatientID": "INTEGRITY-NEW"}, "reason": "integrity test"},
        headers=AUTH,
        timeout=30,
    )  # fmt: skip
    assert corrected.status_code == 201, corrected.text
    url = (
        f"{server.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    good = httpx.get(url, headers={**AUTH, "Accept": ACCEPT_AS_STORED}, timeout=30)
    assert good.status_code == 200 and b"INTEGRITY-NEW" in good.content

    # A new Patient ID re-keys the study (encrypted archives): its blob is replaced by the
    # server's runner, so the blob to damage is the one the row names once that is done.
    wait_rekeyed(server.data_dir)
    [row] = [r for r in index_rows(server.data_dir) if r.sop_instance_uid == ds.SOPInstanceUID]
    path = blob_path(server.data_dir, row.blob_key)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    try:
        bad = httpx.get(url, headers={**AUTH, "Accept": ACCEPT_AS_STORED}, timeout=30)
    except httpx.RemoteProtocolError:
        return  # cut before its end
    assert bad.status_code == 500, bad.status_code
    assert "integrity" in bad.json()["reason"]
    assert b"INTEGRITY-NEW" not in bad.content
