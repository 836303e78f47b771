"""Share links and user grants (issue 10): making, opening, PIN, expiry, revocation, records.

What a link's session may read, route by route, is in test_share_scope.py and in the
authorization matrix (test_authz.py); a real browser arriving from another site is in
tests/browser/test_shares.py.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from integration.shares_site import (
    Site,
    create_link,
    csrf,
    make_site,
    open_link,
    opened,
    sign_in,
)
from nubis.errors import BadRequest, Forbidden
from nubis.index.schema import grants, share_links, web_sessions
from nubis.security.policy import Principal, parse_roles
from nubis.security.sessions import token_hash


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    yield from make_site(tmp_path_factory.mktemp("shares"))


def _records(site: Site, after: int) -> list[dict[str, Any]]:
    return [r.event_dict for r in site.archive.audit.scan(after, 100000)]


def _rows(site: Site, table: Any, *where: Any) -> list[Any]:
    with site.archive.index.reading() as conn:
        return list(conn.execute(select(table).where(*where)).all())


def _studies_seen(client: Any) -> set[str]:
    response = client.get("/dicom-web/studies")
    assert response.status_code == 200, response.text
    return {item["0020000D"]["Value"][0] for item in response.json()}


def test_a_token_is_long_random_and_stored_only_as_its_hash(site: Site) -> None:
    shared = site.studies["SHARED"].study
    with site.client() as alice:
        sign_in(alice, "alice")
        first, link_id = create_link(alice, shared)
        second, _ = create_link(alice, shared)
    assert len(first) == 43 and first != second  # 256 bits, URL-safe base64
    (row,) = _rows(site, share_links, share_links.c.id == link_id)
    assert row.token_hash == hashlib.sha256(first.encode()).hexdigest()
    assert first not in repr(tuple(row))
    # Nowhere in the index's files either (the database, its WAL).
    for path in Path(site.archive.settings.data_dir).glob("index.sqlite*"):
        assert first.encode() not in path.read_bytes(), path.name
    # The page shows it once: the study's share page lists the link without its token.
    with site.client() as alice:
        sign_in(alice, "alice")
        again = alice.get(f"/ui/studies/{shared}/share")
        assert again.status_code == 200 and link_id in again.text and first not in again.text


def test_opening_a_link_starts_a_session_off_the_tokens_url(site: Site) -> None:
    """The entry page (200) opens nothing; its button starts a session and sends the browser
    to /share/, a URL without the token; the cookie is HttpOnly and SameSite=Strict."""
    shared = site.studies["SHARED"]
    with site.client() as alice:
        sign_in(alice, "alice")
        token, link_id = create_link(alice, shared.study, note="Knee, left: see series 2")
    with site.client() as guest:
        before = _rows(site, share_links, share_links.c.id == link_id)[0].open_count
        entry = guest.get(f"/share/{token}")
        assert entry.status_code == 200
        assert "alice" in entry.text and "Knee" not in entry.text  # the note after opening
        assert _rows(site, share_links, share_links.c.id == link_id)[0].open_count == before
        response = open_link(guest, token)
        assert response.status_code == 303 and response.headers["location"] == "/share/"
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("nubis_session=")
        )
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        home = guest.get("/share/")
        assert home.status_code == 200
        assert token not in home.text
        assert "Knee, left: see series 2" in home.text
        assert f"/ui/studies/{shared.study}/view" in home.text
        for series in shared.series:
            assert f"/ui/studies/{shared.study}/view?series={series}" in home.text
        who = guest.get("/-/whoami").json()
        assert who["id"] == f"share:{link_id}" and who["roles"] == ["share-view"]
        assert _studies_seen(guest) == {shared.study}
    row = _rows(site, share_links, share_links.c.id == link_id)[0]
    assert row.open_count == before + 1 and row.last_opened_at is not None


def test_the_open_form_is_refused_from_another_site(site: Site) -> None:
    """Without the entry page's own cookie (a form posted by another site), nothing opens."""
    with site.client() as alice:
        sign_in(alice, "alice")
        token, _ = create_link(alice, site.studies["SHARED"].study)
    with site.client() as guest:
        forged = guest.post(f"/share/{token}", data={"open_csrf": "x" * 32}, follow_redirects=False)
        assert forged.status_code == 403
        assert "nubis_session" not in forged.headers.get("set-cookie", "")


def test_a_signed_in_browser_opening_a_link_is_signed_out(site: Site) -> None:
    with site.client() as alice:
        sign_in(alice, "alice")
        token, link_id = create_link(alice, site.studies["SHARED"].study)
        own = alice.cookies["nubis_session"]
        entry = alice.get(f"/share/{token}")
        assert "signs it out" in entry.text
        assert open_link(alice, token).status_code == 303
        assert site.archive.sessions.find(own) is None
        assert alice.get("/-/whoami").json()["id"] == f"share:{link_id}"


