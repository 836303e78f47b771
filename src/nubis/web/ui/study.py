"""A study's page ``/ui/studies/{study}`` and what can be done with it: view, download as a
ZIP, send to a DIMSE peer, share, delete (after a confirmation page).

The page stands for two DICOMweb reads and is recorded as them: the study's series with the
patient and study attributes (a QIDO-RS series query, through ``QueryService``: a Query
record) and the instances, for their sizes (``RetrieveService.instances`` without transfer:
Instances Accessed, as for ``/metadata``). A study outside the caller's scope is not found by
either, exactly like one that does not exist (404 page). The storage tier comes from the tier
bookkeeping (nubis.tiers.lifecycle.study_tiers) once the services have found the study: where
objects are stored, not patient data.

Actions are offered by role (``may``), and each goes through its service, which decides again:
a hidden button is a convenience, the service's refusal (403, recorded) is the rule.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from nubis.errors import NotFound
from nubis.jobs.store import Job, JobState
from nubis.model.query import DEFAULT_RETURN_TAGS, Level, Query
from nubis.security.policy import Principal
from nubis.web.dicomweb.common import check_uid
from nubis.web.ui import display
from nubis.web.ui.common import archive_of, field, signed_in, ui_form
from nubis.web.ui.render import may, page

__all__ = ["routes"]

_EXTRA_TAGS = frozenset(
    {
        0x00081030,  # StudyDescription
        0x0008103E,  # SeriesDescription
        0x00080090,  # ReferringPhysicianName
        0x00200010,  # StudyID
    }
)
# The series query as QIDO-RS would ask it, for the audit record: the study's default
# attributes come with the series' as in a query across studies (PS3.18 10.6.3.3).
_INCLUDED = ",".join(f"{tag:08X}" for tag in sorted(_EXTRA_TAGS | DEFAULT_RETURN_TAGS[Level.STUDY]))
_MAX_SERIES = 1000  # series listed on one page (a study with more says so)
# A share link's session reads its study in the viewer; sending it elsewhere is not offered.
_SHARE_SESSION = "session-share"


@dataclass(frozen=True)
class SeriesRow:
    uid: str
    number: int | None
    modality: str
    description: str
    date: str
    instances: int
    bytes: int

    @property
    def size(self) -> str:
        return display.size(self.bytes)


def _study_uid(request: Request) -> str:
    return check_uid(str(request.path_params["study"]), "Study Instance UID")


def _series_query(study_uid: str, limit: int) -> Query:
    include = DEFAULT_RETURN_TAGS[Level.SERIES] | DEFAULT_RETURN_TAGS[Level.STUDY] | _EXTRA_TAGS
    return Query(Level.SERIES, include=include, limit=limit, limit_capped=True, study_uid=study_uid)


def _overview(archive: Any, who: Principal, study_uid: str) -> dict[str, Any]:
    """Everything the study page shows, read through the services (see the module docs)."""
    found = archive.query.search(
        who,
        _series_query(study_uid, _MAX_SERIES),
        text=f"/studies/{study_uid}/series?includefield={_INCLUDED}",
    )
    if not found.items:
        raise NotFound(f"no study {study_uid}")
    instances = archive.retrieve.instances(who, study_uid, transfer=False)
    counts: dict[str, int] = defaultdict(int)
    sizes: dict[str, int] = defaultdict(int)
    for inst in instances:
        counts[inst.series_uid] += 1
        sizes[inst.series_uid] += inst.size
    series = sorted(
        (
            SeriesRow(
                uid=display.text(item, "0020000E"),
                number=display.number(item, "00200011"),
                modality=display.text(item, "00080060"),
                description=display.text(item, "0008103E"),
                date=display.date(item, "00400244"),
                instances=counts.get(display.text(item, "0020000E"), 0),
                bytes=sizes.get(display.text(item, "0020000E"), 0),
            )
            for item in found.items
        ),
        key=lambda s: (s.number is None, s.number or 0, s.uid),
    )
    item = found.items[0]
    tiers = archive.lifecycle.study_tiers(instances[0].partition, study_uid) or {"tiers": {}}
    return {
        "uid": study_uid,
        "patient_name": display.person_name(item, "00100010"),
        "patient_id": display.text(item, "00100020"),
        "birth_date": display.date(item, "00100030"),
        "sex": display.text(item, "00100040"),
        "date": display.date(item, "00080020"),
        "time": display.time(item, "00080030"),
        "accession": display.text(item, "00080050"),
        "description": display.text(item, "00081030"),
        "referring": display.person_name(item, "00080090"),
        "study_id": display.text(item, "00200010"),
        "modalities": display.text(item, "00080061").replace("\\", ", "),
        "series": series,
        "more_series": found.more,
        "instances": len(instances),
        "bytes": display.size(sum(sizes.values())),
        "tiers": [
            (name, usage["objects"], display.size(usage["bytes"]))
            for name, usage in sorted(tiers["tiers"].items())
        ],
        "pinned": tiers.get("pin"),
    }


async def study_page(request: Request) -> Response:
    principal = signed_in(request)
    archive = archive_of(request)
    study_uid = _study_uid(request)
    study = await run_in_threadpool(_overview, archive, principal, study_uid)
    shared = principal.auth_method == _SHARE_SESSION
    peers = [] if shared else await run_in_threadpool(archive.sender.destinations)
    return page(
        request,
        "study.html",
        {
            "study": study,
            "peers": peers,
            "may_share": not shared,
            "may_delete": may(principal, "delete"),
        },
    )


async def download(request: Request) -> Response:
    """The study's (or, with ``?series=``, one series') stored files as a ZIP, streamed."""
    principal = signed_in(request)
    archive = archive_of(request)
    study_uid = _study_uid(request)
    series = request.query_params.get("series")
    series_uid = check_uid(series, "Series Instance UID") if series else None
    zipped = await run_in_threadpool(archive.export.study_zip, principal, study_uid, series_uid)
    return StreamingResponse(
        zipped.chunks,
        media_type="application/zip",
        headers={"content-disposition": f'attachment; filename="{zipped.filename}"'},
    )


async def delete_confirm(request: Request) -> Response:
    """The confirmation step: what would be deleted, and the button that deletes it."""
    principal = signed_in(request)
    archive = archive_of(request)
    study_uid = _study_uid(request)
    study = await run_in_threadpool(_overview, archive, principal, study_uid)
    return page(request, "delete.html", {"study": study, "may_delete": may(principal, "delete")})


async def delete(request: Request) -> Response:
    principal = signed_in(request)
    await ui_form(request)
    archive = archive_of(request)
    study_uid = _study_uid(request)
    await run_in_threadpool(archive.maintenance.delete, principal, study_uid)
    return RedirectResponse("/ui/?notice=deleted", 303)


async def send(request: Request) -> Response:
    """Send the study to a DIMSE peer: a job, whose page shows how it goes."""
    principal = signed_in(request)
    form = await ui_form(request)
    archive = archive_of(request)
    study_uid = _study_uid(request)
    destination = field(form, "destination", max_length=16)
    job_id = await run_in_threadpool(archive.sender.queue, principal, study_uid, destination)
    return RedirectResponse(f"/ui/studies/{study_uid}/sends/{job_id}", 303)


async def send_status(request: Request) -> Response:
    principal = signed_in(request)
    archive = archive_of(request)
    study_uid = _study_uid(request)
    number = str(request.path_params["job"])
    job = None
    if number.isdigit() and len(number) < 19:
        job = await run_in_threadpool(archive.sender.status, principal, int(number))
    if job is None or job.params.get("study") != study_uid:
        raise NotFound(f"no send {number[:20]} of study {study_uid}")
    return page(request, "send.html", {"study_uid": study_uid, "job": _job_view(job)})


def _job_view(job: Job) -> dict[str, Any]:
    result = job.result or {}
    return {
        "id": job.id,
        "destination": job.params.get("destination", ""),
        "state": job.state.value,
        "finished": job.state.finished,
        "ok": job.state is JobState.DONE and not result.get("failed"),
        "done": job.progress_done,
        "total": job.progress_total,
        "error": job.last_error,
        "result": result,
    }


def routes() -> list[Route]:
    study = "/ui/studies/{study}"
    return [
        Route(study, study_page, methods=["GET"]),
        Route(study + "/download", download, methods=["GET"]),
        Route(study + "/delete", delete_confirm, methods=["GET"]),
        Route(study + "/delete", delete, methods=["POST"]),
        Route(study + "/send", send, methods=["POST"]),
        Route(study + "/sends/{job}", send_status, methods=["GET"]),
    ]
