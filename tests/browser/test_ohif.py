"""OHIF served by nubis at /ohif/, in headless Chromium (issue 10: OHIF works with nubis).

OHIF 3 comes from the npm registry (``nubis ohif fetch``), once, into .venv/ohif/ (kept between
runs, never committed). The archive holds a CT series, an MR series, a multi-frame object, a
JPEG 2000 MR (decoded by OHIF's WebAssembly codecs in a worker, so the CSP is exercised), and
studies with unusual content: no modality, no date, a PatientName that is markup, non-ASCII
names. Each test fails on any JavaScript error or dialog (the ``page`` fixture) and on any
DICOMweb answer of 400 or more.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Response, expect
from pydicom.data import get_testdata_file

from browser import PASSWORD, add_user, screenshot, sign_in
from integration import ADMIN_TOKEN
from nubis.cli.ohif import OHIF_VERSION, fetch_ohif
from nubis.tools.synth import (
    PatientSpec,
    dataset_bytes,
    make_multiframe,
    series_datasets,
)

OHIF_CACHE = Path(__file__).resolve().parents[2] / ".venv" / "ohif" / OHIF_VERSION
CT_STUDY = "1.2.826.0.1.3680043.8.498.77001"
MR_STUDY = "1.2.826.0.1.3680043.8.498.77002"
MULTIFRAME_STUDY = "1.2.826.0.1.3680043.8.498.77003"
JPEG2000_STUDY = "1.3.6.1.4.1.5962.1.2.4.20040826185059.5457"
MARKUP_NAME = "<script>alert(1)</script>^Eve"
NON_ASCII_NAME = "Müller^Zoë"


@pytest.fixture(scope="session")
def ohif_dist() -> Path:
    """OHIF's build from npm, fetched on the first run and kept in .venv/ohif/<version>."""
    if not (OHIF_CACHE / "index.html").is_file():
        fetch_ohif(OHIF_VERSION, OHIF_CACHE)
    return OHIF_CACHE


def _unusual(tmp: Path) -> list[bytes]:
    """Studies a viewer's study list must survive: markup, non-ASCII, no modality, no date."""
    objects = []
    base = next(series_datasets("CT", n_instances=1, rows=64, columns=64, seed=7))
    for number, (name, changes) in enumerate(
        [
            (MARKUP_NAME, {"StudyDescription": "<b>bold</b> & <i>x</i>"}),
            (NON_ASCII_NAME, {"SpecificCharacterSet": "ISO_IR 192", "StudyDescription": "Ärzte"}),
            ("No^Modality", {"Modality": None}),
            ("No^Date", {"StudyDate": None, "StudyTime": None, "SeriesDate": None}),
        ]
    ):
        ds = copy.deepcopy(base)
        ds.PatientName = name
        ds.PatientID = f"ODD{number}"
        uid = f"1.2.826.0.1.3680043.8.498.7710{number}"
        ds.StudyInstanceUID = uid
        ds.SeriesInstanceUID = uid + ".1"
        ds.SOPInstanceUID = uid + ".1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in changes.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        objects.append(dataset_bytes(ds))
    return objects


def _corpus(tmp: Path) -> list[bytes]:
    objects = [
        dataset_bytes(ds)
        for ds in series_datasets(
            "CT",
            n_instances=6,
            patient=PatientSpec(patient_id="OHIF-CT", patient_name="Ct^Anna"),
            study_uid=CT_STUDY,
        )
    ]
    objects += [
        dataset_bytes(ds)
        for ds in series_datasets(
            "MR",
            n_instances=4,
            patient=PatientSpec(patient_id="OHIF-MR", patient_name="Mr^Bert"),
            study_uid=MR_STUDY,
        )
    ]
    multiframe = make_multiframe(
        tmp / "multiframe.dcm",
        frames=6,
        rows=128,
        columns=128,
        patient=PatientSpec(patient_id="OHIF-MF", patient_name="Mf^Cleo"),
        study_uid=MULTIFRAME_STUDY,
    )
    objects.append(multiframe.read_bytes())
    objects.append(Path(get_testdata_file("MR_small_jp2klossless.dcm")).read_bytes())  # type: ignore[arg-type]
    return objects + _unusual(tmp)


