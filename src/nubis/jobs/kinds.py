"""The kinds of job nubis runs, and the schedule setting.

- ``reap``: delete blobs of deleted instances and orphan blobs (nubis.services.maintenance);
  parameter ``grace_seconds``.
- ``verify``: re-read blobs and check their SHA-256 (nubis.jobs.verify).
- ``tier``: apply the lifecycle rules (nubis.tiers.lifecycle); parameters ``partition`` and
  ``study`` to move one study (``nubis storage tier``).
- ``rewrap``: re-encrypt every stored object whose header names an old key-encryption key so
  that it names the current one (nubis.services.kek_rewrap); parameter ``kek_id`` (``nubis keys
  retire KEK --rewrap``). Only nodes of an encrypted archive run it, and it is never scheduled.
- ``commitment-report``: deliver a Storage Commitment N-EVENT-REPORT (nubis.dimse.commitment);
  parameters ``calling_ae``, ``partition``, ``transaction_uid``, ``references``. Queued by the
  DIMSE server for each N-ACTION, retried on its own backoff until delivered or given up.
- ``dimse-send``: send a study or series to a DIMSE peer for the person who asked (the web
  face's Send, nubis.dimse.send); parameters ``who``, ``study``, ``series``, ``destination``.
  Tried once.
"""

from __future__ import annotations

import re
from typing import Any

from nubis.index.database import Index
from nubis.jobs.runner import Handler, JobContext
from nubis.jobs.verify import verify
from nubis.model.audit import ActiveParticipant
from nubis.ports.blobs import BlobStore
from nubis.services.guard import Guard
from nubis.services.kek_rewrap import KekRewrap
from nubis.services.maintenance import Maintenance
from nubis.tiers.lifecycle import Lifecycle
from nubis.tiers.rules import Tiers

__all__ = ["KINDS", "handlers", "parse_schedule"]

KINDS = ("reap", "verify", "tier", "rewrap")
# A rewrap names its KEK: a periodic run would have nothing to work on.
_SCHEDULED = ("reap", "verify", "tier")
_EVERY = re.compile(r"(\d+)\s*([smhdw])\Z")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_schedule(text: str) -> dict[str, int]:
    """``reap=1h,tier=1d`` -> {kind: seconds}; ValueError names what is wrong."""
    schedule: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, every = (p.strip() for p in item.partition("="))
        if kind not in _SCHEDULED:
            raise ValueError(
                f"jobs_schedule: unknown job kind {kind!r} (kinds: {', '.join(_SCHEDULED)})"
            )
        m = _EVERY.match(every)
        if not sep or not m or int(m[1]) == 0:
            raise ValueError(f"jobs_schedule: {item!r}: expected KIND=EVERY such as reap=1h")
        schedule[kind] = int(m[1]) * _SECONDS[m[2]]
    return schedule


def handlers(
    *,
    index: Index,
    blobs: BlobStore,
    maintenance: Maintenance,
    lifecycle: Lifecycle,
    tiers: Tiers,
    rewrap: KekRewrap | None = None,
    guard: Guard | None = None,
    actor: ActiveParticipant | None = None,
    commitment: Handler | None = None,
    dimse_send: Handler | None = None,
) -> dict[str, Handler]:
    """The handler of each kind this node can run (``rewrap`` only with encryption at rest,
    ``commitment-report`` and ``dimse-send`` when given); ``guard`` records what ``verify``
    reads, as ``actor``."""

    def reap(ctx: JobContext) -> dict[str, Any]:
        grace = ctx.params.get("grace_seconds")
        doomed = maintenance.reap_doomed()
        orphans = maintenance.reap_orphans(
            None if grace is None else int(grace), progress=lambda listed: ctx.progress(listed)
        )
        return {"doomed_deleted": doomed, "orphans_deleted": orphans}

    def check(ctx: JobContext) -> dict[str, Any]:
        return verify(ctx, index, blobs, tiers, guard=guard, actor=actor)

    def tier(ctx: JobContext) -> dict[str, Any]:
        return lifecycle.run(
            ctx, partition=ctx.params.get("partition"), study_uid=ctx.params.get("study")
        )

    kinds: dict[str, Handler] = {"reap": reap, "verify": check, "tier": tier}
    if rewrap is not None:
        kinds["rewrap"] = rewrap.run
    if commitment is not None:
        kinds["commitment-report"] = commitment
    if dimse_send is not None:
        kinds["dimse-send"] = dimse_send
    return kinds
