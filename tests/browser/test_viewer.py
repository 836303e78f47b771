"""The built-in viewer in a real browser (issue 10: zero-footprint viewer).

Real objects are stored in a live archive: a synthetic 60-slice 512x512 CT series and a second
(MR) series in the same study, pydicom's color ultrasound (RGB), ultrasound cine (JPEG
baseline, YBR_FULL_422, 30 frames) and JPEG 2000 CT files, and objects made in
viewer_objects.py: a 4k x 4k CR, a tiled whole-slide level and an enhanced MR. What the canvas
shows is read back from it and compared with the display values computed here from the files.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from playwright.sync_api import Page, expect
from pydicom.data import get_testdata_file

from browser import add_user, screenshot, sign_in
from browser.viewer_objects import (
    ENHANCED_MR_INTERCEPT,
    ENHANCED_MR_SLOPE,
    cr_pixels,
    enhanced_mr_pixels,
    enhanced_mr_window,
    make_cr,
    make_enhanced_mr,
    make_wsi,
    stored_window_display,
    windowed,
    wsi_pixels,
)
from integration import AUTH
from nubis.tools import synth

CT_SLICES = 60
PATIENT = synth.PatientSpec("P-VIEW", "Viewer^Vera", "19700101", "F")


@dataclass
class Objects:
    url: str
    files: dict[str, list[Path]] = field(default_factory=dict)

    def header(self, name: str, index: int = 0) -> pydicom.Dataset:
        return pydicom.dcmread(self.files[name][index], stop_before_pixels=True)

    def study(self, name: str) -> str:
        return str(self.header(name).StudyInstanceUID)

    def series(self, name: str) -> str:
        return str(self.header(name).SeriesInstanceUID)

    def viewer(self, name: str, *, series: bool = False) -> str:
        url = f"{self.url}/ui/studies/{self.study(name)}/view"
        return url + (f"?series={self.series(name)}" if series else "")


def _stow(url: str, paths: list[Path]) -> None:
    with httpx.Client(headers=AUTH, timeout=120) as client:
        for start in range(0, len(paths), 20):
            body = b"".join(
                b"--b\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes() + b"\r\n"
                for p in paths[start : start + 20]
            )
            response = client.post(
                f"{url}/dicom-web/studies",
                content=body + b"--b--\r\n",
                headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
            )
            assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def archive(server_factory, tmp_path_factory) -> Iterator[Objects]:  # type: ignore[no-untyped-def]
    server = server_factory("browser-viewer")
    add_user(server.data_dir, "vera", "radiologist")
    add_user(server.data_dir, "rick", "referrer")
    tmp = tmp_path_factory.mktemp("viewer-objects")
    objects = Objects(server.url)
    objects.files["ct"] = synth.make_ct_series(
        tmp / "ct", n_instances=CT_SLICES, patient=PATIENT, series_description="Chest CT"
    )
    study = objects.study("ct")
    objects.files["mr"] = synth.make_mr_series(
        tmp / "mr", n_instances=12, patient=PATIENT, study_uid=study, series_number=2,
        series_description="Brain MR",
    )  # fmt: skip
    for name, make in (("cr", make_cr), ("wsi", make_wsi), ("emr", make_enhanced_mr)):
        uid = synth.synth_uid(0, "viewer-study", name)
        objects.files[name] = [make(tmp / f"{name}.dcm", patient_id=f"P-VIEW-{name}", study_uid=uid)]
    for name, file in (
        ("rgb", "examples_rgb_color.dcm"),
        ("cine", "examples_ybr_color.dcm"),
        ("j2k", "693_J2KI.dcm"),
    ):
        objects.files[name] = [Path(get_testdata_file(file))]
    _stow(server.url, [path for paths in objects.files.values() for path in paths])
    yield objects


# ---------------------------------------------------------------------------- helpers
def open_viewer(page: Page, objects: Objects, name: str, *, user: str = "vera") -> None:
    sign_in(page, objects.url, user)
    failed: list[str] = []
    page.on(
        "response",
        lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    page.goto(objects.viewer(name, series=True))
    wait_drawn(page, 0, 0)
    page.failed_requests = failed  # type: ignore[attr-defined]


def viewport(page: Page, number: int = 0) -> Any:
    return page.locator(".viewport").nth(number)


def wait_drawn(page: Page, index: int, number: int = 0) -> None:
    """Until viewport ``number`` has drawn image ``index`` completely."""
    expect(viewport(page, number)).to_have_attribute("data-drawn", str(index), timeout=20000)
    expect(viewport(page, number)).to_have_attribute("data-state", "ready", timeout=20000)


def actual_size(page: Page) -> None:
    draws = int(viewport(page).get_attribute("data-draws") or 0)
    page.get_by_role("button", name="1:1").click()
    expect(viewport(page)).not_to_have_attribute("data-draws", str(draws))
    assert float(viewport(page).get_attribute("data-scale") or 0) == 1.0


def canvas_pixels(page: Page, points: list[tuple[int, int]], number: int = 0) -> list[list[int]]:
    """RGBA on viewport ``number``'s canvas at the centers of image pixels ``points``."""
    return page.evaluate(
        """([number, points]) => {
            const element = document.querySelectorAll(".viewport")[number];
            const { scale, ox, oy } = element.dataset;
            const ctx = element.querySelector("canvas").getContext("2d");
            return points.map(([x, y]) => {
                const cx = Math.floor(Number(ox) + (x + 0.5) * Number(scale));
                const cy = Math.floor(Number(oy) + (y + 0.5) * Number(scale));
                return [...ctx.getImageData(cx, cy, 1, 1).data];
            });
        }""",
        [number, points],
    )


def assert_gray(drawn: list[list[int]], expected: list[float], tolerance: int = 1) -> None:
    for rgba, value in zip(drawn, expected, strict=True):
        assert rgba[0] == rgba[1] == rgba[2], rgba
        assert abs(rgba[0] - value) <= tolerance, (drawn, expected)


POINTS = [(10, 10), (100, 256), (256, 256), (300, 180), (400, 420), (511, 511)]


# ---------------------------------------------------------------------------- tests
def test_ct_series_draws_its_windowed_pixels(archive: Objects, page: Page) -> None:
    open_viewer(page, archive, "ct")
    expect(viewport(page)).to_have_attribute("data-count", str(CT_SLICES))
    expect(viewport(page).locator(".bl")).to_contain_text(f"Im 1 (1/{CT_SLICES})")
    expect(viewport(page).locator(".bl")).to_contain_text("W 400 L 40")
    expect(viewport(page).locator(".tl")).to_contain_text("Viewer Vera")
    screenshot(page, "viewer-ct")
    actual_size(page)
    display = stored_window_display(archive.files["ct"][0])
    assert_gray(canvas_pixels(page, POINTS), [display[y, x] for x, y in POINTS])
    assert page.failed_requests == []  # type: ignore[attr-defined]
