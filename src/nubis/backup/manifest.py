"""A backup folder and the manifest that ties its index snapshot and its blobs together.

The folder holds every backup taken into it; blobs are shared between them, since a key is
random and written once (a re-encryption or a compression writes a new key), so a blob copied
by one backup is never copied again::

    DIR/manifest.json                  the newest backup's manifest (replaced last, atomically)
    DIR/manifests/<stamp>.json         every backup's manifest
    DIR/index/<stamp>.sqlite|.pgdump   each backup's index snapshot
    DIR/blobs/ab/cd/<key>              the blobs, as stored (ciphertext when encrypted at rest)

A manifest names its snapshot with its SHA-256, every blob the snapshot's instances reference
with the size and SHA-256 of the stored bytes, and the audit chain's head at the snapshot (so a
restore is known to hold the trail up to that record). It names the key-encryption key ids and
the audit signing key ids the restore needs, never a key.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nubis.errors import BadRequest

__all__ = ["FORMAT", "VERSION", "AuditHead", "BackupFolder", "BlobEntry", "Manifest"]

FORMAT = "nubis-backup"
VERSION = 1


@dataclass(frozen=True)
class BlobEntry:
    """A blob as the backup holds it: the stored bytes' size and SHA-256."""

    size: int
    sha256: str


@dataclass(frozen=True)
class AuditHead:
    """The audit chain in the snapshot: its last record, its last signed checkpoint, and the
    ids of the keys that signed checkpoints (a restore needs one of them to sign on)."""

    seq: int
    hash: str
    signed_seq: int
    signing_key_ids: list[str]


@dataclass
class Manifest:
    created_at: str
    finished_at: str
    engine: str  # sqlite or postgresql
    snapshot: str  # path of the index snapshot, relative to the folder
    snapshot_sha256: str
    snapshot_size: int
    schema_version: str | None
    audit: AuditHead
    # How the blobs were encrypted at rest: None (plaintext), "file" (a local keyring, to be
    # given to the restore) or "index" (patient keys in the snapshot, KEKs in a secret).
    keyring: str | None
    kek_ids: list[str]
    blobs: dict[str, BlobEntry] = field(default_factory=dict)
    # Blobs the snapshot references that the backup does not hold, and why: deleted (and
    # reaped) between the snapshot and their copy, or missing or damaged in the archive.
    absent: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["blobs"] = {k: [e.size, e.sha256] for k, e in sorted(self.blobs.items())}
        return {"format": FORMAT, "version": VERSION, **data}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise BadRequest("not a nubis backup manifest")
        if data.get("version") != VERSION:
            raise BadRequest(f"backup manifest version {data.get('version')!r} is not {VERSION}")
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        fields["audit"] = AuditHead(**fields["audit"])
        fields["blobs"] = {k: BlobEntry(int(s), str(h)) for k, (s, h) in fields["blobs"].items()}
        return cls(**fields)


class BackupFolder:
    """The folder backups go to (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    def blob_path(self, key: str) -> Path:
        if len(key) < 5 or not key.isalnum():  # keys are hex (32) on every store nubis has
            raise BadRequest(f"blob key {key!r} cannot name a file")
        return self.root / "blobs" / key[:2] / key[2:4] / key

    def snapshot_path(self, stamp: str, engine: str) -> Path:
        return self.root / "index" / f"{stamp}.{'sqlite' if engine == 'sqlite' else 'pgdump'}"

    def latest(self) -> Manifest | None:
        """The newest backup's manifest; None in a folder no backup finished in."""
        if not self.manifest_path.exists():
            return None
        return self.read(self.manifest_path)

    @staticmethod
    def read(path: Path) -> Manifest:
        try:
            return Manifest.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, BadRequest):
                raise
            raise BadRequest(f"{path} is not a readable backup manifest ({exc})") from None

    def write(self, manifest: Manifest, stamp: str) -> None:
        """Keep the manifest under its stamp, then make it the newest: a backup cut short
        leaves the previous manifest in place."""
        text = json.dumps(manifest.to_json(), indent=1) + "\n"
        write_durably(self.root / "manifests" / f"{stamp}.json", text.encode())
        write_durably(self.manifest_path, text.encode())


def write_durably(path: Path, data: bytes) -> None:
    """``data`` at ``path``, all or nothing: a temporary file, fsynced, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
