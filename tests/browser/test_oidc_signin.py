"""Signing in with an OpenID Connect provider in a real browser (issue 10: sign-in for
browsers): authorization code with PKCE (RFC 7636 S256), state and nonce (OpenID Connect Core
3.1.2.1), against a small provider the test starts (tests/browser/oidc_provider.py).

The provider is named ``localhost`` and the archive ``127.0.0.1``: two sites, so the callback
is a cross-site navigation, as with a real provider, and the SameSite=Strict session cookie has
to survive it.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from playwright.sync_api import Page, expect
from pydicom import dcmread
from pydicom.data import get_testdata_file

from browser import screenshot
from browser.oidc_provider import Provider, running_provider
from integration import AUTH

CLIENT_ID = "nubis-web"
CLIENT_SECRET = "browser-client-secret-0123456789"
AUDIENCE = "nubis-archive"


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    user = {"sub": "alice", "groups": ["pacs-referrers", "staff"], "name": "Alice"}
    with running_provider(
        host="localhost",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        audience=AUDIENCE,
        user=user,
    ) as running:
        yield running


@pytest.fixture(scope="module")
def archive(server_factory, provider: Provider) -> Iterator[object]:  # type: ignore[no-untyped-def]
    server = server_factory(
        "browser-oidc",
        "--set", f"oidc_issuer={provider.issuer}",
        "--set", f"oidc_audience={AUDIENCE}",
        "--set", f"oidc_client_id={CLIENT_ID}",
        "--set", f"oidc_client_secret={CLIENT_SECRET}",
        "--set", "oidc_roles_claim=groups",
        "--set", "oidc_role_map=pacs-referrers=referrer,pacs-radiology=radiologist",
    )  # fmt: skip
    # A study the archive holds, which a referrer without grants must not see.
    DICOMwebClient(server.dicomweb, headers=AUTH).store_instances(
        [dcmread(get_testdata_file("CT_small.dcm"))]  # type: ignore[arg-type]
    )
    yield server


def _fetch(page: Page, path: str) -> dict[str, object]:
    """What the page's own script gets for ``path`` (same origin, the session cookie)."""
    result = page.evaluate(
        """async (path) => {
            const r = await fetch(path, {headers: {accept: 'application/json'}});
            return {status: r.status, body: await r.text()};
        }""",
        path,
    )
    return dict(result)


def test_sign_in_with_the_provider(archive, provider: Provider, page: Page) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{archive.url}/ui/")
    expect(page).to_have_url(f"{archive.url}/ui/login?next=/ui/")
    page.get_by_role("link", name=f"Sign in with {provider.issuer.split('//')[1]}").click()
    page.wait_for_url(f"{archive.url}/ui/")
    expect(page.locator(".topbar .user")).to_have_text("oidc:alice")
    screenshot(page, "oidc-signed-in")

    asked = provider.authorize_requests[-1]
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert asked["state"] and asked["nonce"] and "openid" in asked["scope"].split()
    assert asked["redirect_uri"] == f"{archive.url}/ui/oidc/callback"
    assert provider.token_refusals == []

    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["nubis_session"]["sameSite"] == "Strict"
    assert "nubis_oidc" not in cookies  # the pending sign-in is gone

    # The session is the referrer the provider's token maps to: it sees no study of the
    # archive (none is granted to it), over DICOMweb as in the pages.
    whoami = _fetch(page, "/-/whoami")
    assert json.loads(str(whoami["body"]))["roles"] == ["referrer"]
    studies = _fetch(page, "/dicom-web/studies")
    assert studies["status"] in (200, 204)
    assert json.loads(str(studies["body"]) or "[]") == []
    everything = httpx.get(f"{archive.dicomweb}/studies", headers=AUTH).json()
    assert len(everything) == 1


def test_a_callback_that_this_browser_did_not_start_is_refused(archive) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(
        f"{archive.url}/ui/oidc/callback",
        params={"code": "stolen", "state": "x"},
        headers={"accept": "text/html"},
    )
    assert response.status_code == 400
    assert "no sign-in was started" in response.text
    assert "nubis_session" not in response.headers.get("set-cookie", "")


def test_a_callback_with_another_state_is_refused(archive, provider: Provider) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=archive.url) as browser:
        started = browser.get("/ui/login/oidc", params={"next": "/ui/"})
        assert started.status_code == 303
        assert started.headers["location"].startswith(provider.issuer + "/authorize?")
        pending = started.headers["set-cookie"]
        assert "SameSite=lax" in pending and "HttpOnly" in pending
        answer = browser.get("/ui/oidc/callback", params={"code": "c", "state": "forged"})
        assert answer.status_code == 400
        assert "does not belong" in answer.text


def test_the_provider_refusing_the_code_is_a_failed_sign_in(archive, provider: Provider) -> None:  # type: ignore[no-untyped-def]
    with httpx.Client(base_url=archive.url) as browser:
        started = browser.get("/ui/login/oidc")
        state = dict(
            pair.split("=", 1) for pair in started.headers["location"].split("?", 1)[1].split("&")
        )["state"]
        answer = browser.get(
            "/ui/oidc/callback",
            params={"code": "never-issued", "state": state},
            headers={"accept": "text/html"},
        )
        assert answer.status_code == 401
        assert "refused the sign-in" in answer.text
        assert "nubis_session" not in answer.headers.get("set-cookie", "")
    assert provider.token_refusals[-1] == "invalid_grant"


def test_roles_from_the_access_token_when_configured(server_factory, provider: Provider) -> None:  # type: ignore[no-untyped-def]
    """oidc_browser_token=access_token: the session is what the access token, as an API
    caller's bearer token, stands for (here with a tenant claim); the ID token still proves
    the nonce. Driven with httpx as a browser would follow the pages."""
    server = server_factory(
        "oidc-access-token",
        "--set", f"oidc_issuer={provider.issuer}",
        "--set", f"oidc_audience={AUDIENCE}",
        "--set", f"oidc_client_id={CLIENT_ID}",
        "--set", f"oidc_client_secret={CLIENT_SECRET}",
        "--set", "oidc_roles_claim=groups",
        "--set", "oidc_role_map=pacs-referrers=referrer",
        "--set", "oidc_tenant_claim=site",
        "--set", "oidc_browser_token=access_token",
    )  # fmt: skip
    provider.user["site"] = "clinic-b"
    try:
        with httpx.Client(base_url=server.url) as browser:
            started = browser.get("/ui/login/oidc", params={"next": "/ui/"})
            approval = httpx.get(started.headers["location"])  # the provider's page
            back = re.search(r'href="([^"]+)"', approval.text)
            assert back is not None
            landed = browser.get(html.unescape(back.group(1)), headers={"accept": "text/html"})
            assert landed.status_code == 200 and 'id="continue" ' in landed.text
            whoami = browser.get("/-/whoami").json()
    finally:
        del provider.user["site"]
    assert whoami == {
        "id": "oidc:alice",
        "tenant": "clinic-b",
        "roles": ["referrer"],
        "auth_method": "session-oidc",
    }
