"""The admin pages in a real browser (issue 10: "an admin sees jobs and the cost chart").

A live ``nubis serve`` with a few hundred small objects: the admin queues a throttled verify
job and watches its progress bar move (admin-jobs.js polling the server), sees the storage
charts with one series per tier, creates a user who then signs in, and revokes an API key,
which stops working at once. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from browser import PASSWORD, add_user, screenshot, sign_in
from nubis.tools import synth

OBJECTS = 300
ADMIN_TOKEN = os.environ["NUBIS_ADMIN_TOKEN"]


def _store(url: str, count: int) -> None:
    """STOW-RS, fifty 64x64 CT slices a request (about 8 KiB each)."""
    datasets = list(synth.series_datasets("CT", n_instances=count, rows=64, columns=64, seed=9))
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, count, 50):
            body = b""
            for ds in datasets[start : start + 50]:
                body += b"--b\r\nContent-Type: application/dicom\r\n\r\n"
                body += synth.dataset_bytes(ds) + b"\r\n"
            response = client.post(
                "/dicom-web/studies",
                content=body + b"--b--\r\n",
                headers={
                    "Authorization": f"Bearer {ADMIN_TOKEN}",
                    "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
                },
            )
            assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def archive(server_factory) -> Iterator[object]:  # type: ignore[no-untyped-def]
    server = server_factory("browser-admin")
    add_user(server.data_dir, "root", "admin")
    _store(server.url, OBJECTS)
    yield server


def test_a_verify_jobs_progress_bar_moves_until_done(archive, page: Page) -> None:  # type: ignore[no-untyped-def]
    sign_in(page, archive.url, "root")
    page.get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", name="Administration")).to_be_visible()
    screenshot(page, "admin-overview")
    page.get_by_role("link", name="Jobs", exact=True).click()
    form = page.locator("form", has=page.get_by_role("button", name="Queue"))
    form.get_by_label("Kind").select_option("verify")
    # About 2.4 MB at 0.3 MB/s: some eight seconds to watch.
    form.get_by_label("Parameters").fill("max_mb_per_s=0.3")
    form.get_by_role("button", name="Queue").click()
    job_id = re.search(r"job=(\d+)", page.url).group(1)  # type: ignore[union-attr]
    row = page.locator(f'tr[data-job="{job_id}"]')
    bar = row.locator("progress")
    seen: list[float] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = row.get_attribute("data-state")
        value = bar.evaluate("el => el.hasAttribute('value') ? el.value / el.max : -1")
        if state == "running" and value > 0 and (not seen or value > seen[-1]):
            seen.append(value)
            if len(seen) == 2:
                screenshot(page, "admin-jobs-running")
        if state == "done":
            break
        page.wait_for_timeout(250)
    # The page itself followed the job: no reload, only the poller.
    assert row.get_attribute("data-state") == "done"
    assert bar.evaluate("el => el.value / el.max") == 1.0
    expect(row.locator("[data-role=text]")).to_have_text(f"{OBJECTS} / {OBJECTS} (100%)")
    assert len(seen) >= 2, f"the bar did not move while the job ran: {seen}"
    assert seen == sorted(seen) and seen[0] < 1.0
    expect(row.locator("[data-role=cancel]")).to_have_count(0)


def test_storage_charts_have_one_series_per_tier(archive, page: Page) -> None:  # type: ignore[no-untyped-def]
    sign_in(page, archive.url, "root")
    page.goto(f"{archive.url}/ui/admin/storage?growth=8&months=24")
    tiers = ["hot", "cold", "archive"]  # the default tiers setting
    for chart in ("bytes-chart", "objects-chart", "cost-chart"):
        series = page.locator(f"#{chart} svg g.series")
        expect(series).to_have_count(len(tiers))
        assert [series.nth(i).get_attribute("data-series") for i in range(3)] == tiers
    expect(page.locator("#cost-chart svg rect").first).to_be_visible()
    expect(page.locator("#forecast-chart g.series.dashed path")).to_have_attribute(
        "stroke-dasharray", "7 5"
    )
    expect(page.locator('tr[data-tier="hot"] td').nth(2)).to_have_text(str(OBJECTS))
    screenshot(page, "admin-storage")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: one chart a row
    screenshot(page, "admin-storage-phone")


def test_an_admin_creates_a_user_who_then_signs_in(archive, page: Page, browser: Browser) -> None:  # type: ignore[no-untyped-def]
    sign_in(page, archive.url, "root")
    page.goto(f"{archive.url}/ui/admin/users")
    form = page.locator("form", has=page.get_by_role("button", name="Add user"))
    form.get_by_label("User name").fill("dr.grey")
    form.get_by_label("Password", exact=True).fill(PASSWORD)
    form.get_by_label("Password again").fill(PASSWORD)
    form.get_by_label("radiologist").check()
    screenshot(page, "admin-users")
    form.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("status")).to_have_text("User dr.grey added.")
    expect(page.get_by_role("heading", name="dr.grey", exact=True)).to_be_visible()
    fresh = browser.new_context()
    try:
        theirs = fresh.new_page()
        sign_in(theirs, archive.url, "dr.grey")
        expect(theirs.locator(".topbar .user")).to_have_text("dr.grey")
        expect(theirs.get_by_role("link", name="Admin")).to_have_count(0)
        theirs.goto(f"{archive.url}/ui/admin/users")
        expect(theirs.get_by_role("heading", name="403")).to_be_visible()
    finally:
        fresh.close()


def test_a_revoked_key_stops_working(archive, page: Page) -> None:  # type: ignore[no-untyped-def]
    add_user(archive.data_dir, "robot", "uploader")
    sign_in(page, archive.url, "root")
    page.goto(f"{archive.url}/ui/admin/users/robot")
    form = page.locator("form", has=page.get_by_role("button", name="Create key"))
    form.get_by_label("Label").fill("the scanner's uploader")
    form.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-api-key").inner_text().strip()
    assert secret.startswith("nbk_")
    screenshot(page, "admin-key-created")
    key_id = secret.split("_")[1]
    whoami = f"{archive.url}/-/whoami"
    auth = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(whoami, headers=auth).json()["id"] == "robot"
    page.get_by_role("button", name=f"Revoke key {key_id}").click()
    expect(page.get_by_role("status")).to_have_text(
        f"API key {key_id} revoked: it stops working at once."
    )
    expect(page.locator(f'tr[data-key="{key_id}"] .badge')).to_have_text("revoked")
    assert httpx.get(whoami, headers=auth).status_code == 401


def test_audit_and_peers_pages(archive, page: Page) -> None:  # type: ignore[no-untyped-def]
    sign_in(page, archive.url, "root")
    page.goto(f"{archive.url}/ui/admin/audit")
    expect(page.get_by_role("heading", name="The chain")).to_be_visible()
    page.get_by_role("button", name="Verify the chain now").click()
    # The page follows the job and reloads itself with the report once it is done.
    expect(page.locator("[data-role=verdict]")).to_have_text("intact", timeout=60_000)
    page.get_by_label("User", exact=True).fill("root")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.audit tbody tr").first).to_contain_text("root")
    screenshot(page, "admin-audit")
    page.get_by_role("link", name="DIMSE peers", exact=True).click()
    page.get_by_label("AE title").fill("PACS2")
    page.get_by_label("Host").fill("10.1.2.3")
    page.get_by_label("Port").fill("104")
    page.get_by_role("button", name="Save peer").click()
    expect(page.get_by_role("status")).to_have_text("PACS2 saved.")
    expect(page.locator('tr[data-peer="PACS2"]')).to_be_visible()
    screenshot(page, "admin-peers")
    page.get_by_role("button", name="Remove PACS2").click()
    expect(page.locator('tr[data-peer="PACS2"]')).to_have_count(0)
