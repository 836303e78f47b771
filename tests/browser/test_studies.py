"""The study browser, study page, download, delete and upload in a real browser (issue 10).

A live ``nubis serve`` with real DICOM files (pydicom's CT_small, MR_small, the CD layout of
its DICOMDIR tests) and synthetic studies; Debian's Chromium, headless. The ``page`` fixture
fails a test on any JavaScript error or dialog, so an injected script would show itself.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from playwright.sync_api import Browser, Page, expect
from pydicom.data import get_testdata_file

from browser import add_user, screenshot, sign_in
from nubis.tools import synth

ADMIN_TOKEN = "nubis-test-admin-token-0123456789abcdef"
HOSTILE_NAME = "<script>alert(1)</script>"
ODD_NAMES = [
    HOSTILE_NAME,
    'O\'Brien^"Quote" & <b>bold</b>',
    "Ñoño^Zoë=山田^太郎",
    "{{7*7}}^${x}",
]
FILLERS = 52


def _stow(base: str, files: list[bytes]) -> None:
    body = b"".join(
        b"--b\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n" for data in files
    )
    response = httpx.post(
        f"{base}/dicom-web/studies",
        content=body + b"--b--\r\n",
        headers={
            "Authorization": f"Bearer {ADMIN_TOKEN}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text


def _synth_study(
    patient: synth.PatientSpec, *, seed: int, date: str, description: str, count: int = 1
) -> list[pydicom.Dataset]:
    datasets = list(
        synth.series_datasets(
            "CT",
            n_instances=count,
            rows=64,
            columns=64,
            patient=patient,
            study_uid=str(synth.synth_uid(seed, "browser-study")),
            study_date=date,
            accession=f"BR{seed:05d}",
            seed=seed,
        )
    )
    for ds in datasets:
        ds.StudyDescription = description
    return datasets


class Archive:
    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        self.data_dir = data_dir
        self.studies: dict[str, str] = {}
        self.files: dict[str, bytes] = {}

    def store(self, label: str, datasets: list[pydicom.Dataset]) -> str:
        blobs = []
        for ds in datasets:
            data = synth.dataset_bytes(ds)
            self.files[str(ds.SOPInstanceUID)] = data
            blobs.append(data)
        _stow(self.url, blobs)
        self.studies[label] = str(datasets[0].StudyInstanceUID)
        return self.studies[label]


@pytest.fixture(scope="module")
def archive(server_factory) -> Iterator[Archive]:  # type: ignore[no-untyped-def]
    server = server_factory("browser-studies")
    add_user(server.data_dir, "rad", "radiologist")
    add_user(server.data_dir, "boss", "admin")
    site = Archive(server.url, server.data_dir)
    # Real files: pydicom's CT and MR, each a study of its own.
    for label, name in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")):
        ds = pydicom.dcmread(get_testdata_file(name))
        site.store(label, [ds])
    site.store(
        "series",
        _synth_study(
            synth.PatientSpec("BR-SERIES", "Series^Sam", "19700101", "M"),
            seed=1,
            date="20250105",
            description="CHEST CT",
            count=4,
        ),
    )
    for n, name in enumerate(ODD_NAMES):
        site.store(
            f"odd{n}",
            _synth_study(
                synth.PatientSpec(f"BR-ODD-{n}", name, "19800101", "O"),
                seed=10 + n,
                date="20240101",
                description=f'<img src=x onerror="alert({n})"> & {name}',
            ),
        )
    fillers: list[pydicom.Dataset] = []
    for n in range(FILLERS):
        fillers += _synth_study(
            synth.PatientSpec(f"BR-FILL-{n:03d}", f"Filler^N{n:03d}", "19900101", "F"),
            seed=100 + n,
            date=f"2015{1 + n % 12:02d}{1 + n % 28:02d}",
            description="FILLER",
        )
    blobs = [synth.dataset_bytes(ds) for ds in fillers]
    _stow(site.url, blobs)
    yield site


def _is_dicomdir(path: Path) -> bool:
    meta = pydicom.dcmread(path, stop_before_pixels=True, force=True).file_meta
    return str(meta.get("MediaStorageSOPClassUID", "")) == "1.2.840.10008.1.3.10"


def _row_uids(page: Page) -> list[str]:
    return [
        (href or "").rsplit("/", 1)[1]
        for href in page.locator("tr.study").evaluate_all("rows => rows.map(r => r.dataset.href)")
    ]


def test_search_sort_and_page(archive: Archive, page: Page) -> None:
    sign_in(page, archive.url, "rad")
    expect(page.locator("h1")).to_have_text("Studies")
    expect(page.locator("tr.study")).to_have_count(50)
    screenshot(page, "studies-list")
    # Search by name: the results URL carries no name.
    page.get_by_label("Patient name").fill("series")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("tr.study")).to_have_count(1)
    assert "series" not in page.url.lower() and "q=" in page.url
    expect(page.locator("tr.study td").first).to_have_text("Series, Sam")
    expect(page.get_by_label("Patient name")).to_have_value("series")
    screenshot(page, "studies-search")
    # A reload keeps the search (sealed in the URL for this session).
    page.reload()
    expect(page.locator("tr.study")).to_have_count(1)
    page.get_by_role("link", name="Clear").click()
    # Sort by patient name (the column header), then page.
    page.locator("th").get_by_role("link", name="Patient", exact=True).click()
    expect(page.locator("th[aria-sort=ascending]")).to_contain_text("Patient")
    names = page.locator("tr.study td:first-child").all_inner_texts()
    assert names == sorted(names, key=str.upper), names
    first_page = _row_uids(page)
    page.get_by_role("link", name="Next").click()
    expect(page.locator("nav.pager")).to_contain_text("Page 2")
    second = _row_uids(page)
    assert second and not set(second) & set(first_page)
    assert len(first_page) + len(second) == FILLERS + 3 + len(ODD_NAMES)
    page.get_by_role("link", name="Previous").click()
    assert _row_uids(page) == first_page
    # Clicking a row (not only its link) opens the study.
    page.locator("tr.study td:nth-child(4)").first.click()
    expect(page).to_have_url(f"{archive.url}/ui/studies/{first_page[0]}")


def test_study_page_with_thumbnails(archive: Archive, page: Page) -> None:
    sign_in(page, archive.url, "rad")
    uid = archive.studies["ct"]
    page.goto(f"{archive.url}/ui/studies/{uid}")
    expect(page.locator("h1.patient")).to_have_text("CompressedSamples, CT1")
    thumb = page.locator("img.thumb").first
    thumb.scroll_into_view_if_needed()
    page.wait_for_function(
        "() => [...document.querySelectorAll('img.thumb')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    expect(page.get_by_role("link", name="View").first).to_have_attribute(
        "href", f"/ui/studies/{uid}/view"
    )
    expect(page.get_by_role("link", name="Delete…")).to_have_count(0)  # a radiologist
    screenshot(page, "study-page")
    page.goto(f"{archive.url}/ui/studies/{archive.studies['series']}")
    page.wait_for_function("() => document.querySelector('img.thumb').naturalWidth > 0")
    expect(page.locator(".series")).to_contain_text("4 instances")


def test_download_a_zip(archive: Archive, page: Page, tmp_path: Path) -> None:
    sign_in(page, archive.url, "rad")
    uid = archive.studies["series"]
    page.goto(f"{archive.url}/ui/studies/{uid}")
    with page.expect_download() as info:
        page.get_by_role("link", name="Download ZIP").click()
    download = info.value
    assert download.suggested_filename == f"{uid}.zip"
    path = tmp_path / "study.zip"
    download.save_as(path)
    with zipfile.ZipFile(path) as zipped:
        assert zipped.testzip() is None
        contents = {
            n.rsplit("/", 1)[1].removesuffix(".dcm"): zipped.read(n) for n in zipped.namelist()
        }
    assert len(contents) == 4
    for sop, data in contents.items():
        assert data == archive.files[sop]


def test_delete_with_confirmation(archive: Archive, page: Page) -> None:
    uid = archive.store(
        "doomed",
        _synth_study(
            synth.PatientSpec("BR-DOOMED", "Doomed^Dora", "19500101", "F"),
            seed=90,
            date="20250301",
            description="TO DELETE",
        ),
    )
    sign_in(page, archive.url, "boss")
    page.goto(f"{archive.url}/ui/studies/{uid}")
    page.get_by_role("link", name="Delete…").click()
    expect(page.locator("h1")).to_have_text("Delete this study?")
    expect(page.locator(".facts")).to_contain_text("Doomed, Dora")
    screenshot(page, "study-delete-confirm")
    page.get_by_role("link", name="Cancel").click()
    expect(page).to_have_url(f"{archive.url}/ui/studies/{uid}")
    page.get_by_role("link", name="Delete…").click()
    page.get_by_role("button", name="Delete study").click()
    expect(page.get_by_role("status").first).to_have_text("The study was deleted.")
    response = page.goto(f"{archive.url}/ui/studies/{uid}")
    assert response is not None and response.status == 404


def test_upload_a_cd_folder(archive: Archive, page: Page, tmp_path: Path) -> None:
    """A CD's content: a DICOMDIR, its image files in folders, and a file that is not DICOM."""
    cd = tmp_path / "cd"
    source = Path(get_testdata_file("DICOMDIR")).parent  # pydicom's dicomdirtests
    shutil.copytree(source, cd)
    (cd / "AUTORUN.INF").write_text("[autorun]\nopen=VIEWER.EXE\n")
    files = [p for p in cd.rglob("*") if p.is_file()]
    not_dicom = [p for p in files if p.read_bytes()[128:132] != b"DICM"]  # AUTORUN.INF, READMEs
    dicomdirs = [p for p in files if p not in not_dicom and _is_dicomdir(p)]
    images = len(files) - len(dicomdirs) - len(not_dicom)
    # pydicom's set has DICOMDIRs under other names too (DICOMDIR-implicit...).
    assert len(not_dicom) >= 1 and len(dicomdirs) > 2 and images > 50
    sign_in(page, archive.url, "rad")
    page.get_by_role("link", name="Upload").first.click()
    expect(page.locator("h1")).to_have_text("Upload DICOM files")
    page.locator("#pick-folder").set_input_files(cd)
    summary = page.locator("#upload-summary")
    expect(summary).to_contain_text("Done", timeout=120_000)
    skipped = len(dicomdirs) + len(not_dicom)
    expect(summary).to_have_text(f"Done: {images} stored, 0 failed, {skipped} skipped.")
    expect(page.locator('tr[data-result="stored"]')).to_have_count(images)
    expect(page.locator('tr[data-result="skipped"]')).to_have_count(skipped)
    readme = page.locator("tr", has_text="AUTORUN.INF")
    expect(readme).to_contain_text("not a DICOM file")
    for name in ("cd/DICOMDIR", "cd/DICOMDIR-implicit"):
        row = page.locator("tr", has=page.get_by_text(name, exact=True))
        expect(row).to_contain_text("skipped a DICOMDIR")
    expect(page.locator("#upload-progress")).to_have_attribute(
        "value", page.locator("#upload-progress").get_attribute("max") or ""
    )
    screenshot(page, "upload-folder")
    # Every object the page called stored is in the archive.
    expected: dict[str, set[str]] = {}
    for path in files:
        if path not in not_dicom and path not in dicomdirs:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            expected.setdefault(str(ds.StudyInstanceUID), set()).add(str(ds.SOPInstanceUID))
    for study_uid, sops in expected.items():
        found = httpx.get(
            f"{archive.url}/dicom-web/studies/{study_uid}/instances",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert found.status_code == 200
        assert {i["00080018"]["Value"][0] for i in found.json()} == sops


def test_odd_characters_are_shown_as_text(archive: Archive, page: Page) -> None:
    """PatientName <script>alert(1)</script> and other odd characters: shown as typed, never
    run, in the list and on the study page (the fixture fails on any dialog or JS error)."""
    sign_in(page, archive.url, "rad")
    page.get_by_label("Patient ID").fill("BR-ODD-*")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("tr.study")).to_have_count(len(ODD_NAMES))
    cells = page.locator("tr.study td:first-child").all_inner_texts()
    assert "<script>alert(1)</script>" in cells
    assert 'O\'Brien, "Quote" & <b>bold</b>' in cells
    screenshot(page, "studies-odd-names")
    for n in range(len(ODD_NAMES)):
        page.goto(f"{archive.url}/ui/studies/{archive.studies[f'odd{n}']}")
        expect(page.locator(".facts")).to_contain_text(f'<img src=x onerror="alert({n})">')
        page.wait_for_timeout(200)  # room for anything injected to run (and fail the test)
    expect(page.locator("h1.patient")).to_have_text("{{7*7}}, ${x}")
    assert page.locator("script:not([src])").count() == 0


