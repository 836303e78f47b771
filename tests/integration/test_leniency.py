"""Issue 12: what real archives hold comes in, with a record of what was odd.

STOW-RS answers an object stored with warnings 202, with Warning Reason (0008,1196) in its
ReferencedSOPSequence item and a Warning header saying what (PS3.18 10.5.3); what is served
is the object as it was sent.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import pytest
import requests
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from integration import DicomFile
from integration.test_bad_input import (
    REFERENCED_SOP_SEQUENCE,
    retrieve_as_stored,
    stow,
    stow_body,
    stow_result,
)
from nubis.tools import synth

if TYPE_CHECKING:
    from conftest import LiveServer

WARNING_REASON = "00081196"


@pytest.fixture(scope="module")
def server(live_server: LiveServer) -> Iterator[LiveServer]:
    start = live_server.log_path.stat().st_size if live_server.log_path.exists() else 0
    yield live_server
    log = live_server.log()[start:]
    assert "Traceback" not in log, log[-3000:]


def warning_reasons(response: requests.Response) -> list[int | None]:
    body: dict[str, Any] = response.json()
    return [
        item.get(WARNING_REASON, {}).get("Value", [None])[0]
        for item in body.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    ]


def as_file(ds: pydicom.Dataset, folder: Path) -> DicomFile:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return DicomFile(path)


def test_the_same_instance_in_another_encoding_is_stored_with_a_warning(
    server: LiveServer, tmp_path: Path
) -> None:
    """A re-sent instance, RLE-compressed by a router, is 202 with Warning Reason 0xB000 and a
    Warning header naming it, not 409 / 0x0111; the first encoding is what is served."""
    ds = next(synth.series_datasets("MR", n_instances=1, seed=1201, patient=synth.PatientSpec(
        "LENIENT-RESEND", "Resend^Rita", "19800101", "F")))  # fmt: skip
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    first = as_file(ds, tmp_path)
    (tmp_path / "rle").mkdir()
    response = stow(server, stow_body(first.data))
    assert response.status_code == 200, response.text
    compressed = copy.deepcopy(ds)
    compressed.compress(RLELossless, generate_instance_uid=False)
    again = stow(server, stow_body(as_file(compressed, tmp_path / "rle").data))
    assert again.status_code == 202, again.text
    assert stow_result(server, again) == ([ds.SOPInstanceUID], [])
    assert warning_reasons(again) == [0xB000]
    assert "already stored in another encoding" in again.headers["warning"]
    assert retrieve_as_stored(server, first) == first.data
