"""Research projects and the researcher's de-identified view (issue 14, docs/research.md).

In process (Starlette's TestClient, the services directly): projects made by an admin, the
researcher's DICOMweb under /projects/{name}/dicom-web, re-identification by admins only.
De-identification itself is PS3.15 Annex E (tests/unit/test_deid_*.py); here what matters is
that a researcher receives nothing else.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
import uvicorn
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from starlette.testclient import TestClient

from integration import ADMIN_TOKEN, in_process_archive, multipart_parts
from nubis.archive import Archive
from nubis.deid.profile import load_default_profile
from nubis.errors import BadRequest, Conflict, Forbidden, NotFound
from nubis.jobs.context import JobContext, JobStopped
from nubis.jobs.store import Job
from nubis.security.policy import Principal
from nubis.services.research_export import KIND, ResearchExport
from nubis.tools.synth import PatientSpec, dataset_bytes, series_datasets
from nubis.web.app import create_app

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
ADMIN = Principal("admin", "default", frozenset({"admin"}))
DEFAULT_PROFILE = (Path(__file__).parents[2] / "src/nubis/deid/profiles/default.toml").read_text()


@dataclass
class Lab:
    client: TestClient
    archive: Archive
    keys: dict[str, str]
    # Every identifying string of the stored objects, UIDs included.
    phi: set[str] = field(default_factory=set)
    studies: dict[str, str] = field(default_factory=dict)  # label -> Study Instance UID
    us_sop: str = ""

    def get(
        self, who: str, url: str, headers: dict[str, str] | None = None, **kw: object
    ) -> object:
        auth = {"Authorization": f"Bearer {self.keys[who]}", **(headers or {})}
        return self.client.get(url, headers=auth, **kw)  # type: ignore[arg-type]


def _store(client: TestClient, datasets: list[Dataset]) -> None:
    body = b"".join(
        b"--b\r\nContent-Type: application/dicom\r\n\r\n" + dataset_bytes(ds) + b"\r\n"
        for ds in datasets
    )
    response = client.post(
        "/dicom-web/studies",
        content=body + b"--b--\r\n",
        headers={
            "Authorization": f"Bearer {ADMIN_TOKEN}",
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
        },
    )
    assert response.status_code == 200, response.text


def _ultrasound(patient: PatientSpec, study_uid: str) -> Dataset:
    (ds,) = series_datasets(
        "CT", n_instances=1, rows=32, columns=48, patient=patient, study_uid=study_uid, seed=9
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
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    archive = in_process_archive(tmp_path_factory.mktemp("research") / "data", ADMIN_TOKEN)
    with TestClient(create_app(archive)) as client:
        keys = {"admin": ADMIN_TOKEN}
        for user, roles in (("res1", "researcher"), ("res2", "researcher"), ("rad", "radiologist")):
            archive.users.add_user(user, tenant="default", roles=roles)
            keys[user] = archive.users.create_api_key(user)[1]
        lab = Lab(client, archive, keys)
        alice = PatientSpec("PAT-ALICE-4711", "Liddell^Alice", "19610504", "F")
        bob = PatientSpec("PAT-BOB-0815", "Builder^Bob", "19550203", "M")
        for seed, (label, patient, accession) in enumerate(
            (
                ("a1", alice, "ACC-ALICE-ONE"),
                ("a2", alice, "ACC-ALICE-TWO"),
                ("b1", bob, "ACC-BOB-ONE"),
            ),
            start=1,
        ):
            datasets = list(
                series_datasets(
                    "CT",
                    n_instances=2,
                    rows=32,
                    columns=32,
                    patient=patient,
                    accession=accession,
                    seed=seed,
                )
            )
            study = str(datasets[0].StudyInstanceUID)
            if label == "a1":
                us = _ultrasound(alice, study)
                datasets.append(us)
                lab.us_sop = str(us.SOPInstanceUID)
            _store(client, datasets)
            lab.studies[label] = study
            for ds in datasets:
                lab.phi |= {
                    str(ds.StudyInstanceUID),
                    str(ds.SeriesInstanceUID),
                    str(ds.SOPInstanceUID),
                    str(ds.AccessionNumber),
                }
            lab.phi |= {patient.patient_id, patient.birth_date, *patient.patient_name.split("^")}
        research = archive.research
        research.create(
            ADMIN,
            "alpha",
            DEFAULT_PROFILE,
            cohort_query="ModalitiesInStudy=CT",
            members=("res1",),
        )
        research.create(ADMIN, "beta", DEFAULT_PROFILE, study_uids=(lab.studies["a1"],))
        research.add_member(ADMIN, "beta", "res2")
        yield lab


def _leaks(lab: Lab, text: str) -> list[str]:
    return sorted(value for value in lab.phi if value and value in text)


def _studies(lab: Lab, who: str, project: str) -> list[dict[str, object]]:
    response = lab.get(who, f"/projects/{project}/dicom-web/studies")
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    assert not _leaks(lab, response.text)  # type: ignore[attr-defined]
    found: list[dict[str, object]] = response.json()  # type: ignore[attr-defined]
    return found


def _value(item: dict[str, object], tag: str) -> str:
    return str(item[tag]["Value"][0])  # type: ignore[index]


def test_projects_are_made_and_shown_by_admins(lab: Lab) -> None:
    alpha = lab.archive.research.show(ADMIN, "alpha")
    assert alpha.study_count == 3 and alpha.members == ("res1",)
    assert alpha.summary()["profile"] == load_default_profile().name
    assert [p.name for p in lab.archive.research.projects(ADMIN)] == ["alpha", "beta"]
    # A cohort query's Modality means a study with a series of it (a study has no Modality).
    gamma = lab.archive.research.create(ADMIN, "gamma", DEFAULT_PROFILE, cohort_query="Modality=US")
    assert gamma.study_count == 1
    researcher = Principal("res1", "default", frozenset({"researcher"}))
    with pytest.raises(Forbidden):
        lab.archive.research.create(researcher, "x", DEFAULT_PROFILE, cohort_query="")
    with pytest.raises(Conflict):
        lab.archive.research.create(ADMIN, "alpha", DEFAULT_PROFILE, cohort_query="")
    with pytest.raises(BadRequest, match=r"profile|key"):
        lab.archive.research.create(ADMIN, "bad", "name = 1\nbogus = 2\n", cohort_query="")
    # The key is stored wrapped: the 32 bytes appear nowhere in the index row.
    key = lab.archive.research.key_of(alpha).key
    assert key not in alpha.wrapped.ciphertext and len(key) == 32


def test_researcher_sees_only_de_identified_studies(lab: Lab) -> None:
    items = _studies(lab, "res1", "alpha")
    assert len(items) == 3
    patients = {_value(i, "00100020") for i in items}
    # Two studies of one patient keep one pseudonym (PS3.15 E.3.6's consistent remapping).
    assert len(patients) == 2
    assert all(p.startswith("P") and len(p) == 16 for p in patients)
    for item in items:
        assert _value(item, "00081190").startswith("http://testserver/projects/alpha/dicom-web/")


def test_same_patient_same_pseudonym_per_project_only(lab: Lab) -> None:
    alpha = {_value(i, "0020000D"): _value(i, "00100020") for i in _studies(lab, "res1", "alpha")}
    beta = _studies(lab, "res2", "beta")
    assert len(beta) == 1
    assert _value(beta[0], "00100020") not in alpha.values()
    assert _value(beta[0], "0020000D") not in alpha


def test_metadata_and_instances_are_de_identified(lab: Lab) -> None:
    items = _studies(lab, "res1", "alpha")
    for item in items:
        base = _value(item, "00081190")
        meta = lab.get("res1", base + "/metadata")
        assert meta.status_code == 200 and not _leaks(lab, meta.text)  # type: ignore[attr-defined]
        # Every instance reference names the remapped study (E.3.9: references kept coherent).
        study = _value(item, "0020000D")
        assert {_value(m, "0020000D") for m in meta.json()} == {study}  # type: ignore[attr-defined]
        assert all("BulkDataURI" not in json.dumps(m) for m in meta.json())  # type: ignore[attr-defined]
        whole = lab.get("res1", base)
        assert whole.status_code == 200, whole.text[:300]  # type: ignore[attr-defined]
        parts = multipart_parts(whole.headers["content-type"], whole.content)  # type: ignore[attr-defined]
        assert len(parts) == 2  # the ultrasound is excluded, the two CT slices come
        for _, body in parts:
            assert not _leaks(lab, body.decode("latin-1"))
            ds = pydicom.dcmread(io.BytesIO(body))
            assert ds.PatientIdentityRemoved == "YES" and str(ds.StudyInstanceUID) == study


def test_series_instances_frames_by_remapped_uids(lab: Lab) -> None:
    item = _studies(lab, "res1", "alpha")[0]
    base = _value(item, "00081190")
    series = lab.get("res1", base + "/series").json()  # type: ignore[attr-defined]
    ct = next(s for s in series if _value(s, "00080060") == "CT")
    instances = lab.get("res1", _value(ct, "00081190") + "/instances")
    assert instances.status_code == 200 and not _leaks(lab, instances.text)  # type: ignore[attr-defined]
    url = _value(instances.json()[0], "00081190")  # type: ignore[attr-defined]
    # As OHIF asks (transfer-syntax=*: the server chooses; PS3.18 8.7.3.5.2).
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    frames = lab.get("res1", url + "/frames/1", headers={"Accept": accept})
    assert frames.status_code == 200, frames.text  # type: ignore[attr-defined]
    ((_, pixels),) = multipart_parts(frames.headers["content-type"], frames.content)  # type: ignore[attr-defined]
    assert len(pixels) == 32 * 32 * 2
    for rendered in ("/rendered", "/frames/1/rendered"):
        image = lab.get("res1", url + rendered, params={"accept": "image/png"})
        assert image.status_code == 200, image.text  # type: ignore[attr-defined]
        assert image.content.startswith(b"\x89PNG")  # type: ignore[attr-defined]
    one = lab.get("res1", url)
    assert one.status_code == 200  # type: ignore[attr-defined]


def test_excluded_ultrasound_is_refused_by_name_and_left_out_of_lists(lab: Lab) -> None:
    a1 = _studies(lab, "res2", "beta")[0]
    listed = lab.get("res2", _value(a1, "00081190") + "/instances").json()  # type: ignore[attr-defined]
    assert len(listed) == 2 and all(_value(i, "00080016") != US_IMAGE_STORAGE for i in listed)
    key = lab.archive.research.key_of(lab.archive.research.show(ADMIN, "beta"))
    remap = key.pseudonyms()
    study, sop = remap.uid(lab.studies["a1"]), remap.uid(lab.us_sop)
    series = next(
        s
        for s in lab.get("res2", f"/projects/beta/dicom-web/studies/{study}/series").json()  # type: ignore[attr-defined]
        if _value(s, "00080060") == "US"
    )
    url = _value(series, "00081190") + f"/instances/{sop}"
    for suffix in ("", "/metadata", "/frames/1", "/rendered"):
        response = lab.get("res2", url + suffix)
        assert response.status_code == 403, suffix  # type: ignore[attr-defined]
        assert not _leaks(lab, response.text)  # type: ignore[attr-defined]


def test_non_members_and_other_roles_see_nothing(lab: Lab) -> None:
    for who, project in (("res2", "alpha"), ("res1", "beta"), ("res1", "nope")):
        response = lab.get(who, f"/projects/{project}/dicom-web/studies")
        assert response.status_code == 404, (who, project)  # type: ignore[attr-defined]
    # A radiologist reads identified data at /dicom-web; the de-identified view is not its.
    assert lab.get("rad", "/projects/alpha/dicom-web/studies").status_code == 403  # type: ignore[attr-defined]
    # The identified API refuses a researcher, and says where its reads are.
    refused = lab.get("res1", "/dicom-web/studies")
    assert refused.status_code == 403 and "/projects/" in refused.text  # type: ignore[attr-defined]


def test_errors_name_nothing_identifying(lab: Lab) -> None:
    a1 = lab.studies["a1"]
    for url in (
        f"/projects/alpha/dicom-web/studies/{a1}",  # a stored UID is not a remapped one
        f"/projects/alpha/dicom-web/studies/{a1}/metadata",
        "/projects/alpha/dicom-web/studies?PatientName=Liddell*",
        "/projects/alpha/dicom-web/studies?StudyDate=19610504",
        f"/projects/alpha/dicom-web/studies/{a1}/series",
    ):
        response = lab.get("res1", url)
        assert response.status_code in (200, 400, 404), url  # type: ignore[attr-defined]
        body = response.text  # type: ignore[attr-defined]
        assert response.status_code != 200 or response.json() == []  # type: ignore[attr-defined]
        # What the researcher sent comes back at most; nothing the archive holds.
        assert not (set(_leaks(lab, body)) - set(re.findall(r"[0-9.]{10,}|Liddell", url))), url


def test_reidentification_is_admin_only_and_audited(lab: Lab) -> None:
    items = _studies(lab, "res1", "alpha")
    pseudonym = _value(items[0], "00100020")
    found = lab.archive.research.reidentify(ADMIN, "alpha", pseudonym)
    assert found.kind == "patient" and found.patient_id in ("PAT-ALICE-4711", "PAT-BOB-0815")
    by_study = lab.archive.research.reidentify(ADMIN, "alpha", _value(items[0], "0020000D"))
    assert by_study.kind == "study" and by_study.study_uids[0] in lab.studies.values()
    researcher = Principal("res1", "default", frozenset({"researcher"}))
    with pytest.raises(Forbidden):
        lab.archive.research.reidentify(researcher, "alpha", pseudonym)
    with pytest.raises(NotFound):
        lab.archive.research.reidentify(ADMIN, "beta", pseudonym)  # another project's
    lab.archive.audit.flush_reads()
    records = [
        r.event_dict
        for r in lab.archive.audit.scan(limit=100000)
        if "re-identification" in json.dumps(r.event_dict)
    ]
    # Two revealed (Patient Record, with the patient), one refused, one not issued.
    assert len(records) == 4, records


# ---------------------------------------------------------------------- exports
class _StopAfter(JobContext):
    """A job context whose runner stops once ``studies`` studies are done (an interruption:
    Ctrl-C, a node going down), as JobContext.check() then raises JobStopped."""

    def __init__(self, job: Job, studies: int) -> None:
        super().__init__(job, threading.Event())
        self.studies = studies

    def progress(self, done: int, total: int | None = None, cursor: object = None) -> None:
        if done >= self.studies:
            self._stopping.set()
        super().progress(done, total, cursor)


def _export(lab: Lab, project: str, stop_after: int | None = None, **to: str) -> JobContext:
    params = {"project": project, "tenant": "default", **to}
    job_id = lab.archive.jobs.enqueue(KIND, params)
    assert job_id is not None
    job = lab.archive.jobs.get(job_id)
    assert job is not None
    ctx = _StopAfter(job, stop_after) if stop_after else JobContext(job, threading.Event())
    ResearchExport(lab.archive.research, lab.archive.retrieve, ADMIN).run(ctx)
    return ctx


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.dcm"))}


def _manifest(folder: Path) -> dict[str, object]:
    manifest: dict[str, object] = json.loads((folder / "manifest.json").read_text())
    return manifest


def test_exports_of_one_project_agree_and_leak_nothing(lab: Lab, tmp_path: Path) -> None:
    first, second, other = tmp_path / "one", tmp_path / "two", tmp_path / "beta"
    _export(lab, "alpha", to=str(first))
    _export(lab, "alpha", to=str(second))
    _export(lab, "beta", to=str(other))
    files = _files(first)
    assert files == _files(second)  # same key, same pseudonyms, same bytes
    assert len(files) == 6  # three studies of two CT slices; the ultrasound is left out
    manifest = _manifest(first)
    assert manifest["studies"] == 3 and manifest["instances"] == 6 and manifest["patients"] == 2
    assert manifest["profile"]["name"] == load_default_profile().name  # type: ignore[index]
    (excluded,) = manifest["excluded"]  # type: ignore[misc]
    assert "excluded" in excluded["reason"] and "US" in excluded["reason"]
    pseudonyms = manifest["pseudonyms"]
    assert sorted(len(s) for s in pseudonyms.values()) == [1, 2]  # type: ignore[union-attr]
    # The view and the export name the same studies and patients (same key, same profile).
    viewed = {_value(i, "0020000D"): _value(i, "00100020") for i in _studies(lab, "res1", "alpha")}
    exported = {s: p for p, studies in pseudonyms.items() for s in studies}  # type: ignore[union-attr]
    assert viewed == exported
    # Another project: another pseudonym for the same patient.
    assert not set(_manifest(other)["pseudonyms"]) & set(pseudonyms)  # type: ignore[arg-type]
    everything = b"".join(files.values()) + (first / "manifest.json").read_bytes()
    assert not _leaks(lab, everything.decode("latin-1"))
    # A multi-study cohort keeps its references: each file's study is its folder's.
    for name, data in files.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        assert name.split("/")[:2] == [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)]


def test_an_interrupted_export_resumes(lab: Lab, tmp_path: Path) -> None:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _export(lab, "alpha", to=str(whole))
    with pytest.raises(JobStopped):
        _export(lab, "alpha", stop_after=1, to=str(resumed))
    assert not (resumed / "manifest.json").exists()
    assert 0 < len(_files(resumed)) < 6
    job = lab.archive.jobs.list(limit=1, kind=KIND)[0]
    # What the runner would have saved: the cursor of the last progress.
    again = JobContext(replace(job, cursor=1, progress_done=1), threading.Event())
    ResearchExport(lab.archive.research, lab.archive.retrieve, ADMIN).run(again)
    assert _files(resumed) == _files(whole)
    assert _manifest(resumed) == _manifest(whole)
    assert not list(resumed.rglob(".excluded")) and not list(resumed.rglob("*.jsonl"))


def test_zip_export_and_its_audit(lab: Lab, tmp_path: Path) -> None:
    target = tmp_path / "alpha.zip"
    before = lab.archive.audit.head()[0]
    _export(lab, "beta", zip=str(target))
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
    assert "manifest.json" in names and sum(n.endswith(".dcm") for n in names) == 2
    assert not (tmp_path / "alpha.zip.parts").exists()
    exports = [
        r.event_dict
        for r in lab.archive.audit.scan(after_seq=before, limit=1000)
        if r.event_dict["event_id"]["code"] == "110106"  # Export (PS3.15 A.5.3.6)
    ]
    assert len(exports) == 1 and "research project beta" in json.dumps(exports[0])


@contextmanager
def _serving(app: object, *, lifespan: str = "auto") -> Iterator[str]:
    """``app`` served over HTTP on a free port, in this process (uvicorn in a thread); its
    root URL."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan=lifespan,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def _second_nubis(folder: Path) -> Iterator[tuple[str, Archive]]:
    """Another nubis serving HTTP, in this process."""
    other = in_process_archive(folder, ADMIN_TOKEN)
    with _serving(create_app(other)) as root:
        yield f"{root}/dicom-web", other


