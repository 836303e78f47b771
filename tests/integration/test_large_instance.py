"""A 2 GB instance goes through STOW-RS and WADO-RS with bounded memory on both sides.

Ingest streams each part into the spool as it arrives and adopts the spool file as the blob,
so the server's resident memory must not grow with the object. The client streams too (a
generator body, a streamed response), so the test itself never holds the object either.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from integration import AUTH
from integration.server import ACCEPT_AS_STORED, multipart_content_type, start_server
from nubis.tools.synth import make_large_instance
from nubis.web.dicomweb.multipart import iter_multipart, new_boundary

SIZE = 2 << 30
ROWS = COLUMNS = 512
FRAME_BYTES = ROWS * COLUMNS * 2
MIN_FREE_DISK = 8 << 30
# The server's own footprint (Python, pydicom, numpy, SQLAlchemy, uvicorn) is ~100 MB; this
# leaves room for buffers while staying far below the 2 GB a whole-object read would need.
MAX_SERVER_RSS = 400 << 20
CHUNK = 1 << 20


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _hashed(chunks: Iterator[bytes], digest: hashlib._Hash) -> Iterator[bytes]:
    """``chunks`` passed on, each added to ``digest`` on the way: the object is hashed as it
    is sent, not read once more for its digest (2 GB, seconds of CPU)."""
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def _single_part_sha256(response: httpx.Response) -> tuple[str, int]:
    """SHA-256 and size of the one part of a streamed multipart/related response.

    Only the part headers and a closing delimiter's worth of bytes are ever held back.
    """
    boundary = response.headers["content-type"].split('boundary="', 1)[1].split('"', 1)[0]
    closing = b"\r\n--" + boundary.encode() + b"--\r\n"
    digest = hashlib.sha256()
    size = 0
    head = b""
    pending = b""
    in_body = False
    for chunk in response.iter_bytes(CHUNK):
        if not in_body:
            head += chunk
            end = head.find(b"\r\n\r\n")
            if end < 0:
                continue
            assert head.startswith(b"--" + boundary.encode() + b"\r\n"), head[:200]
            chunk, in_body = head[end + 4 :], True
        pending += chunk
        if len(pending) > len(closing):
            body, pending = pending[: -len(closing)], pending[-len(closing) :]
            digest.update(body)
            size += len(body)
    assert pending == closing, pending[-200:]
    return digest.hexdigest(), size


@pytest.mark.slow
def test_two_gigabyte_instance_round_trip_with_bounded_memory(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    if free < MIN_FREE_DISK:
        why = (
            f"needs {MIN_FREE_DISK >> 30} GB free in {tmp_path} for a 2 GB file, its "
            f"spool copy and blob; only {free / (1 << 30):.1f} GB free"
        )
        pytest.skip(reason=why)
    timings: dict[str, float] = {}

    started = time.monotonic()
    path = make_large_instance(tmp_path / "large.dcm", size_bytes=SIZE, rows=ROWS, columns=COLUMNS)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    frames = int(header.NumberOfFrames)
    file_size = path.stat().st_size
    pixel_offset = file_size - frames * FRAME_BYTES
    timings["generate"] = time.monotonic() - started

    server = start_server(tmp_path / "data", log_level="warning")
    try:
        idle_rss = server.peak_rss_bytes()
        instance_url = (
            f"{server.dicomweb}/studies/{header.StudyInstanceUID}/series/"
            f"{header.SeriesInstanceUID}/instances/{header.SOPInstanceUID}"
        )
        with httpx.Client(timeout=httpx.Timeout(600, connect=10), headers=AUTH) as client:
            # STOW-RS: a generator body, sent chunked, one MB at a time.
            boundary = new_boundary()
            sent = hashlib.sha256()
            body = iter_multipart(
                [({"Content-Type": "application/dicom"}, _hashed(_file_chunks(path), sent))],
                boundary,
            )
            started = time.monotonic()
            response = client.post(
                f"{server.dicomweb}/studies",
                content=body,
                headers={
                    "Content-Type": multipart_content_type(boundary),
                    "Accept": "application/dicom+json",
                },
            )
            timings["STOW-RS"] = time.monotonic() - started
            assert response.status_code == 200, response.text[:500]
            stored = json.loads(response.content)["00081199"]["Value"]
            assert [item["00081155"]["Value"][0] for item in stored] == [header.SOPInstanceUID]
            stow_rss = server.peak_rss_bytes()
            expected_sha = sent.hexdigest()

            # Metadata comes from the index: it must not depend on the object's size.
            started = time.monotonic()
            response = client.get(
                f"{instance_url}/metadata", headers={"Accept": "application/dicom+json"}
            )
            timings["metadata"] = time.monotonic() - started
            assert response.status_code == 200, response.text[:500]
            (metadata,) = json.loads(response.content)
            assert metadata["00280008"]["Value"] == [frames]
            assert "BulkDataURI" in metadata["7FE00010"]
            assert timings["metadata"] < 1.0, timings

            # One frame from the middle: a byte range of the blob, located by the frame index.
            middle = frames // 2
            started = time.monotonic()
            response = client.get(
                f"{instance_url}/frames/{middle}",
                headers={"Accept": 'multipart/related; type="application/octet-stream"'},
            )
            timings["frame"] = time.monotonic() - started
            assert response.status_code == 200, response.text[:500]
            with path.open("rb") as f:
                f.seek(pixel_offset + (middle - 1) * FRAME_BYTES)
                expected_frame = f.read(FRAME_BYTES)
            boundary_param = response.headers["content-type"].split('boundary="', 1)[1]
            dash = b"--" + boundary_param.split('"', 1)[0].encode()
            part = response.content.split(dash)[1]
            assert part[part.index(b"\r\n\r\n") + 4 : -2] == expected_frame
            assert timings["frame"] < 1.0, timings

            # WADO-RS as stored, streamed and hashed on the fly.
            started = time.monotonic()
            with client.stream("GET", instance_url, headers={"Accept": ACCEPT_AS_STORED}) as r:
                assert r.status_code == 200
                got_sha, got_size = _single_part_sha256(r)
            timings["WADO-RS"] = time.monotonic() - started
            assert (got_size, got_sha) == (file_size, expected_sha)

        peak_rss = server.peak_rss_bytes()
        print(
            f"\n{file_size / (1 << 30):.2f} GB instance, {frames} frames; server peak RSS: "
            f"idle {idle_rss >> 20} MB, after STOW {stow_rss >> 20} MB, "
            f"end {peak_rss >> 20} MB; "
            + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in timings.items())
        )
        assert peak_rss < MAX_SERVER_RSS, f"server peak RSS {peak_rss >> 20} MB"
    finally:
        server.stop()
