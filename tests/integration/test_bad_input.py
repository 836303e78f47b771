"""Hostile and sloppy input against a live server: clear 4xx answers, nothing stored, no leaks.

Whatever a client sends, the archive answers with the status PS3.18 names, every error body is
JSON with a ``reason`` (STOW-RS answers with its Store Instances Response Module instead), no
body ever carries a stack trace or a server file path, nothing a refused request carried is
stored, and what was stored before is unchanged.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import pytest
import requests
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset

from integration import AUTH, DicomFile, encode, multipart_parts
from nubis.tools import synth

if TYPE_CHECKING:
    from conftest import LiveServer

BOUNDARY = "nubis-bad-input"
STOW_CT = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE = "00081198", "00081199"
FAILURE_REASON, REFERENCED_SOP_INSTANCE_UID = "00081197", "00081155"
PATIENT = synth.PatientSpec("NUBIS-BAD-01", "Evil^Eve", "19800101", "F")


# ------------------------------------------------------------------ helpers
def _leaks(server: LiveServer, text: str) -> list[str]:
    """Things a response must never show a client: tracebacks and the server's file paths."""
    markers = ["Traceback", 'File "', str(server.data_dir), str(Path.cwd()), "site-packages"]
    markers += ["/src/nubis", '.py"']
    return [m for m in markers if m in text]


def assert_error(server: LiveServer, response: requests.Response, *statuses: int) -> str:
    """``response`` is one of ``statuses``, a JSON body with a non-empty reason, and leaks nothing.

    Returns the reason, so a test can check it names the problem.
    """
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert not _leaks(server, response.text), response.text[:500]
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert isinstance(body.get("reason"), str) and body["reason"].strip(), body
    return str(body["reason"])


