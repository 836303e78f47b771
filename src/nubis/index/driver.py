"""The database driver's own cursor, for the few hot statements that bypass SQLAlchemy.

The store path and the audit append run a handful of fixed statements per request; through
SQLAlchemy each costs as much Python as the rest of the request's bookkeeping. They are written
once, in SQLite's parameter styles (``?`` and ``:name``), and run on the driver's cursor:
sqlite3 takes them as they are; for psycopg (PostgreSQL) they are rewritten once per statement
to ``%s`` / ``%(name)s``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import Connection

# A named parameter is ``:word`` not preceded by another colon (no PostgreSQL ``::`` casts here).
_NAMED = re.compile(r"(?<!:):([A-Za-z_][A-Za-z0-9_]*)")

Params = Sequence[Any] | Mapping[str, Any]


class DriverCursor(Protocol):
    """The DB-API cursor subset used on the hot paths (sqlite3 and psycopg both have it)."""

    def execute(self, sql: str, params: Params = ...) -> Any: ...

    def executemany(self, sql: str, rows: Iterable[Params]) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


@functools.cache
def _to_pyformat(sql: str) -> str:
    sql = sql.replace("%", "%%")
    return _NAMED.sub(r"%(\1)s", sql.replace("?", "%s"))


class _PyformatCursor:
    """A psycopg cursor that accepts SQLite-style parameters."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Params = ()) -> Any:
        self._cursor.execute(_to_pyformat(sql), params)
        return self._cursor

    def executemany(self, sql: str, rows: Iterable[Params]) -> Any:
        self._cursor.executemany(_to_pyformat(sql), rows)
        return self._cursor

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())


def driver_cursor(conn: Connection) -> DriverCursor:
    """A cursor on ``conn``'s driver connection, inside ``conn``'s transaction."""
    raw = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    if conn.dialect.name == "sqlite":
        return raw
    return _PyformatCursor(raw)


def is_postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"