def test_export_to_another_dicomweb_server(lab: Lab, tmp_path: Path) -> None:
    folder = tmp_path / "beta"
    _export(lab, "beta", to=str(folder))
    with _second_nubis(tmp_path / "other") as (root, other):
        params = {"project": "beta", "tenant": "default", "dicomweb": root}
        params["manifest"] = str(tmp_path / "manifest")
        job_id = lab.archive.jobs.enqueue(KIND, params)
        assert job_id is not None
        job = lab.archive.jobs.get(job_id)
        assert job is not None
        ResearchExport(
            lab.archive.research, lab.archive.retrieve, ADMIN, dicomweb_api_key=ADMIN_TOKEN
        ).run(JobContext(job, threading.Event()))
        # The receiver holds the same de-identified objects as the folder export, byte for
        # byte (STOW-RS verified by Content-Digest, PS3.18 10.5).
        for name, data in _files(folder).items():
            study, series, sop = name.removesuffix(".dcm").split("/")
            (found,) = other.index.instances_of("default", study, series, sop)
            assert found.sha256 == hashlib.sha256(data).hexdigest()
    assert _manifest(tmp_path / "manifest")["instances"] == 2


def test_a_multi_study_cohort_stays_coherent_and_agrees_with_the_view(
    lab: Lab, tmp_path: Path
) -> None:
    """One patient's two studies keep one pseudonym and one date shift (PS3.15 E.3.6, Modified
    Dates: the interval between them survives), and the view shows what the export holds."""
    _export(lab, "alpha", to=str(tmp_path))
    by_patient: dict[str, list[Dataset]] = {}
    for data in _files(tmp_path).values():
        ds = pydicom.dcmread(io.BytesIO(data))
        by_patient.setdefault(str(ds.PatientID), []).append(ds)
    alice = max(by_patient.values(), key=len)
    assert len({str(ds.StudyInstanceUID) for ds in alice}) == 2
    assert len({str(ds.PatientBirthDate) for ds in alice}) == 1
    assert {str(ds.PatientBirthDate) for ds in alice} != {"19610504"}
    one = alice[0]
    url = (
        f"/projects/alpha/dicom-web/studies/{one.StudyInstanceUID}/series/"
        f"{one.SeriesInstanceUID}/instances/{one.SOPInstanceUID}/metadata"
    )
    (viewed,) = lab.get("res1", url).json()  # type: ignore[attr-defined]
    exported = one.to_json_dict(bulk_data_threshold=0, bulk_data_element_handler=lambda _: "")
    for tag in ("00100020", "00100010", "00100030", "00080020", "0020000E", "00080018"):
        assert viewed[tag] == exported[tag], tag


