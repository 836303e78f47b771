"""AI analyzers (issue 15): rules queue analyze jobs for stable studies, analyzers read through
the retrieve service as ``analyzer:<name>`` and their results are stored in the same study.

The built-in CT series QC runs on a synthetic CT series with two slices missing: it must find
the gap and store a TID 1500 Measurement Report (PS3.16 TID 1500, a Comprehensive 3D SR) and
a binary Segmentation (PS3.3 A.51) that dciodvfy accepts without an error and highdicom reads
back, visible by QIDO-RS like any other series. A plug-in installed under the entry point
group ``nubis.analyzers`` (a real distribution's metadata on sys.path, found by
importlib.metadata) runs only on the modality its rule names, and is retried after failing.
"""

from __future__ import annotations

import io
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import highdicom as hd
import pydicom
import pytest
from sqlalchemy import insert, select
from starlette.testclient import TestClient

from integration import in_process_archive, multipart_parts
from nubis.analyzers.contract import Findings, StudyView, Wants
from nubis.archive import Archive
from nubis.index import analyzer_runs_sql as runs
from nubis.index import workitems_sql
from nubis.index.schema import analyzer_runs, quarantined_studies, studies
from nubis.jobs.context import JobContext, JobStopped
from nubis.jobs.runner import JobRunner
from nubis.jobs.store import Job, JobState, now_ms
from nubis.security.policy import system_principal
from nubis.tools import synth
from nubis.web.app import create_app

ADMIN = "analyzer-test-admin-token-0123456789abcdef"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
MISSING = (5, 6)  # slice indexes left out of the CT series: a gap of two slices


class Probe:
    """A plug-in analyzer, installed through an entry point below: fails its first call."""

    name = "probe"
    version = "7"
    wants = Wants()
    calls: ClassVar[list[str]] = []

    def analyze(self, study: StudyView) -> Findings:
        Probe.calls.append(study.study_uid)
        if len(Probe.calls) == 1:
            raise RuntimeError("the model server is warming up")
        if len(Probe.calls) == 3:  # a result of another study: the store refuses it
            (stray,) = synth.series_datasets("MR", n_instances=1, rows=8, columns=8, seed=159)
            return Findings(objects=(stray,))
        modalities = sorted({s.modality for s in study.series})
        return Findings(summary={"modalities": modalities, "slices": len(study.series[0].datasets)})


def _install_probe(site: Path) -> None:
    """A distribution's metadata declaring the entry point, as pip would install it."""
    info = site / "nubis_probe_analyzer-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: nubis-probe-analyzer\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[nubis.analyzers]\nprobe = integration.test_analyzers:Probe\n"
    )


class World:
    def __init__(self, archive: Archive, client: TestClient, runner: JobRunner) -> None:
        self.archive = archive
        self.client = client
        self.runner = runner
        self.ct_study = ""
        self.mr_study = ""

    def stow(self, datasets: list[pydicom.Dataset]) -> None:
        body = b"".join(
            b"--b\r\nContent-Type: application/dicom\r\n\r\n" + synth.dataset_bytes(ds) + b"\r\n"
            for ds in datasets
        )
        response = self.client.post(
            "/dicom-web/studies",
            content=body + b"--b--\r\n",
            headers={
                "Authorization": f"Bearer {ADMIN}",
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
            },
        )
        assert response.status_code == 200, response.text

    def run_jobs(self) -> None:
        while self.runner.run_once():
            pass

    def jobs(self, kind: str) -> list[Job]:
        return self.archive.jobs.list(kind=kind, limit=100)

    def analyze_jobs(self, analyzer: str) -> list[Job]:
        return [j for j in self.jobs("analyze") if j.params.get("analyzer") == analyzer]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("analyzers")
    site = tmp / "site"
    _install_probe(site)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        archive = in_process_archive(
            tmp / "data",
            ADMIN,
            jobs="false",  # the test runs the jobs itself, one at a time
            analyzers="ct-qc; probe modality=MR",
            analyzer_stable_seconds="0",
        )
        with TestClient(create_app(archive)) as client:
            archive.analyzer_jobs.retry_seconds = 0  # the retry is due at once
            world = World(archive, client, archive.new_job_runner(scheduled=False))
            ct = [
                ds
                for i, ds in enumerate(
                    synth.series_datasets("CT", n_instances=12, rows=64, columns=64, seed=151)
                )
                if i not in MISSING
            ]
            mr = list(synth.series_datasets("MR", n_instances=3, rows=32, columns=32, seed=152))
            world.stow(ct)
            world.stow(mr)
            world.ct_study, world.mr_study = (
                str(ct[0].StudyInstanceUID),
                str(mr[0].StudyInstanceUID),
            )
            archive.jobs.enqueue("analyze-scan")
            world.run_jobs()
            yield world