def stow_body(*parts: bytes | tuple[str, bytes], close: bool = True) -> bytes:
    """A multipart/related body; a part is its bytes (application/dicom) or (type, bytes)."""
    out = io.BytesIO()
    for part in parts:
        media_type, data = part if isinstance(part, tuple) else ("application/dicom", part)
        out.write(f"--{BOUNDARY}\r\nContent-Type: {media_type}\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    if close:
        out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def stow(
    server: LiveServer, body: bytes, *, study: str | None = None, content_type: str = STOW_CT
) -> requests.Response:
    url = f"{server.dicomweb}/studies" + (f"/{study}" if study else "")
    return requests.post(url, data=body, headers={**AUTH, "Content-Type": content_type}, timeout=60)


def stow_result(server: LiveServer, response: requests.Response) -> tuple[list[str], list[int]]:
    """(stored SOP Instance UIDs, failure reasons) of a Store Instances Response."""
    assert response.headers["content-type"].startswith("application/dicom+json"), response.text
    assert not _leaks(server, response.text), response.text
    body: dict[str, Any] = response.json()
    stored = [
        item[REFERENCED_SOP_INSTANCE_UID]["Value"][0]
        for item in body.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    ]
    reasons = [
        item[FAILURE_REASON]["Value"][0]
        for item in body.get(FAILED_SOP_SEQUENCE, {}).get("Value", [])
    ]
    return stored, reasons


def retrieve_as_stored(server: LiveServer, f: DicomFile) -> bytes:
    url = f"{server.dicomweb}/studies/{f.study_uid}/series/{f.series_uid}/instances/{f.sop_uid}"
    response = requests.get(url, headers={**AUTH, "Accept": AS_STORED}, timeout=60)
    assert response.status_code == 200, response.text
    [(_, data)] = multipart_parts(response.headers["content-type"], response.content)
    return data


def count_instances(server: LiveServer, **filters: str) -> int:
    response = requests.get(
        f"{server.dicomweb}/instances", params=filters, timeout=30, headers=AUTH
    )
    assert response.status_code == 200, response.text
    return len(response.json())


def with_uids(f: DicomFile, **uids: str) -> bytes:
    """``f`` re-encoded with the given (possibly invalid) UIDs, meta header kept consistent."""
    ds = f.dataset()
    with pydicom_config.disable_value_validation():
        for keyword, uid in uids.items():
            setattr(ds, keyword, uid)
        if "SOPInstanceUID" in uids:
            ds.file_meta.MediaStorageSOPInstanceUID = uids["SOPInstanceUID"]
        return encode(ds)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def server(live_server: LiveServer) -> Iterator[LiveServer]:
    """The session server; after the module, its log must show no unexpected error."""
    start = live_server.log_path.stat().st_size if live_server.log_path.exists() else 0
    yield live_server
    log = live_server.log()[start:]
    assert "Traceback" not in log, log[-3000:]
    assert "internal error" not in log, log[-3000:]


@pytest.fixture(scope="module")
def baseline(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> list[DicomFile]:
    """Three MR instances stored before any hostile request; they must never change."""
    paths = synth.make_mr_series(
        tmp_path_factory.mktemp("bad-baseline"),
        n_instances=3,
        rows=64,
        columns=64,
        patient=PATIENT,
        seed=31,
    )
    files = [DicomFile(p) for p in paths]
    response = stow(server, stow_body(*(f.data for f in files)))
    assert response.status_code == 200, response.text
    return files


@pytest.fixture(scope="module")
def spare(tmp_path_factory: pytest.TempPathFactory) -> list[DicomFile]:
    """Valid instances never stored by a fixture, for requests that mix good and bad parts."""
    paths = synth.make_mr_series(
        tmp_path_factory.mktemp("bad-spare"),
        n_instances=4,
        rows=64,
        columns=64,
        patient=PATIENT,
        seed=32,
    )
    return [DicomFile(p) for p in paths]


def assert_baseline_untouched(server: LiveServer, baseline: list[DicomFile]) -> None:
    for f in baseline:
        assert retrieve_as_stored(server, f) == f.data
    assert count_instances(server, PatientID=PATIENT.patient_id) >= len(baseline)


# ------------------------------------------------------------------ STOW-RS: bad objects
def test_truncated_part_is_refused_with_c000(
    server: LiveServer, baseline: list[DicomFile], spare: list[DicomFile]
) -> None:
    """PS3.18 10.5.3: a part that is not a complete PS3.10 file fails with 0xC000 (cannot
    understand, PS3.4 B.2.3); all parts failed, so 409 Conflict (PS3.18 10.5.3.1)."""
    data = spare[0].data
    for cut in (100, len(data) // 2, len(data) - 7):
        response = stow(server, stow_body(data[:cut]))
        assert response.status_code == 409, response.text
        assert stow_result(server, response) == ([], [0xC000])
        # The reason is also spelled out for a person (Warning header).
        assert response.headers.get("warning")
    assert count_instances(server, SOPInstanceUID=spare[0].sop_uid) == 0
    assert_baseline_untouched(server, baseline)


@pytest.mark.parametrize(
    "junk",
    [
        b"",
        b"hello, this is not DICOM",
        b"\0" * 128 + b"DICM",
        b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff",
        b"%PDF-1.4\n" + bytes(range(256)) * 8,
    ],
    ids=["empty", "text", "preamble-only", "broken-meta", "pdf"],
)
def test_non_dicom_part_is_refused_with_c000(server: LiveServer, junk: bytes) -> None:
    """PS3.18 10.5.3: a part that is not DICOM at all fails with 0xC000."""
    response = stow(server, stow_body(junk))
    assert response.status_code == 409, response.text
    assert stow_result(server, response) == ([], [0xC000])


def test_part_of_another_media_type_is_refused(server: LiveServer) -> None:
    """PS3.18 10.5.1: parts of a STOW-RS request with type application/dicom are DICOM files;
    a text/plain part among them is refused, not stored."""
    response = stow(server, stow_body(("text/plain", b"just text")))
    assert response.status_code == 409, response.text
    stored, reasons = stow_result(server, response)
    assert stored == [] and len(reasons) == 1


def test_missing_sop_instance_uid_is_refused_with_a900(
    server: LiveServer, spare: list[DicomFile]
) -> None:
    """PS3.18 10.5.3: an object without SOP Instance UID fails with 0xA900 (data set does not
    match SOP class)."""
    ds = spare[1].dataset()
    del ds.SOPInstanceUID
    del ds.file_meta.MediaStorageSOPInstanceUID
    response = stow(server, stow_body(encode(ds)))
    assert response.status_code == 409, response.text
    assert stow_result(server, response) == ([], [0xA900])


# Not here: leading zeros in a component ("1.02.3") and letters ("1.2.abc.4"). PS3.5 9.1 forbids
# them, but legacy systems produce them and the archive accepts them with a warning (as most
# archives do) rather than lose such studies (nubis.dicom.uids, tests/integration/test_leniency.py).
HOSTILE_UIDS = {
    "dot-dot": "../x",
    "dot-dot-deep": "../../../../etc/passwd",
    "65-chars": "1." + "2" * 63,
    "punctuation": "1.2.a-b.4",
    "space": "1.2 .3",
    "empty-component": "1..2",
}


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
@pytest.mark.parametrize("uid", HOSTILE_UIDS.values(), ids=HOSTILE_UIDS.keys())
def test_hostile_uid_in_data_set_is_refused(
    server: LiveServer, spare: list[DicomFile], keyword: str, uid: str
) -> None:
    """PS3.18 10.5.3 with PS3.5 9.1: a UID that is neither a UI value nor one of the letters,
    digits and dots the archive takes with a warning cannot identify anything; the object fails with
    0xA900 (or 0xC000 if it could not be parsed) and nothing is written anywhere."""
    response = stow(server, stow_body(with_uids(spare[2], **{keyword: uid})))
    assert response.status_code == 409, response.text
    stored, reasons = stow_result(server, response)
    assert stored == []
    assert reasons in ([0xA900], [0xC000])
    assert not any(server.data_dir.rglob("*passwd*"))
    assert count_instances(server, SOPInstanceUID=spare[2].sop_uid) == 0


def test_mixed_request_is_202_and_stores_only_the_good(
    server: LiveServer, baseline: list[DicomFile], spare: list[DicomFile]
) -> None:
    """PS3.18 10.5.3.1: some stored and some failed is 202 Accepted, with both sequences."""
    good = spare[3]
    response = stow(
        server,
        stow_body(
            spare[0].data[:500],
            good.data,
            with_uids(spare[1], SOPInstanceUID="../x"),
            b"not dicom",
        ),
    )
    assert response.status_code == 202, response.text
    stored, reasons = stow_result(server, response)
    assert stored == [good.sop_uid]
    assert sorted(reasons) == [0xA900, 0xC000, 0xC000]
    assert retrieve_as_stored(server, good) == good.data
    assert_baseline_untouched(server, baseline)


def test_different_object_under_stored_uid_is_0111_and_keeps_the_original(
    server: LiveServer, baseline: list[DicomFile]
) -> None:
    """PS3.18 10.5.3 with PS3.4 B.2.3: a different object under a stored SOP Instance UID is
    refused (0x0111, duplicate SOP instance); the stored one is kept as it was."""
    f = baseline[0]
    ds = f.dataset()
    ds.PatientName = "Overwritten^Mallory"
    response = stow(server, stow_body(encode(ds)))
    assert response.status_code == 409, response.text
    assert stow_result(server, response) == ([], [0x0111])
    # The identical object is still accepted: a retry after a lost response is harmless.
    again = stow(server, stow_body(f.data))
    assert again.status_code == 200, again.text
    assert_baseline_untouched(server, baseline)


def test_object_of_another_study_is_refused_on_the_study_resource(
    server: LiveServer, baseline: list[DicomFile], spare: list[DicomFile]
) -> None:
    """PS3.18 10.5.1: POST /studies/{study} stores only objects of that study (0xA900)."""
    response = stow(server, stow_body(spare[2].data), study=baseline[0].study_uid)
    assert response.status_code == 409, response.text
    assert stow_result(server, response) == ([], [0xA900])


# ------------------------------------------------------------------ STOW-RS: bad requests
@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "application/json",
        "text/plain",
        "multipart/form-data; boundary=x",
        f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
        f'multipart/related; type="image/jpeg"; boundary={BOUNDARY}',
    ],
)
def test_wrong_content_type_is_415(
    server: LiveServer, spare: list[DicomFile], content_type: str
) -> None:
    """PS3.18 10.5.1 / 10.5.3.1: STOW-RS takes multipart/related application/dicom here; any
    other request media type is 415 Unsupported Media Type."""
    response = stow(server, stow_body(spare[0].data), content_type=content_type)
    assert_error(server, response, 415)
    assert count_instances(server, SOPInstanceUID=spare[0].sop_uid) == 0


@pytest.mark.parametrize(
    "accept", ["application/dicom+xml", "text/html", "application/dicom+json;q=0"]
)
def test_stow_response_nobody_accepts_is_406_and_stores_nothing(
    server: LiveServer, tmp_path: Path, accept: str
) -> None:
    """PS3.18 10.5.3 with 8.7.5: the Store Instances Response is DICOM JSON here; a client that
    accepts only DICOM XML (or nothing nubis makes) gets 406 Not Acceptable, decided before
    the body is read, so no object is stored that the client would believe refused."""
    (path,) = synth.make_mr_series(tmp_path, n_instances=1, rows=8, columns=8, seed=34,
                                   patient=PATIENT)  # fmt: skip
    f = DicomFile(path)
    response = requests.post(
        f"{server.dicomweb}/studies",
        data=stow_body(f.data),
        headers={**AUTH, "Content-Type": STOW_CT, "Accept": accept},
        timeout=60,
    )
    assert_error(server, response, 406)
    assert count_instances(server, SOPInstanceUID=f.sop_uid) == 0


@pytest.mark.parametrize(
    "accept",
    ["application/dicom+xml, application/dicom+json;q=0.5", "application/json", "*/*"],
)
def test_stow_response_in_json_when_accepted(
    server: LiveServer, tmp_path: Path, accept: str
) -> None:
    """The refusal above is about XML only: any Accept that admits DICOM JSON stores."""
    (path,) = synth.make_mr_series(tmp_path, n_instances=1, rows=8, columns=8, seed=35,
                                   patient=PATIENT)  # fmt: skip
    f = DicomFile(path)
    response = requests.post(
        f"{server.dicomweb}/studies",
        data=stow_body(f.data),
        headers={**AUTH, "Content-Type": STOW_CT, "Accept": accept},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    expected_type = "application/json" if accept == "application/json" else "application/dicom+json"
    assert response.headers["content-type"].split(";")[0] == expected_type
    (stored,) = response.json()[REFERENCED_SOP_SEQUENCE]["Value"]
    assert stored[REFERENCED_SOP_INSTANCE_UID]["Value"] == [f.sop_uid]


def test_missing_content_type_is_415(server: LiveServer, spare: list[DicomFile]) -> None:
    """PS3.18 10.5.1: without a Content-Type the body cannot be understood."""
    response = requests.post(
        f"{server.dicomweb}/studies", data=spare[0].data, timeout=30, headers=AUTH
    )
    assert_error(server, response, 415)


def test_multipart_without_boundary_parameter_is_400(server: LiveServer) -> None:
    """PS3.18 8.6.1.2 / RFC 2046 5.1.1: multipart/related needs a boundary parameter."""
    response = stow(
        server, stow_body(b"x"), content_type='multipart/related; type="application/dicom"'
    )
    assert_error(server, response, 400)


def test_body_without_closing_boundary_is_400(server: LiveServer, spare: list[DicomFile]) -> None:
    """PS3.18 8.6.1.2 / RFC 2046 5.1.1: a body cut off before its close delimiter is
    malformed; the object in the cut-off part must not be stored."""
    response = stow(server, stow_body(spare[0].data, close=False))
    reason = assert_error(server, response, 400)
    assert "boundary" in reason.lower() or "delimiter" in reason.lower() or "end" in reason
    assert count_instances(server, SOPInstanceUID=spare[0].sop_uid) == 0


@pytest.mark.parametrize(
    "body",
    [b"", b"no boundary anywhere in this body", f"--{BOUNDARY}--\r\n".encode()],
    ids=["empty", "no-delimiter", "no-parts"],
)
def test_body_without_parts_is_400(server: LiveServer, body: bytes) -> None:
    """PS3.18 10.5.1: a STOW-RS request carries at least one instance."""
    assert_error(server, stow(server, body), 400)


def test_part_headers_too_large_is_400(server: LiveServer) -> None:
    """A part whose header block never ends is refused, not buffered without limit."""
    body = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n".encode()
    body += b"X-Padding: " + b"a" * 100_000 + b"\r\n\r\nxx\r\n" + f"--{BOUNDARY}--\r\n".encode()
    response = stow(server, body)
    assert response.status_code in (400, 409, 413), response.text
    assert not _leaks(server, response.text)


# ------------------------------------------------------------------ hostile UIDs in URLs
# Not here: a bare ".." segment, which requests removes before sending (RFC 3986 5.2.4), and
# percent-encoded digits ("%31.%32" is the valid UID 1.2 once decoded, as it must be).
URL_UIDS = {
    "encoded-dot-dot": "..%2F..%2Fetc",
    "dot-dot-x": "..%2Fx",
    "encoded-dots": "%2E%2E",
    "65-digits": "1" + "2" * 64,
    "punctuation": "1.2.a-b;c",
    "space": "1.2%203",
    "nul": "1.2.3%00",
    "backslash": "1.2.3%5C..%5C",
    "huge": "9" * 5000,
}


def _resource_urls(server: LiveServer, known: DicomFile, uid: str) -> list[str]:
    base = server.dicomweb
    study, series, sop = known.uids
    return [
        f"{base}/studies/{uid}",
        f"{base}/studies/{uid}/metadata",
        f"{base}/studies/{uid}/series",
        f"{base}/studies/{uid}/instances",
        f"{base}/studies/{study}/series/{uid}",
        f"{base}/studies/{study}/series/{uid}/metadata",
        f"{base}/studies/{study}/series/{uid}/instances",
        f"{base}/studies/{study}/series/{series}/instances/{uid}",
        f"{base}/studies/{study}/series/{series}/instances/{uid}/metadata",
        f"{base}/studies/{study}/series/{series}/instances/{uid}/frames/1",
        f"{base}/studies/{study}/series/{series}/instances/{uid}/rendered",
        f"{base}/studies/{study}/series/{series}/instances/{uid}/thumbnail",
        f"{base}/studies/{study}/series/{series}/instances/{uid}/bulk/7FE00010",
        f"{base}/studies/{study}/series/{series}/instances/{sop}/bulk/{uid}",
        f"{base}/studies/{uid}/series/{series}/instances/{sop}",
    ]


@pytest.mark.parametrize("uid", URL_UIDS.values(), ids=URL_UIDS.keys())
def test_hostile_uid_in_url_is_400_or_404(
    server: LiveServer, baseline: list[DicomFile], uid: str
) -> None:
    """PS3.18 8.2 (resource paths) with PS3.5 9.1: a path segment that is not a valid UID
    names no resource; the answer is 400 (or 404), never 500, never a file of the server."""
    for url in _resource_urls(server, baseline[0], uid):
        for method in ("GET", "DELETE"):
            response = requests.request(method, url, timeout=30, headers=AUTH)
            assert response.status_code in (400, 404, 405), (method, url, response.status_code)
            if response.status_code != 405:
                assert_error(server, response, 400, 404)
    post = stow(server, stow_body(baseline[0].data), study=uid)
    assert post.status_code in (400, 404), post.text
    assert not _leaks(server, post.text)
    assert_baseline_untouched(server, baseline)


@pytest.mark.parametrize("uid", ["../x", "1.2.a-b", "1.2 3", "1" + "2" * 64])
def test_hostile_uid_in_wado_uri_is_400(
    server: LiveServer, baseline: list[DicomFile], uid: str
) -> None:
    """PS3.18 9.1.2.1: studyUID, seriesUID and objectUID are UIDs."""
    study, series, sop = baseline[0].uids
    for params in (
        {"studyUID": uid, "seriesUID": series, "objectUID": sop},
        {"studyUID": study, "seriesUID": uid, "objectUID": sop},
        {"studyUID": study, "seriesUID": series, "objectUID": uid},
    ):
        response = requests.get(
            f"{server.url}/wado", params={"requestType": "WADO", **params}, timeout=30, headers=AUTH
        )
        assert_error(server, response, 400)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"requestType": "WADO"},
        {"requestType": "NOPE", "studyUID": "1.2", "seriesUID": "1.2", "objectUID": "1.2"},
    ],
    ids=["nothing", "no-uids", "bad-request-type"],
)
def test_incomplete_wado_uri_is_400(server: LiveServer, params: dict[str, str]) -> None:
    """PS3.18 9.1.2.1: requestType=WADO and the three UIDs are required."""
    response = requests.get(f"{server.url}/wado", params=params, timeout=30, headers=AUTH)
    assert_error(server, response, 400)


