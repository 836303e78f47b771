"""The built-in zero-footprint viewer: ``/ui/studies/{study}/view`` (issue 10), and for a
research project's members ``/ui/projects/{project}`` (its studies) and
``/ui/projects/{project}/studies/{study}/view`` over the project's de-identified DICOMweb
(issue 14).

The page is a shell: the study's series (one series-level query through the QueryService,
authorized, scoped and recorded exactly like the QIDO-RS request it stands for), and the
viewer's ES modules (static/viewer/). Everything the viewer then shows it reads itself through
DICOMweb with the session cookie, GET only: series metadata, frames decoded to native pixels
(windowed in the browser), rendered frames for color. So it works for any principal the
services allow, a share link's session included, and every read is audited by the services.

A study outside the caller's scope is answered exactly like one that does not exist: 404.
"""

from __future__ import annotations

import json
from functools import cache, partial
from typing import Any

from pydicom.datadict import DicomDictionary
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nubis.errors import NotFound
from nubis.model.query import Level, parse_qido
from nubis.services.research import check_name
from nubis.web.dicomweb.common import check_uid
from nubis.web.ui.common import archive_of, session_of, signed_in
from nubis.web.ui.render import page

# Study-level attributes shown in the page's header, asked of the series-level query.
_STUDY_FIELDS = ("PatientName", "PatientID", "StudyDate", "StudyDescription")
# A study with more series than this lists the first ones; the viewer is for reading a study.
_MAX_SERIES = 500


def _first(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or []
    return values[0] if values else None


def _text(item: dict[str, Any], tag: str) -> str:
    value = _first(item, tag)
    if isinstance(value, dict):  # PN: {"Alphabetic": "Doe^Jo"}
        value = value.get("Alphabetic") or value.get("Ideographic") or ""
        return " ".join(part for part in str(value).replace("^", " ").split())
    return "" if value is None else str(value)


def _series_entry(item: dict[str, Any]) -> dict[str, Any]:
    number = _first(item, "00200011")
    count = _first(item, "00201209")
    return {
        "uid": _text(item, "0020000E"),
        "number": number if isinstance(number, int) else None,
        "modality": _text(item, "00080060"),
        "description": _text(item, "0008103E"),
        "instances": count if isinstance(count, int) else None,
    }


def _series_order(entry: dict[str, Any]) -> tuple[int, str]:
    return (entry["number"] if entry["number"] is not None else 1 << 31, entry["uid"])


def _date(value: str) -> str:
    if len(value) != 8 or not value.isdigit():
        return value
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}"


async def view_study(request: Request) -> Response:
    principal = signed_in(request)
    archive = archive_of(request)
    study = check_uid(str(request.path_params["study"]), "Study Instance UID")
    wanted = request.query_params.get("series")
    if wanted is not None:
        check_uid(wanted, "Series Instance UID")
    query = parse_qido(
        Level.SERIES,
        [("includefield", name) for name in _STUDY_FIELDS],
        study_uid=study,
        max_limit=_MAX_SERIES,
    )
    search = partial(archive.query.search, text=f"/studies/{study}/series (web viewer)")
    found = (await run_in_threadpool(search, principal, query)).items
    if not found:
        # Out of scope and absent are one answer (the services never tell them apart).
        raise NotFound(f"study {study} not found")
    series = sorted((_series_entry(item) for item in found), key=_series_order)
    first = next((s["uid"] for s in series if s["uid"] == wanted), series[0]["uid"])
    session = session_of(request)
    return page(
        request,
        "viewer.html",
        {
            "study_uid": study,
            "first_series": first,
            "series": series,
            "patient_name": _text(found[0], "00100010"),
            "patient_id": _text(found[0], "00100020"),
            "study_date": _date(_text(found[0], "00080020")),
            "study_description": _text(found[0], "00081030"),
            # A share link's recipient sees the viewer only: no way back into the archive.
            "study_page": None
            if session and session.auth_method == "share"
            else f"/ui/studies/{study}",
            "dicomweb": "/dicom-web",
        },
    )


