"""End-to-end tests against a live ``nubis serve``; shared helpers for the test modules.

Fixtures are in conftest.py; what tests import (the test file model and encoders) lives here,
because importing from a conftest module depends on how pytest happened to import it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.dataset import Dataset

from nubis.archive import Archive
from nubis.config import load_settings
from nubis.tools import synth

if TYPE_CHECKING:
    import httpx
    from starlette.testclient import TestClient

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# Test servers start with this bootstrap admin key (NUBIS_ADMIN_TOKEN, set in tests/conftest.py):
# authentication is on by default, also on loopback, so every client sends it.
ADMIN_TOKEN = "nubis-test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def encode(ds: Dataset) -> bytes:
    """The bytes dicomweb-client sends for ``ds`` (it calls pydicom.dcmwrite with defaults)."""
    with io.BytesIO() as buffer:
        pydicom.dcmwrite(buffer, ds)
        return buffer.getvalue()


@dataclass(frozen=True)
class DicomFile:
    """One test object on disk, with the identifiers tests keep asking for."""

    path: Path

    @cached_property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @cached_property
    def header(self) -> Dataset:
        return pydicom.dcmread(self.path, stop_before_pixels=True)

    def dataset(self) -> Dataset:
        """A fresh, fully read data set (callers may modify it)."""
        return pydicom.dcmread(self.path)

    @property
    def study_uid(self) -> str:
        return str(self.header.StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(self.header.SeriesInstanceUID)

    @property
    def sop_uid(self) -> str:
        return str(self.header.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.header.SOPClassUID)

    @property
    def transfer_syntax(self) -> str:
        return str(self.header.file_meta.TransferSyntaxUID)

    @property
    def uids(self) -> tuple[str, str, str]:
        return self.study_uid, self.series_uid, self.sop_uid


CT_PATIENT = synth.PatientSpec("NUBIS-CT-01", "Müller^Hans", "19650412", "M")
MR_PATIENT = synth.PatientSpec("NUBIS-MR-01", "Tanaka^Yuki", "19881105", "F")
MF_PATIENT = synth.PatientSpec("NUBIS-MF-01", "Okafor^Chidi", "19790228", "M")


def multipart_parts(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related body (RFC 2046), headers lower-cased.

    Written out here rather than taken from the server or a client library, so a test reads
    the bytes the way any independent client would.
    """
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, f"no boundary in {content_type!r}"
    delimiter = b"--" + match.group(1).encode()
    chunks = body.split(b"\r\n" + delimiter)
    # The first chunk is the preamble (plus the first delimiter); the last starts with "--".
    first = chunks[0]
    assert first.startswith(delimiter) or delimiter in first, "body does not open with a boundary"
    chunks[0] = first[first.index(delimiter) + len(delimiter) :]
    assert chunks[-1].startswith(b"--"), "body has no closing boundary"
    parts = []
    for chunk in chunks[:-1]:
        head, sep, data = chunk.partition(b"\r\n\r\n")
        assert sep, "part without a blank line after its headers"
        headers = {}
        for line in head.split(b"\r\n"):
            if b":" in line:
                name, _, text = line.partition(b":")
                headers[name.decode().strip().lower()] = text.decode().strip()
        parts.append((headers, data))
    return parts


def in_process_archive(data_dir: Path, admin_token: str, **settings: str) -> Archive:
    """An archive for in-process tests (Starlette's TestClient): the real services, index, blob
    store and audit trail on a folder of its own, without fsync or a DICOM port; ``settings``
    override the defaults. The caller starts it (``prepare``/``start``, or the app's lifespan)."""
    overrides = {
        "data_dir": str(data_dir),
        "durable": "false",
        "admin_token": admin_token,
        "dimse_port": "0",
        "log_level": "warning",
        **settings,
    }
    return Archive(load_settings(environ={}, overrides=overrides))


def web_sign_in(client: TestClient, user: str, password: str, **form: str) -> httpx.Response:
    """Sign ``client`` in on the web face's form, as a browser does (its login CSRF token
    first); the answer (303 on success) is returned unchecked."""
    page = client.get("/ui/login", params={"next": form.get("next", "/ui/")})
    match = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
    assert match, page.text[:300]
    return client.post(
        "/ui/login",
        data={"username": user, "password": password, "login_csrf": match.group(1), **form},
        follow_redirects=False,
    )


def page_csrf(client: TestClient, path: str = "/ui/") -> str:
    """The session's CSRF token, as a page gives it to its scripts."""
    match = re.search(r'name="csrf-token" content="([^"]+)"', client.get(path).text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)
