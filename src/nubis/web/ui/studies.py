"""The study browser at ``/ui/``: search, sort and page through the studies a person may see.

Every page is one QIDO-RS study search through ``QueryService`` with the browser's principal
(scope and audit record as for ``GET /dicom-web/studies``), ordered along an index
(``Query.order``), one row more than a page to know whether a next page exists; no count of
all matches, which would cost a scan of every match. How the filters travel without putting
patient data in URLs is in nubis.web.ui.study_search.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from nubis.errors import BadRequest, Forbidden
from nubis.web.ui import display
from nubis.web.ui.common import archive_of, session_of, signed_in, ui_form
from nubis.web.ui.render import page
from nubis.web.ui.study_search import PAGE_SIZE, SearchView, StudyFilters, seal_filters

__all__ = ["StudyRow", "root", "routes"]

_STUDY_DESCRIPTION = 0x00081030
# Notices a redirect may ask the list to show (a key, never free text from the URL).
_NOTICES = {"deleted": "The study was deleted."}
# Modalities offered in the search form (any other can be typed: ModalitiesInStudy).
MODALITIES = ("CT", "MR", "CR", "DX", "US", "MG", "PT", "NM", "XA", "RF", "OT", "SR", "SEG")


@dataclass(frozen=True)
class StudyRow:
    """A study as the list shows it."""

    uid: str
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    date: str
    time: str
    modalities: str
    description: str
    accession: str
    series: int | None
    instances: int | None

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> StudyRow:
        return cls(
            uid=display.text(item, "0020000D"),
            patient_name=display.person_name(item, "00100010"),
            patient_id=display.text(item, "00100020"),
            birth_date=display.date(item, "00100030"),
            sex=display.text(item, "00100040"),
            date=display.date(item, "00080020"),
            time=display.time(item, "00080030"),
            modalities=display.text(item, "00080061").replace("\\", ", "),
            description=display.text(item, "00081030"),
            accession=display.text(item, "00080050"),
            series=display.number(item, "00201206"),
            instances=display.number(item, "00201208"),
        )


def _secret(request: Request) -> str | None:
    session = session_of(request)
    return session.csrf_token if session is not None else None


async def root(request: Request) -> Response:
    return RedirectResponse("/ui/", 303)


async def browse(request: Request) -> Response:
    signed_in(request)
    view, lost = SearchView.from_query_string(dict(request.query_params), _secret(request))
    return await _results(request, view, lost=lost)


async def search(request: Request) -> Response:
    """The search form: its filters sealed into the results URL (POST, then redirect). The
    form's hidden ``sort`` and ``dir`` keep the order of the page it was sent from."""
    signed_in(request)
    form = await ui_form(request)
    try:
        filters = StudyFilters.from_form(form)
    except BadRequest as exc:
        view = SearchView(StudyFilters(), "")
        return await _results(request, view, error=exc.reason, typed=form, status_code=400)
    order = {k: v for k in ("sort", "dir") if isinstance(v := form.get(k), str)}
    view, _ = SearchView.from_query_string(order, None)
    token = "" if filters.empty else seal_filters(filters, _secret(request))
    return RedirectResponse(replace(view, filters=filters, token=token).url(), 303)


async def _results(
    request: Request,
    view: SearchView,
    *,
    lost: bool = False,
    error: str | None = None,
    typed: Any = None,
    status_code: int = 200,
) -> Response:
    principal = signed_in(request)
    archive = archive_of(request)
    query, text = view.query(include=frozenset({_STUDY_DESCRIPTION}))
    try:
        found = await run_in_threadpool(partial(archive.query.search, text=text), principal, query)
    except Forbidden as exc:
        # A role that may not read (an uploader) lands here after signing in: the page says
        # why, and offers what the role may do; the service has recorded the refusal.
        return page(request, "studies.html", {"refused": exc.reason}, status_code=403)
    rows = [StudyRow.from_json(item) for item in found.items]
    notice = _NOTICES.get(request.query_params.get("notice", ""))
    filters = view.filters
    if typed is not None:  # a refused search: the form keeps what was typed
        filters = StudyFilters(
            **{k: str(typed.get(k) or "")[:64] for k in StudyFilters.__dataclass_fields__}
        )
    return page(
        request,
        "studies.html",
        {
            "rows": rows,
            "view": view,
            "filters": filters,
            "more": found.more,
            "first": (view.page - 1) * PAGE_SIZE + 1,
            "last": (view.page - 1) * PAGE_SIZE + len(rows),
            "modalities": MODALITIES,
            "lost": lost,
            "error": error,
            "notice": notice,
            "refused": None,
        },
        status_code=status_code,
    )


def routes() -> list[Route]:
    return [
        Route("/ui/", browse, methods=["GET"]),
        Route("/ui/", search, methods=["POST"]),
    ]
