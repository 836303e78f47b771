"""A large corrected object streams out with bounded memory (docs/corrections.md).

A corrected object is not its stored bytes; the correction is spliced into the stored stream
(its head rewritten, the rest passed through as it is read and checked), so serving it must not
hold it whole. A 160 MB object, corrected, is read through WADO-RS (PS3.18 10.4.1.1.1): the
server's peak resident memory stays far below the object's size, the answer carries the
corrected Patient ID, and its pixel data is the stored pixel data, byte for byte; C-GET sends
it as a stream, corrected.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from integration import AUTH
from integration.dimse_helpers import AE, free_port, need_dcmtk, run
from integration.server import ACCEPT_AS_STORED, multipart_content_type, start_server
from nubis.tools.synth import make_large_instance
from nubis.web.dicomweb.multipart import iter_multipart, new_boundary

SIZE = 160 << 20  # over STREAM_LARGER_THAN (64 MB), so C-GET streams it too
CHUNK = 1 << 20
# Above what the server itself needs after a store (12 MB measured); below one copy of the
# object (the object, its checked copy and its rewrite held whole would be about 480 MB).
MAX_GROWTH = 100 << 20


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


@pytest.mark.slow
def test_a_large_corrected_object_streams(tmp_path: Path) -> None:
    if shutil.disk_usage(tmp_path).free < 4 * SIZE:
        pytest.skip(reason=f"needs {4 * SIZE >> 20} MB free in {tmp_path}")
    path = make_large_instance(tmp_path / "large.dcm", size_bytes=SIZE, rows=512, columns=512)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    size = path.stat().st_size
    tail = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(size - (64 << 20))
        tail.update(f.read())

    need_dcmtk("getscu")
    dimse_port = free_port()
    server = start_server(
        tmp_path / "data", env={"NUBIS_DIMSE_PORT": str(dimse_port)}, log_level="warning"
    )
    try:
        with httpx.Client(timeout=httpx.Timeout(600, connect=10), headers=AUTH) as client:
            boundary = new_boundary()
            body = iter_multipart(
                [({"Content-Type": "application/dicom"}, _chunks(path))], boundary
            )
            stored = client.post(
                f"{server.dicomweb}/studies",
                content=body,
                headers={"Content-Type": multipart_content_type(boundary)},
            )
            assert stored.status_code == 200, stored.text[:300]
            corrected = client.post(
                f"{server.url}/corrections",
                json={"action": "update-study", "study": str(header.StudyInstanceUID),
                      "set": {"PatientID": "LARGE-NEW"}, "reason": "large object"},
            )  # fmt: skip
            assert corrected.status_code == 201, corrected.text
            server.reset_peak_rss()
            before = server.peak_rss_bytes()
            url = (
                f"{server.dicomweb}/studies/{header.StudyInstanceUID}/series/"
                f"{header.SeriesInstanceUID}/instances/{header.SOPInstanceUID}"
            )
            head, last, received = b"", b"", 0
            with client.stream("GET", url, headers={"Accept": ACCEPT_AS_STORED}) as response:
                assert response.status_code == 200
                for chunk in response.iter_bytes(CHUNK):
                    if len(head) < (64 << 10):
                        head += chunk
                    last = (last + chunk)[-(66 << 20) :]
                    received += len(chunk)
            growth = server.peak_rss_bytes() - before
        assert b"LARGE-NEW" in head
        # C-GET (PS3.4 C.4.3) sends it as a stream too (above 64 MB), corrected.
        got = tmp_path / "got"
        got.mkdir()
        server.reset_peak_rss()
        before = server.peak_rss_bytes()
        run(["getscu", "-S", "-aet", "GETTER", "-aec", AE, "-od", str(got), "127.0.0.1",
             str(dimse_port), "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={header.StudyInstanceUID}"])  # fmt: skip
        get_growth = server.peak_rss_bytes() - before
        (received_file,) = got.iterdir()
        assert pydicom.dcmread(received_file, stop_before_pixels=True).PatientID == "LARGE-NEW"
        assert abs(received_file.stat().st_size - size) < (1 << 16)
        closing = last.rindex(b"\r\n--")
        assert hashlib.sha256(last[closing - (64 << 20) : closing]).digest() == tail.digest()
        assert abs(received - size) < (1 << 16)
        print(
            f"\n{size >> 20} MB corrected object: server RSS grew {growth >> 20} MB "
            f"(WADO-RS), {get_growth >> 20} MB (C-GET)"
        )
        assert growth < MAX_GROWTH, f"server RSS grew {growth >> 20} MB"
        assert get_growth < MAX_GROWTH, f"server RSS grew {get_growth >> 20} MB in C-GET"
    finally:
        server.stop()
