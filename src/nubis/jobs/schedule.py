"""The ``jobs_schedule`` setting: which kinds of job run periodically, and how often.

A leaf: nubis.config checks the setting with it, so nothing here may reach the job handlers
or the services they call (nubis.jobs.kinds).
"""

from __future__ import annotations

import re

__all__ = [
    "ANALYZE_SCAN",
    "AUDIT_VERIFY",
    "CHANGEFEED_EXPIRE",
    "EDGE_EVICT",
    "REPLICATE",
    "RETENTION",
    "SCHEDULED",
    "SNAPSHOT",
    "WEBHOOKS",
    "parse_schedule",
]

SNAPSHOT = "storage-snapshot"
AUDIT_VERIFY = "audit-verify"
RETENTION = "retention"
# Scheduled by replicate_every_seconds whenever replicate_to is set, not by jobs_schedule.
REPLICATE = "replicate"
# Scheduled by edge_evict_every_seconds whenever forward_to is set (docs/edge.md).
EDGE_EVICT = "edge-evict"
# Scheduled by analyzer_scan_seconds whenever the analyzers setting names any.
ANALYZE_SCAN = "analyze-scan"
# Scheduled by webhook_every_seconds whenever change_feed is on, not by jobs_schedule.
WEBHOOKS = "webhooks"
# Daily whenever change_feed is on, unless jobs_schedule says otherwise.
CHANGEFEED_EXPIRE = "changefeed-expire"
# A rewrap names its KEK: a periodic run would have nothing to work on.
SCHEDULED = ("reap", "verify", "tier", SNAPSHOT, AUDIT_VERIFY, CHANGEFEED_EXPIRE, RETENTION)
_EVERY = re.compile(r"(\d+)\s*([smhdw])\Z")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_schedule(text: str) -> dict[str, int]:
    """``reap=1h,tier=1d`` -> {kind: seconds}; ValueError names what is wrong."""
    schedule: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, every = (p.strip() for p in item.partition("="))
        if kind not in SCHEDULED:
            raise ValueError(
                f"jobs_schedule: unknown job kind {kind!r} (kinds: {', '.join(SCHEDULED)})"
            )
        m = _EVERY.match(every)
        if not sep or not m or int(m[1]) == 0:
            raise ValueError(f"jobs_schedule: {item!r}: expected KIND=EVERY such as reap=1h")
        schedule[kind] = int(m[1]) * _SECONDS[m[2]]
    return schedule
