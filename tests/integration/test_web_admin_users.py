"""Admin pages (issue 10): who may open them, CSRF on every form, users and API keys.

Every change goes through nubis.services.accounts, the code ``nubis users`` uses, and leaves a
Security Alert naming the user (PS3.15 A.5.3.11: Security Roles Changed 110136 when what the
user may do changed, User Security Attributes Changed 110137 for its credentials).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.routing import Route

from integration.admin_site import ADMIN_TOKEN, PASSWORD, Site, html, make_site, post, sign_in
from nubis.web.ui.admin import routes

PAGES = [
    "/ui/admin/",
    "/ui/admin/users",
    "/ui/admin/users/rad",
    "/ui/admin/jobs",
    "/ui/admin/storage",
    "/ui/admin/audit",
    "/ui/admin/peers",
]
# Who gets 200 on which page (everyone else 403): admins of the home tenant everything; an
# admin of another tenant its users; auditors the audit log.
ALLOWED = {
    "boss": set(PAGES),
    "otto": {"/ui/admin/", "/ui/admin/users"},
    "eve": {"/ui/admin/audit"},
    "rad": set(),
    "olga": set(),
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = make_site(tmp_path_factory.mktemp("admin-users"))
    yield site
    site.archive.stop()


def _alerts(site: Site, since: int, code: str) -> list[dict]:  # type: ignore[type-arg]
    return [
        r.event_dict
        for r in site.records_since(since)
        if r.event_dict["event_id"]["code"] == "110113"
        and any(t["code"] == code for t in r.event_dict.get("event_types", []))
    ]


def test_signed_out_browsers_are_sent_to_sign_in(site: Site) -> None:
    with site.browser() as client:
        for path in PAGES:
            response = html(client, path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/ui/login?next=/ui/admin/"), path


@pytest.mark.parametrize("user", sorted(ALLOWED))
def test_who_may_open_which_page(site: Site, user: str) -> None:
    with site.browser(user) as client:
        for path in PAGES:
            response = html(client, path)
            expected = 200 if path in ALLOWED[user] else 403
            if user == "otto" and path == "/ui/admin/users/rad":
                expected = 404  # a user of another tenant is absent for it, as a study is
            assert response.status_code == expected, (user, path, response.text[:200])
            if expected == 403:
                # A page for a person, naming why, not JSON.
                assert response.headers["content-type"].startswith("text/html")
                assert "may not" in response.text or "tenant" in response.text


def test_a_refusal_is_recorded(site: Site) -> None:
    before = site.head()
    with site.browser("otto") as client:
        assert html(client, "/ui/admin/jobs").status_code == 403
    refused = _alerts(site, before, "110132")  # Use of Restricted Function
    assert refused and refused[-1]["participants"][0]["user_id"] == "otto"


def test_the_admin_link_is_for_admins_only(site: Site) -> None:
    for user, shown in (("boss", True), ("otto", True), ("rad", False), ("eve", False)):
        with site.browser(user) as client:
            page = client.get("/ui/").text
            assert ('href="/ui/admin/"' in page) is shown, user
            if user == "eve":
                assert 'href="/ui/admin/audit"' in page


def test_pages_carry_no_inline_script_or_style(site: Site) -> None:
    """The CSP forbids inline script and style attributes; a page that relied on them would
    break in the browser. SVG presentation attributes (fill=...) are allowed."""
    with site.browser("boss") as client:
        for path in PAGES:
            page = client.get(path)
            assert page.status_code == 200
            assert "unsafe-inline" not in page.headers["content-security-policy"]
            assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), path
            assert not re.search(r"\sstyle=", page.text), path
            assert not re.search(r"\son[a-z]+=", page.text), path


def _admin_forms() -> list[str]:
    """Every form the admin pages post to, with a path a request can reach."""
    found = []
    for route in routes():
        assert isinstance(route, Route)
        if "POST" in (route.methods or ()):
            found.append(
                route.path.replace("{name}", "rad")
                .replace("{key_id}", "nope")
                .replace("{job_id:int}", "1")
            )
    return found


def test_every_form_needs_the_csrf_token(site: Site) -> None:
    forms = _admin_forms()
    assert len(forms) >= 11
    before = {u.name: u.roles for u in site.archive.users.list_users()}
    with site.browser("boss") as client:
        for path in forms:
            for data in ({}, {"csrf_token": "forged"}):
                response = client.post(
                    path,
                    data={**data, "name": "csrf-victim", "roles": "admin", "confirm": "yes"},
                    headers={"Accept": "text/html"},
                    follow_redirects=False,
                )
                assert response.status_code == 403, (path, data, response.status_code)
                assert "CSRF" in response.text
    assert {u.name: u.roles for u in site.archive.users.list_users()} == before


def test_non_admins_are_refused_every_form(site: Site) -> None:
    with site.browser("rad") as client:
        for path in _admin_forms():
            if path.startswith("/ui/admin/audit"):
                continue  # the audit forms are the auditor's too: below
            response = post(client, path, {"name": "x1", "roles": "admin", "kind": "verify"})
            assert response.status_code == 403, path
    with site.browser("eve") as client:
        assert post(client, "/ui/admin/users", {"name": "x2", "roles": "admin"}).status_code == 403
        assert post(client, "/ui/admin/audit").status_code == 200
    assert site.archive.users.get_user("x1") is None and site.archive.users.get_user("x2") is None


def test_signed_out_forms_go_to_sign_in(site: Site) -> None:
    with site.browser() as client:
        response = client.post("/ui/admin/users", data={"name": "x"}, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/ui/login")


def test_a_user_created_on_the_page_can_sign_in(site: Site) -> None:
    before = site.head()
    with site.browser("boss") as client:
        response = post(
            client,
            "/ui/admin/users",
            {"name": "newbie", "tenant": "default", "roles": ["radiologist", "uploader"],
             "password": "a brand new password", "password_again": "a brand new password"},
        )  # fmt: skip
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/admin/users/newbie?done=added")
        page = client.get(response.headers["location"]).text
        assert "User newbie added." in page and "radiologist" in page
        assert "newbie" in client.get("/ui/admin/users").text
    user = site.archive.users.get_user("newbie")
    assert user is not None and user.roles == {"radiologist", "uploader"}
    with site.client() as browser:
        assert sign_in(browser, "newbie", "a brand new password").status_code == 303
        assert browser.get("/-/whoami").json()["roles"] == ["radiologist", "uploader"]
    added = _alerts(site, before, "110136")
    assert len(added) == 1
    assert added[0]["participants"][0]["user_id"] == "boss"
    assert added[0]["front_door"] == "web"
    assert added[0]["objects"][0]["id"] == "nubis:user/newbie"
    assert "radiologist,uploader" in added[0]["outcome_description"]


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"password": "short", "password_again": "short"}, "at least 12 characters"),
        ({"password": "a long password 1", "password_again": "a long password 2"}, "differ"),
        ({"roles": []}, "at least one role"),
        ({"roles": ["wizard"]}, "unknown role"),
        ({"name": "bad name!"}, "user name"),
        ({"name": "rad"}, "already exists"),
        ({"tenant": "no such/tenant"}, "tenant"),
    ],
)
def test_a_refused_user_is_not_created_and_the_page_says_why(
    site: Site, fields: dict[str, object], why: str
) -> None:
    form = {"name": "refused1", "tenant": "default", "roles": ["referrer"],
            "password": "a long enough password", "password_again": "a long enough password",
            **fields}  # fmt: skip
    before = len(site.archive.users.list_users())
    with site.browser("boss") as client:
        response = post(client, "/ui/admin/users", form)
        assert response.status_code == 400
        assert why in response.text
        # The form comes back as typed, but never with the password.
        assert "a long enough password" not in response.text
    assert len(site.archive.users.list_users()) == before


def test_roles_change_at_once_and_are_recorded(site: Site) -> None:
    site.archive.users.add_user("promo", tenant="default", roles="referrer", password=PASSWORD)
    with site.client() as theirs:
        sign_in(theirs, "promo")
        assert theirs.get("/-/whoami").json()["roles"] == ["referrer"]
        before = site.head()
        with site.browser("boss") as client:
            response = post(client, "/ui/admin/users/promo/roles", {"roles": ["radiologist"]})
            assert response.status_code == 303
        # The session reads the user's row at every request: no sign-in again.
        assert theirs.get("/-/whoami").json()["roles"] == ["radiologist"]
    changed = _alerts(site, before, "110136")
    assert "from referrer to radiologist" in changed[-1]["outcome_description"]


def test_an_admin_cannot_lock_itself_out(site: Site) -> None:
    with site.browser("boss") as client:
        demoted = post(client, "/ui/admin/users/boss/roles", {"roles": ["radiologist"]})
        assert demoted.status_code == 400
        removed = post(client, "/ui/admin/users/boss/remove", {"confirm": "yes"})
        assert removed.status_code == 400
    assert site.archive.users.get_user("boss").roles == {"admin"}  # type: ignore[union-attr]


def test_a_key_is_shown_once_works_and_stops_working_when_revoked(site: Site) -> None:
    before = site.head()
    with site.browser("boss") as client:
        page = post(client, "/ui/admin/users/rad/keys", {"label": "reading room", "days": "30"})
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        key = re.search(r"nbk_[A-Za-z0-9_-]+", page.text)
        assert key is not None
        secret = key.group(0)
        key_id = secret.split("_")[1]
        # Never again: not on the user's page, only its id.
        again = client.get("/ui/admin/users/rad").text
        assert secret not in again and key_id in again
        with site.client() as program:
            who = program.get("/-/whoami", headers={"Authorization": f"Bearer {secret}"})
            assert who.status_code == 200 and who.json()["id"] == "rad"
            revoked = post(client, f"/ui/admin/keys/{key_id}/revoke")
            assert revoked.status_code == 303
            assert f"API key {key_id} revoked" in client.get(revoked.headers["location"]).text
            refused = program.get("/-/whoami", headers={"Authorization": f"Bearer {secret}"})
            assert refused.status_code == 401
        assert post(client, f"/ui/admin/keys/{key_id}/revoke").status_code == 404
    changed = _alerts(site, before, "110137")
    assert [c["outcome_description"] for c in changed] == [
        f"API key {key_id} created for rad",
        f"API key {key_id} revoked",
    ]


def test_setting_a_password_ends_the_users_sessions(site: Site) -> None:
    site.archive.users.add_user("forgetful", tenant="default", roles="referrer", password=PASSWORD)
    with site.browser("forgetful") as theirs:
        assert theirs.get("/ui/", follow_redirects=False).status_code == 200
        with site.browser("boss") as client:
            new = "another long password"
            response = post(
                client,
                "/ui/admin/users/forgetful/password",
                {"password": new, "password_again": new},
            )
            assert response.status_code == 303
        assert theirs.get("/ui/", follow_redirects=False).status_code == 303
    with site.client() as browser:
        assert sign_in(browser, "forgetful", PASSWORD).status_code == 401
        assert sign_in(browser, "forgetful", "another long password").status_code == 303


def test_a_removed_users_session_does_not_come_back_with_a_new_user_of_its_name(
    site: Site,
) -> None:
    site.archive.users.add_user("leaver", tenant="default", roles="radiologist", password=PASSWORD)
    with site.browser("leaver") as theirs:
        with site.browser("boss") as client:
            assert post(client, "/ui/admin/users/leaver/remove").status_code == 400  # unconfirmed
            response = post(client, "/ui/admin/users/leaver/remove", {"confirm": "yes"})
            assert response.status_code == 303
        assert site.archive.users.get_user("leaver") is None
        # Someone else gets the name: the old cookie must not open their account.
        site.archive.users.add_user("leaver", tenant="default", roles="admin", password="x" * 12)
        assert theirs.get("/ui/", follow_redirects=False).status_code == 303
        assert theirs.get("/-/whoami").status_code == 401


def test_a_tenant_admin_manages_its_own_tenant_only(site: Site) -> None:
    before = site.head()
    with site.browser("otto") as client:
        listed = client.get("/ui/admin/users").text
        assert "olga" in listed and "rad" not in re.findall(r'data-user="([^"]+)"', listed)
        assert html(client, "/ui/admin/users/rad").status_code == 404  # absent, not forbidden
        assert post(client, "/ui/admin/users/rad/roles", {"roles": "admin"}).status_code == 404
        # Its own tenant, whatever the form says: another tenant needs OPERATE (recorded).
        response = post(
            client,
            "/ui/admin/users",
            {"name": "sneaky", "tenant": "default", "roles": "admin",
             "password": PASSWORD, "password_again": PASSWORD},
        )  # fmt: skip
        assert response.status_code == 403
        made = post(
            client,
            "/ui/admin/users",
            {"name": "otto-2", "tenant": "other", "roles": "radiologist"},
        )
        assert made.status_code == 303
    assert site.archive.users.get_user("sneaky") is None
    assert site.archive.users.get_user("otto-2").tenant == "other"  # type: ignore[union-attr]
    assert site.archive.users.get_user("rad").roles == {"radiologist"}  # type: ignore[union-attr]
    assert _alerts(site, before, "110132")  # the cross-tenant attempt


def test_home_admins_manage_every_tenant(site: Site) -> None:
    with site.browser("boss") as client:
        listed = client.get("/ui/admin/users").text
        assert {"olga", "otto", "rad"} <= set(re.findall(r'data-user="([^"]+)"', listed))
        response = post(
            client,
            "/ui/admin/users",
            {"name": "far-away", "tenant": "clinic-z", "roles": "radiologist"},
        )
        assert response.status_code == 303
    assert site.archive.users.get_user("far-away").tenant == "clinic-z"  # type: ignore[union-attr]


def test_bearer_keys_are_programs_not_forms(site: Site) -> None:
    """An API key has no session, so no CSRF token: it is the key itself that proves intent."""
    with site.client() as program:
        response = program.post(
            "/ui/admin/users",
            data={"name": "by-key", "roles": "referrer"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            follow_redirects=False,
        )
        assert response.status_code == 303
    assert site.archive.users.get_user("by-key") is not None
