"""The free-disk floor (issue 9 item 7; services/disk_floor.py).

An archive whose ``min_free_disk`` is above the free space of its disk (the floor set to the
free space plus 1 TiB: a real condition, not a mock) refuses new objects, STOW-RS with 507
Insufficient Storage and failure reason 0xA700, C-STORE with 0xA700 Refused: Out of Resources
(PS3.4 Table B.2-1), ``nubis import`` with a message; nothing of them is stored or left in the
spool, while queries, retrievals and the audit trail keep working.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pynetdicom import AE

from integration import AUTH
from integration.cli import nubis_cli
from integration.dimse_helpers import AE as NUBIS_AE
from integration.dimse_helpers import free_port
from integration.server import Server, spool_files, start_server
from nubis.tools import synth

OUT_OF_RESOURCES = 0xA700
FAILED_SOP_SEQUENCE, FAILURE_REASON = "00081198", "00081197"
QUERY_EVENT = "110112"


def stow(server: Server, path: Path) -> httpx.Response:
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n--b--\r\n"
    return httpx.post(
        f"{server.dicomweb}/studies",
        content=body,
        headers={**AUTH, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        timeout=60,
    )


def instances(server: Server, path: Path) -> list[dict]:  # type: ignore[type-arg]
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    response = httpx.get(
        f"{server.dicomweb}/instances", params={"SOPInstanceUID": uid}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    return list(response.json())


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("floor-objects")
    return {
        name: synth.make_multiframe(
            folder / f"{name}.dcm", frames=1, rows=32, columns=32, seed=60 + i
        )
        for i, name in enumerate(("before", "stow", "cstore", "import"))
    }


@dataclass
class Floored:
    """A live archive below its free-disk floor, its DIMSE port and its environment."""

    server: Server
    dimse_port: int
    env: dict[str, str]


@pytest.fixture(scope="module")
def floored(
    tmp_path_factory: pytest.TempPathFactory, objects: dict[str, Path]
) -> Iterator[Floored]:
    data = tmp_path_factory.mktemp("floor") / "data"
    port = free_port()
    env = {"NUBIS_DURABLE": "false", "NUBIS_DIMSE_PORT": str(port)}
    before = start_server(data, env=env)
    try:
        assert stow(before, objects["before"]).status_code == 200
    finally:
        before.stop()
    env["NUBIS_MIN_FREE_DISK"] = str(shutil.disk_usage(data).free + 2**40)
    server = start_server(data, env=env)
    try:
        yield Floored(server, port, env)
    finally:
        server.stop()


@pytest.fixture
def server(floored: Floored) -> Server:
    return floored.server


def test_stow_rs_is_refused_with_507_and_0xa700(server: Server, objects: dict[str, Path]) -> None:
    response = stow(server, objects["stow"])
    assert response.status_code == 507, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    [failed] = response.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failed[FAILURE_REASON]["Value"] == [OUT_OF_RESOURCES]
    assert instances(server, objects["stow"]) == []
    assert spool_files(server.data_dir) == []


def test_c_store_is_refused_with_0xa700(floored: Floored, objects: dict[str, Path]) -> None:
    server = floored.server
    ds = pydicom.dcmread(objects["cstore"])
    ae = AE(ae_title="FLOORTEST")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", floored.dimse_port, ae_title=NUBIS_AE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert status.Status == OUT_OF_RESOURCES, status
    assert instances(server, objects["cstore"]) == []
    assert spool_files(server.data_dir) == []


def test_nubis_import_stops_with_the_reason(floored: Floored, objects: dict[str, Path]) -> None:
    server = floored.server
    data = ("--data-dir", str(server.data_dir))
    result = nubis_cli("import", str(objects["import"]), *data, env=floored.env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "nearly full" in " ".join((result.stdout + result.stderr).split())
    assert instances(server, objects["import"]) == []


def test_reads_queries_and_the_audit_trail_keep_working(
    server: Server, objects: dict[str, Path]
) -> None:
    [found] = instances(server, objects["before"])
    url = found["00081190"]["Value"][0] if "00081190" in found else None
    header = pydicom.dcmread(objects["before"], stop_before_pixels=True)
    url = url or (
        f"{server.dicomweb}/studies/{header.StudyInstanceUID}/series/"
        f"{header.SeriesInstanceUID}/instances/{header.SOPInstanceUID}"
    )
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    retrieved = httpx.get(url, headers={**AUTH, "Accept": accept}, timeout=60)
    assert retrieved.status_code == 200 and objects["before"].read_bytes() in retrieved.content
    records = httpx.get(f"{server.url}/audit/records", params={"event": QUERY_EVENT}, headers=AUTH)
    assert records.status_code == 200 and records.json()["records"], records.text
    verified = httpx.get(f"{server.url}/audit/verify", headers=AUTH)
    assert verified.status_code == 200 and verified.json()["ok"], verified.text
