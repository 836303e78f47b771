"""De-identified share links (issue 14, docs/research.md): a link's session reads only through
the researcher's de-identifying view (services/research_view.py), under a research project's
profile and key or a profile and key of the link's own.

In process, on the share-link tests' site (tests/integration/shares_site.py) with one more
study whose patient carries distinctive values in every identifying attribute the synthesizer
fills, and a burned-in ultrasound object (PS3.15 E.1.1: Burned In Annotation, the profile
excludes US without the flag set to NO).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from starlette.testclient import TestClient

from integration.shares_site import ADMIN, Site, _store, create_link, make_site, opened, sign_in
from nubis.deid.profile import default_profile_text
from nubis.model.query import Level
from nubis.security.policy import Principal
from nubis.tools.synth import PatientSpec, series_datasets

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
PATIENT = PatientSpec("PAT-DEID-9137", "Quixote^Zebulon", "19440312", "M")
ACCESSION = "ACC-DEID-77"
PROJECT = "gamma"
ADMIN_PRINCIPAL = Principal("ada", "default", frozenset({"admin"}))


@dataclass
class World:
    site: Site
    study: str
    ct_series: str
    us_sop: str
    phi: set[str]  # every identifying string of the stored objects, UIDs included
    studies_series: tuple[str, ...]


def _ultrasound(study_uid: str) -> Dataset:
    (ds,) = series_datasets(
        "CT", n_instances=1, rows=32, columns=48, patient=PATIENT, study_uid=study_uid, seed=77
    )
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
    ds.Modality = "US"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.full((32, 48), 100, dtype=np.uint8).tobytes()
    ds["PixelData"].VR = "OB"
    for name in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if name in ds:
            delattr(ds, name)
    return ds


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    for site in make_site(tmp_path_factory.mktemp("share-deid")):
        datasets = list(
            series_datasets(
                "CT",
                n_instances=2,
                rows=32,
                columns=32,
                patient=PATIENT,
                accession=ACCESSION,
                seed=71,
            )
        )
        study = str(datasets[0].StudyInstanceUID)
        us = _ultrasound(study)
        datasets.append(us)
        _store(site.archive, ADMIN, datasets)
        phi = {PATIENT.patient_id, PATIENT.birth_date, *PATIENT.patient_name.split("^"), ACCESSION}
        for ds in datasets:
            phi |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
        site.archive.research.create(
            ADMIN_PRINCIPAL, PROJECT, default_profile_text(), study_uids=(study,)
        )
        site.archive.users.add_user("resa", tenant="default", roles="researcher")
        site.archive.research.add_member(ADMIN_PRINCIPAL, PROJECT, "resa")
        ct = str(datasets[0].SeriesInstanceUID)
        every_series = tuple(dict.fromkeys(str(ds.SeriesInstanceUID) for ds in datasets))
        yield World(site, study, ct, str(us.SOPInstanceUID), phi, every_series)


def _leaks(world: World, data: str | bytes) -> list[str]:
    text = data if isinstance(data, bytes) else data.encode()
    return sorted(v for v in world.phi if v.encode() in text)


def _link(world: World, **form: str) -> TestClient:
    """A de-identified link made on the web face by radiologist alice, opened by a
    recipient without an account: the recipient's client."""
    with world.site.client() as alice:
        sign_in(alice, "alice")
        token, _ = create_link(alice, world.study, **form)
    return opened(world.site, token)


def _get(world: World, client: TestClient, url: str, status: int = 200) -> bytes:
    response = client.get(url)
    assert response.status_code == status, (url, response.text[:300])
    assert not _leaks(world, response.content), (url, _leaks(world, response.content))
    return response.content


def _studies(world: World, client: TestClient) -> dict[str, object]:
    (study,) = json.loads(_get(world, client, "/share/dicom-web/studies"))
    return study  # type: ignore[no-any-return]


def _first(item: object, tag: str) -> str:
    return str(item[tag]["Value"][0])  # type: ignore[index]