def test_unknown_but_valid_uids_are_404(server: LiveServer, baseline: list[DicomFile]) -> None:
    """PS3.18 10.4.3: a well-formed UID of nothing stored is 404 Not Found."""
    study, series, _ = baseline[0].uids
    for url in (
        f"{server.dicomweb}/studies/1.2.3.4.5.6.7",
        f"{server.dicomweb}/studies/{study}/series/1.2.3.4",
        f"{server.dicomweb}/studies/{study}/series/{series}/instances/1.2.3/metadata",
    ):
        assert_error(server, requests.get(url, timeout=30, headers=AUTH), 404)


# ------------------------------------------------------------------ QIDO-RS
@pytest.mark.parametrize(
    "params",
    [
        {"FooBar": "1"},
        {"00091010": "x"},
        {"SOPInstanceUID": "1.2.3"},  # an instance key at the study level
        {"StudyDate": "2024-01-01"},
        {"StudyDate": "20240101-2024"},
        {"StudyDate": "abc-def"},
        {"StudyDate": "20241399"},
        {"StudyTime": "250000"},
        {"StudyInstanceUID": "../x"},
        {"StudyInstanceUID": "1.2.3,1.2.a-c"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": "1e3"},
        {"offset": "-5"},
        {"offset": "x"},
        {"fuzzymatching": "maybe"},
        {"includefield": "NotAKeyword"},
        {"includefield": "ZZZZZZZZ"},
    ],
)
def test_bad_qido_parameter_is_400(server: LiveServer, params: dict[str, str]) -> None:
    """PS3.18 8.3.4 / 10.6.1.2: an unknown or unsupported key, a malformed value, date range
    or paging parameter is 400 Bad Request, with a reason naming it."""
    response = requests.get(f"{server.dicomweb}/studies", params=params, timeout=30, headers=AUTH)
    reason = assert_error(server, response, 400)
    key = next(iter(params))
    assert key in reason or next(iter(params.values())) in reason, reason


@pytest.mark.parametrize("level", ["series", "instances"])
def test_bad_qido_parameter_at_lower_levels_is_400(server: LiveServer, level: str) -> None:
    """PS3.18 10.6.1.2: the same checks apply to every search resource."""
    response = requests.get(
        f"{server.dicomweb}/{level}", params={"NoSuchKeyword": "1"}, timeout=30, headers=AUTH
    )
    assert_error(server, response, 400)


def test_huge_limit_is_capped_with_a_warning(server: LiveServer, baseline: list[DicomFile]) -> None:
    """PS3.18 8.3.4.4: the server may return fewer results than ``limit`` asks; it says so in
    a Warning header."""
    response = requests.get(
        f"{server.dicomweb}/instances",
        params={"limit": "10000000", "PatientID": PATIENT.patient_id},
        timeout=30,
        headers=AUTH,
    )
    assert response.status_code == 200, response.text
    assert "299" in response.headers.get("warning", ""), response.headers
    assert len(response.json()) >= len(baseline)


def test_repeated_match_key_is_400(server: LiveServer) -> None:
    """PS3.18 8.3.4.1: a matching key appears once (lists are comma-separated values)."""
    response = requests.get(
        f"{server.dicomweb}/studies?PatientID=a&PatientID=b", timeout=30, headers=AUTH
    )
    assert_error(server, response, 400)


# ------------------------------------------------------------------ content negotiation
@pytest.mark.parametrize(
    ("suffix", "accept"),
    [
        ("", "text/html"),
        ("", 'multipart/related; type="image/png"'),
        ("", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4'),
        ("/metadata", "application/dicom"),
        ("/metadata", "image/jpeg"),
        ("/rendered", "application/pdf"),
        ("/rendered", "text/html"),
        ("/frames/1", "text/plain"),
        ("/thumbnail", "application/dicom"),
    ],
)
def test_unsupported_accept_is_406(
    server: LiveServer, baseline: list[DicomFile], suffix: str, accept: str
) -> None:
    """PS3.18 8.7: when no representation the client accepts can be made, 406 Not Acceptable."""
    study, series, sop = baseline[0].uids
    url = f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}{suffix}"
    assert_error(server, requests.get(url, headers={**AUTH, "Accept": accept}, timeout=30), 406)


def test_unsupported_accept_on_qido_is_406(server: LiveServer) -> None:
    """PS3.18 8.7 / 10.6.2: QIDO-RS answers in DICOM JSON; text/csv is not offered here."""
    response = requests.get(
        f"{server.dicomweb}/studies", headers={**AUTH, "Accept": "text/csv"}, timeout=30
    )
    assert_error(server, response, 406)


def test_unsupported_wado_uri_content_type_is_406(
    server: LiveServer, baseline: list[DicomFile]
) -> None:
    """PS3.18 9.1.2.1 (contentType): an unsupported one cannot be honoured."""
    study, series, sop = baseline[0].uids
    response = requests.get(
        f"{server.url}/wado",
        params={
            "requestType": "WADO",
            "studyUID": study,
            "seriesUID": series,
            "objectUID": sop,
            "contentType": "application/x-nonsense",
        },
        timeout=30,
        headers=AUTH,
    )
    assert_error(server, response, 406)


# ------------------------------------------------------------------ frames and bulk data
@pytest.fixture(scope="module")
def frames_object(server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> DicomFile:
    """A small 5-frame object of this module's patient."""
    path = synth.make_multiframe(
        tmp_path_factory.mktemp("bad-frames") / "mf.dcm",
        frames=5,
        rows=32,
        columns=32,
        seed=33,
        patient=PATIENT,
    )
    f = DicomFile(path)
    response = stow(server, stow_body(f.data))
    assert response.status_code == 200, response.text
    return f


@pytest.mark.parametrize(
    "frames",
    [
        "0",
        "6",
        "1,6",
        "0,1",
        "99999999999999999999",
        "abc",
        "1,,2",
        "1-3",
        "-1",
        ",",
        "1;2",
        "9" * 5000,  # past Python's 4,300-digit int() limit: was a 500
    ],
)
def test_bad_frame_numbers_are_400_or_404(
    server: LiveServer, frames_object: DicomFile, frames: str
) -> None:
    """PS3.18 10.4.1.1.4: frame numbers start at 1 and stop at Number of Frames."""
    study, series, sop = frames_object.uids
    base = f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/frames/{frames}"
    for url in (base, base + "/rendered"):
        assert_error(server, requests.get(url, timeout=30, headers=AUTH), 400, 404)


def test_frames_in_range_work(server: LiveServer, frames_object: DicomFile) -> None:
    """The refusals above are about the numbers, not the resource."""
    study, series, sop = frames_object.uids
    url = f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/frames/1,5"
    response = requests.get(url, timeout=30, headers=AUTH)
    assert response.status_code == 200
    parts = multipart_parts(response.headers["content-type"], response.content)
    pixels = frames_object.dataset().pixel_array
    assert [data for _, data in parts] == [pixels[0].tobytes(), pixels[4].tobytes()]


def _bulk_url(server: LiveServer, f: DicomFile) -> tuple[str, int]:
    study, series, sop = f.uids
    meta = requests.get(
        f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/metadata",
        timeout=30,
        headers=AUTH,
    ).json()
    uri = meta[0]["7FE00010"]["BulkDataURI"]
    path = uri[uri.index("/dicom-web/") + len("/dicom-web") :]
    return server.dicomweb + path, len(f.dataset().PixelData)


@pytest.mark.parametrize(
    "byte_range",
    [
        "bytes=999999999-",
        "bytes=10240-10300",  # 5x32x32x2 = 10240 bytes: first byte past the end
        "bytes=-0",  # a suffix of no bytes (RFC 9110 14.1.1: not satisfiable)
        "bytes=10240-,20000-",  # no range of the set is satisfiable
        "bytes=5-2",  # invalid: last before first (RFC 9110 14.1.2)
        "bytes=-",
        "bytes=abc-def",
        "bytes=0-9,abc",  # one invalid range-spec makes the whole set invalid
        "bytes",
        "bytes=" + "9" * 5000 + "-",  # past Python's 4,300-digit int() limit: was a 500
    ],
)
def test_unsatisfiable_bulk_range_is_416(
    server: LiveServer, frames_object: DicomFile, byte_range: str
) -> None:
    """RFC 9110 14.2: a Range in bytes whose ranges-specifier is invalid or unsatisfiable
    SHOULD be answered 416 (Range Not Satisfiable, 15.5.17), with Content-Range: bytes */
    <length of the value> (14.4) so the client learns the size; the body names the range."""
    url, size = _bulk_url(server, frames_object)
    assert size == 5 * 32 * 32 * 2
    response = requests.get(
        url, headers={**AUTH, "Range": byte_range, "Accept": "application/octet-stream"}, timeout=30
    )
    assert_error(server, response, 416)
    assert response.headers["content-range"] == f"bytes */{size}"


@pytest.mark.parametrize(
    "byte_range",
    [
        "items=0-1",  # a range unit the server does not know: MUST be ignored
        "bytes=0-10,20-30",  # several ranges: a server MAY ignore the Range field
    ],
)
def test_bulk_range_that_is_ignored(
    server: LiveServer, frames_object: DicomFile, byte_range: str
) -> None:
    """RFC 9110 14.2: an origin server MUST ignore a Range of a range unit it does not
    understand, and MAY ignore any Range; nubis serves one range, so for several it sends the
    whole value (200), as for no Range at all."""
    url, _ = _bulk_url(server, frames_object)
    response = requests.get(
        url, headers={**AUTH, "Range": byte_range, "Accept": "application/octet-stream"}, timeout=30
    )
    assert response.status_code == 200, response.text[:500]
    assert response.content == frames_object.dataset().PixelData
    assert "content-range" not in response.headers


def test_good_bulk_ranges(server: LiveServer, frames_object: DicomFile) -> None:
    """The range forms that must work: closed, open-ended, suffix, and clipped at the end; each
    206 names the range it holds in Content-Range (RFC 9110 15.3.7.1, 14.4)."""
    url, size = _bulk_url(server, frames_object)
    pixels = frames_object.dataset().PixelData
    for header, expected, content_range in (
        ("bytes=0-9", pixels[:10], f"bytes 0-9/{size}"),
        ("bytes=10000-", pixels[10000:], f"bytes 10000-{size - 1}/{size}"),
        ("bytes=-16", pixels[-16:], f"bytes {size - 16}-{size - 1}/{size}"),
        (f"bytes={size - 4}-{size + 100}", pixels[-4:], f"bytes {size - 4}-{size - 1}/{size}"),
        ("Bytes=0-0", pixels[:1], f"bytes 0-0/{size}"),  # range units are case-insensitive
    ):
        response = requests.get(
            url, headers={**AUTH, "Range": header, "Accept": "application/octet-stream"}, timeout=30
        )
        assert response.status_code == 206, (header, response.text)
        assert response.content == expected, header
        assert response.headers["content-range"] == content_range, header


def test_unknown_bulk_path_is_404(server: LiveServer, frames_object: DicomFile) -> None:
    """PS3.18 10.4.1.1.5: a bulk data path not in the object's metadata names nothing."""
    study, series, sop = frames_object.uids
    base = f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/bulk"
    for path in ("00100010", "7FE00010.1", "..%2F..%2Findex.sqlite", "%2Fetc%2Fpasswd"):
        assert_error(server, requests.get(f"{base}/{path}", timeout=30, headers=AUTH), 400, 404)


# ------------------------------------------------------------------ everything else
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("GET", "/dicom-web"),
        ("GET", "/dicom-web/nope"),
        ("PUT", "/dicom-web/studies"),
        ("PATCH", "/dicom-web/studies/1.2.3"),
        ("POST", "/dicom-web/series"),
        ("DELETE", "/dicom-web/studies"),
    ],
)
def test_unknown_routes_and_methods_answer_json(server: LiveServer, method: str, path: str) -> None:
    """Even a request for nothing gets a JSON reason, not an HTML page or a stack trace."""
    response = requests.request(method, server.url + path, timeout=30, headers=AUTH)
    assert_error(server, response, 404, 405)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/dicom-web/studies", {"GET", "HEAD", "POST"}),
        ("DELETE", "/dicom-web/studies", {"GET", "HEAD", "POST"}),
        ("PATCH", "/dicom-web/studies/1.2.3", {"GET", "HEAD", "POST", "DELETE"}),
        ("POST", "/dicom-web/series", {"GET", "HEAD"}),
        ("PUT", "/dicom-web/studies/1.2.3/series/1.2.4/instances/1.2.5/bulk/7FE00010",
         {"GET", "HEAD"}),
        ("POST", "/wado", {"GET", "HEAD"}),
        ("GET", "/-/login", {"POST"}),
    ],
)  # fmt: skip
def test_405_names_the_allowed_methods(
    server: LiveServer, method: str, path: str, allowed: set[str]
) -> None:
    """RFC 9110 15.5.6: a 405 MUST carry Allow with the methods the target resource supports,
    all of them, also where several routes serve one path (search and store on /studies)."""
    response = requests.request(method, server.url + path, timeout=30, headers=AUTH)
    assert_error(server, response, 405)
    assert {m.strip() for m in response.headers["allow"].split(",")} == allowed


