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
from urllib.parse import urlparse

import httpx
import pydicom
import pytest
from playwright.sync_api import Page, expect
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless

from browser import PASSWORD, add_user, screenshot, sign_in
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
from integration.cli import nubis_cli
from nubis.tools import synth

CT_SLICES = 60
HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_TEXT = "<img src=x onerror=alert(2)>"
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
        path = make(tmp / f"{name}.dcm", patient_id=f"P-VIEW-{name}", study_uid=uid)
        objects.files[name] = [path]
    objects.files["xa"] = [
        synth.make_multiframe(
            tmp / "xa.dcm", frames=12, rows=128, columns=128, seed=3,
            transfer_syntax=JPEG2000Lossless, patient=PATIENT,
        )
    ]  # fmt: skip
    objects.files["hostile"] = synth.make_ct_series(
        tmp / "hostile", n_instances=2, rows=64, columns=64, seed=5,
        patient=synth.PatientSpec("P-<b>X</b>", HOSTILE_NAME, "19700101", "O"),
        series_description=HOSTILE_TEXT,
    )  # fmt: skip
    for name, file in (
        ("rgb", "examples_rgb_color.dcm"),
        ("cine", "examples_ybr_color.dcm"),
        ("j2k", "693_J2KI.dcm"),
    ):
        objects.files[name] = [Path(get_testdata_file(file))]
    _stow(server.url, [path for paths in objects.files.values() for path in paths])
    # A research project of the CT study, read de-identified by its member (issue 14).
    add_user(server.data_dir, "rosa", "researcher")
    nubis_cli(
        "research", "project", "create", "viewer",
        "--study", study, "--member", "rosa", "--data-dir", str(server.data_dir), check=True,
    )  # fmt: skip
    yield objects


# ---------------------------------------------------------------------------- helpers
def open_viewer(page: Page, objects: Objects, name: str, *, user: str = "vera") -> None:
    sign_in(page, objects.url, user)
    failed: list[str] = []
    asked: list[str] = []
    page.on(
        "response",
        lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    page.on("request", lambda r: asked.append(r.url))
    page.goto(objects.viewer(name, series=True))
    wait_drawn(page, 0, 0)
    page.failed_requests = failed  # type: ignore[attr-defined]
    page.asked = asked  # type: ignore[attr-defined]


def viewport(page: Page, number: int = 0) -> Any:
    return page.locator(".viewport").nth(number)


def wait_drawn(page: Page, index: int, number: int = 0) -> None:
    """Until viewport ``number`` has drawn image ``index`` completely."""
    expect(viewport(page, number)).to_have_attribute("data-drawn", str(index), timeout=20000)
    expect(viewport(page, number)).to_have_attribute("data-state", "ready", timeout=20000)


def press_and_redraw(page: Page, button: str) -> None:
    """Click a toolbar button and wait until the viewport has drawn what it does."""
    draws = viewport(page).get_attribute("data-draws")
    page.get_by_role("button", name=button, exact=True).click()
    expect(viewport(page)).not_to_have_attribute("data-draws", str(draws))


def actual_size(page: Page) -> None:
    press_and_redraw(page, "1:1")
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


def overlay_index(page: Page) -> int:
    return int(viewport(page).get_attribute("data-index") or -1)


def test_scrolling_by_wheel_keys_and_slider(archive: Objects, page: Page) -> None:
    open_viewer(page, archive, "ct")
    canvas = viewport(page).locator("canvas")
    canvas.hover()
    first = canvas_pixels(page, POINTS)
    page.mouse.wheel(0, 100)
    wait_drawn(page, 1)
    expect(viewport(page).locator(".bl")).to_contain_text(f"Im 2 (2/{CT_SLICES})")
    assert canvas_pixels(page, POINTS) != first, "the next slice looks like the first"
    page.mouse.wheel(0, -100)
    wait_drawn(page, 0)
    page.keyboard.press("ArrowDown")
    wait_drawn(page, 1)
    page.keyboard.press("ArrowDown")
    wait_drawn(page, 2)
    page.keyboard.press("PageDown")
    wait_drawn(page, 8)
    page.keyboard.press("End")
    wait_drawn(page, CT_SLICES - 1)
    page.keyboard.press("ArrowUp")
    wait_drawn(page, CT_SLICES - 2)
    page.keyboard.press("Home")
    wait_drawn(page, 0)
    viewport(page).locator(".slider").fill("31")
    wait_drawn(page, 30)
    expect(viewport(page).locator(".bl")).to_contain_text(f"Im 31 (31/{CT_SLICES})")
    actual_size(page)
    display = stored_window_display(archive.files["ct"][30])
    assert_gray(canvas_pixels(page, POINTS), [display[y, x] for x, y in POINTS])
    screenshot(page, "viewer-ct-slice-31")


def test_window_level_by_drag_and_presets(archive: Objects, page: Page) -> None:
    open_viewer(page, archive, "ct")
    actual_size(page)
    stored = pydicom.dcmread(archive.files["ct"][0]).pixel_array
    before = canvas_pixels(page, POINTS)
    box = viewport(page).bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y + 60, steps=6)
    page.mouse.up()
    expect(viewport(page).locator(".bl")).not_to_contain_text("W 400 L 40")
    after = canvas_pixels(page, POINTS)
    assert after != before, "dragging did not change the window"
    # The drawn pixels follow the window the overlay names.
    text = viewport(page).locator(".bl").inner_text()
    width, center = (float(v) for v in text.split("W ")[1].split("\n")[0].split(" L "))
    values = [stored[py, px] for px, py in POINTS]
    expected = windowed(values, intercept=-1024, center=center, width=width)
    assert_gray(after, list(expected), tolerance=2)  # the overlay rounds to one decimal
    page.get_by_role("button", name="Lung", exact=True).click()
    expect(viewport(page).locator(".bl")).to_contain_text("W 1500 L -600")
    lung = windowed(values, intercept=-1024, center=-600, width=1500)
    assert_gray(canvas_pixels(page, POINTS), list(lung))
    screenshot(page, "viewer-ct-lung")
    for preset in ("Brain", "Bone", "Abdomen"):
        page.get_by_role("button", name=preset, exact=True).click()
    expect(viewport(page).locator(".bl")).to_contain_text("W 400 L 50")
    page.get_by_role("button", name="Default", exact=True).click()
    expect(viewport(page).locator(".bl")).to_contain_text("W 400 L 40")
    assert_gray(canvas_pixels(page, POINTS), [b[0] for b in before])


