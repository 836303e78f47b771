"""The index read for analytics: attributes without a column, read from the stored DICOM JSON by
the database itself, and the filters of a scoped query as a WHERE clause.

Body Part Examined, Manufacturer and Manufacturer's Model Name are series level attributes kept
in ``series.attrs``; Slice Thickness, KVP and Burned In Annotation are only in each instance's
``metadata_json``. Rather than add columns (a migration and a wider row on every store for what
only analytics reads), the engine extracts them in SQL (SQLite ``json_extract``, PostgreSQL's
``->``/``->>``): no JSON crosses into Python, so an export of a million instances and a GROUP BY
over them cost one parse per row in C.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal, _TraverseInternalsType

from nubis.index.query_sql import scope_and_matches
from nubis.index.schema import instances, series
from nubis.model.query import Level, Query

__all__ = [
    "BODY_PART",
    "BURNED_IN",
    "HAS_PIXELS",
    "KVP",
    "MANUFACTURER",
    "MODEL",
    "SLICE_THICKNESS",
    "json_value",
    "matching",
]


class json_value(FunctionElement[Any]):
    """The first value of the element ``tag`` (8 hex digits) of a DICOM JSON text column; NULL
    when the element or its value is absent. ``numeric``: as a number (DS, IS), else text."""

    inherit_cache = True
    # The tag and the type are part of the statement's cache key: without them, two elements
    # of one column would share a compiled statement.
    _traverse_internals: _TraverseInternalsType = [  # noqa: RUF012 (declared so by SQLAlchemy)
        *FunctionElement._traverse_internals,
        ("tag", InternalTraversal.dp_string),
        ("numeric", InternalTraversal.dp_boolean),
    ]

    def __init__(self, column: Any, tag: str, *, numeric: bool = False) -> None:
        self.tag = tag
        self.numeric = numeric
        self.type = sa.Float() if numeric else sa.String()
        super().__init__(column)


@compiles(json_value, "sqlite")
def _sqlite(element: json_value, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    value = f"json_extract({compiler.process(column, **kw)}, '$.\"{element.tag}\".Value[0]')"
    # DS values are JSON numbers, or strings where the stored text was not a plain number.
    return f"CAST({value} AS REAL)" if element.numeric else value


@compiles(json_value, "postgresql")
def _postgresql(element: json_value, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    value = f"(CAST({compiler.process(column, **kw)} AS json) -> '{element.tag}' -> 'Value' ->> 0)"
    if not element.numeric:
        return value
    # A value that is not a number reads as NULL rather than failing the whole statement.
    number = "'^[-+]?[0-9]*\\.?[0-9]+([eE][-+]?[0-9]+)?$'"
    return f"(CASE WHEN {value} ~ {number} THEN CAST({value} AS double precision) END)"


class _has_element(FunctionElement[Any]):
    inherit_cache = True
    _traverse_internals: _TraverseInternalsType = [  # noqa: RUF012 (declared so by SQLAlchemy)
        *FunctionElement._traverse_internals,
        ("tag", InternalTraversal.dp_string),
    ]
    type = sa.Boolean()

    def __init__(self, column: Any, tag: str) -> None:
        self.tag = tag
        super().__init__(column)


@compiles(_has_element, "sqlite")
def _sqlite_has(element: _has_element, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    return f"(json_type({compiler.process(column, **kw)}, '$.\"{element.tag}\"') IS NOT NULL)"


@compiles(_has_element, "postgresql")
def _postgresql_has(element: _has_element, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    return f"(CAST({compiler.process(column, **kw)} AS json) -> '{element.tag}' IS NOT NULL)"


BODY_PART = json_value(series.c.attrs, "00180015").label("body_part_examined")
MANUFACTURER = json_value(series.c.attrs, "00080070").label("manufacturer")
MODEL = json_value(series.c.attrs, "00081090").label("manufacturer_model_name")
SLICE_THICKNESS = json_value(instances.c.metadata_json, "00180050", numeric=True).label(
    "slice_thickness"
)
KVP = json_value(instances.c.metadata_json, "00180060", numeric=True).label("kvp")
BURNED_IN = json_value(instances.c.metadata_json, "00280301").label("burned_in_annotation")
HAS_PIXELS = _has_element(instances.c.metadata_json, "7FE00010").label("has_pixel_data")


def matching(query: Query, dialect_name: str) -> list[ColumnElement[bool]]:
    """The WHERE terms of a scoped instance level ``query`` (its partition, quarantine, grants
    and matching keys: what QIDO-RS would match), over :data:`INSTANCES_LOCATED`."""
    if query.level is not Level.INSTANCE:
        raise ValueError("an analytics filter is an instance level query")
    return scope_and_matches(query, dialect_name)