async def view_project_study(request: Request) -> Response:
    """A study of a research project in the viewer, for its members: the series list and every
    read the viewer makes go through the project's de-identified view
    (``/projects/{project}/dicom-web``; docs/research.md), so it shows the pseudonym, the
    shifted date and the remapped UIDs; the study is named by its remapped UID."""
    project = check_name(str(request.path_params["project"]))
    return await _deidentified_viewer(request, project)


async def view_shared_study(request: Request) -> Response:
    """A de-identified share link's study in the viewer (``/share/studies/{remapped}/view``):
    read through the link's de-identified view (``/share/dicom-web``) as a project's is."""
    return await _deidentified_viewer(request, None)


async def _deidentified_viewer(request: Request, project: str | None) -> Response:
    principal = signed_in(request)
    archive = archive_of(request)
    study = check_uid(str(request.path_params["study"]), "Study Instance UID")
    where = "the shared study" if project is None else f"research project {project}"
    search = partial(
        archive.research_view.search,
        principal,
        project,
        Level.SERIES,
        [("includefield", name) for name in _STUDY_FIELDS],
        study_uid=study,
        max_limit=_MAX_SERIES,
        text=f"/studies/{study}/series (web viewer of {where})",
    )
    found, _, _ = await run_in_threadpool(search)
    if not found:
        raise NotFound(f"no study {study} in {where}")
    series = sorted((_series_entry(item) for item in found), key=_series_order)
    return page(
        request,
        "viewer.html",
        {
            "study_uid": study,
            "first_series": series[0]["uid"],
            "series": series,
            "patient_name": _text(found[0], "00100010"),
            "patient_id": _text(found[0], "00100020"),
            "study_date": _date(_text(found[0], "00080020")),
            "study_description": _text(found[0], "00081030"),
            "study_page": None if project is None else f"/ui/projects/{project}",
            "dicomweb": "/share/dicom-web" if project is None else f"/projects/{project}/dicom-web",
        },
    )


async def project_studies(request: Request) -> Response:
    """A research project's studies as its member sees them (de-identified), each opening in
    the viewer."""
    principal = signed_in(request)
    archive = archive_of(request)
    project = check_name(str(request.path_params["project"]))
    search = partial(
        archive.research_view.search,
        principal,
        project,
        Level.STUDY,
        [("includefield", "StudyDescription"), ("includefield", "PatientAge")],
        max_limit=_MAX_SERIES,
        text=f"study list of research project {project} (web face)",
    )
    found, more, _ = await run_in_threadpool(search)
    studies = [
        {
            "uid": _text(item, "0020000D"),
            "patient_id": _text(item, "00100020"),
            "date": _date(_text(item, "00080020")),
            "modalities": " ".join(str(m) for m in item.get("00080061", {}).get("Value", [])),
            "description": _text(item, "00081030"),
        }
        for item in found
    ]
    return page(
        request,
        "research_project.html",
        {"project": project, "studies": studies, "more": more},
    )


@cache
def _dictionary_json() -> bytes:
    keywords = {f"{tag:08X}": entry[4] for tag, entry in DicomDictionary.items() if entry[4]}
    return json.dumps(keywords, separators=(",", ":"), sort_keys=True).encode()


async def dictionary(request: Request) -> Response:
    """DICOM attribute keywords by tag, for the viewer's metadata table (no patient data)."""
    signed_in(request)
    return Response(
        _dictionary_json(),
        media_type="application/json",
        headers={"cache-control": "private, max-age=86400"},
    )


def routes() -> list[Route]:
    return [
        Route("/ui/studies/{study}/view", view_study, methods=["GET"]),
        Route("/ui/viewer/dictionary.json", dictionary, methods=["GET"]),
        Route("/ui/projects/{project}", project_studies, methods=["GET"]),
        Route("/ui/projects/{project}/studies/{study}/view", view_project_study, methods=["GET"]),
        Route("/share/studies/{study}/view", view_shared_study, methods=["GET"]),
    ]


__all__ = ["routes"]
