"""Read records off the request path, against a live ``nubis serve`` (durable, two workers).

docs/security.md states what a crash can lose: at most the reads answered in the last
``audit_read_flush_ms``, never a write's record. Here: every read answered longer ago than that
window is in the chain after SIGKILL; when the audit trail cannot be written (its table taken
away under the running server: a real fault), reads are refused with 503 and nothing else
leaks, and they are served again once it can be, the records of reads answered before the
fault was seen committed then.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import pydicom
from pydicom.data import get_testdata_file

from integration import AUTH
from integration.server import DICOM_PART, multipart_content_type, start_server
from nubis.web.dicomweb.multipart import iter_multipart, new_boundary

WINDOW_MS = 20
SERVER_ENV = {"NUBIS_AUDIT_READ_FLUSH_MS": str(WINDOW_MS)}
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _store(client: httpx.Client, base: str, path: Path) -> str:
    boundary = new_boundary()
    body = b"".join(iter_multipart([({"Content-Type": DICOM_PART}, [path.read_bytes()])], boundary))
    response = client.post(
        f"{base}/studies",
        content=body,
        headers={
            "Content-Type": multipart_content_type(boundary),
            "Accept": "application/dicom+json",
        },
    )
    assert response.status_code == 200, response.text[:300]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (
        f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def _read_records(data_dir: Path) -> int:
    """Committed records of instance reads, from the file, as a crash leaves it."""
    uri = f"file:{(data_dir / 'index.sqlite').resolve()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as con:
        rows = con.execute(
            "SELECT record FROM audit_log WHERE event_code IN ('110103', '110104')"
        ).fetchall()
    return sum(1 for (text,) in rows if json.loads(text)["event"]["action"] == "R")


def test_every_read_older_than_the_window_survives_sigkill(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", env=SERVER_ENV, log_level="warning")
    try:
        with httpx.Client(timeout=30, headers=AUTH) as client:
            url = _store(client, server.dicomweb, Path(get_testdata_file("CT_small.dcm")))
            before = _read_records(server.data_dir)
            for _ in range(50):
                response = client.get(url, headers={"Accept": ACCEPT})
                assert response.status_code == 200
        time.sleep(100 * WINDOW_MS / 1000)  # far past the window, even on a loaded machine
        server.kill()
        assert _read_records(server.data_dir) - before == 50
    finally:
        server.kill()


def test_reads_are_refused_while_the_audit_trail_cannot_be_written(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", env=SERVER_ENV, log_level="warning")
    db = sqlite3.connect(server.data_dir / "index.sqlite", isolation_level=None, timeout=30)
    try:
        # One keep-alive connection: one worker process, whose queue sees the fault.
        with httpx.Client(timeout=30, headers=AUTH) as client:
            url = _store(client, server.dicomweb, Path(get_testdata_file("CT_small.dcm")))
            assert client.get(url, headers={"Accept": ACCEPT}).status_code == 200
            time.sleep(0.5)
            before = _read_records(server.data_dir)

            db.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
            answered = 0
            deadline = time.monotonic() + 10
            while True:
                response = client.get(url, headers={"Accept": ACCEPT})
                if response.status_code == 503:
                    break
                assert response.status_code == 200
                answered += 1
                assert time.monotonic() < deadline, "reads still answered 10 s after the fault"
                time.sleep(0.005)
            for _ in range(10):
                refused = client.get(url, headers={"Accept": ACCEPT})
                assert refused.status_code == 503
                assert refused.headers["retry-after"]
                assert "Traceback" not in refused.text and b"DICM" not in refused.content

            db.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
            deadline = time.monotonic() + 15
            while client.get(url, headers={"Accept": ACCEPT}).status_code != 200:
                assert time.monotonic() < deadline, "reads still refused 15 s after recovery"
                time.sleep(0.1)
            answered += 1
        server.stop()  # a clean stop commits what is queued
        assert _read_records(server.data_dir) - before == answered
    finally:
        db.close()
        server.kill()