def test_who_may_make_links(site: Site) -> None:
    """Roles that may share (radiologist, admin); a referrer may not pass on what it was
    granted, an uploader may not read: both 403, whatever the study."""
    shared, foreign = site.studies["SHARED"].study, site.studies["FOREIGN"].study
    for user in ("rita", "uma"):
        with site.client() as client:
            sign_in(client, user)
            assert client.get(f"/ui/studies/{shared}/share").status_code == 403
            response = client.post(
                f"/ui/studies/{shared}/share", data={"csrf_token": csrf(client), "days": "7"}
            )
            assert response.status_code == 403
            assert client.get("/ui/shares").status_code == 403
    with site.client() as alice:
        sign_in(alice, "alice")
        assert alice.get(f"/ui/studies/{foreign}/share").status_code == 404
        token = csrf(alice)
        for days, status in (("31", 400), ("0", 400), ("x", 400), ("30", 201)):
            response = alice.post(
                f"/ui/studies/{shared}/share", data={"csrf_token": token, "days": days}
            )
            assert response.status_code == status, (days, response.text)
        stranger = site.studies["OTHER"].series[0]
        response = alice.post(
            f"/ui/studies/{shared}/share",
            data={"csrf_token": token, "days": "1", "series": stranger},
        )
        assert response.status_code == 400 and "not a series of study" in response.text
        response = alice.post(
            f"/ui/studies/{shared}/share", data={"csrf_token": token, "days": "1", "pin": "12"}
        )
        assert response.status_code == 400 and "PIN" in response.text
        # The form's CSRF token is required.
        response = alice.post(f"/ui/studies/{shared}/share", data={"days": "1"})
        assert response.status_code == 403


def test_the_internal_roles_are_no_one_elses(site: Site) -> None:
    """share-view and share-download are held by link sessions only: not by a user, not by
    a setting (parse_roles), not from an OIDC token's claim."""
    for role in ("share-view", "share-download"):
        with pytest.raises(ValueError, match="unknown role"):
            parse_roles(role)
        with pytest.raises(ValueError, match="unknown role"):
            site.archive.users.add_user(f"x-{role}", roles=role)
    from nubis.security.authn import OidcVerifier

    verifier = OidcVerifier("https://idp.test", "nubis", algorithms=["RS256"])
    assert verifier._roles({"roles": ["share-download", "referrer"]}) == {"referrer"}


def test_a_pin_is_asked_checked_and_throttled(site: Site) -> None:
    shared = site.studies["SHARED"].study
    with site.client() as alice:
        sign_in(alice, "alice")
        token, link_id = create_link(alice, shared, pin="4711")
    (row,) = _rows(site, share_links, share_links.c.id == link_id)
    assert row.pin_hash.startswith("$argon2id$") and "4711" not in row.pin_hash
    after = site.archive.audit.head()[0]
    with site.client() as guest:
        assert 'name="pin"' in guest.get(f"/share/{token}").text
        missing = open_link(guest, token)
        assert missing.status_code == 401 and "needs its PIN" in missing.text
        for _ in range(3):  # login_max_failures_per_user = 3
            wrong = open_link(guest, token, pin="0000")
            assert wrong.status_code == 401 and "wrong PIN" in wrong.text
        locked = open_link(guest, token, pin="4711")
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
        assert "nubis_session" not in guest.cookies
    records = _records(site, after)
    refused = [
        r
        for r in records
        if r["event_id"]["code"] == "110114"
        and r["outcome"] == 4
        and r["participants"][0]["user_id"] == f"share:{link_id}"
    ]
    assert len(refused) == 3
    assert refused[0]["participants"][0]["network_access_point"] == "testclient"
    assert any(
        r["event_id"]["code"] == "110113" and f"share:{link_id}" in r.get("outcome_description", "")
        for r in records
    ), "the lockout is not recorded"
    # Another link with a PIN opens with the right one.
    with site.client() as alice:
        sign_in(alice, "alice")
        token, link_id = create_link(alice, shared, pin="271828")
    with site.client() as guest:
        assert open_link(guest, token, pin="271828").status_code == 303
        assert guest.get("/-/whoami").json()["id"] == f"share:{link_id}"