def test_two_by_two_shows_series_side_by_side(archive: Objects, page: Page) -> None:
    open_viewer(page, archive, "ct")
    page.get_by_role("button", name="2×2").click()
    expect(page.locator(".viewport")).to_have_count(4)
    wait_drawn(page, 0, 1)
    assert viewport(page, 0).get_attribute("data-series") == archive.series("ct")
    assert viewport(page, 1).get_attribute("data-series") == archive.series("mr")
    expect(viewport(page, 1).locator(".tr")).to_contain_text("Brain MR")
    expect(viewport(page, 2)).to_have_attribute("data-state", "empty")
    # A series dragged from the list onto a viewport is shown there.
    page.locator(f'.series-item[data-series="{archive.series("mr")}"]').drag_to(viewport(page, 3))
    wait_drawn(page, 0, 3)
    assert viewport(page, 3).get_attribute("data-series") == archive.series("mr")
    # Scrolling one viewport leaves the others where they are.
    viewport(page, 1).locator("canvas").hover()
    page.mouse.wheel(0, 100)
    wait_drawn(page, 1, 1)
    assert viewport(page, 3).get_attribute("data-drawn") == "0"
    screenshot(page, "viewer-2x2")
    page.get_by_role("button", name="1×2").click()
    expect(page.locator(".viewport")).to_have_count(2)


def test_metadata_view_lists_the_instance_attributes(archive: Objects, page: Page) -> None:
    open_viewer(page, archive, "ct")
    page.get_by_role("button", name="Metadata").click()
    dialog = page.get_by_role("dialog")
    row = dialog.locator("tr", has_text="(0010,0020)")
    expect(row).to_contain_text("PatientID")
    expect(row).to_contain_text("P-VIEW")
    expect(dialog.locator("tr", has_text="(7FE0,0010)")).to_contain_text("bulk data")
    dialog.get_by_label("Filter attributes").fill("SOPInstanceUID")
    expect(dialog.locator("tbody tr:visible")).to_have_count(1)
    screenshot(page, "viewer-metadata")
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()


