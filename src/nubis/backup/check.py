"""``nubis backup verify``: check the newest backup of a folder or S3 prefix without restoring it.

The manifest must be readable; the index snapshot must have the manifest's size and SHA-256
(and, for SQLite, pass ``PRAGMA integrity_check`` and reference no blob the manifest neither
holds nor lists as absent); every blob the manifest lists must be there with its size and
SHA-256. Blobs the manifest lists as missing or damaged in the archive are problems too: the
backup cannot restore them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine

from nubis.backup.manifest import BackupFolder, Manifest
from nubis.backup.snapshot import check_sqlite, file_sha256, stream_sha256
from nubis.backup.target import open_target
from nubis.errors import NubisError
from nubis.index.schema import instances

__all__ = ["BackupReport", "verify_backup"]

_LISTED = 200


@dataclass
class BackupReport:
    manifest: Manifest | None
    blobs_checked: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, problem: str) -> None:
        self.problem_count += 1
        if len(self.problems) < _LISTED:
            self.problems.append(problem)


def verify_backup(where: str, progress: Callable[[int, int], None] | None = None) -> BackupReport:
    folder = BackupFolder(open_target(where))
    try:
        manifest = folder.latest()
    except NubisError as exc:
        report = BackupReport(None)
        report.add(exc.reason)
        return report
    report = BackupReport(manifest)
    if manifest is None:
        report.add(f"{where} holds no finished backup (no manifests/*.json)")
        return report
    _check_snapshot(folder, manifest, report)
    total = len(manifest.blobs)
    held = folder.target.sizes("blobs/")
    for done, (key, entry) in enumerate(sorted(manifest.blobs.items()), 1):
        name = folder.blob_name(key)
        size = held.get(name)
        if size is None:
            report.add(f"blob {key} is missing from the backup")
            continue
        if size != entry.size or _sha256(folder, name) != entry.sha256:
            report.add(f"blob {key} differs from the manifest (damaged)")
        else:
            report.blobs_checked += 1
            report.bytes_checked += size
        if progress is not None:
            progress(done, total)
    for key, why in sorted(manifest.absent.items()):
        if why != "deleted after the snapshot":
            report.add(f"blob {key} is not in the backup: {why}")
    return report


def _sha256(folder: BackupFolder, name: str) -> str | None:
    try:
        with folder.target.open(name) as f:
            return stream_sha256(f)
    except FileNotFoundError:
        return None


def _check_snapshot(folder: BackupFolder, manifest: Manifest, report: BackupReport) -> None:
    try:
        with folder.target.local(manifest.snapshot) as path:
            _check_snapshot_file(path, manifest, report)
    except FileNotFoundError:
        report.add(f"index snapshot {manifest.snapshot} is missing")


def _check_snapshot_file(path: Path, manifest: Manifest, report: BackupReport) -> None:
    if (
        path.stat().st_size != manifest.snapshot_size
        or file_sha256(path) != manifest.snapshot_sha256
    ):
        report.add(f"index snapshot {manifest.snapshot} differs from the manifest (damaged)")
        return
    if manifest.engine != "sqlite":
        return  # a pg_dump archive: its digest is what can be checked without a server
    try:
        check_sqlite(path)
    except NubisError as exc:
        report.add(exc.reason)
        return
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            keys = set(conn.scalars(instances.select().with_only_columns(instances.c.blob_key)))
    finally:
        engine.dispose()
    unaccounted = keys - manifest.blobs.keys() - manifest.absent.keys()
    for key in sorted(unaccounted):
        report.add(f"the index snapshot references blob {key}, which the manifest does not list")
