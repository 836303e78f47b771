"""Federated statistics: the declared aggregate kinds, small-cell suppression and pooling.

An aggregate answer is the only thing a site gives out for a federated question: counts in
cells named by a few non-identifying dimensions (modality, year, body part, a histogram bin),
never a UID or a patient value. What may be asked is this closed list (:data:`KINDS`); a
filter narrows the instances counted as a QIDO-RS query would (``parse_qido``).

Small-cell suppression (the rule, docs/analytics.md): a cell whose count is at least 1 and
below ``k`` is reported as ``"<k"`` with no number. The total is the sum of the reported
(unsuppressed) cells only, and says so (``total_rule``), so no suppressed count can be found
by subtracting the reported cells from a total. Pooling (:func:`pool`) sums only the numbers
the sites reported (a site's suppressed cell adds nothing) and applies the same suppression to
the pooled cells, so a pooled cell under ``k`` is suppressed too, even where each site's part
was reported.

Pure: no I/O. The services count (nubis.services.aggregates); the CLI pools site answers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KINDS",
    "KVP_EDGES",
    "SLICE_THICKNESS_EDGES",
    "UNKNOWN",
    "AggregateKind",
    "bin_label",
    "pool",
    "suppress",
]

# Histogram bin edges (mm, kV): fixed here rather than per request, so every site's bins are
# the same and pooled histograms merge cell by cell.
SLICE_THICKNESS_EDGES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
KVP_EDGES: tuple[float, ...] = (0.0, 70.0, 80.0, 90.0, 100.0, 110.0, 120.0, 130.0, 140.0)

UNKNOWN = "unknown"


@dataclass(frozen=True)
class AggregateKind:
    """A question a site answers: what is counted (``unit``) per combination of
    ``dimensions``."""

    name: str
    unit: str  # studies, series, instances
    dimensions: tuple[str, ...]
    summary: str


KINDS: dict[str, AggregateKind] = {
    k.name: k
    for k in (
        AggregateKind(
            "studies_by_modality_year",
            "studies",
            ("modality", "year"),
            "studies per modality and study year (a study of two modalities counts in both)",
        ),
        AggregateKind(
            "instances_by_body_part", "instances", ("body_part",), "instances per body part"
        ),
        AggregateKind(
            "series_by_manufacturer",
            "series",
            ("manufacturer", "model"),
            "series per equipment manufacturer and model",
        ),
        AggregateKind(
            "slice_thickness_histogram",
            "instances",
            ("slice_thickness_mm",),
            "instances per slice thickness bin [low, high) in mm",
        ),
        AggregateKind(
            "kvp_histogram", "instances", ("kvp",), "instances per peak kilovoltage bin [low, high)"
        ),
    )
}


def bin_label(value: float | None, edges: Sequence[float]) -> str:
    """The histogram bin of ``value``: ``"[low,high)"``, ``">=last"``, or unknown."""
    if value is None:
        return UNKNOWN
    for low, high in itertools.pairwise(edges):
        if low <= value < high:
            return f"[{low:g},{high:g})"
    return f">={edges[-1]:g}" if value >= edges[-1] else f"<{edges[0]:g}"


def suppress(
    kind: AggregateKind,
    counts: Mapping[tuple[str, ...], int],
    k: int,
    *,
    sites: int = 1,
    suppressed_at_sites: Mapping[tuple[str, ...], int] | None = None,
) -> dict[str, Any]:
    """The answer for ``counts`` (cell key -> count) with cells under ``k`` suppressed (see the
    module docs). ``suppressed_at_sites``: for a pooled answer, in how many sites each cell was
    suppressed (its count is then a lower bound)."""
    cells: list[dict[str, Any]] = []
    total = suppressed = 0
    for key in sorted(counts):
        count = counts[key]
        if count <= 0:
            continue
        cell: dict[str, Any] = {"key": list(key)}
        if count < k:
            cell["count"] = f"<{k}"
            suppressed += 1
        else:
            cell["count"] = count
            total += count
        if suppressed_at_sites and suppressed_at_sites.get(key):
            cell["suppressed_at_sites"] = suppressed_at_sites[key]
        cells.append(cell)
    for key, n in sorted((suppressed_at_sites or {}).items()):
        if key not in counts:
            cells.append({"key": list(key), "count": f"<{k}", "suppressed_at_sites": n})
            suppressed += 1
    return {
        "kind": kind.name,
        "unit": kind.unit,
        "dimensions": list(kind.dimensions),
        "k": k,
        "sites": sites,
        "cells": cells,
        "suppressed_cells": suppressed,
        "total": total,
        "total_rule": "sum of the unsuppressed cells only",
    }


def pool(answers: Iterable[Mapping[str, Any]], k: int) -> dict[str, Any]:
    """One answer from several sites' answers to the same question: reported counts summed per
    cell, then suppressed again under ``k`` (the larger of ``k`` and every site's own)."""
    answers = list(answers)
    if not answers:
        raise ValueError("no answer to pool")
    names = {a.get("kind") for a in answers}
    if len(names) != 1 or next(iter(names)) not in KINDS:
        raise ValueError(f"answers of different or unknown kinds: {sorted(map(str, names))}")
    kind = KINDS[str(next(iter(names)))]
    floor = max([k, *(int(a.get("k", k)) for a in answers)])
    counts: dict[tuple[str, ...], int] = {}
    suppressed_at: dict[tuple[str, ...], int] = {}
    for answer in answers:
        for cell in answer.get("cells", ()):
            key = tuple(str(v) for v in cell["key"])
            count = cell["count"]
            if isinstance(count, int) and not isinstance(count, bool):
                counts[key] = counts.get(key, 0) + count
            else:
                suppressed_at[key] = suppressed_at.get(key, 0) + 1
    return suppress(kind, counts, floor, sites=len(answers), suppressed_at_sites=suppressed_at)
