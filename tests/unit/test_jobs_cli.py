"""``nubis jobs`` and ``nubis storage`` from the command line, on an archive made by import."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from typer.testing import CliRunner

from nubis.cli.main import app
from nubis.tools.synth import make_ct_series


def test_jobs_and_storage_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data"), "--set", "durable=false",
            "--set", "jobs_schedule=", "--set", "storage_prices=cold=0.01"]  # fmt: skip

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, *data], env={"COLUMNS": "200"})
        assert result.exit_code == code, result.output
        return result.output

    files = make_ct_series(tmp_path / "ct", n_instances=4, rows=32, columns=32)
    run("import", str(tmp_path / "ct"))
    assert "no jobs" not in run("jobs", "list")  # an empty table, no error
    assert "job 1 (verify) queued" in run("jobs", "run", "verify", "--param", "max_mb_per_s=0")
    assert "job 2 (reap) queued" in run("jobs", "run", "reap", "--param", "grace_seconds=0")
    listed = run("jobs", "list")
    assert "verify" in listed and "reap" in listed and "queued" in listed
    assert "job 2 cancelled" in run("jobs", "cancel", "2")
    assert "had already ended (cancelled)" in run("jobs", "cancel", "2")
    assert "no job 9" in run("jobs", "cancel", "9", code=1)
    assert "unknown job kind" in run("jobs", "run", "backup", code=2)

    assert "1 job(s) run" in run("jobs", "work", "--once")
    shown = json.loads(run("jobs", "show", "1"))
    assert shown["state"] == "done" and shown["params"] == {"max_mb_per_s": 0}
    assert shown["progress"] == {"done": 4, "total": 4, "fraction": 1.0, "eta_seconds": None}
    assert shown["result"]["ok"] == 4 and shown["result"]["problems"] == []
    table = run("jobs", "list")
    assert "100.0%" in table and "done" in table and "cancelled" in table
    assert "4 intact" in table  # the verify job's note
    assert [j["id"] for j in json.loads(run("jobs", "list", "--json", "--state", "done"))] == [1]

    size = sum(p.stat().st_size for p in files)
    report = json.loads(run("storage", "report", "--json", "--growth", "10%/month",
                            "--months", "2"))  # fmt: skip
    assert {t["tier"]: (t["objects"], t["bytes"]) for t in report["tiers"]} == {
        "hot": (4, size), "cold": (0, 0), "archive": (0, 0)
    }  # fmt: skip
    assert report["growth_per_month"] == 0.1 and len(report["projection"]) == 3
    assert report["projection"][2]["bytes"] == round(size * 1.21)

    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    pinned = run("storage", "tier", study_uid, "cold")
    assert "pinned to cold" in pinned and "job 3" in pinned
    run("jobs", "work", "--once")
    where = json.loads(run("storage", "tier", study_uid))
    assert where["pin"] == "cold" and where["tiers"] == {"cold": {"objects": 4, "bytes": size}}
    table = run("storage", "report", "--growth", "5%")
    assert "cold" in table and "STANDARD_IA" in table and "In 12 months" in table
    assert json.loads(run("storage", "report", "--json"))["tiers"][1]["monthly_cost"] == round(
        size / (1 << 30) * 0.01, 4
    )
    assert "unpinned" in run("storage", "tier", study_uid, "--unpin")
    run("jobs", "work", "--once")
    assert json.loads(run("storage", "tier", study_uid))["tiers"] == {
        "hot": {"objects": 4, "bytes": size}
    }
    assert "no tier 'warm'" in run("storage", "tier", study_uid, "warm", code=2)
    assert "no study 1.2.3" in run("storage", "tier", "1.2.3", "hot", code=1)
    assert "growth" in run("storage", "report", "--growth", "fast", code=2)


def test_a_verify_job_run_by_jobs_work_records_its_reads(tmp_path: Path) -> None:
    """Re-reading patient data is an access (PS3.15 A.5.3.3, DICOM Instances Accessed, action
    Read) whichever process runs the job: `nubis jobs work` records it as a server does."""
    from nubis.archive import Archive
    from nubis.config import load_settings

    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data"), "--set", "durable=false",
            "--set", "jobs_schedule="]  # fmt: skip

    def run(*args: str) -> str:
        result = runner.invoke(app, [*args, *data], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        return result.output

    files = make_ct_series(tmp_path / "ct", n_instances=3, rows=32, columns=32)
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    run("import", str(tmp_path / "ct"))
    run("jobs", "run", "verify")
    assert "1 job(s) run" in run("jobs", "work", "--once")

    settings = load_settings(overrides={"data_dir": tmp_path / "data", "durable": False})
    with Archive(settings) as archive:
        reads = [
            e for e in (r.event_dict for r in archive.audit.scan())
            if e["event_id"]["code"] == "110103" and e["action"] == "R"
        ]  # fmt: skip
    described = [e["outcome_description"] for e in reads]
    assert described == ["integrity check of 3 object(s): intact"]
    named = [o["id"] for o in reads[0]["objects"] if o["id_type"]["code"] == "110180"]
    assert named == [study_uid]
    assert reads[0]["front_door"] == "system"