def test_researcher_reads_are_audited_with_the_real_patient(lab: Lab) -> None:
    before = lab.archive.audit.head()[0]
    item = _studies(lab, "res1", "alpha")[0]
    assert lab.get("res1", _value(item, "00081190") + "/metadata").status_code == 200  # type: ignore[attr-defined]
    lab.archive.audit.flush_reads()
    records = [r.event_dict for r in lab.archive.audit.scan(after_seq=before, limit=1000)]
    accessed = [r for r in records if "de-identified for research project alpha" in json.dumps(r)]
    assert accessed, records
    # The audit trail names the stored patient; the researcher never saw it.
    assert any(p in json.dumps(accessed) for p in ("PAT-ALICE-4711", "PAT-BOB-0815"))
    # A query is recorded whatever it finds (PS3.15 A.5.3.10), nothing included.
    before = lab.archive.audit.head()[0]
    empty = lab.get("res1", "/projects/alpha/dicom-web/studies/2.25.1/series")
    assert empty.status_code == 200 and empty.json() == []  # type: ignore[attr-defined]
    lab.archive.audit.flush_reads()
    queries = [
        r.event_dict
        for r in lab.archive.audit.scan(after_seq=before, limit=1000)
        if r.event_dict["event_id"]["code"] == "110112"  # Query
    ]
    assert len(queries) == 1


