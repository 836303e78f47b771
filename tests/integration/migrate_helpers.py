"""Running ``nubis migrate`` and reading its report and audit records, for the migration tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from integration.cli import nubis_cli

# Test data is throwaway (no fsync); a killed migration's lease expires after 3 s.
ARCHIVE_SETTINGS = ("--set", "durable=false", "--set", "jobs_lease_seconds=3")


def nubis(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``nubis ARGS --data-dir DATA_DIR``, run in the test's process (integration.cli): what
    is tested is what the command does, not its process."""
    return nubis_cli(*args, "--data-dir", str(data_dir), *ARCHIVE_SETTINGS)


def nubis_process(
    data_dir: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``nubis ARGS --data-dir DATA_DIR`` in a process of its own, as an operator runs it
    beside the server (a backup taken while the test's own threads send stores)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "nubis", *args, "--data-dir", str(data_dir), *ARCHIVE_SETTINGS],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def migrate(data_dir: Path, source: str, *options: str) -> dict[str, Any]:
    """Run a migration to its end; its job's result."""
    done = nubis(data_dir, "migrate", "run", source, *options)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def report(data_dir: Path, name: str, *, expect_gaps: bool = False) -> dict[str, Any]:
    done = nubis(data_dir, "migrate", "report", name, "--format", "json")
    assert done.returncode == (1 if expect_gaps else 0), done.stdout + done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def audit_records(data_dir: Path, user: str) -> list[dict[str, Any]]:
    done = nubis(data_dir, "audit", "list", "--user", user, "--limit", "100000", "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def start_migration(data_dir: Path, source: str, *options: str) -> subprocess.Popen[str]:
    """``nubis migrate run`` in the background (to be killed)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable, "-m", "nubis", "migrate", "run", source, *options,
            "--data-dir", str(data_dir), *ARCHIVE_SETTINGS,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )  # fmt: skip


def job_progress(data_dir: Path) -> dict[str, Any]:
    """The newest job's progress as ``nubis jobs list`` shows it (done, total, fraction,
    eta_seconds)."""
    done = nubis(data_dir, "jobs", "list", "--json", "--limit", "1")
    if done.returncode != 0 or not done.stdout.strip():
        return {"done": 0}
    jobs = json.loads(done.stdout)
    return jobs[0]["progress"] if jobs else {"done": 0}  # type: ignore[no-any-return]