def test_rendering_parameters_out_of_range_are_400(
    server: LiveServer, baseline: list[DicomFile]
) -> None:
    """PS3.18 8.3.5.1: viewport, window and quality have defined forms and ranges."""
    study, series, sop = baseline[0].uids
    url = f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}/rendered"
    for params in (
        {"viewport": "0,0"},
        {"viewport": "-5,10"},
        {"viewport": "100000000,100000000"},
        {"window": "abc"},
        {"window": "40,0,LINEAR"},
        {"quality": "500"},
    ):
        response = requests.get(
            url, params=params, headers={**AUTH, "Accept": "image/jpeg"}, timeout=30
        )
        assert_error(server, response, 400)


def test_dataset_unchanged_after_everything(server: LiveServer, baseline: list[DicomFile]) -> None:
    """Run last in this module: every stored object still reads back byte for byte."""
    assert_baseline_untouched(server, baseline)
    got = pydicom.dcmread(io.BytesIO(retrieve_as_stored(server, baseline[1])))
    assert got == Dataset(pydicom.dcmread(baseline[1].path))


# ------------------------------------------------------------------ images of non-images
@pytest.fixture(scope="module")
def non_images(server: LiveServer, pydicom_files: dict[str, DicomFile]) -> list[DicomFile]:
    files = [pydicom_files[k] for k in ("rtplan", "sr", "rtstruct")]
    response = stow(server, stow_body(*(f.data for f in files)))
    assert response.status_code == 200, response.text
    return files


