"""The free-disk floor's setting and check (nubis.services.disk_floor; issue 9 item 7)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nubis.config import SettingsError, load_settings
from nubis.errors import InsufficientStorage
from nubis.services.disk_floor import DiskFloor, FreeSpaceFloor, parse_floor
from nubis.services.spool import Spool


@pytest.mark.parametrize(
    ("text", "floor"),
    [
        ("0", FreeSpaceFloor()),
        ("1GiB", FreeSpaceFloor(bytes=2**30)),
        ("500 MB", FreeSpaceFloor(bytes=500 * 10**6)),
        ("1.5gb", FreeSpaceFloor(bytes=1_500_000_000)),
        ("1073741824", FreeSpaceFloor(bytes=2**30)),
        ("5%", FreeSpaceFloor(percent=5.0)),
    ],
)
def test_sizes_and_shares_are_parsed(text: str, floor: FreeSpaceFloor) -> None:
    assert parse_floor(text) == floor


@pytest.mark.parametrize("text", ["", "-1GB", "1 parsec", "101%", "GB"])
def test_a_bad_floor_is_refused_at_start(text: str) -> None:
    with pytest.raises(SettingsError, match="min_free_disk"):
        load_settings(environ={}, overrides={"min_free_disk": text})


def test_the_floor_refuses_below_and_lets_through_above(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    DiskFloor([tmp_path], FreeSpaceFloor(bytes=free // 2)).check()
    DiskFloor([tmp_path], parse_floor("0")).check()
    for floor in (FreeSpaceFloor(bytes=free + 2**40), FreeSpaceFloor(percent=100)):
        with pytest.raises(InsufficientStorage) as err:
            DiskFloor([tmp_path / "not-yet-made" / "blobs"], floor).check()
        assert (err.value.http_status, err.value.dimse_status) == (507, 0xA700)
        assert str(tmp_path) not in err.value.reason  # no server paths to clients


def test_a_spool_below_the_floor_makes_no_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", floor=DiskFloor([tmp_path], FreeSpaceFloor(percent=100)))
    with pytest.raises(InsufficientStorage):
        spool.writer()
    assert list((tmp_path / "spool").iterdir()) == []


def test_an_object_spooled_before_the_floor_was_crossed_is_not_stored(tmp_path: Path) -> None:
    """The store checks again: a large object may take the last room while it arrives."""
    from nubis.archive import Archive
    from nubis.security.authn import cli_principal
    from nubis.tools import synth

    settings = load_settings(
        environ={},
        overrides={"data_dir": str(tmp_path / "data"), "durable": "false", "min_free_disk": "100%"},
    )
    source = synth.make_multiframe(tmp_path / "o.dcm", frames=1, rows=8, columns=8, seed=5)
    with Archive(settings) as archive:
        spooled = Spool(settings.spool_dir, sealed=archive.spool.sealed).from_file(source)
        outcome = archive.store.store(spooled, principal=cli_principal())
        assert isinstance(outcome.error, InsufficientStorage)
        assert not spooled.path.exists()
        assert archive.index.counts()["instances"] == 0