def test_a_phone_sized_screen(archive: Archive, browser: Browser) -> None:
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    phone = context.new_page()
    errors: list[str] = []
    phone.on("pageerror", lambda error: errors.append(str(error)))
    try:
        sign_in(phone, archive.url, "rad")
        expect(phone.locator("tr.study").first).to_be_visible()
        # No sideways scrolling of the page: the table hides its optional columns.
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        expect(phone.locator("th.optional").first).to_be_hidden()
        screenshot(phone, "phone-studies")
        phone.locator("tr.study td:first-child a").first.tap()
        expect(phone.locator("h1.patient")).to_be_visible()
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        screenshot(phone, "phone-study")
        phone.goto(f"{archive.url}/ui/upload")
        screenshot(phone, "phone-upload")
    finally:
        context.close()
    assert errors == []


def test_upload_of_an_instance_stored_in_another_encoding(
    archive: Archive, page: Page, tmp_path: Path
) -> None:
    """Issue 12: the same instance twice, native and RLE: both count as stored (the second is
    202 with a warning, PS3.18 10.5.3), and the row of the one answered as already stored
    says so; nothing counts as failed."""
    folder = tmp_path / "twice"
    folder.mkdir()
    for name in ("MR_small.dcm", "MR_small_RLE.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    sign_in(page, archive.url, "rad")
    page.get_by_role("link", name="Upload").first.click()
    page.locator("#pick-folder").set_input_files(folder)
    summary = page.locator("#upload-summary")
    expect(summary).to_contain_text("Done", timeout=60_000)
    expect(summary).to_have_text("Done: 2 stored, 0 failed, 0 skipped.")
    expect(page.locator("tr", has_text="already stored in another encoding")).to_have_count(1)
