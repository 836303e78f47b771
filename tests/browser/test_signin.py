"""Signing in and out in a real browser (issue 10: sign-in for browsers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from browser import PASSWORD, add_user, screenshot, sign_in


@pytest.fixture(scope="module")
def archive(server_factory) -> Iterator[object]:  # type: ignore[no-untyped-def]
    server = server_factory("browser-signin")
    add_user(server.data_dir, "ada", "radiologist")
    yield server


def test_sign_in_and_out(archive, page: Page, context: BrowserContext) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{archive.url}/ui/")
    expect(page).to_have_url(f"{archive.url}/ui/login?next=/ui/")
    screenshot(page, "signin")
    sign_in(page, archive.url, "ada")
    expect(page.locator(".topbar .user")).to_have_text("ada")
    cookie = next(c for c in context.cookies() if c["name"] == "nubis_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{archive.url}/ui/login")
    page.goto(f"{archive.url}/ui/")
    expect(page).to_have_url(f"{archive.url}/ui/login?next=/ui/")


def test_a_wrong_password_shows_why(archive, page: Page) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{archive.url}/ui/login")
    page.get_by_label("User name").fill("ada")
    page.get_by_label("Password").fill(PASSWORD + "x")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong user name or password")
