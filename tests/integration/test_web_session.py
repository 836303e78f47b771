"""Browser sessions of the web face (issue 10): sign-in, cookie, expiry, CSRF, sign-out.

The archive runs in-process (Starlette's TestClient) with the real services, index, audit trail
and login throttle. What a browser does is in tests/browser/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from starlette.testclient import TestClient

from integration import in_process_archive, page_csrf, web_sign_in
from nubis.archive import Archive
from nubis.index.schema import web_sessions
from nubis.security.policy import system_principal
from nubis.tools import synth
from nubis.web.app import create_app

ADMIN = "web-session-test-admin-token-0123456789"
PASSWORD = "correct horse battery staple"
DICOM_TYPE = 'multipart/related; type="application/dicom"; boundary=b'


@dataclass
class Site:
    archive: Archive
    tmp: Path

    def client(self, *, https: bool = False) -> TestClient:
        base = "https://nubis.test" if https else "http://nubis.test"
        return TestClient(create_app(self.archive, manage_lifespan=False), base_url=base)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("web-session")
    archive = in_process_archive(
        tmp / "data", ADMIN, login_max_failures_per_user="3", login_max_failures_per_address="0"
    )
    archive.prepare()
    archive.start(background=False)
    users = archive.users
    for name, role in (("alice", "radiologist"), ("rita", "referrer"), ("locky", "radiologist")):
        users.add_user(name, tenant="default", roles=role, password=PASSWORD)
    users.grant("rita", tenant="default", patient_id="WEB-GRANTED")
    for patient in ("WEB-GRANTED", "WEB-OTHER"):
        ds = next(synth.series_datasets("CT", n_instances=1, seed=hash(patient) % 1000,
            patient=synth.PatientSpec(patient, "Web^Pat", "19700101", "F")))  # fmt: skip
        body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + synth.dataset_bytes(ds)
        with TestClient(create_app(archive, manage_lifespan=False)) as client:
            response = client.post(
                "/dicom-web/studies",
                content=body + b"\r\n--b--\r\n",
                headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": DICOM_TYPE},
            )
            assert response.status_code == 200, response.text
    yield Site(archive, tmp)
    archive.stop()


def sign_in(client: TestClient, user: str, password: str = PASSWORD, **kw: str) -> httpx.Response:
    return web_sign_in(client, user, password, **kw)


def _csrf(client: TestClient) -> str:
    return page_csrf(client)


def test_signed_out_pages_send_the_browser_to_sign_in(site: Site) -> None:
    with site.client() as client:
        root = client.get("/", follow_redirects=False)
        assert root.status_code == 303 and root.headers["location"] == "/ui/"
        page = client.get("/ui/", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"] == "/ui/login?next=/ui/"
        # A program without credentials still gets a 401 with its challenge, not a page.
        assert client.get("/dicom-web/studies").status_code == 401


def test_sign_in_sets_a_strict_httponly_cookie(site: Site) -> None:
    with site.client() as client:
        response = sign_in(client, "alice")
        assert response.status_code == 303 and response.headers["location"] == "/ui/"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("nubis_session=")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain HTTP on loopback: a Secure cookie would be lost
        home = client.get("/ui/")
        assert home.status_code == 200 and "alice" in home.text


def test_on_tls_the_cookie_is_secure_and_host_prefixed(site: Site) -> None:
    with site.client(https=True) as client:
        cookie = sign_in(client, "alice").headers["set-cookie"]
        assert cookie.startswith("__Host-nubis_session=")
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert "Domain" not in cookie
        assert client.get("/ui/").status_code == 200


def test_security_headers(site: Site) -> None:
    with site.client() as client:
        page = client.get("/ui/login")
        csp = page.headers["content-security-policy"]
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert page.headers["cache-control"] == "no-store"
        css = client.get("/ui/static/nubis.css")
        assert css.status_code == 200 and css.headers["cache-control"] == "no-cache"
        again = client.get("/ui/static/nubis.css", headers={"If-None-Match": css.headers["etag"]})
        assert again.status_code == 304


def test_a_wrong_password_is_refused_audited_and_throttled(site: Site) -> None:
    with site.client() as client:
        for _ in range(3):
            response = sign_in(client, "locky", "wrong password!")
            assert response.status_code == 401
            assert "wrong user name or password" in response.text
            assert "set-cookie" not in response.headers or "nubis_session" not in str(
                response.headers.get_list("set-cookie")
            )
        locked = sign_in(client, "locky")  # the right password, during the lockout
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    records = site.archive.audit.read(system_principal(), user_id="locky", limit=100)
    failures = [r for r in records if "wrong user name or password" in str(r.event_dict)]
    assert len(failures) >= 3


def test_next_never_leaves_the_site(site: Site) -> None:
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:1"):
        with site.client() as client:
            response = sign_in(client, "alice", next=evil)
            assert response.status_code == 303
            assert response.headers["location"] == "/ui/", evil


def test_login_csrf_is_required(site: Site) -> None:
    with site.client() as client:
        response = client.post(
            "/ui/login",
            data={"username": "alice", "password": PASSWORD, "login_csrf": "forged"},
            follow_redirects=False,
        )
        assert response.status_code == 403


def test_a_session_reads_what_the_user_may_read_and_no_more(site: Site) -> None:
    with site.client() as client:
        sign_in(client, "rita")
        found = client.get("/dicom-web/studies", params={"includefield": "PatientID"}).json()
        assert [s["00100020"]["Value"][0] for s in found] == ["WEB-GRANTED"]
        # Store needs a role rita does not have: the same 403 as with her API key.
        response = client.post(
            "/dicom-web/studies",
            content=b"--b--\r\n",
            headers={"Content-Type": DICOM_TYPE, "X-CSRF-Token": _csrf(client)},
        )
        assert response.status_code == 403


def test_cookie_requests_that_change_things_need_the_csrf_token(site: Site) -> None:
    ds = next(synth.series_datasets("CT", n_instances=1, seed=77))
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + synth.dataset_bytes(ds)
    body += b"\r\n--b--\r\n"
    with site.client() as client:
        sign_in(client, "alice")
        refused = client.post(
            "/dicom-web/studies", content=body, headers={"Content-Type": DICOM_TYPE}
        )
        assert refused.status_code == 403 and "CSRF" in refused.json()["reason"]
        forged = client.post(
            "/dicom-web/studies",
            content=body,
            headers={"Content-Type": DICOM_TYPE, "X-CSRF-Token": "forged"},
        )
        assert forged.status_code == 403
        stored = client.post(
            "/dicom-web/studies",
            content=body,
            headers={"Content-Type": DICOM_TYPE, "X-CSRF-Token": _csrf(client)},
        )
        assert stored.status_code == 200, stored.text
        # Sign-out is a form: without the token it is refused and the session lives on.
        assert client.post("/ui/logout", data={}, follow_redirects=False).status_code == 403
        assert client.get("/ui/", follow_redirects=False).status_code == 200


def test_sign_out_ends_the_session_everywhere(site: Site) -> None:
    with site.client() as client:
        sign_in(client, "alice")
        cookie = client.cookies.get("nubis_session")
        response = client.post(
            "/ui/logout", data={"csrf_token": _csrf(client)}, follow_redirects=False
        )
        assert response.status_code == 303 and response.headers["location"] == "/ui/login"
    with site.client() as replay:
        replay.cookies.set("nubis_session", cookie or "")
        assert replay.get("/ui/", follow_redirects=False).status_code == 303
        assert replay.get("/dicom-web/studies").status_code == 401


def _age(site: Site, **columns: int) -> None:
    """Move every session's clock back, as time passing would."""
    site.archive.index.write(lambda conn: conn.execute(update(web_sessions).values(**columns)))


def test_idle_and_absolute_expiry(site: Site) -> None:
    now = time.time_ns() // 1_000_000
    idle = site.archive.settings.session_idle_minutes * 60_000
    with site.client() as client:
        sign_in(client, "alice")
        _age(site, last_seen_at=now - idle - 1000)
        assert client.get("/ui/", follow_redirects=False).status_code == 303
    with site.client() as client:
        sign_in(client, "alice")
        _age(site, expires_at=now - 1)
        assert client.get("/ui/", follow_redirects=False).status_code == 303


def test_a_removed_user_loses_the_session_and_new_roles_count_at_once(site: Site) -> None:
    users = site.archive.users
    users.add_user("temp", tenant="default", roles="referrer", password=PASSWORD)
    with site.client() as client:
        sign_in(client, "temp")
        assert client.get("/dicom-web/studies").json() == []  # nothing granted
        users.set_roles("temp", frozenset({"radiologist"}))
        assert len(client.get("/dicom-web/studies").json()) >= 2
        users.remove_user("temp")
        assert client.get("/ui/", follow_redirects=False).status_code == 303
