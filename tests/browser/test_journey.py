"""The web face end to end, as issue 10 says it is tested: one journey through every part.

A radiologist signs in, finds a study, opens it, scrolls and windows it in the viewer, and
shares it; the link is opened in a fresh browser without an account, where the viewer draws
the study; the radiologist revokes it and the viewer is refused. An admin sees the jobs and the
cost chart; a referrer sees in the browser exactly the studies DICOMweb gives it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from browser import add_user, screenshot, sign_in
from integration import AUTH
from integration.cli import nubis_cli
from nubis.tools import synth

SLICES = 12


@dataclass
class Archive:
    url: str
    study: str
    other: str


def _store(url: str, patient: str, name: str, seed: int) -> str:
    datasets = list(
        synth.series_datasets(
            "CT",
            n_instances=SLICES,
            rows=128,
            columns=128,
            seed=seed,
            patient=synth.PatientSpec(patient, name, "19600101", "M"),
        )
    )
    body = b"".join(
        b"--b\r\nContent-Type: application/dicom\r\n\r\n" + synth.dataset_bytes(ds) + b"\r\n"
        for ds in datasets
    )
    response = httpx.post(
        f"{url}/dicom-web/studies",
        content=body + b"--b--\r\n",
        headers={**AUTH, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return str(datasets[0].StudyInstanceUID)


@pytest.fixture(scope="module")
def archive(server_factory) -> Iterator[Archive]:  # type: ignore[no-untyped-def]
    server = server_factory("browser-journey")
    study = _store(server.url, "JRN-1", "Journey^Jane", 501)
    other = _store(server.url, "JRN-2", "Other^Otto", 502)
    add_user(server.data_dir, "rad", "radiologist")
    add_user(server.data_dir, "ref", "referrer")
    add_user(server.data_dir, "boss", "admin")
    nubis_cli("users", "grant", "ref", "--patient", "JRN-2", "--data-dir", str(server.data_dir),
              check=True)  # fmt: skip
    yield Archive(server.url, study, other)


def _viewport(page: Page):  # type: ignore[no-untyped-def]
    return page.locator(".viewport").first


def _wait_drawn(page: Page, index: int) -> None:
    expect(_viewport(page)).to_have_attribute("data-drawn", str(index), timeout=20000)
    expect(_viewport(page)).to_have_attribute("data-state", "ready", timeout=20000)


def _image_is_drawn(page: Page) -> bool:
    """Whether the viewport's canvas holds an image, not only its black background."""
    return bool(
        page.evaluate(
            """() => {
                const canvas = document.querySelector(".viewport canvas");
                const data = canvas.getContext("2d")
                    .getImageData(0, 0, canvas.width, canvas.height).data;
                for (let i = 0; i < data.length; i += 4) {
                    if (data[i] > 16) return true;
                }
                return false;
            }"""
        )
    )


def test_find_view_share_open_revoke(archive: Archive, page: Page, browser: Browser) -> None:
    sign_in(page, archive.url, "rad")
    page.get_by_label("Patient name").fill("Journey")
    page.get_by_role("button", name="Search").click()
    results = page.locator("table tbody tr")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("Journey, Jane")
    results.first.get_by_role("link").first.click()
    page.wait_for_url(f"{archive.url}/ui/studies/{archive.study}")
    screenshot(page, "journey-study")

    page.get_by_role("link", name="View").first.click()
    _wait_drawn(page, 0)
    assert _image_is_drawn(page)
    page.keyboard.press("ArrowDown")
    _wait_drawn(page, 1)
    before = _viewport(page).get_attribute("data-draws")
    box = _viewport(page).bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 80, box["y"] + box["height"] / 2 + 40, steps=5)
    page.mouse.up()
    expect(_viewport(page)).not_to_have_attribute("data-draws", str(before))
    screenshot(page, "journey-viewer")

    page.goto(f"{archive.url}/ui/studies/{archive.study}/share")
    page.get_by_role("button", name="Create link").click()
    expect(page.get_by_role("heading", name="Link made")).to_be_visible()
    share_url = page.locator("#share-url").input_value()

    stranger = browser.new_context(viewport={"width": 390, "height": 844})
    problems: list[str] = []
    try:
        tab = stranger.new_page()
        tab.on("pageerror", lambda error: problems.append(f"JavaScript error: {error}"))
        tab.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
        tab.goto(share_url)
        tab.get_by_role("button", name="Open the study").click()
        tab.wait_for_url(f"{archive.url}/share/")
        tab.get_by_role("link", name="Open the study in the viewer").click()
        tab.wait_for_url(f"{archive.url}/ui/studies/{archive.study}/view**")
        _wait_drawn(tab, 0)
        assert _image_is_drawn(tab)
        screenshot(tab, "journey-shared-viewer")

        page.goto(f"{archive.url}/ui/shares")
        page.locator("tr", has_text="active").first.get_by_role("button", name="Revoke").click()
        expect(page.locator("tbody tr").first).to_contain_text("revoked")

        response = tab.goto(f"{archive.url}/ui/studies/{archive.study}/view")
        assert response is not None
        # The session ended with the link: the viewer sends the browser to sign in.
        expect(tab).to_have_url(f"{archive.url}/ui/login?next=/ui/studies/{archive.study}/view")
    finally:
        stranger.close()
    assert problems == [], problems


def test_admin_sees_jobs_and_the_cost_chart(archive: Archive, page: Page) -> None:
    sign_in(page, archive.url, "boss")
    page.goto(f"{archive.url}/ui/admin/jobs")
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    page.goto(f"{archive.url}/ui/admin/storage")
    expect(page.locator("#cost-chart svg.chart-svg")).to_be_visible()
    screenshot(page, "journey-admin-storage")


def test_a_referrer_sees_in_the_browser_what_dicomweb_gives_it(
    archive: Archive, page: Page
) -> None:
    sign_in(page, archive.url, "ref")
    listed = page.locator("table tbody tr")
    expect(listed).to_have_count(1)
    expect(listed.first).to_contain_text("Other, Otto")
    over_dicomweb = page.evaluate("""async () => (await fetch("/dicom-web/studies")).text()""")
    assert [s["0020000D"]["Value"][0] for s in json.loads(over_dicomweb)] == [archive.other]
    response = page.goto(f"{archive.url}/ui/studies/{archive.study}")
    assert response is not None and response.status == 404