def test_a_project_link_reads_as_the_project_and_leaks_nothing(world: World) -> None:
    """Pages, QIDO-RS, metadata, the viewer, the ZIP and every Part-10 file in it carry no
    original identifying value; the pseudonym and remapped study UID are the project's own
    (as its researchers and its exports see them)."""
    client = _link(world, deidentify="project", project=PROJECT, access="download")
    study = _studies(world, client)
    researcher = Principal("resa", "default", frozenset({"researcher"}))
    (as_project,), _, _ = world.site.archive.research_view.search(
        researcher, PROJECT, Level.STUDY, [], max_limit=10
    )
    remapped = _first(study, "0020000D")
    assert remapped == _first(as_project, "0020000D") != world.study
    pseudonym = _first(study, "00100020")
    assert pseudonym == _first(as_project, "00100020") != PATIENT.patient_id

    home = _get(world, client, "/share/").decode()
    assert pseudonym in home and f"/share/studies/{remapped}/view" in home
    viewer = _get(world, client, f"/share/studies/{remapped}/view").decode()
    assert "/share/dicom-web" in viewer and pseudonym in viewer
    series = json.loads(_get(world, client, f"/share/dicom-web/studies/{remapped}/series"))
    instances = json.loads(_get(world, client, f"/share/dicom-web/studies/{remapped}/instances"))
    assert len(series) == 2 and len(instances) == 2  # the US object left out
    metadata = json.loads(_get(world, client, f"/share/dicom-web/studies/{remapped}/metadata"))
    assert {_first(m, "00100020") for m in metadata} == {pseudonym}

    archive = _get(world, client, f"/share/studies/{remapped}/download")
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        names = zipped.namelist()
        files = [zipped.read(name) for name in names]
    assert len(files) == 2 and not _leaks(world, "".join(names))
    for data in files:
        assert not _leaks(world, data)
        ds = pydicom.dcmread(io.BytesIO(data))
        assert ds.PatientID == pseudonym and ds.StudyInstanceUID == remapped
        assert ds.PatientIdentityRemoved == "YES"  # PS3.15 E.1.1 (0012,0062)


def test_the_burned_in_ultrasound_is_excluded(world: World) -> None:
    """PS3.15 E.1.1: an object that may carry burned-in text is not passed silently: absent
    from lists and the ZIP (above), 403 when named by its remapped UID."""
    client = _link(world, deidentify="project", project=PROJECT, access="download")
    remapped = _first(_studies(world, client), "0020000D")
    project = world.site.archive.research.project_named("default", PROJECT)
    remap = world.site.archive.research.key_of(project).pseudonyms()
    series = [
        s
        for s in json.loads(_get(world, client, f"/share/dicom-web/studies/{remapped}/series"))
        if _first(s, "00080060") == "US"
    ]
    url = (
        f"/share/dicom-web/studies/{remapped}/series/{_first(series[0], '0020000E')}"
        f"/instances/{remap.uid(world.us_sop)}"
    )
    _get(world, client, url, status=403)
    _get(world, client, url + "/metadata", status=403)


def test_a_link_of_its_own_has_pseudonyms_of_its_own(world: World) -> None:
    """A link naming a profile alone: a random key of its own, so neither the project's
    pseudonym nor another such link's."""
    first = _first(_studies(world, _link(world, deidentify="profile")), "00100020")
    second = _first(_studies(world, _link(world, deidentify="profile")), "00100020")
    project = _first(
        _studies(world, _link(world, deidentify="project", project=PROJECT)), "00100020"
    )
    assert len({first, second, project, PATIENT.patient_id}) == 4


