"""A backup target (a folder or an S3 prefix, nubis.backup.target) and the manifest that ties
its index snapshot and its blobs together.

The target holds every backup taken into it; blobs are shared between them, since a key is
random and written once (a re-encryption or a compression writes a new key), so a blob copied
by one backup is never copied again::

    DIR/manifests/<stamp>.json         every backup's manifest, put last; the newest stamp's
                                       is the newest backup
    DIR/index/<stamp>.sqlite|.pgdump   each backup's index snapshot
    DIR/blobs/ab/cd/<key>              the blobs, as stored (ciphertext when encrypted at rest)

A manifest names its snapshot with its SHA-256, every blob the snapshot's instances reference
with the size and SHA-256 of the stored bytes, and the audit chain's head at the snapshot (so a
restore is known to hold the trail up to that record). It names the key-encryption key ids and
the audit signing key ids the restore needs, never a key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from nubis.errors import BadRequest

if TYPE_CHECKING:
    from nubis.backup.target import BackupTarget

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
    """The backups kept in one target (see the module docstring)."""

    def __init__(self, target: BackupTarget) -> None:
        self.target = target

    @property
    def where(self) -> str:
        return self.target.where

    @staticmethod
    def blob_name(key: str) -> str:
        if len(key) < 5 or not key.isalnum():  # keys are hex (32) on every store nubis has
            raise BadRequest(f"blob key {key!r} cannot name a file")
        return f"blobs/{key[:2]}/{key[2:4]}/{key}"

    @staticmethod
    def snapshot_name(stamp: str, engine: str) -> str:
        return f"index/{stamp}.{'sqlite' if engine == 'sqlite' else 'pgdump'}"

    def manifest_names(self) -> list[str]:
        """Every finished backup's manifest, the oldest first (stamps sort by time)."""
        names = self.target.sizes("manifests/")
        return sorted(n for n in names if n.endswith(".json"))

    def latest(self) -> Manifest | None:
        """The newest backup's manifest; None in a target no backup finished in."""
        names = self.manifest_names()
        return self.read(names[-1]) if names else None

    def read(self, name: str) -> Manifest:
        try:
            with self.target.open(name) as f:
                return Manifest.from_json(json.loads(f.read()))
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, BadRequest):
                raise
            raise BadRequest(f"{name} is not a readable backup manifest ({exc})") from None

    def write(self, manifest: Manifest, stamp: str) -> None:
        """The manifest, put last: a backup cut short before it is not taken for a finished
        one, and the previous manifest stays the newest."""
        staged = self.target.staging() / f"manifest-{stamp}.json"
        staged.write_text(json.dumps(manifest.to_json(), indent=1) + "\n")
        self.target.put(f"manifests/{stamp}.json", staged)

