"""FHIR R4 ImagingStudy at ``/fhir/ImagingStudy`` (search: a searchset Bundle) and
``/fhir/ImagingStudy/{id}`` (read), built by nubis.services.fhir from the index.

Search parameters (FHIR R4 ImagingStudy): ``patient`` (``Patient/<Patient ID>`` or the Patient
ID), ``subject:Patient.identifier`` (``[system|]<Patient ID>``: the index keeps no issuer, so a
system is not matched), ``identifier`` (``urn:dicom:uid|urn:oid:<Study Instance UID>``, or an
accession number), ``_count`` (at most nubis.services.fhir.MAX_COUNT) and ``_offset`` (the
``next`` link's paging). Any other parameter is refused (400), as FHIR's strict handling does,
rather than ignored into a wider answer. Errors of these routes are OperationOutcomes.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nubis.archive import Archive
from nubis.errors import BadRequest, NubisError
from nubis.services.fhir import MAX_COUNT, StudyCriteria
from nubis.web.dicomweb.common import principal_of
from nubis.web.urls import site_url

MEDIA_TYPE = "application/fhir+json"
_ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 503: "transient"}
_PARAMS = frozenset({"patient", "subject:Patient.identifier", "identifier", "_count", "_offset"})
_UID_PREFIX = "urn:oid:"


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status, media_type=MEDIA_TYPE)


def operation_outcome(exc: NubisError) -> Response:
    """``exc`` as an OperationOutcome with its HTTP status (and Retry-After for a 503)."""
    issue = {
        "severity": "error",
        "code": _ISSUE_CODES.get(exc.http_status, "processing"),
        "diagnostics": exc.reason,
    }
    response = _json({"resourceType": "OperationOutcome", "issue": [issue]}, exc.http_status)
    if exc.retry_after:
        response.headers["retry-after"] = str(exc.retry_after)
    return response


def criteria_of(params: list[tuple[str, str]]) -> StudyCriteria:
    """The search's criteria; BadRequest naming a parameter that cannot be used."""
    given: dict[str, str] = {}
    for key, value in params:
        if key not in _PARAMS:
            raise BadRequest(
                f"search parameter {key!r} is not supported; use {', '.join(sorted(_PARAMS))}"
            )
        if key in given:
            raise BadRequest(f"search parameter {key!r} is given more than once")
        given[key] = value
    patient = given.get("patient")
    if patient is not None:
        patient = patient.removeprefix("Patient/")
    identifier = given.get("subject:Patient.identifier")
    if identifier is not None:
        identifier = identifier.rpartition("|")[2]
        if patient is not None and identifier != patient:
            return StudyCriteria(contradictory=True)  # two patients: no study is of both
        patient = identifier
    study_uid = accession = None
    study_identifier = given.get("identifier")
    if study_identifier is not None:
        system, bar, value = study_identifier.rpartition("|")
        if value.startswith(_UID_PREFIX) and system in ("", "urn:dicom:uid", "urn:ietf:rfc:3986"):
            study_uid = value.removeprefix(_UID_PREFIX)
        elif bar and system in ("urn:dicom:uid", "urn:ietf:rfc:3986"):
            raise BadRequest(f"identifier: a {system} value is urn:oid:<Study Instance UID>")
        else:
            accession = value
    return StudyCriteria(
        patient_id=patient,
        study_uid=study_uid,
        accession_number=accession,
        count=_number(given, "_count", 20, 1, MAX_COUNT),
        offset=_number(given, "_offset", 0, 0, 1_000_000),
    )


def _number(given: dict[str, str], key: str, default: int, least: int, most: int) -> int:
    # _count=0 (a total alone) is not offered: a total costs a count of every match.
    text = given.get(key)
    if text is None:
        return default
    if not text.isdigit() or not least <= int(text) <= most:
        raise BadRequest(f"{key}: {text[:20]!r} is not a whole number from {least} to {most}")
    return int(text)


async def search(request: Request) -> Response:
    """``GET /fhir/ImagingStudy?...``: a searchset Bundle of the caller's matching studies."""
    archive: Archive = request.app.state.archive
    root = site_url(request)
    try:
        criteria = criteria_of(list(request.query_params.multi_items()))
        page = await run_in_threadpool(
            lambda: archive.imaging_studies.search(
                principal_of(request),
                criteria,
                dicomweb_root=f"{root}/dicom-web",
                text=request.url.query,
            )
        )
        resources, more = page.resources, page.more
    except NubisError as exc:
        return operation_outcome(exc)
    here = f"{root}/fhir/ImagingStudy"
    kept = [(k, v) for k, v in request.query_params.multi_items() if k != "_offset"]
    links = [{"relation": "self", "url": f"{here}?{request.url.query}".rstrip("?")}]
    if more:
        offset = criteria.offset + criteria.count
        links.append(
            {"relation": "next", "url": f"{here}?{urlencode([*kept, ('_offset', offset)])}"}
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {"fullUrl": f"{here}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }
    if not more:
        bundle["total"] = criteria.offset + len(resources)
    if not bundle["entry"]:
        del bundle["entry"]
    return _json(bundle)


async def read(request: Request) -> Response:
    """``GET /fhir/ImagingStudy/{id}``: one study, 404 when absent or outside the scope."""
    archive: Archive = request.app.state.archive
    root = site_url(request)
    study_uid = request.path_params["id"]
    try:
        if not study_uid or len(study_uid) > 64:
            raise BadRequest("an ImagingStudy id is a Study Instance UID of at most 64 characters")
        resource = await run_in_threadpool(
            lambda: archive.imaging_studies.read(
                principal_of(request),
                study_uid,
                dicomweb_root=f"{root}/dicom-web",
                text=request.url.path,
            )
        )
    except NubisError as exc:
        return operation_outcome(exc)
    return _json(resource)


def fhir_routes() -> list[Route]:
    return [
        Route("/fhir/ImagingStudy", search, methods=["GET"]),
        Route("/fhir/ImagingStudy/{id}", read, methods=["GET"]),
    ]


__all__ = ["MEDIA_TYPE", "criteria_of", "fhir_routes", "operation_outcome"]