def test_color_image_shows_its_rgb(archive: Objects, page: Page) -> None:
    open_viewer(page, archive, "rgb")
    actual_size(page)
    rgb = pydicom.dcmread(archive.files["rgb"][0]).pixel_array
    points = [(5, 5), (100, 60), (160, 120), (250, 200), (319, 239)]
    drawn = canvas_pixels(page, points)
    assert [d[:3] for d in drawn] == [list(map(int, rgb[y, x])) for x, y in points]
    assert len({tuple(d) for d in drawn}) > 2, "a flat picture proves little"
    screenshot(page, "viewer-color")


def test_cine_plays_an_ultrasound_loop(archive: Objects, page: Page) -> None:
    open_viewer(page, archive, "cine")
    expect(viewport(page)).to_have_attribute("data-count", "30")
    expect(page.locator("input[name=fps]")).to_have_value("30")  # from Frame Time, 33.3 ms
    page.get_by_role("button", name="Play").click()
    expect(page.get_by_role("button", name="Pause")).to_be_visible()
    seen = set()
    for _ in range(40):
        seen.add(overlay_index(page))
        page.wait_for_timeout(50)
    assert len(seen) >= 5, f"cine showed only images {sorted(seen)}"
    page.keyboard.press("Space")
    expect(viewport(page)).to_have_attribute("data-playing", "false")
    shown = overlay_index(page)
    wait_drawn(page, shown)
    actual_size(page)
    frames = pydicom.dcmread(archive.files["cine"][0]).pixel_array
    points = [(160, 120), (100, 100), (200, 150)]
    drawn = canvas_pixels(page, points)
    assert [d[:3] for d in drawn] == [list(map(int, frames[shown][y, x])) for x, y in points]
    screenshot(page, "viewer-cine")


def test_jpeg_2000_ct_is_windowed_in_the_browser(archive: Objects, page: Page) -> None:
    open_viewer(page, archive, "j2k")
    expect(viewport(page).locator(".bl")).to_contain_text("W 100 L 40")
    actual_size(page)
    display = stored_window_display(archive.files["j2k"][0])
    assert_gray(canvas_pixels(page, POINTS), [display[y, x] for x, y in POINTS])
    assert len({display[y, x] for x, y in POINTS}) > 2
    screenshot(page, "viewer-jpeg2000")


def test_enhanced_mr_frames_use_their_functional_groups(archive: Objects, page: Page) -> None:
    open_viewer(page, archive, "emr")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    wait_drawn(page, 4)
    center, width = enhanced_mr_window(5)
    expect(viewport(page).locator(".bl")).to_contain_text("Fr 5/8")
    expect(viewport(page).locator(".bl")).to_contain_text(f"W {width:g} L {center:g}")
    # Fitted, a 64x64 image is magnified: a pixel's center keeps its value.
    press_and_redraw(page, "Fit")
    stored = enhanced_mr_pixels()[4]
    points = [(0, 0), (10, 20), (33, 31), (63, 63)]
    expected = windowed(
        [stored[y, x] for x, y in points],
        slope=ENHANCED_MR_SLOPE, intercept=ENHANCED_MR_INTERCEPT, center=center, width=width,
    )  # fmt: skip
    assert_gray(canvas_pixels(page, points), list(expected), tolerance=2)
    screenshot(page, "viewer-enhanced-mr")


def test_compressed_multi_frame_comes_in_frame_lists(archive: Objects, page: Page) -> None:
    """A JPEG 2000 multi-frame (as XA cine often is) is decoded by the archive to native
    pixels several frames a request, and windowed here with its stored window."""
    open_viewer(page, archive, "xa")
    expect(viewport(page)).to_have_attribute("data-count", "12")
    expect(viewport(page)).to_have_attribute("data-loaded", "12")
    frame_lists = [url.rsplit("/frames/", 1)[1] for url in page.asked if "/frames/" in url]  # type: ignore[attr-defined]
    assert frame_lists[0] == "1", "the first image must come alone, at once"
    assert any("," in frames for frames in frame_lists[1:]), frame_lists
    assert sorted(int(n) for f in frame_lists for n in f.split(",")) == list(range(1, 13))
    page.keyboard.press("End")
    wait_drawn(page, 11)
    expect(viewport(page).locator(".bl")).to_contain_text("Fr 12/12")
    actual_size(page)
    stored = pydicom.dcmread(archive.files["xa"][0]).pixel_array[11]
    points = [(0, 0), (64, 64), (100, 30), (127, 127)]
    expected = windowed([stored[y, x] for x, y in points], center=1064, width=400)
    assert_gray(canvas_pixels(page, points), list(expected))
    assert page.failed_requests == []  # type: ignore[attr-defined]