@pytest.mark.parametrize(
    "suffix",
    ["/rendered", "/thumbnail", "/frames/1", "/frames/1/rendered", "/bulk/7FE00010"],
)
def test_pixel_resources_of_non_images_are_4xx(
    server: LiveServer, non_images: list[DicomFile], suffix: str
) -> None:
    """PS3.18 10.4.1.1.3/10.4.1.1.4: frames and rendered images exist only for objects with
    pixel data; for an RT Plan or an SR document the answer is a 4xx with a reason, not a 500."""
    for f in non_images:
        study, series, sop = f.uids
        url = f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}{suffix}"
        assert_error(server, requests.get(url, timeout=30, headers=AUTH), 400, 404, 406)


def test_wado_uri_of_a_non_image_as_jpeg_is_4xx(
    server: LiveServer, non_images: list[DicomFile]
) -> None:
    """PS3.18 9.1.2.1: image/jpeg of an object without pixel data cannot be produced."""
    study, series, sop = non_images[0].uids
    response = requests.get(
        f"{server.url}/wado",
        params={
            "requestType": "WADO",
            "studyUID": study,
            "seriesUID": series,
            "objectUID": sop,
            "contentType": "image/jpeg",
        },
        timeout=30,
        headers=AUTH,
    )
    assert_error(server, response, 400, 404, 406)


