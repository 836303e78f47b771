"""The copy source port: somewhere else that holds blobs as stored, which the verify job
heals damaged blobs from (nubis.jobs.heal).

A backup folder is one (nubis.backup.copies); a replica is to be another. A source hands over
the stored bytes of a blob (ciphertext when the archive encrypts at rest) with the size and
SHA-256 it recorded for them when it took its copy. It vouches for nothing more: the healer
checks the bytes against that digest, then as the object itself (its SHA-256 in the index,
through the archive's own reads), before they replace anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

__all__ = ["CopySource", "RecordedCopy"]


@dataclass(frozen=True)
class RecordedCopy:
    """What a source recorded of the stored bytes it holds: their size and SHA-256."""

    size: int
    sha256: str


class CopySource(Protocol):
    @property
    def name(self) -> str:
        """Where the copies are, for reports and audit records (a folder, a site's URL)."""

    def copy_of(self, key: str, target: Path) -> RecordedCopy | None:
        """Write the stored bytes of blob ``key`` into the new local file ``target`` and return
        what this source recorded of them; None (and no file) when it holds no copy."""
