"""A small request must not make a large response or a large worker (issue #9, item 2).

A frame list names each frame once (PS3.18 10.4.1.1.4: "one or more non-duplicate frame
numbers"), so a request for frames is at most the object's Number of Frames long; one that
names a frame twice is refused with a 400 before anything is read. What is legal, however
large (all 2,000 frames of a multi-frame, the whole Pixel Data as bulk data), streams from the
blob store a frame or a chunk at a time: the worker's peak resident memory stays far below the
response's size.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from integration import AUTH
from integration.server import Server, multipart_content_type, start_server
from nubis.tools import synth
from nubis.web.dicomweb.multipart import iter_multipart, new_boundary

FRAMES, ROWS, COLUMNS = 2000, 256, 256
J2K_FRAMES = 160  # 128 x 128 x 16 bits: 5 MB decoded, more than one 4 MiB batch
FRAME_BYTES = ROWS * COLUMNS * 2
OBJECT_BYTES = FRAMES * FRAME_BYTES  # 262 MB of Pixel Data
# Holding the response whole took the object's size twice over (the frames, then the joined
# body: +436 MB measured before the fix); streaming needs a few batches of 4 MiB.
MAX_RSS_GROWTH = 64 << 20
OCTET_STREAM = 'multipart/related; type="application/octet-stream"'

# Hostile frame lists: each names a frame more than once. The longest asked 329 MB of one
# 33 KB frame of an object with 100 frames before the fix.
DUPLICATE_FRAME_LISTS = [
    ",".join(["1"] * 9999),
    "1,1",
    "2,1,2",
    ",".join(str(n) for n in range(1, 101)) + ",50",
]


@dataclass
class Archive:
    server: Server
    big_url: str
    small_url: str
    j2k_url: str
    wide: Path
    wide_url: str


def _url(server: Server, path: Path) -> str:
    h = pydicom.dcmread(path, stop_before_pixels=True)
    return (
        f"{server.dicomweb}/studies/{h.StudyInstanceUID}/series/{h.SeriesInstanceUID}"
        f"/instances/{h.SOPInstanceUID}"
    )


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    folder = tmp_path_factory.mktemp("amplification")
    big = synth.make_multiframe(
        folder / "big.dcm", frames=FRAMES, rows=ROWS, columns=COLUMNS, seed=91
    )
    small = synth.make_multiframe(folder / "small.dcm", frames=100, rows=128, columns=128, seed=92)
    j2k = synth.make_multiframe(
        folder / "j2k.dcm", frames=J2K_FRAMES, rows=128, columns=128, seed=93,
        transfer_syntax=JPEG2000Lossless,
    )  # fmt: skip
    # Frames of 4.5 MB, over READ_WHOLE_FRAGMENT: each streams in chunks rather than whole.
    wide = synth.make_multiframe(folder / "wide.dcm", frames=2, rows=1500, columns=1500, seed=94)
    # One worker, so the process that answers is the one measured.
    server = start_server(folder / "data", env={"NUBIS_WORKERS": "1"}, log_level="warning")
    try:
        with httpx.Client(timeout=300, headers=AUTH) as client:
            for path in (big, small, j2k, wide):
                boundary = new_boundary()
                body = iter_multipart(
                    [({"Content-Type": "application/dicom"}, _file_chunks(path))], boundary
                )
                response = client.post(
                    f"{server.dicomweb}/studies",
                    content=body,
                    headers={"Content-Type": multipart_content_type(boundary)},
                )
                assert response.status_code == 200, response.text[:500]
        urls = [_url(server, p) for p in (big, small, j2k)]
        yield Archive(server, *urls, wide, _url(server, wide))
    finally:
        server.stop()


def _streamed(server: Server, url: str, headers: dict[str, str]) -> tuple[int, int, int, float]:
    """(status, body bytes, peak RSS growth of the server, seconds) of a GET read as a stream."""
    server.reset_peak_rss()
    baseline = server.peak_rss_bytes()
    started = time.monotonic()
    size = 0
    with (
        httpx.Client(timeout=300, headers=AUTH) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        for chunk in response.iter_bytes(1 << 20):
            size += len(chunk)
        status = response.status_code
    return status, size, server.peak_rss_bytes() - baseline, time.monotonic() - started


@pytest.mark.parametrize("frames", DUPLICATE_FRAME_LISTS, ids=lambda f: f"{len(f)}-chars")
def test_frame_list_naming_a_frame_twice_is_400(archive: Archive, frames: str) -> None:
    """PS3.18 10.4.1.1.4: a frame list holds non-duplicate frame numbers; the reason names
    the rule and the frame, and nothing is read (the worker does not grow)."""
    for accept in (OCTET_STREAM, "*/*"):
        server = archive.server
        server.reset_peak_rss()
        baseline = server.peak_rss_bytes()
        response = httpx.get(
            f"{archive.small_url}/frames/{frames}",
            headers={**AUTH, "Accept": accept},
            timeout=60,
        )
        assert response.status_code == 400, response.text[:300]
        reason = response.json()["reason"]
        assert "more than once" in reason and "PS3.18" in reason, reason
        assert server.peak_rss_bytes() - baseline < 16 << 20


def test_decoded_frame_list_naming_a_frame_twice_is_400(archive: Archive) -> None:
    """The decoding path (JPEG 2000 to octet-stream), which cost 6.5 s of CPU for 1,000
    copies of one frame, refuses the list before decoding anything."""
    started = time.monotonic()
    response = httpx.get(
        f"{archive.j2k_url}/frames/" + ",".join(["1"] * 1000),
        headers={**AUTH, "Accept": OCTET_STREAM},
        timeout=60,
    )
    assert response.status_code == 400, response.text[:300]
    assert time.monotonic() - started < 2


def test_every_frame_of_a_large_object_streams_with_bounded_memory(archive: Archive) -> None:
    """The largest legal frame list, all 2,000 frames (262 MB), streams frame by frame."""
    frames = ",".join(str(n) for n in range(1, FRAMES + 1))
    status, size, growth, seconds = _streamed(
        archive.server, f"{archive.big_url}/frames/{frames}", {"Accept": OCTET_STREAM}
    )
    print(f"\nall {FRAMES} frames: {size >> 20} MB in {seconds:.2f}s, RSS +{growth >> 20} MB")
    assert status == 200
    assert size > OBJECT_BYTES
    assert growth < MAX_RSS_GROWTH, f"peak RSS grew {growth >> 20} MB"


def test_decoded_frames_stream_one_at_a_time(archive: Archive) -> None:
    """Decoded frames (JPEG 2000 to octet-stream) come one decoded frame at a time, in the
    order named, and each is the frame it names. All 160 (5 MB decoded) are more than one
    batch, so the answer streams; a smaller one is sent whole."""
    named = [20, 1, 7, *(n for n in range(1, J2K_FRAMES + 1) if n not in (20, 1, 7))]
    response = httpx.get(
        f"{archive.j2k_url}/frames/{','.join(map(str, named))}",
        headers={**AUTH, "Accept": OCTET_STREAM},
        timeout=60,
    )
    assert response.status_code == 200, response.text[:300]
    assert "transfer-encoding" in response.headers  # streamed, not a Content-Length body
    dash = b"--" + response.headers["content-type"].split('boundary="')[1].split('"')[0].encode()
    parts = [p[p.index(b"\r\n\r\n") + 4 : -2] for p in response.content.split(dash)[1:-1]]
    assert [len(p) for p in parts] == [128 * 128 * 2] * J2K_FRAMES
    assert parts[0] != parts[1]


def test_frames_larger_than_a_read_stream_in_chunks(archive: Archive) -> None:
    """A frame over READ_WHOLE_FRAGMENT (4 MiB) is sent from a chunked read, byte exact."""
    response = httpx.get(
        f"{archive.wide_url}/frames/2,1", headers={**AUTH, "Accept": OCTET_STREAM}, timeout=60
    )
    assert response.status_code == 200, response.text[:300]
    dash = b"--" + response.headers["content-type"].split('boundary="')[1].split('"')[0].encode()
    parts = [p[p.index(b"\r\n\r\n") + 4 : -2] for p in response.content.split(dash)[1:-1]]
    pixels = pydicom.dcmread(archive.wide).pixel_array
    assert parts == [pixels[1].tobytes(), pixels[0].tobytes()]


def test_bulk_pixel_data_streams_with_bounded_memory(archive: Archive) -> None:
    """PS3.18 10.4.1.1.5: the whole Pixel Data value as bulk data, 262 MB, streamed."""
    for accept in ("application/octet-stream", OCTET_STREAM):
        status, size, growth, seconds = _streamed(
            archive.server, f"{archive.big_url}/bulk/7FE00010", {"Accept": accept}
        )
        print(f"\nbulk {accept}: {size >> 20} MB in {seconds:.2f}s, RSS +{growth >> 20} MB")
        assert status == 200
        assert size >= OBJECT_BYTES
        assert growth < MAX_RSS_GROWTH, f"{accept}: peak RSS grew {growth >> 20} MB"


def test_bulk_range_keeps_its_length(archive: Archive) -> None:
    """A byte range of a streamed bulk value still says its length (206, Content-Length)."""
    response = httpx.get(
        f"{archive.big_url}/bulk/7FE00010",
        headers={**AUTH, "Accept": "application/octet-stream", "Range": "bytes=10-4000009"},
        timeout=60,
    )
    assert response.status_code == 206
    assert response.headers["content-length"] == "4000000"
    assert len(response.content) == 4000000


# Hostile rendering and query parameters (issue #9: "the same class elsewhere"). Each asks the
# server for work or memory out of proportion to the request; each is a 400 naming the limit.
HOSTILE_RENDERED = [
    ("/rendered", {"viewport": "100000,100000"}, "viewport width"),
    ("/rendered", {"viewport": "8192,8192"}, "1..4096"),
    ("/frames/1/rendered", {"viewport": "4096,4097"}, "viewport height"),
    ("/thumbnail", {"viewport": "8192,8192"}, "1..4096"),
    ("/frames/1,1/rendered", {}, "more than once"),
]
HOSTILE_WADO_URI = [
    ({"rows": "8192", "columns": "8192"}, "rows"),
    ({"columns": "100000"}, "columns"),
    ({"frameNumber": "99999999999999999999"}, "frameNumber"),
    ({"frameNumber": "101"}, "frameNumber"),
    ({"frameNumber": "abc"}, "frameNumber"),
    ({"frameNumber": "-1"}, "frameNumber"),
]
HOSTILE_QIDO = [
    ([("includefield", "PatientName")] * 101, "includefield"),
    ([("includefield", ",".join(f"0009{n:04X}" for n in range(101)))], "includefield"),
    ([("StudyInstanceUID", ",".join(f"1.2.{n}" for n in range(1001)))], "at most 1000"),
    ([("StudyInstanceUID", "\\".join(["1.2.3"] * 1001))], "at most 1000"),
]


@pytest.mark.parametrize(("suffix", "params", "named"), HOSTILE_RENDERED)
def test_hostile_rendering_parameters_are_400(
    archive: Archive, suffix: str, params: dict[str, str], named: str
) -> None:
    """PS3.18 8.3.5.1.3 / 8.2.2: a viewport the server does not support is a 400; so is a
    rendered frame list naming a frame twice."""
    response = httpx.get(
        archive.small_url + suffix,
        params=params,
        headers={**AUTH, "Accept": "image/png"},
        timeout=60,
    )
    assert response.status_code == 400, response.text[:300]
    assert named in response.json()["reason"], response.json()


@pytest.mark.parametrize(("params", "named"), HOSTILE_WADO_URI)
def test_hostile_wado_uri_parameters_are_400(
    archive: Archive, params: dict[str, str], named: str
) -> None:
    """PS3.18 9.5.2: frameNumber is a positive integer up to the Number of Frames (else 400);
    rows and columns are a viewport (8.2.2), bounded like the rendered one."""
    study, series, sop = archive.small_url.split("/studies/")[1].split("/")[::2]
    response = httpx.get(
        f"{archive.server.url}/wado",
        params={
            "requestType": "WADO",
            "studyUID": study,
            "seriesUID": series,
            "objectUID": sop,
            "contentType": "image/png",
            **params,
        },
        headers=AUTH,
        timeout=60,
    )
    assert response.status_code == 400, response.text[:300]
    assert named in response.json()["reason"], response.json()


@pytest.mark.parametrize(("params", "named"), HOSTILE_QIDO, ids=["if-x101", "if-101", "uid", "bs"])
def test_hostile_qido_parameters_are_400(
    archive: Archive, params: list[tuple[str, str]], named: str
) -> None:
    """PS3.18 10.6.1.2: a query the server will not run is a 400 with the reason; a UID list
    (PS3.4 C.2.2.2.2) holds at most 1000 UIDs, includefield at most 100 attributes."""
    response = httpx.get(
        f"{archive.server.dicomweb}/studies", params=params, headers=AUTH, timeout=60
    )
    assert response.status_code == 400, response.text[:300]
    assert named in response.json()["reason"], response.json()