@pytest.mark.parametrize(
    "extra",
    [
        {"frameNumber": "999"},
        {"frameNumber": "0"},
        {"frameNumber": "99999999999999999999"},
        {"windowCenter": "40"},
        {"rows": "-3"},
    ],
)
def test_bad_wado_uri_rendering_parameters_are_4xx(
    server: LiveServer, frames_object: DicomFile, extra: dict[str, str]
) -> None:
    """PS3.18 9.1.2.1: frameNumber within the object, windowCenter with windowWidth, rows > 0."""
    study, series, sop = frames_object.uids
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    response = requests.get(
        f"{server.url}/wado", params={**params, **extra}, timeout=30, headers=AUTH
    )
    assert_error(server, response, 400, 404)


@pytest.mark.parametrize(
    "frame_number", ["-1", "+2", "1.5", "two", "1,2", "1 2", "０", "²", "0", "9" * 5000]
)
@pytest.mark.parametrize("content_type", ["image/jpeg", "application/dicom"])
def test_malformed_wado_uri_frame_number_is_400(
    server: LiveServer, frames_object: DicomFile, frame_number: str, content_type: str
) -> None:
    """PS3.18 9.1.2.1 (WADO-URI frameNumber): one frame number, an integer from 1. A sign, a
    fraction, a list, a blank or a digit other than 0-9 is a malformed request (400 naming
    frameNumber), never read as "no frame given" and answered with frame 1."""
    study, series, sop = frames_object.uids
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop}
    response = requests.get(
        f"{server.url}/wado",
        params={**params, "contentType": content_type, "frameNumber": frame_number},
        timeout=30,
        headers=AUTH,
    )
    assert "frameNumber" in assert_error(server, response, 400)


