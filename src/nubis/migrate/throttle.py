"""Keeping a migration gentle on the legacy archive: a byte rate and allowed time windows.

``--max-mb-per-s`` is a token bucket shared by every worker thread: a thread that took more
than its share sleeps, which over DIMSE slows the C-STORE responses and so the sender itself.
``--window 20:00-06:00`` (local time; several windows separated by commas; a window may
cross midnight) lets a new study start only inside a window, so clinical hours are spared.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RateLimiter", "TimeWindows"]

_WINDOW = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*\Z")


class RateLimiter:
    """At most ``bytes_per_second`` on average over about a second; None: no limit."""

    def __init__(self, bytes_per_second: float | None) -> None:
        self.rate = bytes_per_second
        self._lock = threading.Lock()
        self._next_free = time.monotonic()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            # Up to one second of unused allowance is kept, so bursts stay short.
            start = max(self._next_free, now - 1.0)
            self._next_free = start + n / self.rate
            delay = self._next_free - now
        if delay > 0:
            time.sleep(delay)


@dataclass(frozen=True)
class _Window:
    start: dt.time
    end: dt.time

    def contains(self, moment: dt.time) -> bool:
        if self.start <= self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end  # crosses midnight


class TimeWindows:
    """The times of day work may start; none given: always."""

    def __init__(self, text: str | None) -> None:
        self.text = text or ""
        self.windows: list[_Window] = []
        for item in filter(None, (p.strip() for p in self.text.split(","))):
            m = _WINDOW.match(item)
            if not m or int(m[1]) > 23 or int(m[3]) > 24 or int(m[2]) > 59 or int(m[4]) > 59:
                raise ValueError(f"window {item!r}: expected HH:MM-HH:MM such as 20:00-06:00")
            end = dt.time(0, 0) if int(m[3]) == 24 else dt.time(int(m[3]), int(m[4]))
            self.windows.append(_Window(dt.time(int(m[1]), int(m[2])), end))

    def open_at(self, moment: dt.datetime) -> bool:
        return not self.windows or any(w.contains(moment.time()) for w in self.windows)

    def wait_open(
        self,
        check: Callable[[], None],
        *,
        now: Callable[[], dt.datetime] = dt.datetime.now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> bool:
        """Block until a window is open, calling ``check`` (which raises to stop) every few
        seconds; True if it had to wait."""
        waited = False
        while not self.open_at(now()):
            waited = True
            check()
            sleep(5.0)
        return waited
