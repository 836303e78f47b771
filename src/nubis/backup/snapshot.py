"""A consistent snapshot of a live index, and its restore into an empty one.

- **SQLite**: SQLite's online backup API (``sqlite3.Connection.backup``) copies the database in
  one step from a read transaction, so the copy is the database at one commit; in WAL mode the
  writer (and every store behind it) is not held up meanwhile. The copy is made a single file
  (journal mode DELETE) and must pass ``PRAGMA integrity_check``.
- **PostgreSQL**: a REPEATABLE READ transaction exports its snapshot (``pg_export_snapshot``),
  reads what the backup needs in it, and ``pg_dump --snapshot`` dumps the same snapshot while
  the transaction stays open. pg_dump must be of the server's major version: Debian's
  ``/usr/lib/postgresql/<major>/bin/pg_dump`` is used. The restore is ``pg_restore`` of that
  major version into an empty database.

What the backup needs of the snapshot, read from the snapshot itself (the stored objects and
their blob keys, the audit chain's head, the schema revision), so blobs copied afterwards are
exactly those the snapshot's instances reference.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Connection, create_engine, func, select, text
from sqlalchemy.engine import make_url

from nubis.backup.manifest import AuditHead
from nubis.backup.target import fsync_dir
from nubis.errors import StorageUnavailable
from nubis.index.database import Index
from nubis.index.engines import driver_url
from nubis.index.schema import (
    INSTANCES_LOCATED,
    audit_checkpoints,
    audit_log,
    instances,
    series,
    studies,
)
from nubis.ports.blobs import BlobContext

__all__ = [
    "Snapshot",
    "StoredObject",
    "file_sha256",
    "restore_snapshot",
    "stream_sha256",
    "take_snapshot",
]

_GENESIS = "0" * 64


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str
    context: BlobContext


@dataclass(frozen=True)
class Snapshot:
    path: Path
    engine: str
    sha256: str
    size: int
    schema_version: str | None
    audit: AuditHead
    objects: list[StoredObject]


def take_snapshot(index: Index, target: Path) -> Snapshot:
    """Snapshot the live ``index`` into the file ``target`` (written under a temporary name
    first, so a snapshot cut short is never taken for a whole one)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    if index.dialect == "sqlite":
        objects, audit, version = _sqlite_snapshot(index, partial)
    else:
        objects, audit, version = _pg_snapshot(index, partial)
    with open(partial, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(partial, target)
    fsync_dir(target.parent)
    return Snapshot(
        target, index.dialect, file_sha256(target), target.stat().st_size, version, audit, objects
    )


def _sqlite_snapshot(
    index: Index, target: Path
) -> tuple[list[StoredObject], AuditHead, str | None]:
    source = index.read_engine.url.database
    assert source is not None
    with (
        closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)) as src,
        closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)  # pages=-1: the whole database from one read transaction
        dst.execute("PRAGMA journal_mode=DELETE")
    check_sqlite(target)
    engine = create_engine(f"sqlite:///{target}")
    try:
        with engine.connect() as conn:
            return _contents(conn)
    finally:
        engine.dispose()


