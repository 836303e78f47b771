"""``nubis restore``: rebuild a working archive from a backup (a folder or an S3 prefix) on a
fresh data folder.

In order, each step refusing before anything is written where it can:

1. The newest manifest, and the index snapshot's SHA-256 against it.
2. The data folder must be empty (or absent), and so must the new archive's blob store and
   PostgreSQL database: a restore never merges into an archive.
3. The keys, which no backup holds (docs/backup.md): a backup of encrypted objects needs the
   keyring (``--keyring``, a copy kept apart, or the one the settings name) holding every KEK
   the manifest names; an index keyring needs its KEK secret in the settings. A trail with
   signed checkpoints needs the audit signing key that signed them (``--audit-key``), so
   ``nubis audit verify`` passes on the restored archive and it signs on with the same key.
4. The snapshot becomes the index (a copy for SQLite, ``pg_restore`` for PostgreSQL), migrated
   to this version's schema.
5. Any key the restored index records as shredded is shredded again in the keyring
   (nubis.crypto.local_keys): a keyring copy older than a shred cannot undo it.
6. Every blob is copied back as stored, its size and SHA-256 checked against the manifest.
7. Unless told not to, every object is read back through the archive (decrypted, its SHA-256
   checked against the index): a wrong keyring shows here, not at a client's first read.
   Objects of shredded patients count as erased, which is what a shred is for.
8. The restore is recorded in the restored trail (DICOM Data Import, PS3.15 A.5.3.7).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from sqlalchemy import update

from nubis.backup.job import KIND, stored_bytes
from nubis.backup.manifest import BackupFolder, Manifest
from nubis.backup.snapshot import StoredObject, file_sha256, restore_snapshot, stored_objects
from nubis.backup.target import open_target
from nubis.blobs.integrity import verify_chunks
from nubis.config import Settings
from nubis.errors import (
    BadRequest,
    BlobCorrupted,
    BlobUnreadable,
    Conflict,
    KeyErased,
    KeyUnavailable,
)
from nubis.index.schema import jobs
from nubis.model.audit import EventOutcome
from nubis.ports.blobs import BlobStore, PlainFile
from nubis.security import audit_events
from nubis.security.policy import Principal

__all__ = ["RestoreReport", "restore"]

_COPIERS = 4


@dataclass
class RestoreReport:
    backup: str
    objects: int = 0
    restored_bytes: int = 0
    erased: int = 0  # objects of crypto-shredded patients: unreadable, as they must be
    keys_shredded_again: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "backup": self.backup,
            "objects": self.objects,
            "restored_bytes": self.restored_bytes,
            "erased": self.erased,
            "keys_shredded_again": self.keys_shredded_again,
            "problems": self.problems,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.restored_bytes / 1e6 / max(self.seconds, 1e-6), 1),
        }


def restore(
    source: str,
    settings: Settings,
    principal: Principal,
    *,
    keyring: Path | None = None,
    audit_key: Path | None = None,
    check_reads: bool = True,
    progress: Callable[[str, int, int], None] | None = None,
) -> RestoreReport:
    from nubis.archive import Archive  # the composition root sits above this package

    started = time.monotonic()
    folder = BackupFolder(open_target(source))
    manifest = folder.latest()
    if manifest is None:
        raise BadRequest(f"{source} holds no finished backup (no manifests/*.json)")
    with ExitStack() as stack:
        try:
            snapshot: Path | None = stack.enter_context(folder.target.local(manifest.snapshot))
        except FileNotFoundError:
            snapshot = None
        if snapshot is None or file_sha256(snapshot) != manifest.snapshot_sha256:
            raise BadRequest(f"index snapshot {manifest.snapshot} is missing or damaged")
        _check_fresh(settings)
        _install_keys(manifest, settings, keyring, audit_key)
        restore_snapshot(snapshot, manifest.engine, settings.index_url)
    report = RestoreReport(backup=manifest.created_at)
    archive = Archive(settings)
    raw = stored_bytes(archive.blobs)
    if next(iter(raw.list()), None) is not None:
        raise Conflict("the new archive's blob store is not empty: a restore needs a fresh one")
    archive.index.migrate()
    archive.index.open()
    archive.audit.open()
    try:
        _end_interrupted_backups(archive.index)
        report.keys_shredded_again = archive.forget_shredded_keys()
        with archive.index.reading() as conn:
            objects = stored_objects(conn)
        report.objects = len(objects)
        failed = _copy_blobs(folder, manifest, raw, objects, settings.spool_dir, report, progress)
        if check_reads:
            restored = [o for o in objects if o.key not in failed]
            _read_back(archive.blobs, restored, report, progress)
        report.seconds = time.monotonic() - started
        archive.guard.record(
            audit_events.data_import(
                audit_events.participant(principal),
                front_door="cli",
                outcome=EventOutcome.MINOR_FAILURE if report.problems else EventOutcome.SUCCESS,
                description=(
                    f"restore of the backup of {manifest.created_at} from "
                    f"{source.split('?', 1)[0]}: "
                    f"{report.objects} object(s), {report.erased} of shredded patients, "
                    f"{report.keys_shredded_again} key(s) shredded again, "
                    f"{len(report.problems)} problem(s)"
                ),
            )
        )
    finally:
        archive.audit.close()
        archive.index.close()
    return report


def _check_fresh(settings: Settings) -> None:
    data_dir = settings.data_dir
    if data_dir.exists() and any(data_dir.iterdir()):
        raise Conflict(f"{data_dir} is not empty: a restore needs a fresh data folder")


def _local_path(url: str) -> Path | None:
    parsed = urlparse(url)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def _install_keys(
    manifest: Manifest, settings: Settings, keyring: Path | None, audit_key: Path | None
) -> None:
    from nubis.crypto.registry import kek_secret
    from nubis.security.audit import SigningKey

    target = _local_path(settings.keyring_url)
    if manifest.keyring == "file":
        if target is None:
            raise BadRequest(
                "the backup's objects were encrypted with a local keyring: set keyring to a "
                "file:// path (or leave it empty) and give --keyring"
            )
        if keyring is not None:
            if target.exists():
                raise Conflict(f"{target} exists: give --keyring or use it, not both")
            _copy_secret(keyring, target)
        elif not target.exists():
            raise BadRequest(
                "the backup's objects are encrypted and no backup holds keys: give --keyring "
                "(the keyring backed up apart, see docs/backup.md)"
            )
        from nubis.crypto.local_keys import LocalKeyring

        held = LocalKeyring(target, create=False).key_ids()
        _require_keks(manifest, held, str(target))
    elif manifest.keyring == "index":
        if not settings.keyring_url.startswith("index+"):
            raise BadRequest(
                "the backup's patient keys are in its index: set keyring to the index keyring "
                "(index+file:// or index+env:) with its KEK secret"
            )
        _require_keks(manifest, kek_secret(settings.keyring_url).get().ids, "the KEK secret")
    else:
        if keyring is not None:
            raise BadRequest("the backup's objects are not encrypted: --keyring is not needed")
        if settings.encrypt_at_rest:
            raise BadRequest(
                "the backup's objects are plaintext, which an archive that encrypts at rest "
                "refuses to read: restore with --set encrypt_at_rest=false"
            )
    if manifest.audit.signing_key_ids:
        path = settings.audit_key_path
        if audit_key is not None:
            if path.exists():
                raise Conflict(f"{path} exists: give --audit-key or use it, not both")
            _copy_secret(audit_key, path)
        elif not path.exists():
            raise BadRequest(
                "the audit trail's checkpoints are signed: give --audit-key (the audit signing "
                "key backed up apart) so the restored trail verifies and is signed on"
            )
        key_id = SigningKey.load_or_create(path).key_id
        if key_id not in manifest.audit.signing_key_ids:
            raise BadRequest(
                f"the audit signing key {key_id} did not sign this trail's checkpoints "
                f"(signed by {', '.join(manifest.audit.signing_key_ids)})"
            )


def _require_keks(manifest: Manifest, held: list[str], where: str) -> None:
    lacking = sorted(set(manifest.kek_ids) - set(held))
    if lacking:
        raise BadRequest(
            f"{where} lacks the key-encryption key(s) {', '.join(lacking)} the backup's "
            "objects need: give the keyring backed up after they were made"
        )


def _copy_secret(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as f:
        shutil.copyfileobj(f, out)
        out.flush()
        os.fsync(out.fileno())


def _end_interrupted_backups(index: Any) -> None:
    """The snapshot holds the backup job that took it, still running: it finished at the
    source, not here."""

    def job(conn: Any) -> None:
        conn.execute(
            update(jobs)
            .where(jobs.c.kind == KIND, jobs.c.state.in_(("queued", "running")))
            .values(state="failed", last_error="taken over by a restore of its backup")
        )

    index.write(job)


def _copy_blobs(
    folder: BackupFolder,
    manifest: Manifest,
    raw: BlobStore,
    objects: list[StoredObject],
    spool: Path,
    report: RestoreReport,
    progress: Callable[[str, int, int], None] | None,
) -> set[str]:
    """Copy every object's blob back; the keys that could not be."""
    spool.mkdir(parents=True, exist_ok=True)

    def copy(obj: StoredObject) -> tuple[int, str | None]:
        entry = manifest.blobs.get(obj.key)
        if entry is None:
            why = manifest.absent.get(obj.key, "not in the backup")
            return 0, f"instance {obj.context.sop_instance_uid}: blob {obj.key}: {why}"
        temp = spool / f"restore-{obj.key}"
        digest = hashlib.sha256()
        with folder.target.open(folder.blob_name(obj.key)) as f, open(temp, "wb") as out:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if os.path.getsize(temp) != entry.size or digest.hexdigest() != entry.sha256:
            temp.unlink()
            return 0, f"blob {obj.key} in the backup differs from its manifest (damaged)"
        raw.put_file(obj.key, PlainFile(temp, entry.size), context=obj.context)
        return entry.size, None

    failed: set[str] = set()
    with ThreadPoolExecutor(_COPIERS, thread_name_prefix="nubis-restore") as pool:
        for done, (obj, (size, problem)) in enumerate(
            zip(objects, pool.map(copy, objects), strict=True), 1
        ):
            report.restored_bytes += size
            if problem is not None:
                report.problems.append(problem)
                failed.add(obj.key)
            if progress is not None:
                progress("restoring blobs", done, len(objects))
    return failed


def _read_back(
    blobs: BlobStore,
    objects: list[StoredObject],
    report: RestoreReport,
    progress: Callable[[str, int, int], None] | None,
) -> None:
    def check(obj: StoredObject) -> str | None:
        try:
            verify_chunks(blobs.iter_chunks(obj.key, context=obj.context), obj.size, obj.sha256)
        except KeyErased:
            return "erased"
        except (BlobCorrupted, BlobUnreadable, KeyUnavailable, KeyError) as exc:
            return f"instance {obj.context.sop_instance_uid} does not read back: {exc}"
        return None

    with ThreadPoolExecutor(_COPIERS, thread_name_prefix="nubis-restore") as pool:
        for done, problem in enumerate(pool.map(check, objects), 1):
            if problem == "erased":
                report.erased += 1
            elif problem is not None:
                report.problems.append(problem)
            if progress is not None:
                progress("reading back", done, len(objects))