def _store(dicomweb: str, objects: list[bytes]) -> None:
    boundary = "ohif-test-boundary"
    body = io.BytesIO()
    for blob in objects:
        body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        body.write(blob + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    response = httpx.post(
        f"{dicomweb}/studies",
        content=body.getvalue(),
        headers={
            "content-type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "authorization": f"Bearer {ADMIN_TOKEN}",
            "accept": "application/dicom+json",
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text[:2000]


@pytest.fixture(scope="module")
def archive(server_factory, ohif_dist: Path, tmp_path_factory) -> Iterator[object]:  # type: ignore[no-untyped-def]
    server = server_factory("browser-ohif", "--set", f"viewer_ohif_dir={ohif_dist}")
    _store(server.dicomweb, _corpus(tmp_path_factory.mktemp("ohif-corpus")))
    add_user(server.data_dir, "ada", "radiologist")
    yield server


class DicomwebFailures:
    """Every DICOMweb answer of 400 or more the page received (by it or its workers)."""

    def __init__(self, page: Page) -> None:
        self.failures: list[str] = []
        page.context.on("response", self._seen)

    def _seen(self, response: Response) -> None:
        if "/dicom-web/" in response.url and response.status >= 400:
            self.failures.append(f"{response.status} {response.url}")


def _image_drawn(page: Page) -> None:
    """Wait until OHIF's viewport canvas shows an image: a good share of non-black pixels."""
    page.wait_for_function(
        """() => {
            const canvas = document.querySelector('canvas.cornerstone-canvas');
            if (!canvas || !canvas.width || !canvas.height) return false;
            const pixels = canvas.getContext('2d').getImageData(
                0, 0, canvas.width, canvas.height).data;
            let lit = 0;
            for (let i = 0; i < pixels.length; i += 4 * 7) {
                if (pixels[i] + pixels[i + 1] + pixels[i + 2] > 30) lit++;
            }
            return lit > pixels.length / (4 * 7) / 50;
        }""",
        timeout=30_000,
    )


def test_a_signed_out_browser_is_sent_to_sign_in_first(archive, page: Page) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{archive.url}/ohif/")
    expect(page).to_have_url(f"{archive.url}/ui/login?next=/ohif/")
    page.get_by_label("User name").fill("ada")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{archive.url}/ohif/")
    expect(page.get_by_text("Study List")).to_be_visible(timeout=30_000)


def test_every_study_lists_without_a_javascript_error(archive, page: Page) -> None:  # type: ignore[no-untyped-def]
    failures = DicomwebFailures(page)
    sign_in(page, archive.url, "ada")
    page.get_by_role("link", name="OHIF").click()  # the web face's top bar links it
    expect(page).to_have_url(f"{archive.url}/ohif/")
    expect(page.get_by_text("1-8 of 8")).to_be_visible(timeout=30_000)
    # Markup in a PatientName is shown as text (OHIF shows "family, given").
    expect(page.get_by_text("<script>alert(1)</script>, Eve")).to_be_visible()
    expect(page.get_by_text("Müller, Zoë")).to_be_visible()
    screenshot(page, "ohif-study-list")
    assert failures.failures == []


@pytest.mark.parametrize(
    "study",
    [CT_STUDY, MR_STUDY, MULTIFRAME_STUDY, JPEG2000_STUDY],
    ids=["ct", "mr", "multiframe", "jpeg2000"],
)
def test_a_study_opens_and_its_images_are_drawn(archive, page: Page, study: str) -> None:  # type: ignore[no-untyped-def]
    failures = DicomwebFailures(page)
    sign_in(page, archive.url, "ada")
    page.goto(f"{archive.url}/ohif/viewer?StudyInstanceUIDs={study}")
    _image_drawn(page)
    screenshot(page, f"ohif-viewer-{study[-5:]}")
    assert failures.failures == []


def test_the_unusual_studies_open_too(archive, page: Page) -> None:  # type: ignore[no-untyped-def]
    failures = DicomwebFailures(page)
    sign_in(page, archive.url, "ada")
    for number in range(4):
        page.goto(
            f"{archive.url}/ohif/viewer?StudyInstanceUIDs=1.2.826.0.1.3680043.8.498.7710{number}"
        )
        _image_drawn(page)
    assert failures.failures == []


def test_the_generated_configuration_names_only_this_archive(archive) -> None:  # type: ignore[no-untyped-def]
    config = httpx.get(
        f"{archive.url}/ohif/app-config.js", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert config.status_code == 200
    urls = set(re.findall(r'"(https?://[^"]*)"', config.text))
    assert urls == {f"{archive.url}/dicom-web", f"{archive.url}/wado"}
    page = httpx.get(f"{archive.url}/ohif/", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "'wasm-unsafe-eval'" in policy
    assert "'unsafe-eval'" not in policy.replace("'wasm-unsafe-eval'", "")
    assert "unsafe-inline" not in policy.split("script-src", 1)[1].split(";", 1)[0]


def test_a_study_without_modalities_leaves_modalities_in_study_out(archive) -> None:  # type: ignore[no-untyped-def]
    """An empty Modalities in Study would break OHIF's whole list (see web/dicomweb/qido.py)."""
    found = httpx.get(
        f"{archive.dicomweb}/studies",
        params={"PatientID": "ODD2", "includefield": "00080061"},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert found.status_code == 200
    [study] = found.json()
    assert "00080061" not in study
    others = httpx.get(
        f"{archive.dicomweb}/studies",
        params={"PatientID": "OHIF-CT"},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    ).json()
    assert others[0]["00080061"] == {"vr": "CS", "Value": ["CT"]}


def test_an_ended_session_is_not_asked_for_a_password(archive) -> None:  # type: ignore[no-untyped-def]
    """OHIF's requests after the session ended: 401 without a Basic challenge, which would make
    the browser pop up its password dialog for every request of the page."""
    response = httpx.get(
        f"{archive.dicomweb}/studies", headers={"cookie": "nubis_session=ended-long-ago"}
    )
    assert response.status_code == 401
    assert "basic" not in response.headers["www-authenticate"].lower()
    anonymous = httpx.get(f"{archive.dicomweb}/studies")
    assert "Basic" in anonymous.headers["www-authenticate"]  # programs are still told