def check_sqlite(path: Path) -> None:
    """StorageUnavailable unless ``path`` is a SQLite database that passes its integrity check."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            verdict = conn.execute("PRAGMA integrity_check").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StorageUnavailable(f"index snapshot {path.name} is not a database: {exc}") from None
    if verdict is None or verdict[0] != "ok":
        raise StorageUnavailable(f"index snapshot {path.name} fails its integrity check")


def _pg_snapshot(index: Index, target: Path) -> tuple[list[StoredObject], AuditHead, str | None]:
    with index.read_engine.connect() as plain:
        conn = plain.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            snapshot_id = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
            contents = _contents(conn)
            major = _server_major(conn)
            _run(
                [_pg_tool("pg_dump", major), f"--snapshot={snapshot_id}", "--format=custom",
                 "--no-owner", "--no-privileges", f"--file={target}"],
                _libpq_env(index.url),
            )  # fmt: skip
    return contents


def restore_snapshot(snapshot: Path, engine: str, index_url: str) -> None:
    """Put ``snapshot`` in place as the index at ``index_url``, which must not hold one yet."""
    if engine == "sqlite":
        database = make_url(index_url).database
        assert database is not None
        target = Path(database)
        if target.exists():
            raise StorageUnavailable(f"{target} exists: a restore needs a fresh index")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(snapshot, target)
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
        fsync_dir(target.parent)
        return
    db = create_engine(driver_url(index_url))
    try:
        with db.connect() as conn:
            tables = conn.execute(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
            ).scalar_one()
            if tables:
                raise StorageUnavailable(
                    "the PostgreSQL database of the new archive holds tables: a restore "
                    "needs an empty database"
                )
            major = _server_major(conn)
    finally:
        db.dispose()
    env = _libpq_env(index_url)
    _run(
        [_pg_tool("pg_restore", major), "--exit-on-error", "--no-owner", "--no-privileges",
         "--single-transaction", f"--dbname={env['PGDATABASE']}", str(snapshot)],
        env,
    )  # fmt: skip


def stored_objects(conn: Connection) -> list[StoredObject]:
    """Every stored object the index on ``conn`` names, by blob key."""
    rows = conn.execute(
        select(
            instances.c.blob_key,
            instances.c.size,
            instances.c.sha256,
            studies.c.partition,
            studies.c.study_uid,
            series.c.series_uid,
            instances.c.sop_instance_uid,
        )
        .select_from(INSTANCES_LOCATED)
        .order_by(instances.c.blob_key)
    )
    return [
        StoredObject(key, size, sha, BlobContext(partition, study, series_uid, sop, sha))
        for key, size, sha, partition, study, series_uid, sop in rows
    ]


def _contents(conn: Connection) -> tuple[list[StoredObject], AuditHead, str | None]:
    objects = stored_objects(conn)
    head = conn.execute(
        select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
    ).first()
    signed = conn.execute(select(func.max(audit_checkpoints.c.seq))).scalar()
    key_ids = sorted(conn.scalars(select(audit_checkpoints.c.key_id).distinct()))
    audit = AuditHead(
        seq=head[0] if head else 0,
        hash=head[1] if head else _GENESIS,
        signed_seq=int(signed or 0),
        signing_key_ids=key_ids,
    )
    version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return objects, audit, version


def _server_major(conn: Connection) -> int:
    return int(conn.exec_driver_sql("SHOW server_version_num").scalar_one()) // 10000


def _pg_tool(name: str, major: int) -> str:
    """Debian's tool of the server's major version: another version would refuse to dump, or
    write what this server's pg_restore cannot read."""
    path = Path(f"/usr/lib/postgresql/{major}/bin/{name}")
    if not path.exists():
        raise StorageUnavailable(
            f"{path} is missing: install postgresql-client-{major} for backups of this "
            "PostgreSQL index"
        )
    return str(path)


def _libpq_env(index_url: str) -> dict[str, str]:
    """The connection as libpq environment variables: the password stays off the command
    line, where any local user could read it."""
    url = make_url(driver_url(index_url))
    env = {**os.environ, "PGDATABASE": url.database or "", "PGCONNECT_TIMEOUT": "10"}
    for name, value in (
        ("PGHOST", url.host),
        ("PGPORT", url.port),
        ("PGUSER", url.username),
        ("PGPASSWORD", url.password),
    ):
        if value is not None:
            env[name] = str(value)
    return env


def _run(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        args, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tool = Path(args[0]).name
        raise StorageUnavailable(
            f"{tool} failed (exit {result.returncode}): {result.stderr.strip()[-500:]}"
        )


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return stream_sha256(f)


def stream_sha256(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()