def _stored(world: World, study: str, sop_class: str) -> pydicom.Dataset:
    """The study's one object of ``sop_class``, found by QIDO-RS and read by WADO-RS."""
    auth = {"Authorization": f"Bearer {ADMIN}"}
    found = world.client.get(
        f"/dicom-web/studies/{study}/instances", params={"SOPClassUID": sop_class}, headers=auth
    ).json()
    assert len(found) == 1, found
    series, sop = found[0]["0020000E"]["Value"][0], found[0]["00080018"]["Value"][0]
    response = world.client.get(
        f"/dicom-web/studies/{study}/series/{series}/instances/{sop}",
        headers={**auth, "Accept": 'multipart/related; type="application/dicom"'},
    )
    assert response.status_code == 200
    ((_, body),) = multipart_parts(response.headers["content-type"], response.content)
    return pydicom.dcmread(io.BytesIO(body))


def test_the_scan_queues_each_analyzer_on_the_studies_its_rule_takes(world: World) -> None:
    """ct-qc wants CT, the rule gives probe MR only: one analyze job each, on its study."""
    assert world.archive.new_job_runner().schedule["analyze-scan"] == 60
    (scan,) = world.jobs("analyze-scan")
    assert scan.state is JobState.DONE
    assert scan.result == {"queued": {"ct-qc": 1, "probe": 1}, "workitems": 0}
    assert [j.params["study"] for j in world.analyze_jobs("ct-qc")] == [world.ct_study]
    assert [j.params["study"] for j in world.analyze_jobs("probe")] == [world.mr_study]
    # A second scan finds nothing new: each (study, analyzer version) is queued once.
    world.archive.jobs.enqueue("analyze-scan")
    world.run_jobs()
    assert world.jobs("analyze-scan")[0].result == {
        "queued": {"ct-qc": 0, "probe": 0},
        "workitems": 0,
    }


def test_ct_qc_finds_the_gap(world: World) -> None:
    (job,) = world.analyze_jobs("ct-qc")
    assert job.state is JobState.DONE, job.last_error
    assert job.result is not None
    (series,) = job.result["findings"]["series"]
    assert series["slices"] == 12 - len(MISSING)
    assert series["missing_slices"] == len(MISSING)
    assert series["even"] is False and series["spacing_mm"] == 1.25
    assert series["thicknesses_mm"] == [1.25]
    # The phantom's air is -1000 HU (noise sigma 12), its soft tissue 40 HU.
    assert series["air_ok"] is True and abs(series["air_hu"] + 1000) < 10
    assert series["water_ok"] is True and 30 <= series["water_hu"] <= 50


