"""The web face in a real browser: Debian's Chromium, headless, driven by Playwright.

Fixtures are in conftest.py; helpers the test modules import live here.
"""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page

from integration.cli import nubis_cli

PASSWORD = "browser-test-password-42"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def add_user(data_dir: Path, name: str, role: str, *, tenant: str = "default") -> None:
    """A local user with PASSWORD, made with the CLI as an operator would (server running)."""
    nubis_cli("users", "add", name, "--role", role, "--tenant", tenant, "--password-stdin",
              "--data-dir", str(data_dir), input=PASSWORD + "\n", check=True)  # fmt: skip


def sign_in(page: Page, base_url: str, user: str, password: str = PASSWORD) -> None:
    page.goto(f"{base_url}/ui/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/ui/**")


def screenshot(page: Page, name: str) -> None:
    """Kept as a test artifact (test-artifacts/, not committed)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
