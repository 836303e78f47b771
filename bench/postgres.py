"""A throw-away PostgreSQL for benchmarks (scripts/postgres/pg-start.sh), fsync on."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orthanc import free_port

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "postgres"


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Start PostgreSQL on a free port in a fresh folder; yields its index URL; stops it."""
    folder = tempfile.mkdtemp(prefix="bench-pg-")
    env = {**os.environ, "PG_DIR": folder, "PG_PORT": str(free_port())}
    subprocess.run(["bash", str(SCRIPTS / "pg-start.sh")], env=env, check=True)
    try:
        settings = dict(
            line.split("=", 1) for line in (Path(folder) / "pg.env").read_text().splitlines()
        )
        yield settings["PG_URL"]
    finally:
        subprocess.run(["bash", str(SCRIPTS / "pg-stop.sh")], env=env, check=False)