def test_the_results_are_valid_dicom_in_the_same_study_and_visible_by_qido(
    world: World, tmp_path: Path
) -> None:
    response = world.client.get(
        f"/dicom-web/studies/{world.ct_study}/series",
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert response.status_code == 200
    modalities = sorted(s["00080060"]["Value"][0] for s in response.json())
    assert modalities == ["CT", "SEG", "SR"]
    sr = _stored(world, world.ct_study, COMPREHENSIVE_3D_SR)
    seg = _stored(world, world.ct_study, SEG_STORAGE)
    for name, ds in (("sr", sr), ("seg", seg)):
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [
            line for line in (checked.stdout + checked.stderr).splitlines() if "Error" in line
        ]
        assert errors == [], errors
    report = hd.sr.srread(tmp_path / "sr.dcm")
    (group,) = report.content.get_image_measurement_groups()
    missing = group.get_measurements(name=hd.sr.CodedConcept("CTQC01", "99NUBIS", "Missing slices"))
    assert [m.value for m in missing] == [len(MISSING)]
    segmentation = hd.seg.segread(tmp_path / "seg.dcm")
    assert segmentation.get_segment_description(1).segment_label == "Body"
    ct_sops = {
        i.sop_instance_uid
        for i in world.archive.retrieve.instances(system_principal("test"), world.ct_study)
        if i.sop_class_uid == pydicom.uid.CTImageStorage
    }
    assert {uid for _, _, uid in segmentation.get_source_image_uids()} == ct_sops


def test_the_analysis_is_read_and_stored_by_the_analyzer_principal_and_audited(
    world: World,
) -> None:
    """PS3.15 A.5.3.4: the read and each store are DICOM Instances Transferred records."""
    world.archive.audit.flush_reads()
    mine = [
        r.event_dict
        for r in world.archive.audit.scan(0, limit=100000)
        if r.event_dict["participants"][0]["user_id"] == "analyzer:ct-qc"
    ]
    actions = sorted(r["action"] for r in mine)
    assert actions.count("C") == 2  # the SR and the SEG, created
    assert "R" in actions  # the study, read
    assert all(r["event_id"]["code"] == "110104" for r in mine)


def test_a_plugin_from_an_entry_point_is_retried_after_failing(world: World) -> None:
    (job,) = world.analyze_jobs("probe")
    assert job.state is JobState.DONE and job.attempts == 2
    assert job.last_error is not None and "warming up" in job.last_error
    assert job.result is not None and job.result["findings"] == {"modalities": ["MR"], "slices": 3}
    assert Probe.calls == [world.mr_study, world.mr_study]


def test_an_analyze_job_waits_for_a_free_slot_without_spending_an_attempt(world: World) -> None:
    """concurrency=1 (the default): a run holding the slot keeps another analysis waiting."""
    archive = world.archive
    with archive.index.reading() as conn:
        study_pk = conn.exec_driver_sql(
            "SELECT id FROM studies WHERE study_uid = ?", (world.mr_study,)
        ).scalar_one()
    holder = archive.index.write(
        lambda conn: runs.ensure_run(conn, "default", world.mr_study, "ct-qc", "other", now=0)
    )
    assert holder is not None and holder.study_pk == study_pk
    now = now_ms()
    assert archive.index.write(
        lambda conn: runs.take_slot(
            conn, holder.id, "ct-qc", limit=1, job_id=0, now=now, slot_ms=60_000
        )
    )
    job_id = archive.jobs.enqueue(
        "analyze", {"analyzer": "ct-qc", "study": world.mr_study}, max_attempts=3
    )
    assert job_id is not None
    assert world.runner.run_once()
    job = archive.jobs.get(job_id)
    assert job is not None and job.state is JobState.QUEUED and job.attempts == 0
    archive.index.write(lambda conn: runs.finish(conn, holder.id, runs.DONE, now=now))
    archive.index.write(
        lambda conn: conn.exec_driver_sql("UPDATE jobs SET not_before = 0 WHERE id = ?", (job_id,))
    )
    world.run_jobs()
    job = archive.jobs.get(job_id)
    # The MR study holds no CT series: the run ends as skipped, nothing analyzed.
    assert job is not None and job.state is JobState.DONE and job.attempts == 1
    assert job.result == {"analyzed": False, "reason": "no series the analyzer wants"}


def test_a_study_the_analyzer_may_not_see_is_never_analyzed(world: World) -> None:
    """A study held in quarantine is absent to the analyzer principal (only admins see it):
    the scan passes it over, and a run asked for by hand fails at once as not found, the
    refused read recorded like any other (PS3.15 A.5.3.4, outcome minor failure)."""
    archive = world.archive
    ct = list(synth.series_datasets("CT", n_instances=3, rows=16, columns=16, seed=153))
    world.stow(ct)
    study = str(ct[0].StudyInstanceUID)
    with archive.index.reading() as conn:
        study_pk = conn.execute(
            select(studies.c.id).where(studies.c.study_uid == study)
        ).scalar_one()
    archive.index.write(
        lambda conn: conn.execute(
            insert(quarantined_studies).values(study_pk=study_pk, reason="test", since=now_ms())
        )
    )
    archive.jobs.enqueue("analyze-scan")
    world.run_jobs()
    assert world.jobs("analyze-scan")[0].result == {
        "queued": {"ct-qc": 0, "probe": 0},
        "workitems": 0,
    }
    job_id = archive.jobs.enqueue("analyze", {"analyzer": "ct-qc", "study": study})
    assert job_id is not None
    world.run_jobs()
    job = archive.jobs.get(job_id)
    assert job is not None and job.state is JobState.FAILED and job.attempts == 1
    archive.audit.flush_reads()
    refused = [
        r.event_dict
        for r in archive.audit.scan(0, limit=100000)
        if r.event_dict["participants"][0]["user_id"] == "analyzer:ct-qc"
        and study in str(r.event_dict)
    ]
    assert [(r["action"], r["outcome"]) for r in refused] == [("R", 4)]


def test_a_result_of_another_study_is_refused_and_fails_the_run_at_once(world: World) -> None:
    """PS3.18 10.5.1: a stored object must belong to the study it is stored into."""
    job_id = world.archive.jobs.enqueue("analyze", {"analyzer": "probe", "study": world.mr_study})
    assert job_id is not None
    world.run_jobs()
    job = world.archive.jobs.get(job_id)
    assert job is not None and job.state is JobState.FAILED and job.attempts == 1
    assert job.last_error is not None and "refused" in job.last_error
    assert len(Probe.calls) == 3


def test_a_stopping_runner_gives_the_slot_back(world: World) -> None:
    """The runner stops while a study is read: the job goes back (JobStopped, no attempt
    counted by the runner) and the run is queued again with its concurrency slot free."""
    archive = world.archive
    job_id = archive.jobs.enqueue("analyze", {"analyzer": "probe", "study": world.mr_study})
    job = archive.jobs.claim("test", 60, ["analyze"], job_id=job_id)
    assert job is not None
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(JobStopped):
        archive.analyzer_jobs.analyze(JobContext(job, stopping))
    with archive.index.reading() as conn:
        state, slot = conn.execute(
            select(analyzer_runs.c.state, analyzer_runs.c.slot_expires_at).where(
                analyzer_runs.c.analyzer == "probe"
            )
        ).one()
    assert (state, slot) == (runs.QUEUED, None)
    assert len(Probe.calls) == 3  # stopped before the analyzer was called
    archive.jobs.release(job.id, "test", count_attempt=False)


def _analysis_workitem(world: World, analyzer: str | None, study: str) -> str:
    """Schedule an analysis over UPS-RS (PS3.18 11.4): the Type 1 attributes of PS3.4 Table
    CC.2.5-3, the code (ANALYZE, 99NUBIS), the analyzer as a Scheduled Processing Parameter
    and the study in the Input Information Sequence."""
    code = {
        "00080100": {"vr": "SH", "Value": ["ANALYZE"]},
        "00080102": {"vr": "SH", "Value": ["99NUBIS"]},
        "00080104": {"vr": "LO", "Value": ["Analysis by a nubis analyzer"]},
    }
    data: dict[str, object] = {
        "00100020": {"vr": "LO", "Value": ["WI-1"]},
        "00741200": {"vr": "CS", "Value": ["MEDIUM"]},
        "00741204": {"vr": "LO", "Value": ["AI analysis"]},
        "00404005": {"vr": "DT", "Value": ["20261208090000"]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
        "00404018": {"vr": "SQ", "Value": [code]},
        "00404021": {"vr": "SQ", "Value": [{"0020000D": {"vr": "UI", "Value": [study]}}]},
    }
    if analyzer is not None:
        concept = {
            "00080100": {"vr": "SH", "Value": ["ANALYZER"]},
            "00080102": {"vr": "SH", "Value": ["99NUBIS"]},
            "00080104": {"vr": "LO", "Value": ["Analyzer"]},
        }
        data["00741210"] = {
            "vr": "SQ",
            "Value": [
                {
                    "0040A040": {"vr": "CS", "Value": ["TEXT"]},
                    "0040A043": {"vr": "SQ", "Value": [concept]},
                    "0040A160": {"vr": "UT", "Value": [analyzer]},
                }
            ],
        }
    response = world.client.post(
        "/dicom-web/workitems",
        json=[data],
        headers={
            "Authorization": f"Bearer {ADMIN}",
            "Content-Type": "application/dicom+json",
        },
    )
    assert response.status_code == 201, response.text
    return str(response.headers["Location"]).rstrip("/").rsplit("/", 1)[-1]


def _workitem(world: World, uid: str) -> dict[str, Any]:
    response = world.client.get(
        f"/dicom-web/workitems/{uid}", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert response.status_code == 200, response.text
    return dict(response.json()[0])


def test_a_workitem_drives_an_analyzer_to_completion(world: World) -> None:
    """A SCHEDULED workitem asking for ct-qc is claimed by an analyze job, the analysis runs
    and the workitem is COMPLETED with its results in the Unified Procedure Step Performed
    Procedure Sequence > Output Information Sequence (PS3.4 CC.2.5.1.3, Table CC.2.5-3)."""
    uid = _analysis_workitem(world, "ct-qc", world.ct_study)
    world.archive.jobs.enqueue("analyze-scan")
    world.run_jobs()
    assert world.jobs("analyze-scan")[0].result["workitems"] == 1
    (job,) = [j for j in world.jobs("analyze") if j.params.get("workitem") == uid]
    assert job.state is JobState.DONE, job.last_error
    done = _workitem(world, uid)
    assert done["00741000"]["Value"] == ["COMPLETED"]
    assert "00081195" not in done  # the Transaction UID is never returned (PS3.4 CC.2.5.1.1)
    performed = done["00741216"]["Value"][0]
    assert performed["00404050"]["Value"] and performed["00404051"]["Value"]
    assert performed["00404019"]["Value"][0]["00080100"]["Value"] == ["ANALYZE"]
    referenced = {
        (ref["00081150"]["Value"][0], ref["00081155"]["Value"][0])
        for output in performed["00404033"]["Value"]
        for ref in output["00081199"]["Value"]
    }
    assert {SEG_STORAGE, COMPREHENSIVE_3D_SR} == {sop_class for sop_class, _ in referenced}
    for sop_class, sop in referenced:
        assert str(_stored(world, world.ct_study, sop_class).SOPInstanceUID) == sop
    # Claimed and completed by the analyzer's principal, through the worklist service.
    with world.archive.index.reading() as conn:
        found = workitems_sql.find(conn, "default", uid)
    assert found is not None and found.performer == "analyzer:ct-qc"
    # Done once: the next scan queues no second job for it.
    world.archive.jobs.enqueue("analyze-scan")
    world.run_jobs()
    assert world.jobs("analyze-scan")[0].result["workitems"] == 0


@pytest.mark.parametrize(
    ("analyzer", "reason"),
    [("no-such-analyzer", "is not installed"), (None, "names no analyzer")],
)
def test_a_workitem_that_cannot_be_performed_is_canceled_with_the_reason(
    world: World, analyzer: str | None, reason: str
) -> None:
    """The performer cancels what it claimed and cannot do, giving the Reason For
    Cancellation in the Procedure Step Progress Information Sequence (PS3.4 CC.2.5.1.3)."""
    uid = _analysis_workitem(world, analyzer, world.ct_study)
    world.archive.jobs.enqueue("analyze-scan")
    world.run_jobs()
    (job,) = [j for j in world.jobs("analyze") if j.params.get("workitem") == uid]
    assert job.state is JobState.FAILED and reason in (job.last_error or "")
    canceled = _workitem(world, uid)
    assert canceled["00741000"]["Value"] == ["CANCELED"]
    progress = canceled["00741002"]["Value"][0]
    assert reason in progress["00741238"]["Value"][0]
    assert progress["00404052"]["Value"]  # the cancellation's date and time


def test_a_workitem_claimed_by_another_performer_is_left_to_it(world: World) -> None:
    """Only the performer holding the Transaction UID may change an IN PROGRESS workitem
    (PS3.4 CC.2.1.3): an analyze job that finds it claimed leaves it alone."""
    uid = _analysis_workitem(world, "ct-qc", world.ct_study)
    scan = world.archive.jobs.enqueue("analyze-scan")
    assert scan is not None
    assert world.runner.run_job(scan, world.archive.run_analyze_scan)  # queues its job
    claim = [
        {
            "00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
            "00081195": {"vr": "UI", "Value": ["2.25.1234567"]},
        }
    ]
    response = world.client.put(
        f"/dicom-web/workitems/{uid}/state",
        json=claim,
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/dicom+json"},
    )
    assert response.status_code == 200, response.text
    world.run_jobs()
    (job,) = [j for j in world.jobs("analyze") if j.params.get("workitem") == uid]
    assert job.state is JobState.DONE and job.result == {"workitem": uid, "claimed": False}
    assert _workitem(world, uid)["00741000"]["Value"] == ["IN PROGRESS"]
