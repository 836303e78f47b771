"""Share links and user grants in the web face (nubis.services.sharing does the work).

- ``GET /share/{token}`` (public): what the link is (who shared it, until when), a PIN field if
  it has one, and an "Open the study" button. Nothing of the study is shown before it is
  opened, and a GET opens nothing: mail scanners and link previews fetch links too.
- ``POST /share/{token}``: the button. Checks the PIN (throttled), starts the link's session
  and sends the browser to ``/share/``, a URL without the token, so the token leaves the
  address bar (and never reaches a Referer: no-referrer everywhere). The session cookie is
  SameSite=Strict: set in answer to a link clicked in an e-mail (a cross-site navigation) it
  would not be sent on the redirect that ends that same navigation, so the entry page answers
  200 and the session starts from a same-site form submission instead. The form is
  protected like the sign-in form (a double-submitted SameSite=Strict cookie), so another
  site cannot swap a visitor's session for a link of its choosing.
- ``GET /share/``: the link's landing page in its session: the note, the shared series, each
  opening in the built-in viewer (``/ui/studies/{study}/view``), all read through the
  services with the link's principal (recorded like any read).
- A **de-identified** link's session reads nothing identified: its landing page, its viewer
  (``/share/studies/{remapped study}/view``, reading ``/share/dicom-web``) and its ZIP
  (``/share/studies/{remapped study}/download``) all go through the research view
  (``services.research_view``) with the link's profile and key; the identified pages and
  ``/dicom-web`` refuse its role (docs/research.md).
- ``/ui/studies/{study}/share``: make a link (shown once, with a copy button), the study's
  links, and sharing the study with a user of the tenant (a grant). ``/ui/shares``: one's own
  links (an admin: the tenant's), each revocable.
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
import secrets
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from nubis.deid.profile import default_profile_text
from nubis.errors import BadRequest, Forbidden, NotFound, TooManyRequests, Unauthorized
from nubis.model.query import Level, Query, tag_hex
from nubis.security.policy import Action, Principal
from nubis.services.research import check_name
from nubis.services.sharing import SHARE_PREFIX, SeriesSummary, ShareLink
from nubis.web.dicomweb.common import check_uid
from nubis.web.ui.common import (
    archive_of,
    bounded_form,
    clear_session_cookie,
    field,
    safe_next,
    secure,
    session_of,
    set_session_cookie,
    signed_in,
    ui_form,
)
from nubis.web.ui.render import page

_OPEN_CSRF_COOKIE = "nubis_share_csrf"
_LINK_ID = re.compile(r"[0-9a-f]{16}")
_STUDY_FIELDS = ("PatientName", "PatientID", "StudyDate", "StudyDescription", "AccessionNumber")


def _when(ms: int | None) -> str:
    if ms is None:
        return "never"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _peer(request: Request) -> str | None:
    return request.client.host if request.client else None


def _viewer(study_uid: str) -> str:
    return f"/ui/studies/{study_uid}/view"


def _link_view(link: ShareLink) -> dict[str, Any]:
    return {
        "id": link.id,
        "study_uid": link.study_uid,
        "series": len(link.series_uids),
        "created_by": link.created_by,
        "created": _when(link.created_at),
        "expires": _when(link.expires_at),
        "created_short": _when(link.created_at).removesuffix(" UTC"),
        "expires_short": _when(link.expires_at).removesuffix(" UTC"),
        "access": ("view and download" if link.can_download else "view only")
        + (", de-identified" if link.deidentified else ""),
        "pin": link.has_pin,
        "note": link.note,
        "opens": link.open_count,
        "last_opened": _when(link.last_opened_at),
        "state": link.state(),
    }


def _study_summary(request: Request, who: Principal, study_uid: str) -> dict[str, str]:
    """The study's patient and description, read through QueryService (recorded)."""
    from pydicom.datadict import tag_for_keyword

    tags = {name: tag_for_keyword(name) for name in _STUDY_FIELDS}
    query = Query(
        level=Level.STUDY,
        study_uid=study_uid,
        include=frozenset(t for t in tags.values() if t is not None),
        limit=1,
    )
    found = archive_of(request).query.search(who, query, text=f"StudyInstanceUID={study_uid}")
    if not found.items:
        raise NotFound(f"no study {study_uid}")
    item = found.items[0]
    summary = {}
    for name, tag in tags.items():
        values = (item.get(tag_hex(tag)) or {}).get("Value") or [] if tag is not None else []
        value = values[0] if values else ""
        if isinstance(value, dict):  # a person name
            value = str(value.get("Alphabetic", "")).replace("^", " ").strip()
        summary[name] = str(value)
    return summary


