"""INSERT ... ON CONFLICT (key) DO UPDATE, which SQLite and PostgreSQL both speak."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

__all__ = ["upsert"]


def upsert(conn: Connection, table: Table, key: str, values: dict[str, Any]) -> None:
    """Insert ``values`` into ``table``, or update the row whose ``key`` column they name."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(values)
    update = {name: stmt.excluded[name] for name in values if name != key}
    conn.execute(stmt.on_conflict_do_update(index_elements=[key], set_=update))
