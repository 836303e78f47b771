"""Backup folders as sources of copies for the verify job's self-healing (nubis.ports.copies).

Every manifest of the folder is looked at, the newest first: blobs are shared between the
backups of a folder and never removed, so a blob an older backup holds is still there when a
newer backup found it missing or damaged in the archive (and listed it as absent).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from nubis.backup.manifest import BackupFolder, BlobEntry
from nubis.errors import NubisError
from nubis.ports.copies import RecordedCopy

__all__ = ["BackupCopies", "backup_copies"]


class BackupCopies:
    """The blobs of one backup folder, as its manifests recorded them."""

    def __init__(self, root: Path) -> None:
        self.folder = BackupFolder(root)
        self._entries: dict[str, BlobEntry] | None = None

    @property
    def name(self) -> str:
        return f"backup {self.folder.root}"

    def copy_of(self, key: str, target: Path) -> RecordedCopy | None:
        entry = self._recorded().get(key)
        if entry is None:
            return None
        try:
            shutil.copyfile(self.folder.blob_path(key), target)
        except FileNotFoundError:
            return None
        return RecordedCopy(entry.size, entry.sha256)

    def _recorded(self) -> dict[str, BlobEntry]:
        """Every blob any manifest names (read once, at the first copy asked for)."""
        if self._entries is None:
            entries: dict[str, BlobEntry] = {}
            paths = sorted((self.folder.root / "manifests").glob("*.json"))
            for path in paths:  # oldest first: a newer manifest's entry wins
                try:
                    entries.update(BackupFolder.read(path).blobs)
                except NubisError:
                    continue  # an unreadable manifest holds no copy worth trusting
            self._entries = entries
        return self._entries


def backup_copies(folders: str) -> list[BackupCopies]:
    """The ``heal_from`` setting's backup folders (comma-separated), in its order."""
    return [BackupCopies(Path(part.strip())) for part in folders.split(",") if part.strip()]