# ------------------------------------------------------------------ unusable pixel modules
UNUSABLE_PIXEL_MODULES = {
    "Rows": ([128, 128], "(0028,0010) Rows"),
    "Columns": ([128, 128], "(0028,0011) Columns"),
    "BitsAllocated": ([16, 16], "(0028,0100) Bits Allocated"),
    "PhotometricInterpretation": (["MONOCHROME2"] * 2, "(0028,0004) Photometric Interpretation"),
}
DECODED_FRAMES = (
    'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'
)
STORED_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@pytest.fixture(scope="module")
def unusable_images(
    server: LiveServer,
    pydicom_files: dict[str, DicomFile],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str], DicomFile]:
    """CT_small (native) and MR_small_RLE (RLE) each with one Image Pixel attribute given two
    values, under UIDs of their own; ingest keeps them (their UIDs and structure are sound)."""
    folder = tmp_path_factory.mktemp("unusable")
    made = {}
    for base in ("explicit_le", "rle"):
        for keyword, (value, _) in UNUSABLE_PIXEL_MODULES.items():
            ds = pydicom_files[base].dataset()
            setattr(ds, keyword, value)
            ds.SOPInstanceUID = synth.synth_uid(34, base, keyword)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            path = folder / f"{base}-{keyword}.dcm"
            path.write_bytes(encode(ds))
            made[(base, keyword)] = DicomFile(path)
    response = stow(server, stow_body(*(f.data for f in made.values())))
    assert response.status_code == 200, response.text
    return made


