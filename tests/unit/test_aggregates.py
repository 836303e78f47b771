"""Small-cell suppression and pooling of aggregate answers (nubis.model.aggregates)."""

from __future__ import annotations

import pytest

from nubis.model.aggregates import KINDS, SLICE_THICKNESS_EDGES, bin_label, pool, suppress

BODY = KINDS["instances_by_body_part"]


def test_bins_are_half_open_and_the_ends_are_named() -> None:
    assert bin_label(0.99, SLICE_THICKNESS_EDGES) == "[0.5,1)"
    assert bin_label(1.0, SLICE_THICKNESS_EDGES) == "[1,1.5)"
    assert bin_label(10.0, SLICE_THICKNESS_EDGES) == ">=10"
    assert bin_label(-1.0, SLICE_THICKNESS_EDGES) == "<0"
    assert bin_label(None, SLICE_THICKNESS_EDGES) == "unknown"


def test_the_total_never_includes_a_suppressed_cell() -> None:
    answer = suppress(BODY, {("CHEST",): 40, ("HEAD",): 9, ("KNEE",): 10, ("HAND",): 0}, 10)
    cells = {tuple(c["key"]): c["count"] for c in answer["cells"]}
    assert cells == {("CHEST",): 40, ("HEAD",): "<10", ("KNEE",): 10}
    assert answer["total"] == 50  # 40 + 10: HEAD's 9 is in no number given out


def test_pooling_sums_what_sites_reported_and_marks_what_they_suppressed() -> None:
    a = suppress(BODY, {("CHEST",): 30, ("HEAD",): 4}, 10)
    b = suppress(BODY, {("CHEST",): 12, ("HEAD",): 12, ("KNEE",): 3}, 10)
    pooled = pool([a, b], 10)
    cells = {tuple(c["key"]): c for c in pooled["cells"]}
    assert cells[("CHEST",)]["count"] == 42
    # HEAD: 12 reported by b, a's part suppressed: a lower bound, and said so.
    assert cells[("HEAD",)] == {"key": ["HEAD"], "count": 12, "suppressed_at_sites": 1}
    assert cells[("KNEE",)] == {"key": ["KNEE"], "count": "<10", "suppressed_at_sites": 1}
    assert pooled["total"] == 54 and pooled["suppressed_cells"] == 1


def test_a_pool_keeps_the_strictest_k_and_one_kind() -> None:
    strict = suppress(BODY, {("CHEST",): 15}, 20)
    lax = suppress(BODY, {("CHEST",): 15}, 10)
    # The strict site withheld its 15; the lax site's 15 is under the pool's k of 20.
    assert {c["key"][0]: c["count"] for c in pool([strict, lax], 10)["cells"]} == {"CHEST": "<20"}
    assert pool([lax, lax], 10)["k"] == 10
    assert pool([strict, lax], 10)["k"] == 20
    with pytest.raises(ValueError, match="different or unknown kinds"):
        pool([lax, suppress(KINDS["kvp_histogram"], {}, 10)], 10)