def test_a_de_identified_session_is_refused_the_identified_api(world: World) -> None:
    client = _link(world, deidentify="profile")
    remapped = _first(_studies(world, client), "0020000D")
    for url in (
        "/dicom-web/studies",
        f"/dicom-web/studies/{world.study}/metadata",
        f"/ui/studies/{world.study}/view",
        f"/ui/studies/{world.study}",
    ):
        response = client.get(url, follow_redirects=False)
        assert response.status_code == 403, (url, response.status_code)
        assert not _leaks(world, response.content)
    # View only: no whole objects, no ZIP.
    for url in (f"/share/dicom-web/studies/{remapped}", f"/share/studies/{remapped}/download"):
        _get(world, client, url, status=403)
    # An unknown study: the error names only what was sent.
    response = client.get("/share/dicom-web/studies/1.2.3.4/metadata")
    assert response.status_code == 404 and not _leaks(world, response.content)


def test_a_link_to_some_series_shows_only_those(world: World) -> None:
    """The link's grant rows scope the view: the other series is absent from QIDO-RS, the
    study's metadata and the ZIP."""
    client = _link(world, deidentify="profile", access="download", series=world.ct_series)
    remapped = _first(_studies(world, client), "0020000D")
    series = json.loads(_get(world, client, f"/share/dicom-web/studies/{remapped}/series"))
    assert [_first(s, "00080060") for s in series] == ["CT"]
    metadata = json.loads(_get(world, client, f"/share/dicom-web/studies/{remapped}/metadata"))
    assert len(metadata) == 2
    zipped = zipfile.ZipFile(io.BytesIO(_get(world, client, f"/share/studies/{remapped}/download")))
    assert len(zipped.namelist()) == 2
    assert {name.split("/")[0] for name in zipped.namelist()} == {_first(series[0], "0020000E")}
    # A link to the ultrasound series alone: the CT series is absent, the US object excluded.
    us_series = next(s for s in world.studies_series if s != world.ct_series)
    client = _link(world, deidentify="profile", access="download", series=us_series)
    remapped = _first(_studies(world, client), "0020000D")
    assert json.loads(_get(world, client, f"/share/dicom-web/studies/{remapped}/metadata")) == []
    assert json.loads(_get(world, client, f"/share/dicom-web/studies/{remapped}/instances")) == []


def test_a_normal_link_still_shows_the_patient(world: World) -> None:
    client = _link(world)
    home = client.get("/share/")
    assert home.status_code == 200 and PATIENT.patient_id in home.text
    assert client.get("/share/dicom-web/studies").status_code == 403


def test_creation_and_reads_are_audited(world: World) -> None:
    """The creation record says the link is de-identified and how; the session's reads are
    recorded as the link's principal's, naming the real study (in the audit trail only)."""
    audit = world.site.archive.audit
    after = audit.head()[0]
    with world.site.client() as alice:
        sign_in(alice, "alice")
        token, link_id = create_link(alice, world.study, deidentify="project", project=PROJECT)
    client = opened(world.site, token)
    remapped = _first(_studies(world, client), "0020000D")
    _get(world, client, f"/share/dicom-web/studies/{remapped}/metadata")
    records = [r.event_dict for r in audit.scan(after, 100000)]
    (made,) = [r for r in records if f"share link {link_id} made" in json.dumps(r)]
    assert f"de-identified as research project {PROJECT} (profile" in json.dumps(made)
    (read,) = [
        r
        for r in records
        if r["event_id"]["code"] == "110103"
        and r["participants"][0]["user_id"] == f"share:{link_id}"
    ]
    assert "de-identified for the shared study" in json.dumps(read)
    assert world.study in json.dumps(read)


def test_a_zip_download_is_recorded_as_an_export(world: World) -> None:
    """PS3.15 A.5.3.6 Data Export, naming the real study (in the audit trail only)."""
    audit = world.site.archive.audit
    client = _link(world, deidentify="profile", access="download")
    remapped = _first(_studies(world, client), "0020000D")
    after = audit.head()[0]
    _get(world, client, f"/share/studies/{remapped}/download")
    records = [r.event_dict for r in audit.scan(after, 100000)]
    (export,) = [r for r in records if r["event_id"]["code"] == "110106"]
    assert world.study in json.dumps(export) and "ZIP download" in json.dumps(export)
