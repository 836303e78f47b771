"""STOW-RS request limits: stow_max_bytes and stow_max_parts (issue #9, items 2 and 7).

A request larger than the archive takes is refused with 413 Payload Too Large (RFC 9110
15.5.14) and a reason naming the setting. A Content-Length beyond stow_max_bytes is refused
before a byte of the body is read. A body without one (chunked) is counted as it arrives, and
parts as their headers arrive: the parts received whole before the limit are stored and
listed in the Store Instances Response (PS3.18 10.5.3) that comes with the 413, the part the
limit cut is not stored at all, and nothing after it is read.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from integration import AUTH, DicomFile
from nubis.tools import synth

if TYPE_CHECKING:
    from conftest import LiveServer, ServerFactory

BOUNDARY = "nubis-stow-limits"
STOW_CT = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
MAX_PARTS = 3
PATIENT = synth.PatientSpec("NUBIS-LIMITS-01", "Limit^Lara", "19750505", "F")
REFERENCED, FAILED = "00081199", "00081198"
SOP_UID, FAILURE_REASON = "00081155", "00081197"
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3, the reason PS3.18 10.5.3 gives an object not stored


def _part(data: bytes, media_type: str = "application/dicom") -> bytes:
    return f"--{BOUNDARY}\r\nContent-Type: {media_type}\r\n\r\n".encode() + data + b"\r\n"


def _close() -> bytes:
    return f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[DicomFile]:
    paths = synth.make_mr_series(
        tmp_path_factory.mktemp("stow-limits"),
        n_instances=6,
        rows=64,
        columns=64,
        patient=PATIENT,
        seed=71,
    )
    return [DicomFile(p) for p in paths]


@pytest.fixture(scope="module")
def max_bytes(files: list[DicomFile]) -> int:
    """Room for two of the objects and their delimiters, not for three."""
    return 2 * len(_part(files[0].data)) + len(_close()) + 100


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory, max_bytes: int) -> Iterator[LiveServer]:
    """A server with small limits; a refusal is not a server fault, so its log stays clean."""
    server = server_factory(
        "stow-limits",
        "--set", f"stow_max_bytes={max_bytes}",
        "--set", f"stow_max_parts={MAX_PARTS}",
    )  # fmt: skip
    yield server
    assert "Traceback" not in server.log(), server.log()[-3000:]


def _post(server: LiveServer, body: bytes | Iterator[bytes]) -> httpx.Response:
    return httpx.post(
        f"{server.dicomweb}/studies",
        content=body,
        headers={**AUTH, "Content-Type": STOW_CT, "Accept": "application/dicom+json"},
        timeout=120,
    )


def _stored(server: LiveServer) -> set[str]:
    response = httpx.get(
        f"{server.dicomweb}/instances",
        params={"PatientID": PATIENT.patient_id},
        headers=AUTH,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return {item["00080018"]["Value"][0] for item in response.json()}


def _result(response: httpx.Response) -> tuple[list[str], list[int]]:
    assert response.headers["content-type"].startswith("application/dicom+json"), response.text
    body: dict[str, Any] = response.json()
    stored = [i[SOP_UID]["Value"][0] for i in body.get(REFERENCED, {}).get("Value", [])]
    reasons = [i[FAILURE_REASON]["Value"][0] for i in body.get(FAILED, {}).get("Value", [])]
    return stored, reasons


def _delete_all(server: LiveServer, files: list[DicomFile]) -> None:
    for study in {f.study_uid for f in files}:
        httpx.delete(f"{server.dicomweb}/studies/{study}", headers=AUTH, timeout=30)


@pytest.fixture
def empty(server: LiveServer, files: list[DicomFile]) -> Iterator[LiveServer]:
    _delete_all(server, files)
    assert _stored(server) == set()
    yield server
    _delete_all(server, files)


def test_content_length_over_the_limit_is_413_before_reading(
    empty: LiveServer, files: list[DicomFile], max_bytes: int
) -> None:
    body = b"".join(_part(f.data) for f in files[:3]) + _close()
    assert len(body) > max_bytes
    response = _post(empty, body)
    assert response.status_code == 413, response.text[:300]
    reason = response.json()["reason"]
    assert "stow_max_bytes" in reason and str(max_bytes) in reason, reason
    assert _stored(empty) == set()


def test_streamed_body_over_the_limit_keeps_the_parts_received_whole(
    empty: LiveServer, files: list[DicomFile]
) -> None:
    """Chunked, no Content-Length: the two parts before the limit are stored and listed; the
    third, cut by the limit, is not stored; nothing after it is read."""

    def chunks() -> Iterator[bytes]:
        for f in files[:4]:
            part = _part(f.data)
            for start in range(0, len(part), 4096):
                yield part[start : start + 4096]
        yield _close()

    response = _post(empty, chunks())
    assert response.status_code == 413, response.text[:300]
    stored, reasons = _result(response)
    assert stored == [f.sop_uid for f in files[:2]]
    assert reasons == [OUT_OF_RESOURCES]
    assert "stow_max_bytes" in response.headers["warning"]
    assert _stored(empty) == set(stored)


def test_parts_over_the_limit_keep_the_first_ones(
    empty: LiveServer, files: list[DicomFile]
) -> None:
    """stow_max_parts: parts past it are not read; the ones before are stored and listed."""
    small = [f for f in files[:5]]
    body = b"".join(_part(f.data[:200], "application/octet-stream") for f in small) + _close()
    response = _post(empty, body)
    assert response.status_code == 413, response.text[:300]
    stored, reasons = _result(response)
    assert stored == []
    # The three parts read (refused: not application/dicom), then the limit.
    assert len(reasons) == MAX_PARTS + 1 and reasons[-1] == OUT_OF_RESOURCES
    assert f"stow_max_parts ({MAX_PARTS})" in response.headers["warning"]


def test_one_hundred_thousand_tiny_parts_are_413(empty: LiveServer) -> None:
    """The hostile body of issue #9: 100,000 one-byte parts, chunked (no Content-Length to
    refuse up front). Refused at part MAX_PARTS + 1; the rest is not read."""

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"".join(_part(b"x") for _ in range(1000))
        yield _close()

    response = _post(empty, chunks())
    assert response.status_code == 413, response.text[:300]
    _, reasons = _result(response)
    assert len(reasons) == MAX_PARTS + 1


def test_requests_within_the_limits_are_stored(
    empty: LiveServer, files: list[DicomFile], max_bytes: int
) -> None:
    body = b"".join(_part(f.data) for f in files[:2]) + _close()
    assert len(body) <= max_bytes
    response = _post(empty, body)
    assert response.status_code == 200, response.text[:300]
    assert _stored(empty) == {f.sop_uid for f in files[:2]}


def test_the_limits_are_settings_with_generous_defaults() -> None:
    from nubis.config import Settings

    defaults = Settings()
    assert defaults.stow_max_bytes >= 32 << 30
    assert defaults.stow_max_parts >= 10_000


def test_a_streamed_limit_leaves_no_spool_file(empty: LiveServer, files: list[DicomFile]) -> None:
    """The part the limit cut was being spooled: its spool file is removed, not left behind."""

    def chunks() -> Iterator[bytes]:
        data = io.BytesIO(b"".join(_part(f.data) for f in files[:3]) + _close())
        while chunk := data.read(8192):
            yield chunk

    assert _post(empty, chunks()).status_code == 413
    spool = empty.data_dir / "spool"
    leftovers = [p for p in spool.rglob("*") if p.is_file()] if spool.exists() else []
    assert leftovers == []