def test_4k_cr_is_inverted_and_shown_whole(archive: Objects, page: Page) -> None:
    open_viewer(page, archive, "cr")
    screenshot(page, "viewer-cr-4k")
    size = 4096
    values = cr_pixels(size)
    actual_size(page)
    points = [(2047, 2047), (2048, 2050), (2100, 1990), (1990, 2100)]
    expected = windowed(
        [values[y, x] for x, y in points], center=2048, width=4096, monochrome1=True
    )
    assert_gray(canvas_pixels(page, points), list(expected))
    # Fitted, the whole image: the bright square a quarter in, and the ramp's far end.
    press_and_redraw(page, "Fit")
    drawn = canvas_pixels(page, [(size // 4 + 32, size // 4 + 32), (3 * size // 4, 3 * size // 4)])
    assert drawn[0][0] < 20, "the 4000 square must be near black in MONOCHROME1"
    far = windowed([values[3 * size // 4, 3 * size // 4]], center=2048, width=4096,
                   monochrome1=True)  # fmt: skip
    assert abs(drawn[1][0] - far[0]) <= 3


def test_whole_slide_tiles_are_assembled_in_place(archive: Objects, page: Page) -> None:
    open_viewer(page, archive, "wsi")
    expect(viewport(page).locator(".bl")).to_contain_text("12 tiles")
    expect(viewport(page).locator(".br")).to_contain_text("1000 × 700")
    actual_size(page)
    rgb = wsi_pixels(1000, 700)
    # Pixels on both sides of tile edges (256, 512, 768) and in the cropped last row/column.
    points = [(0, 0), (255, 255), (256, 256), (511, 100), (512, 300), (767, 600), (768, 511),
              (999, 699), (900, 650), (130, 690)]  # fmt: skip
    drawn = canvas_pixels(page, points)
    assert [d[:3] for d in drawn] == [list(map(int, rgb[y, x])) for x, y in points]
    screenshot(page, "viewer-whole-slide")


def test_touch_swipe_scrolls_and_pinch_zooms(archive: Objects, browser) -> None:  # type: ignore[no-untyped-def]
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
        device_scale_factor=2,
    )  # fmt: skip
    try:
        page = phone.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        open_viewer(page, archive, "ct")
        box = viewport(page).bounding_box()
        assert box is not None
        cdp = phone.new_cdp_session(page)

        def touch(kind: str, *points: tuple[float, float]) -> None:
            cdp.send(
                "Input.dispatchTouchEvent",
                {"type": kind, "touchPoints": [{"x": x, "y": y, "id": i} for i, (x, y) in
                                               enumerate(points)]},
            )  # fmt: skip

        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.get_by_role("button", name="Scroll").click()
        touch("touchStart", (x, y + 100))
        for step in range(1, 11):
            touch("touchMove", (x, y + 100 - 10 * step))
        touch("touchEnd")
        wait_drawn(page, int(viewport(page).get_attribute("data-index") or 0))
        assert overlay_index(page) > 0, "a swipe up did not go further into the series"
        scale = float(viewport(page).get_attribute("data-scale") or 0)
        touch("touchStart", (x - 40, y), (x + 40, y))
        for step in range(1, 11):
            touch("touchMove", (x - 40 - 8 * step, y), (x + 40 + 8 * step, y))
        touch("touchEnd")
        page.wait_for_function(
            f"() => Number(document.querySelector('.viewport').dataset.scale) > {scale * 1.5}"
        )
        screenshot(page, "viewer-phone")
        # The series list slides over the viewport; a tap on a series shows it and closes it.
        series_list = page.get_by_role("complementary", name="Series")
        expect(series_list).to_be_hidden()
        page.get_by_role("button", name="Series list").tap()
        expect(series_list).to_be_visible()
        screenshot(page, "viewer-phone-series")
        page.locator(f'.series-item[data-series="{archive.series("mr")}"]').tap()
        expect(series_list).to_be_hidden()
        wait_drawn(page, 0)
        assert viewport(page).get_attribute("data-series") == archive.series("mr")
        assert errors == []
    finally:
        phone.close()


def test_out_of_scope_study_is_a_404_page(archive: Objects, page: Page) -> None:
    sign_in(page, archive.url, "rick")  # a referrer without any grant
    response = page.goto(archive.viewer("ct"))
    assert response is not None and response.status == 404
    expect(page.get_by_role("alert")).to_contain_text("not found")
    screenshot(page, "viewer-404")


def test_signed_out_browser_is_sent_to_sign_in(archive: Objects, page: Page) -> None:
    page.goto(archive.viewer("ct", series=True))
    expect(page).to_have_url(f"{archive.url}/ui/login?next=/ui/studies/{archive.study('ct')}"
                             f"/view%3Fseries%3D{archive.series('ct')}")  # fmt: skip
    page.get_by_label("User name").fill("vera")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    wait_drawn(page, 0)


def test_dicom_text_is_shown_as_text(archive: Objects, page: Page) -> None:
    """A PatientName of <script>alert(1)</script> and markup in a description are shown, never
    run (the page fixture fails on any dialog or JavaScript error)."""
    open_viewer(page, archive, "hostile")
    expect(page.locator(".bar .patient")).to_have_text("<script>alert(1)</script>")
    expect(viewport(page).locator(".tl")).to_contain_text("<script>alert(1)</script>")
    expect(viewport(page).locator(".tl")).to_contain_text("P-<b>X</b>")
    expect(viewport(page).locator(".tr")).to_contain_text(HOSTILE_TEXT)
    expect(page.locator(".series-item .desc")).to_have_text(HOSTILE_TEXT)
    page.get_by_role("button", name="Metadata").click()
    expect(page.get_by_role("dialog").locator("tr", has_text="(0008,103E)")).to_contain_text(
        HOSTILE_TEXT
    )
    assert page.locator("img[src=x]").count() == 0
    screenshot(page, "viewer-hostile-text")


def test_multipart_parser_takes_what_servers_send(archive: Objects, page: Page) -> None:
    """The viewer's multipart/related parser (RFC 2046 5.1.1): a preamble, transport padding,
    a quoted boundary, a part without header fields, a body holding the boundary's text
    without the CRLF before it, and a wrong length hint."""
    sign_in(page, archive.url, "vera")
    parts = page.evaluate(
        r"""async () => {
            const { parseMultipart } = await import("/ui/static/viewer/multipart.js");
            const body = "preamble\r\n--b0\t \r\nContent-Type: application/octet-stream\r\n"
                + "\r\nab--b0cd\r\n--b0\r\n\r\nsecond\r\n--b0--\r\nepilogue";
            const bytes = new TextEncoder().encode(body);
            const decode = (p) => new TextDecoder().decode(p.body);
            const quoted = parseMultipart(bytes.buffer, 'multipart/related; boundary="b0"');
            const hinted = parseMultipart(bytes.buffer, "multipart/related; boundary=b0", 3);
            return [quoted.map(decode), hinted.map(decode), quoted[0].headers["content-type"]];
        }"""
    )
    assert parts == [["ab--b0cd", "second"], ["ab--b0cd", "second"], "application/octet-stream"]


def test_a_researcher_views_the_project_de_identified(archive: Objects, page: Page) -> None:
    """A member of a research project opens its study from the project's page: the viewer
    reads the project's de-identified DICOMweb, so it shows the pseudonym where the patient's
    name was, and the same pixels (the profile keeps a CT's pixels as stored)."""
    sign_in(page, archive.url, "rosa")
    failed: list[str] = []
    asked: list[str] = []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("request", lambda r: asked.append(r.url))
    page.goto(f"{archive.url}/ui/projects/viewer")
    expect(page.get_by_role("heading", name="Research project viewer")).to_be_visible()
    assert "P-VIEW" not in page.content() and "Vera" not in page.content()
    page.get_by_role("link", name="View").click()
    wait_drawn(page, 0, 0)
    screenshot(page, "viewer-researcher")
    overlay = viewport(page).locator(".tl").inner_text()
    assert "Vera" not in overlay and "ANON" in overlay, overlay
    actual_size(page)
    expect(viewport(page)).to_have_attribute("data-count", str(CT_SLICES))
    display = stored_window_display(archive.files["ct"][0])
    assert_gray(canvas_pixels(page, POINTS), [display[y, x] for x, y in POINTS])
    assert failed == []
    study = archive.study("ct")
    # Every read went through the project's root, none named the stored study.
    identified = [u for u in asked if study in u or urlparse(u).path.startswith("/dicom-web/")]
    assert identified == []
