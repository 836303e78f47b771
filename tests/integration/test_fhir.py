"""FHIR R4 ImagingStudy (issue 15): built from the index, scoped and audited like QIDO-RS.

Every answer is validated with fhir.resources' R4B models: R4B changed no element of
ImagingStudy, Endpoint, Bundle or OperationOutcome from R4 (https://hl7.org/fhir/R4B/diff.html),
and fhir.resources ships no R4 package of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from starlette.testclient import TestClient

from integration import in_process_archive
from nubis.archive import Archive
from nubis.tools import synth
from nubis.web.app import create_app

ADMIN = "fhir-test-admin-token-0123456789abcdef"


class World:
    def __init__(self, client: TestClient, archive: Archive, keys: dict[str, str]) -> None:
        self.client = client
        self.archive = archive
        self.keys = keys
        self.studies: dict[str, list[pydicom.Dataset]] = {}

    def get(self, who: str, url: str, **params: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        response = self.client.get(
            url, params=params, headers={"Authorization": f"Bearer {self.keys[who]}"}
        )
        assert response.headers["content-type"] == "application/fhir+json", response.text
        return response.status_code, response.json()


def _ct(tmp: Path, patient: str, seed: int) -> list[Path]:
    paths = synth.make_ct_series(
        tmp / f"ct{seed}",
        n_instances=3,
        rows=16,
        columns=16,
        patient=synth.PatientSpec(patient, "Doe^Jo", "19700101", "F"),
        study_date="20240115",
        study_time="101500",
        accession=f"ACC-{seed}",
        seed=seed,
        series_number=4,
        body_part="CHEST",
    )
    for path in paths:  # a known UTC offset: the start is then a FHIR dateTime with its time
        ds = pydicom.dcmread(path)
        ds.TimezoneOffsetFromUTC = "+0100"
        ds.save_as(path)
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fhir")
    archive = in_process_archive(tmp / "data", ADMIN)
    with TestClient(create_app(archive)) as client:
        keys = {"admin": ADMIN}
        for role in ("referrer", "uploader"):
            archive.users.add_user(role, tenant="default", roles=role)
            keys[role] = archive.users.create_api_key(role)[1]
        archive.users.grant("referrer", tenant="default", patient_id="P-FHIR-OWN")
        world = World(client, archive, keys)
        for name, patient, seed in (("own", "P-FHIR-OWN", 31), ("other", "P-FHIR-OTHER", 32)):
            paths = _ct(tmp, patient, seed)
            body = b"".join(
                b"--b\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes() + b"\r\n"
                for p in paths
            )
            response = client.post(
                "/dicom-web/studies",
                content=body + b"--b--\r\n",
                headers={
                    "Authorization": f"Bearer {ADMIN}",
                    "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
                },
            )
            assert response.status_code == 200, response.text
            world.studies[name] = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
        yield world


def _uid(world: World, name: str) -> str:
    return str(world.studies[name][0].StudyInstanceUID)


def test_read_gives_a_valid_imaging_study_with_series_instances_and_endpoint(world: World) -> None:
    uid = _uid(world, "own")
    status, body = world.get("admin", f"/fhir/ImagingStudy/{uid}")
    assert status == 200, body
    study = ImagingStudy.model_validate(body)
    assert study.id == uid
    assert {i.value for i in study.identifier} == {f"urn:oid:{uid}", "ACC-31"}
    assert study.subject.identifier.value == "P-FHIR-OWN"
    assert study.numberOfSeries == 1 and study.numberOfInstances == 3
    assert [m.code for m in study.modality] == ["CT"]
    assert study.started.isoformat() == "2024-01-15T10:15:00+01:00"
    (endpoint,) = study.contained
    assert endpoint.address == f"http://testserver/dicom-web/studies/{uid}"
    assert study.endpoint[0].reference == f"#{endpoint.id}"
    (series,) = study.series
    ds = world.studies["own"]
    assert series.uid == str(ds[0].SeriesInstanceUID)
    assert series.modality.code == "CT" and series.number == 4
    assert series.bodySite.display == "CHEST"
    assert series.numberOfInstances == 3
    assert {i.uid for i in series.instance} == {str(d.SOPInstanceUID) for d in ds}
    assert {i.sopClass.code for i in series.instance} == {f"urn:oid:{ds[0].SOPClassUID}"}
    # The endpoint is the study's DICOMweb URL: it answers WADO-RS.
    metadata = world.client.get(
        f"{endpoint.address.removeprefix('http://testserver')}/metadata",
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert metadata.status_code == 200 and len(metadata.json()) == 3


@pytest.mark.parametrize(
    "params",
    [
        {"patient": "Patient/P-FHIR-OWN"},
        {"patient": "P-FHIR-OWN"},
        {"subject:Patient.identifier": "urn:oid:1.2.3|P-FHIR-OWN"},
        {"identifier": "urn:dicom:uid|urn:oid:{own}"},
        {"identifier": "ACC-31"},
    ],
)
def test_search_finds_the_study_by_patient_or_identifier(
    world: World, params: dict[str, str]
) -> None:
    own = _uid(world, "own")
    filled = {k: v.replace("{own}", own) for k, v in params.items()}
    status, body = world.get("admin", "/fhir/ImagingStudy", **filled)
    assert status == 200, body
    bundle = Bundle.model_validate(body)
    assert bundle.type == "searchset" and bundle.total == 1
    assert [e.resource.id for e in bundle.entry] == [own]


def test_two_different_patients_match_nothing(world: World) -> None:
    status, body = world.get(
        "admin",
        "/fhir/ImagingStudy",
        patient="P-FHIR-OWN",
        **{"subject:Patient.identifier": "P-FHIR-OTHER"},
    )
    assert status == 200 and Bundle.model_validate(body).total == 0
    # Still a read: refused to a role that may not read.
    status, body = world.get(
        "uploader", "/fhir/ImagingStudy", patient="a", **{"subject:Patient.identifier": "b"}
    )
    assert status == 403


def test_a_referrer_sees_only_granted_studies(world: World) -> None:
    status, body = world.get("referrer", "/fhir/ImagingStudy")
    assert status == 200
    assert [e["resource"]["id"] for e in body["entry"]] == [_uid(world, "own")]
    status, body = world.get("referrer", "/fhir/ImagingStudy", patient="P-FHIR-OTHER")
    assert status == 200 and Bundle.model_validate(body).total == 0
    # Outside the scope is absent, exactly like a study that does not exist.
    status, body = world.get("referrer", f"/fhir/ImagingStudy/{_uid(world, 'other')}")
    assert status == 404
    assert OperationOutcome.model_validate(body).issue[0].code == "not-found"
    status, missing = world.get("referrer", "/fhir/ImagingStudy/1.2.3.4.5.6")
    assert status == 404 and missing["issue"][0]["code"] == "not-found"


def test_errors_are_operation_outcomes(world: World) -> None:
    for params in ({"name": "Doe"}, {"patient": "P*"}, {"_count": "x"}, {"_count": "0"}):
        status, body = world.get("admin", "/fhir/ImagingStudy", **params)
        assert status == 400, params
        assert OperationOutcome.model_validate(body).issue[0].code == "invalid"
    status, body = world.get("uploader", "/fhir/ImagingStudy")
    assert status == 403
    assert OperationOutcome.model_validate(body).issue[0].code == "forbidden"


def test_searches_and_reads_are_recorded_as_queries(world: World) -> None:
    """PS3.15 A.5.3.10: a query is recorded, with the request's id."""
    response = world.client.get(
        f"/fhir/ImagingStudy/{_uid(world, 'own')}",
        headers={"Authorization": f"Bearer {world.keys['referrer']}"},
    )
    assert response.status_code == 200
    rid = response.headers["x-request-id"]
    world.archive.audit.flush_reads()
    records = [
        r.event_dict
        for r in world.archive.audit.scan(0, limit=100000)
        if r.event_dict.get("request_id") == rid
    ]
    assert [r["event_id"]["code"] for r in records] == ["110112"]
    assert records[0]["participants"][0]["user_id"] == "referrer"


def test_paging_links_to_the_next_page(world: World) -> None:
    status, body = world.get("admin", "/fhir/ImagingStudy", _count="1")
    assert status == 200
    bundle = Bundle.model_validate(body)
    assert len(bundle.entry) == 1
    next_url = next(link.url for link in bundle.link if link.relation == "next")
    response = world.client.get(
        next_url.removeprefix("http://testserver"), headers={"Authorization": f"Bearer {ADMIN}"}
    )
    second = Bundle.model_validate(response.json())
    assert {e.resource.id for e in [*bundle.entry, *second.entry]} == {
        _uid(world, "own"),
        _uid(world, "other"),
    }