# ---------------------------------------------------------------------- the recipient's side
def _entry_page(
    request: Request,
    link: ShareLink,
    *,
    error: str | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    token = secrets.token_urlsafe(24)
    signed_in_as = request.scope.get("nubis.principal")
    response = page(
        request,
        "share_entry.html",
        {
            "link": _link_view(link),
            "has_pin": link.has_pin,
            "open_csrf": token,
            "error": error,
            "signed_in_as": signed_in_as.id if isinstance(signed_in_as, Principal) else None,
            "action": request.url.path,
        },
        status_code=status_code,
        headers=headers,
    )
    response.set_cookie(
        _OPEN_CSRF_COOKIE,
        token,
        path="/share/",
        secure=secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


async def share_entry(request: Request) -> Response:
    archive = archive_of(request)
    link = await run_in_threadpool(archive.sharing.peek, request.path_params["token"])
    return _entry_page(request, link)


async def share_open(request: Request) -> Response:
    archive = archive_of(request)
    token = request.path_params["token"]
    form = await bounded_form(request)
    cookie = request.cookies.get(_OPEN_CSRF_COOKIE, "")
    presented = form.get("open_csrf")
    if not cookie or not isinstance(presented, str) or not hmac.compare_digest(cookie, presented):
        raise Forbidden("this page expired or came from another site: open the link again")
    pin = field(form, "pin", max_length=64, required=False)
    peer = _peer(request)
    try:
        opened = await run_in_threadpool(archive.sharing.open, token, pin=pin, peer=peer)
    except (Unauthorized, TooManyRequests) as exc:
        link = await run_in_threadpool(archive.sharing.peek, token)
        retry = {"retry-after": str(exc.retry_after)} if exc.retry_after else None
        return _entry_page(
            request, link, error=exc.reason, status_code=exc.http_status, headers=retry
        )
    previous = session_of(request)
    if previous is not None:
        # This browser was signed in (as someone, or another link): that session ends here
        # rather than lingering without its cookie.
        await run_in_threadpool(archive.sessions.end, previous.token_hash)
    response = RedirectResponse("/share/", 303)
    clear_session_cookie(response, request)
    lifetime = max(1, (opened.link.expires_at - time.time_ns() // 1_000_000) // 1000)
    max_age = min(lifetime, archive.settings.session_max_hours * 3600)
    set_session_cookie(response, request, opened.session_token, max_age=max_age)
    response.delete_cookie(_OPEN_CSRF_COOKIE, path="/share/")
    return response


def _share_principal(request: Request) -> Principal:
    who = request.scope.get("nubis.principal")
    if not isinstance(who, Principal) or not who.id.startswith(SHARE_PREFIX):
        raise NotFound(
            "no shared study is open in this browser: open the link you were sent (again)"
        )
    return who


def _json_text(item: dict[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    value = values[0]
    if isinstance(value, dict):  # a person name
        value = str(value.get("Alphabetic", "")).replace("^", " ").strip()
    return str(value)


def _deidentified_home(request: Request, who: Principal) -> dict[str, Any]:
    """What a de-identified link's landing page shows, all read through the research view
    (the study found by the link's grant, its UIDs remapped, the patient a pseudonym)."""
    view = archive_of(request).research_view
    fields = [("includefield", name) for name in _STUDY_FIELDS]
    studies, _, _ = view.search(who, None, Level.STUDY, fields, max_limit=1, text="shared study")
    if not studies:
        raise NotFound("the shared study is no longer there")
    study = {name: _json_text(studies[0], _tag(name)) for name in _STUDY_FIELDS}
    remapped = _json_text(studies[0], "0020000D")
    found, _, _ = view.search(
        who,
        None,
        Level.SERIES,
        [("includefield", "SeriesDescription"), ("includefield", "NumberOfSeriesRelatedInstances")],
        study_uid=remapped,
        max_limit=10000,
        text="series of the shared study",
    )
    series = [
        SeriesSummary(
            series_uid=_json_text(item, "0020000E"),
            modality=_json_text(item, "00080060"),
            number=int(_json_text(item, "00200011")) if _json_text(item, "00200011") else None,
            description=_json_text(item, "0008103E"),
            instances=int(_json_text(item, "00201209") or 0),
            patient_id=None,
        )
        for item in found
    ]
    return {
        "study": study,
        "series": series,
        "viewer": f"/share/studies/{remapped}/view",
        "download": f"/share/studies/{remapped}/download",
    }


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None
    return tag_hex(tag)


async def share_home(request: Request) -> Response:
    """The landing page of a link's session (``/share/``, no token in the URL)."""
    who = _share_principal(request)
    archive = archive_of(request)

    def read() -> tuple[ShareLink, dict[str, Any]]:
        link = archive.sharing.link_of(who)
        if link.deidentified:
            return link, _deidentified_home(request, who)
        series = archive.sharing.series_of(who, link.study_uid)
        study = _study_summary(request, who, link.study_uid)
        # A link's recipient downloads from the study page; a de-identified one's from here.
        shown = {"study": study, "series": series, "viewer": _viewer(link.study_uid)}
        return link, {**shown, "download": None}

    link, shown = await run_in_threadpool(read)
    if not link.can_download:
        shown["download"] = None
    return page(request, "share_home.html", {"link": _link_view(link), **shown})


async def share_download(request: Request) -> Response:
    """A de-identified link's study as a ZIP of de-identified objects, named by remapped
    UIDs (``{series}/{instance}.dcm``), through the research view (a link without download:
    403)."""
    who = _share_principal(request)
    archive = archive_of(request)
    study = check_uid(str(request.path_params["study"]), "Study Instance UID")

    def open_zip() -> Any:
        files = archive.research_view.instances(
            who, None, study, native=False, export="ZIP download"
        )
        return archive.export.deidentified_zip(files)

    chunks = await run_in_threadpool(open_zip)
    return StreamingResponse(
        chunks,
        media_type="application/zip",
        headers={"content-disposition": f'attachment; filename="{study}.zip"'},
    )


# ---------------------------------------------------------------------- the sharer's side
def _is_admin(request: Request, who: Principal) -> bool:
    return archive_of(request).guard.permits(who, Action.ADMIN)


def _study_uid(request: Request) -> str:
    return check_uid(str(request.path_params["study"]), "Study Instance UID")


def _share_page(
    request: Request,
    who: Principal,
    study_uid: str,
    *,
    created: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response:
    archive = archive_of(request)
    settings = archive.settings
    sharing = archive.sharing
    # The listing first: it asks whether the caller may share at all, which a caller who may
    # not is told (403) before anything is looked up.
    links = [_link_view(link) for link in sharing.list(who, study_uid=study_uid)]
    study = _study_summary(request, who, study_uid)
    series = sharing.series_of(who, study_uid)
    return page(
        request,
        "share_create.html",
        {
            "study_uid": study_uid,
            "study": study,
            "series": series,
            "links": links,
            "users": sharing.grantable_users(who),
            "granted": sharing.user_grants(who, study_uid),
            "default_days": settings.share_default_days,
            "max_days": settings.share_max_days,
            "created": created,
            "viewer": _viewer(study_uid),
        },
        status_code=status_code,
    )


async def share_form(request: Request) -> Response:
    who = signed_in(request)
    study_uid = _study_uid(request)
    return await run_in_threadpool(_share_page, request, who, study_uid)


async def share_create(request: Request) -> Response:
    who = signed_in(request)
    study_uid = _study_uid(request)
    form = await ui_form(request)
    archive = archive_of(request)
    days_text = field(form, "days", max_length=6, required=False)
    if days_text and not days_text.isdigit():
        raise BadRequest("days must be a whole number of days")
    series = [v for v in form.getlist("series") if isinstance(v, str)]
    for uid in series:
        check_uid(uid, "Series Instance UID")
    access = field(form, "access", max_length=16, required=False) or "view"
    if access not in ("view", "download"):
        raise BadRequest("access is view or download")
    deidentify = field(form, "deidentify", max_length=16, required=False)
    if deidentify not in ("", "profile", "project"):
        raise BadRequest("deidentify is empty, profile or project")
    project = field(form, "project", max_length=64, required=False)
    if deidentify == "project":
        check_name(project)

    def create() -> Response:
        link, token = archive.sharing.create(
            who,
            study_uid,
            series_uids=series,
            days=int(days_text) if days_text else None,
            pin=field(form, "pin", max_length=64, required=False),
            can_download=access == "download",
            note=field(form, "note", max_length=1000, required=False),
            deid_project=project if deidentify == "project" else None,
            deid_profile_toml=default_profile_text() if deidentify == "profile" else None,
        )
        url = f"{str(request.base_url).rstrip('/')}/share/{token}"
        created = {"url": url, "link": _link_view(link)}
        return _share_page(request, who, study_uid, created=created, status_code=201)

    return await run_in_threadpool(create)


async def share_with_user(request: Request) -> Response:
    who = signed_in(request)
    study_uid = _study_uid(request)
    form = await ui_form(request)
    user = field(form, "user", max_length=128)
    withdraw = field(form, "withdraw", max_length=8, required=False) == "yes"
    sharing = archive_of(request).sharing
    change = sharing.withdraw_user if withdraw else sharing.grant_user
    await run_in_threadpool(change, who, study_uid, user)
    return RedirectResponse(f"/ui/studies/{study_uid}/share#users", 303)


async def shares_list(request: Request) -> Response:
    who = signed_in(request)
    archive = archive_of(request)
    links = await run_in_threadpool(archive.sharing.list, who)
    return page(
        request,
        "shares.html",
        # Whose links these are is the service's decision; this only words the heading.
        {"links": [_link_view(link) for link in links], "everyone": _is_admin(request, who)},
    )


async def share_revoke(request: Request) -> Response:
    who = signed_in(request)
    link_id = str(request.path_params["link"])
    form = await ui_form(request)
    if not _LINK_ID.fullmatch(link_id):
        raise NotFound(f"no share link {link_id[:40]}")
    await run_in_threadpool(archive_of(request).sharing.revoke, who, link_id)
    return RedirectResponse(safe_next(form.get("next"), "/ui/shares"), 303)


def routes() -> list[Route]:
    return [
        Route("/share/", share_home, methods=["GET"]),
        Route("/share/studies/{study}/download", share_download, methods=["GET"]),
        Route("/share/{token}", share_entry, methods=["GET"]),
        Route("/share/{token}", share_open, methods=["POST"]),
        Route("/ui/shares", shares_list, methods=["GET"]),
        Route("/ui/shares/{link}/revoke", share_revoke, methods=["POST"]),
        Route("/ui/studies/{study}/share", share_form, methods=["GET"]),
        Route("/ui/studies/{study}/share", share_create, methods=["POST"]),
        Route("/ui/studies/{study}/share/users", share_with_user, methods=["POST"]),
    ]


__all__ = ["routes"]