def test_a_dicomweb_client_reads_the_project(lab: Lab) -> None:
    """dicomweb-client, configured with the project's root as its base URL, searches and
    retrieves as from any DICOMweb server (PS3.18), and receives nothing identifying."""
    # The lab's archive already runs (its TestClient holds the lifespan).
    with _serving(create_app(lab.archive), lifespan="off") as root:
        client = DICOMwebClient(
            url=f"{root}/projects/alpha/dicom-web",
            headers={"Authorization": f"Bearer {lab.keys['res1']}"},
        )
        studies = client.search_for_studies()
        assert len(studies) == 3 and not _leaks(lab, json.dumps(studies))
        study = _value(studies[0], "0020000D")
        metadata = client.retrieve_study_metadata(study)
        assert metadata and not _leaks(lab, json.dumps(metadata))
        ct = next(m for m in metadata if _value(m, "00080060") == "CT")
        series, sop = _value(ct, "0020000E"), _value(ct, "00080018")
        instance = client.retrieve_instance(study, series, sop)
        assert instance.PatientIdentityRemoved == "YES"
        assert not _leaks(lab, str(instance))
        (frame,) = client.retrieve_instance_frames(study, series, sop, frame_numbers=[1])
        assert len(frame) == 32 * 32 * 2


def test_export_says_what_became_of_deleted_and_shredded_studies(lab: Lab, tmp_path: Path) -> None:
    """A cohort is resolved when the project is made: a study deleted since, and a patient
    crypto-shredded since, are named in the manifest (by remapped UID), never a failure."""
    made = {}
    for seed, patient_id in ((41, "PAT-GONE-1"), (42, "PAT-SHRED-2")):
        datasets = list(
            series_datasets(
                "CT", n_instances=1, rows=16, columns=16, seed=seed,
                patient=PatientSpec(patient_id, "Later^Lou"),
            )
        )  # fmt: skip
        _store(lab.client, datasets)
        made[patient_id] = str(datasets[0].StudyInstanceUID)
    lab.archive.research.create(ADMIN, "later", DEFAULT_PROFILE, study_uids=tuple(made.values()))
    lab.archive.maintenance.delete(ADMIN, made["PAT-GONE-1"])
    assert lab.archive.keys is not None
    lab.archive.keys.shred_patient("default", "PAT-SHRED-2")
    _export(lab, "later", to=str(tmp_path))
    manifest = _manifest(tmp_path)
    remap = lab.archive.research.key_of(lab.archive.research.show(ADMIN, "later")).pseudonyms()
    assert manifest["absent"] == [remap.uid(made["PAT-GONE-1"])]
    (erased,) = manifest["excluded"]  # type: ignore[misc]
    assert erased["study"] == remap.uid(made["PAT-SHRED-2"]) and "shredded" in erased["reason"]
    assert manifest["instances"] == 0 and not _files(tmp_path)