def test_every_open_is_recorded(site: Site) -> None:
    """Who (the link's principal and the user who made it), from which address, which study;
    and the reads of the session are recorded as that principal's."""
    shared = site.studies["SHARED"]
    with site.client() as alice:
        sign_in(alice, "alice")
        token, link_id = create_link(alice, shared.study)
    after = site.archive.audit.head()[0]
    guest = opened(site, token)
    with guest:
        assert guest.get(f"/dicom-web/studies/{shared.study}/metadata").status_code == 200
    records = _records(site, after)
    (opening,) = [
        r
        for r in records
        if r["event_id"]["code"] == "110114"
        and r["participants"][0]["user_id"] == f"share:{link_id}"
    ]
    assert opening["outcome"] == 0 and opening["event_types"][0]["code"] == "110122"
    first, creator = opening["participants"]
    assert first["requestor"] and first["network_access_point"] == "testclient"
    assert creator["user_id"] == "alice" and not creator.get("requestor")
    assert [o["id"] for o in opening["objects"]] == [shared.study]
    assert opening["front_door"] == "web"
    reads = [
        r
        for r in records
        if r["event_id"]["code"] == "110103"
        and r["participants"][0]["user_id"] == f"share:{link_id}"
    ]
    assert reads and shared.study in [o["id"] for o in reads[0]["objects"]]
    # Making the link was recorded too, naming the study and its patient.
    made = [
        r
        for r in _records(site, 0)
        if r["event_id"]["code"] == "110113"
        and f"share link {link_id} made" in r.get("outcome_description", "")
    ]
    assert made and {"SH-1", shared.study} <= {o["id"] for o in made[0]["objects"]}


def test_an_expired_link_opens_nothing_and_its_session_ends_with_it(site: Site) -> None:
    shared = site.studies["SHARED"].study
    with site.client() as alice:
        sign_in(alice, "alice")
        token, link_id = create_link(alice, shared, days="1")
    soon = time.time_ns() // 1_000_000 + 60_000
    site.archive.index.write(
        lambda conn: conn.execute(
            update(share_links).where(share_links.c.id == link_id).values(expires_at=soon)
        )
    )
    guest = opened(site, token)
    # The session ends when the link does (before session_max_hours).
    (session,) = _rows(site, web_sessions, web_sessions.c.subject == f"share:{link_id}")
    assert session.expires_at == soon
    past = soon - 3_600_000
    site.archive.index.write(
        lambda conn: (
            conn.execute(
                update(share_links).where(share_links.c.id == link_id).values(expires_at=past)
            ),
            conn.execute(
                update(web_sessions)
                .where(web_sessions.c.subject == f"share:{link_id}")
                .values(expires_at=past)
            ),
        )
    )
    with guest:
        assert guest.get(f"/dicom-web/studies/{shared}/metadata").status_code == 401
        assert guest.get("/share/", headers={"accept": "text/html"}).status_code == 404
        entry = guest.get(f"/share/{token}", headers={"accept": "text/html"})
        assert entry.status_code == 404 and "expired" in entry.text
    # Its grant goes when the next link is made.
    assert _rows(site, grants, grants.c.subject == f"share:{link_id}")
    with site.client() as alice:
        sign_in(alice, "alice")
        create_link(alice, shared)
    assert not _rows(site, grants, grants.c.subject == f"share:{link_id}")
    with site.client() as alice:
        sign_in(alice, "alice")
        listing = alice.get("/ui/shares").text
        assert re.search(rf'data-link="{link_id}">\s*<td><span class="badge warn">expired', listing)


def test_revoking_ends_the_links_sessions_at_once(site: Site) -> None:
    shared = site.studies["SHARED"].study
    with site.client() as alice:
        sign_in(alice, "alice")
        token, link_id = create_link(alice, shared)
    first, second = opened(site, token), opened(site, token)
    url = f"/dicom-web/studies/{shared}/metadata"
    assert first.get(url).status_code == 200 and second.get(url).status_code == 200
    # Not by another radiologist (not found, as if absent), nor by a referrer (403).
    with site.client() as bob:
        sign_in(bob, "bob")
        refused = bob.post(f"/ui/shares/{link_id}/revoke", data={"csrf_token": csrf(bob)})
        assert refused.status_code == 404
    with site.client() as rita:
        sign_in(rita, "rita")
        refused = rita.post(f"/ui/shares/{link_id}/revoke", data={"csrf_token": csrf(rita)})
        assert refused.status_code == 403
    assert first.get(url).status_code == 200
    after = site.archive.audit.head()[0]
    with site.client() as alice:
        sign_in(alice, "alice")
        done = alice.post(
            f"/ui/shares/{link_id}/revoke",
            data={"csrf_token": csrf(alice), "next": "/ui/shares"},
            follow_redirects=False,
        )
        assert done.status_code == 303 and done.headers["location"] == "/ui/shares"
    for guest in (first, second):
        assert guest.get(url).status_code == 401
        assert guest.get("/dicom-web/studies").status_code == 401
    assert not _rows(site, web_sessions, web_sessions.c.subject == f"share:{link_id}")
    assert not _rows(site, grants, grants.c.subject == f"share:{link_id}")
    with site.client() as guest:
        entry = guest.get(f"/share/{token}", headers={"accept": "text/html"})
        assert entry.status_code == 404 and "revoked" in entry.text
    assert any(
        f"share link {link_id} revoked" in r.get("outcome_description", "")
        for r in _records(site, after)
    )
    first.close()
    second.close()


