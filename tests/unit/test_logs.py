"""What keeps secrets and patient data out of the access log (nubis.logs)."""

from __future__ import annotations

import logging

from nubis.logs import DropQueryString


def _filtered(path: str) -> str:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", path, "1.1", 200), None,
    )  # fmt: skip
    assert DropQueryString().filter(record)
    assert isinstance(record.args, tuple)
    return str(record.args[2])


def test_query_strings_and_share_tokens_stay_out_of_the_access_log() -> None:
    token = "Jq9x" * 10 + "abc"
    assert _filtered("/dicom-web/studies?PatientName=DOE") == "/dicom-web/studies?..."
    assert _filtered(f"/share/{token}") == "/share/<token>"
    assert _filtered(f"/share/{token}?x=1") == "/share/<token>?..."
    assert _filtered("/share/") == "/share/"
    assert _filtered("/ui/shares") == "/ui/shares"
