"""Delete (PS3.18 10.4 DELETE) and the reaper that removes unreferenced blobs.

A delete commits the removal of index rows and queues their blob keys in ``doomed_blobs`` in
the same transaction; the reaper deletes the blobs afterwards. A crash in between leaves a
queued key, never a row pointing at a missing blob. The reaper also removes orphans: blobs
written by a store that died before its index row committed, once older than a grace period
(a store in flight has its blob on disk before its row).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from nubis.index.database import Index
from nubis.ports.blobs import BlobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReapReport:
    doomed_deleted: int
    orphans_deleted: int


class Maintenance:
    def __init__(self, index: Index, blobs: BlobStore, *, orphan_grace_seconds: int) -> None:
        self.index = index
        self.blobs = blobs
        self.orphan_grace_seconds = orphan_grace_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def delete(
        self,
        partition: str,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> int:
        """Delete a study, series or instance; NotFound if nothing matches."""
        count = self.index.delete(partition, study_uid, series_uid, sop_instance_uid)
        self.reap_doomed()
        return count

    def reap_doomed(self) -> int:
        deleted = 0
        while keys := self.index.doomed_blob_keys():
            for key in keys:
                self.blobs.delete(key)
            self.index.forget_doomed(keys)
            deleted += len(keys)
        return deleted

    def reap_orphans(self, grace_seconds: int | None = None) -> int:
        grace = self.orphan_grace_seconds if grace_seconds is None else grace_seconds
        cutoff = time.time() - grace
        deleted = 0
        batch: list[str] = []

        def flush() -> int:
            referenced = self.index.referenced_blob_keys(batch)
            orphans = [k for k in batch if k not in referenced]
            for key in orphans:
                log.warning("reaping orphan blob %s (no index row)", key)
                self.blobs.delete(key)
            batch.clear()
            return len(orphans)

        for info in self.blobs.list():
            if info.modified_at <= cutoff:
                batch.append(info.key)
                if len(batch) >= 500:
                    deleted += flush()
        if batch:
            deleted += flush()
        return deleted

    def reap(self, grace_seconds: int | None = None) -> ReapReport:
        return ReapReport(self.reap_doomed(), self.reap_orphans(grace_seconds))

    def start_background(self, interval_seconds: float = 600) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    self.reap()
                except Exception:
                    log.exception("reaper pass failed; retrying at the next interval")

        self._thread = threading.Thread(target=loop, name="nubis-reaper", daemon=True)
        self._thread.start()

    def stop_background(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
