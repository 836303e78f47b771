"""Backups (folders or S3 prefixes) as sources of copies for the verify job's self-healing
(nubis.ports.copies).

Every manifest of the folder is looked at, the newest first: blobs are shared between the
backups of a folder and never removed, so a blob an older backup holds is still there when a
newer backup found it missing or damaged in the archive (and listed it as absent).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nubis.backup.manifest import BackupFolder, BlobEntry
from nubis.backup.target import open_target
from nubis.errors import NubisError
from nubis.ports.copies import RecordedCopy

__all__ = ["BackupCopies", "backup_copies"]


class BackupCopies:
    """The blobs of one backup folder, as its manifests recorded them."""

    def __init__(self, where: str) -> None:
        self.folder = BackupFolder(open_target(where))
        self._entries: dict[str, BlobEntry] | None = None

    @property
    def name(self) -> str:
        return f"backup {self.folder.where.split('?', 1)[0]}"

    def copy_of(self, key: str, target: Path) -> RecordedCopy | None:
        entry = self._recorded().get(key)
        if entry is None:
            return None
        try:
            with (
                self.folder.target.open(self.folder.blob_name(key)) as f,
                open(target, "wb") as out,
            ):
                shutil.copyfileobj(f, out, 1 << 20)
        except FileNotFoundError:
            return None
        return RecordedCopy(entry.size, entry.sha256)

    def _recorded(self) -> dict[str, BlobEntry]:
        """Every blob any manifest names (read once, at the first copy asked for)."""
        if self._entries is None:
            entries: dict[str, BlobEntry] = {}
            for name in self.folder.manifest_names():  # oldest first: a newer entry wins
                try:
                    entries.update(self.folder.read(name).blobs)
                except NubisError:
                    continue  # an unreadable manifest holds no copy worth trusting
            self._entries = entries
        return self._entries


def backup_copies(folders: str) -> list[BackupCopies]:
    """The ``heal_from`` setting's backups (folders or S3 URLs, comma-separated), in its
    order."""
    return [BackupCopies(part.strip()) for part in folders.split(",") if part.strip()]
