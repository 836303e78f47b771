"""The pure parts of nubis.migrate: throttle windows and rate, C-FIND windows, multipart split."""

from __future__ import annotations

import datetime as dt
import io
import time
from pathlib import Path

import pytest

from nubis.migrate.dicomweb import _split
from nubis.migrate.dimse import FindWindow
from nubis.migrate.throttle import RateLimiter, TimeWindows
from nubis.services.spool import Spool


def _at(hhmm: str) -> dt.datetime:
    return dt.datetime(2026, 12, 7, int(hhmm[:2]), int(hhmm[3:]))


@pytest.mark.parametrize(
    ("windows", "moment", "open_"),
    [
        ("20:00-06:00", "21:30", True),
        ("20:00-06:00", "03:00", True),
        ("20:00-06:00", "06:00", False),
        ("20:00-06:00", "12:00", False),
        ("08:00-09:00, 20:00-24:00", "08:30", True),
        ("08:00-09:00, 20:00-24:00", "23:59", True),
        ("08:00-09:00, 20:00-24:00", "10:00", False),
        ("", "12:00", True),
    ],
)
def test_time_windows(windows: str, moment: str, open_: bool) -> None:
    assert TimeWindows(windows).open_at(_at(moment)) is open_


@pytest.mark.parametrize("bad", ["20-06", "25:00-06:00", "20:00", "20:00-06:61", "night"])
def test_malformed_window_is_refused_with_its_text(bad: str) -> None:
    with pytest.raises(ValueError, match="HH:MM-HH:MM"):
        TimeWindows(bad)


def test_work_waits_for_the_window_to_open() -> None:
    clock = iter([_at("19:58"), _at("19:59"), _at("20:00")])
    checks: list[int] = []
    waited = TimeWindows("20:00-06:00").wait_open(
        lambda: checks.append(1), now=lambda: next(clock), sleep=lambda _s: None
    )
    assert waited and len(checks) == 2


def test_rate_limiter_holds_the_rate() -> None:
    limiter = RateLimiter(2_000_000)
    started = time.monotonic()
    for _ in range(10):
        limiter.take(200_000)  # 2 MB in all, at 2 MB/s: one second less the burst allowance
    assert time.monotonic() - started >= 0.9


def test_find_window_splits_into_halves_then_hours() -> None:
    window = FindWindow(dt.date(2020, 1, 1), dt.date(2020, 1, 4))
    a, b = window.split()
    assert (a.date_range, b.date_range) == ("20200101-20200102", "20200103-20200104")
    day = FindWindow(dt.date(2020, 1, 1), dt.date(2020, 1, 1))
    hours = day.split()
    assert len(hours) == 24 and hours[0].time == "000000-005959" and day.date_range == "20200101"
    assert hours[0].split() == []  # an hour of one day: a listing gap if still capped
    every = FindWindow(dt.date(2020, 1, 1), dt.date(2020, 1, 4), every=True)
    assert every.date_range == "" and every.split() == [window]


class _Trickle(io.RawIOBase):
    """A response body that arrives a few bytes at a time (boundaries cut across reads)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.at = data, step, 0

    def read(self, n: int = -1) -> bytes:
        piece = self.data[self.at : self.at + min(n, self.step)]
        self.at += len(piece)
        return piece


def _body(parts: list[bytes], boundary: bytes, *, close: bool = True) -> bytes:
    out = b""
    for part in parts:
        out += b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
    return out + (b"--" + boundary + b"--\r\n" if close else b"")


@pytest.mark.parametrize("step", [1, 3, 7, 1 << 16])
def test_multipart_parts_are_split_exactly(tmp_path: Path, step: int) -> None:
    boundary = b"b0undary"
    # Parts holding CRLFs, dashes and a near-boundary, which must stay in the part.
    parts = [b"DICM\r\n--b0undar\r\n" * 50, b"", b"\r\n\r\n--", bytes(range(256)) * 40]
    spool = Spool(tmp_path)
    got = [s.open().read() for s in _split(_Trickle(_body(parts, boundary), step), boundary, spool)]
    assert got == parts


def test_multipart_cut_off_mid_part_yields_only_whole_parts(tmp_path: Path) -> None:
    boundary = b"xyz"
    body = _body([b"first", b"second"], boundary, close=False)[:-12]  # cut inside "second"
    spool = Spool(tmp_path)
    got = [s.open().read() for s in _split(_Trickle(body, 5), boundary, spool)]
    assert got == [b"first"]
    assert len(list(tmp_path.iterdir())) == 1  # the cut-off part's spool file was removed
