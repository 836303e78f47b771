"""index/driver.py: the hot statements' parameter styles on each database driver."""

from __future__ import annotations

from nubis.index.driver import _to_pyformat


def test_driver_parameters_become_psycopg_style() -> None:
    """The hot statements are written once, in SQLite's styles, and rewritten for psycopg."""
    assert _to_pyformat("SELECT a FROM t WHERE x = :x AND y = ?") == (
        "SELECT a FROM t WHERE x = %(x)s AND y = %s"
    )
    assert _to_pyformat("SELECT '50%' WHERE a = :a") == "SELECT '50%%' WHERE a = %(a)s"