def test_an_admin_lists_and_revokes_the_tenants_links(site: Site) -> None:
    shared = site.studies["SHARED"].study
    with site.client() as alice:
        sign_in(alice, "alice")
        _, alices = create_link(alice, shared)
    with site.client() as bob:
        sign_in(bob, "bob")
        _, bobs = create_link(bob, shared)
        mine = bob.get("/ui/shares").text
        assert bobs in mine and alices not in mine
    with site.client() as otto:  # a radiologist of tenant "other"
        sign_in(otto, "otto")
        assert alices not in otto.get("/ui/shares").text
        gone = otto.post(f"/ui/shares/{alices}/revoke", data={"csrf_token": csrf(otto)})
        assert gone.status_code == 404
    with site.client() as ada:
        sign_in(ada, "ada")
        everything = ada.get("/ui/shares").text
        assert alices in everything and bobs in everything
        done = ada.post(
            f"/ui/shares/{alices}/revoke",
            data={"csrf_token": csrf(ada)},
            follow_redirects=False,
        )
        assert done.status_code == 303
    (row,) = _rows(site, share_links, share_links.c.id == alices)
    assert row.revoked_by == "ada" and row.revoked_at is not None


def test_sharing_a_study_with_a_user(site: Site) -> None:
    """A radiologist grants a referrer of the tenant one study from its share page; the
    referrer then finds it over DICOMweb; withdrawn, it is gone. Recorded both times."""
    shared, other = site.studies["SHARED"].study, site.studies["OTHER"].study
    ref2 = {"Authorization": f"Bearer {site.keys['ref2']}"}
    after = site.archive.audit.head()[0]
    with site.client() as client:
        assert other not in {s for s in _seen(client, ref2)}
        sign_in(client, "alice")
        page = client.get(f"/ui/studies/{other}/share").text
        assert '<option value="ref2">' in page and '<option value="bob">' not in page
        done = client.post(
            f"/ui/studies/{other}/share/users",
            data={"csrf_token": csrf(client), "user": "ref2"},
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert other in _seen(client, ref2) and shared not in _seen(client, ref2)
        assert "ref2" in client.get(f"/ui/studies/{other}/share").text
        for user, status in (("bob", 400), ("nobody", 404), ("oadmin", 404)):
            refused = client.post(
                f"/ui/studies/{other}/share/users",
                data={"csrf_token": csrf(client), "user": user},
            )
            assert refused.status_code == status, (user, refused.text)
        withdrawn = client.post(
            f"/ui/studies/{other}/share/users",
            data={"csrf_token": csrf(client), "user": "ref2", "withdraw": "yes"},
            follow_redirects=False,
        )
        assert withdrawn.status_code == 303
        assert other not in _seen(client, ref2)
    with site.client() as rita:
        sign_in(rita, "rita")
        refused = rita.post(
            f"/ui/studies/{other}/share/users", data={"csrf_token": csrf(rita), "user": "ref2"}
        )
        assert refused.status_code == 403
    descriptions = [r.get("outcome_description", "") for r in _records(site, after)]
    assert f"ref2 granted study {other}" in descriptions
    assert f"grant of study {other} to ref2 withdrawn" in descriptions


def _seen(client: Any, headers: dict[str, str]) -> set[str]:
    response = client.get("/dicom-web/studies", headers=headers)
    assert response.status_code == 200
    return {item["0020000D"]["Value"][0] for item in response.json()}


def test_the_service_refuses_what_the_pages_refuse(site: Site) -> None:
    """The same rules without the web face: the Guard decides, not the pages."""
    sharing = site.archive.sharing
    shared = site.studies["SHARED"].study
    rita = Principal("rita", "default", frozenset({"referrer"}))
    with pytest.raises(Forbidden):
        sharing.create(rita, shared)
    with pytest.raises(Forbidden):
        sharing.list(rita)
    alice = Principal("alice", "default", frozenset({"radiologist"}))
    with pytest.raises(BadRequest):
        sharing.create(alice, shared, days=site.archive.settings.share_max_days + 1)
    link, token = sharing.create(alice, shared, series_uids=[site.studies["SHARED"].series[1]])
    assert link.series_uids == (site.studies["SHARED"].series[1],)
    assert sharing.peek(token).id == link.id
    assert token_hash(token) != token