@pytest.mark.parametrize("keyword", UNUSABLE_PIXEL_MODULES)
def test_unusable_pixel_module_is_406_naming_it(
    server: LiveServer, unusable_images: dict[tuple[str, str], DicomFile], keyword: str
) -> None:
    """An object whose Rows, Columns, Bits Allocated or Photometric Interpretation has two
    values (VM 1, PS3.3 C.7.6.3) cannot be decoded: rendered and thumbnail (PS3.18 10.4.1.1.3),
    decoded frames (10.4.1.1.4), a conversion to another transfer syntax (8.7.3.5) and a
    WADO-URI JPEG (9) each answer 406 with a reason naming the attribute, not a 500; its
    metadata and its frames as stored are served."""
    named = UNUSABLE_PIXEL_MODULES[keyword][1]
    native, rle = unusable_images[("explicit_le", keyword)], unusable_images[("rle", keyword)]
    refused = [
        (native, "/rendered", "image/jpeg"),
        (native, "/thumbnail", "image/png"),
        (native, "/frames/1/rendered", "image/jpeg"),
        (rle, "/rendered", "image/jpeg"),
        (rle, "/frames/1", DECODED_FRAMES),
        (
            rle,
            "",
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1',
        ),
    ]
    for f, suffix, accept in refused:
        study, series, sop = f.uids
        url = f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}{suffix}"
        response = requests.get(url, headers={**AUTH, "Accept": accept}, timeout=30)
        reason = assert_error(server, response, 406)
        assert named in reason, (suffix, reason)
    study, series, sop = native.uids
    response = requests.get(
        f"{server.url}/wado",
        params={"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop},
        headers=AUTH,
        timeout=30,
    )
    assert named in assert_error(server, response, 406)
    for f, suffix, accept in (
        (native, "/metadata", "application/dicom+json"),
        (rle, "/frames/1", STORED_FRAMES),
        (native, "", AS_STORED),
    ):
        study, series, sop = f.uids
        url = f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}{suffix}"
        response = requests.get(url, headers={**AUTH, "Accept": accept}, timeout=30)
        assert response.status_code == 200, (suffix, response.text[:300])
