"""An archive in-process (Starlette's TestClient) for the admin pages' tests, with the real
services, index, audit trail and job runner, and browsers that sign in with a password.

The job runner is not started: tests run queued jobs with ``archive.job_runner.run_once()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.testclient import TestClient

from integration import in_process_archive, page_csrf, web_sign_in
from nubis.archive import Archive
from nubis.security.audit import AuditRecord
from nubis.tools import synth
from nubis.web.app import create_app

ADMIN_TOKEN = "admin-pages-test-admin-token-0123456789"
PASSWORD = "correct horse battery staple"
DICOM_TYPE = 'multipart/related; type="application/dicom"; boundary=b'
# Who signs in, with which roles and tenant.
PEOPLE = {
    "boss": ("admin", "default"),
    "rad": ("radiologist", "default"),
    "eve": ("auditor", "default"),
    "otto": ("admin", "other"),  # an admin of another tenant
    "olga": ("radiologist", "other"),
}


@dataclass
class Site:
    archive: Archive
    tmp: Path

    def client(self) -> TestClient:
        return TestClient(create_app(self.archive, manage_lifespan=False), base_url="http://t")

    @contextmanager
    def browser(self, user: str | None = None) -> Iterator[TestClient]:
        """A browser, signed in as ``user`` (with PASSWORD) unless None."""
        with self.client() as client:
            if user is not None:
                response = sign_in(client, user)
                assert response.status_code == 303, response.text
            yield client

    def store(self, datasets: Any, *, token: str = ADMIN_TOKEN) -> None:
        """STOW-RS, as a program would, one request per object."""
        with self.client() as client:
            for ds in datasets:
                body = b"--b\r\nContent-Type: application/dicom\r\n\r\n"
                body += synth.dataset_bytes(ds) + b"\r\n--b--\r\n"
                response = client.post(
                    "/dicom-web/studies",
                    content=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": DICOM_TYPE},
                )
                assert response.status_code == 200, response.text

    def records_since(self, seq: int) -> list[AuditRecord]:
        return self.archive.audit.scan(seq, 100_000)

    def head(self) -> int:
        return self.archive.audit.head()[0]

    def run_jobs(self) -> int:
        runner = self.archive.job_runner
        assert runner is not None
        ran = 0
        while runner.run_once():
            ran += 1
        return ran


def make_site(tmp: Path, **settings: str) -> Site:
    archive = in_process_archive(tmp / "data", ADMIN_TOKEN, **settings)
    archive.prepare()
    archive.start(background=False)
    for name, (role, tenant) in PEOPLE.items():
        archive.users.add_user(name, tenant=tenant, roles=role, password=PASSWORD)
    return Site(archive, tmp)


def sign_in(client: TestClient, user: str, password: str = PASSWORD) -> httpx.Response:
    return web_sign_in(client, user, password)


def csrf(client: TestClient, path: str = "/ui/") -> str:
    return page_csrf(client, path)


def post(client: TestClient, path: str, data: dict[str, Any] | None = None) -> httpx.Response:
    """A form of a signed-in page, with the session's CSRF token, not followed."""
    return client.post(
        path, data={"csrf_token": csrf(client), **(data or {})}, follow_redirects=False
    )


def html(client: TestClient, path: str) -> httpx.Response:
    """A page as a browser asks for it (errors come back as pages)."""
    return client.get(path, headers={"Accept": "text/html"}, follow_redirects=False)