def test_the_web_face_shows_members_the_project_de_identified(lab: Lab) -> None:
    """The project's page and the viewer over its de-identified DICOMweb (every read the
    viewer then makes is one of the project's routes, tested above)."""
    listing = lab.get("res1", "/ui/projects/alpha")
    assert listing.status_code == 200 and not _leaks(lab, listing.text)  # type: ignore[attr-defined]
    links = re.findall(r'href="(/ui/projects/alpha/studies/[0-9.]+/view)"', listing.text)  # type: ignore[attr-defined]
    assert len(links) == 3
    viewer = lab.get("res1", links[0])
    assert viewer.status_code == 200 and not _leaks(lab, viewer.text)  # type: ignore[attr-defined]
    assert 'data-dicomweb="/projects/alpha/dicom-web"' in viewer.text  # type: ignore[attr-defined]
    thumbnails = re.findall(r'data-src="([^"]+/thumbnail)"', viewer.text)  # type: ignore[attr-defined]
    statuses = [lab.get("res1", url).status_code for url in thumbnails]  # type: ignore[attr-defined]
    # A CT series has one; an ultrasound series, whose objects the profile excludes, not.
    assert 200 in statuses and set(statuses) <= {200, 403}, statuses
    assert lab.get("res2", "/ui/projects/alpha").status_code == 404  # type: ignore[attr-defined]
    assert lab.get("rad", "/ui/projects/alpha").status_code == 403  # type: ignore[attr-defined]
