"""The study browser's search: filters as QIDO-RS keys, sealed in URLs (web/ui/study_search.py)."""

from __future__ import annotations

import pytest

from nubis.errors import BadRequest
from nubis.model.query import MatchKind
from nubis.web.ui.study_search import SearchView, StudyFilters, open_filters, seal_filters


@pytest.mark.parametrize(
    ("filters", "params"),
    [
        (StudyFilters(patient_name="doe"), [("PatientName", "doe*")]),
        (StudyFilters(patient_name="Doe, John"), [("PatientName", "Doe^John*")]),
        (StudyFilters(patient_name="D?e^J*"), [("PatientName", "D?e^J*")]),
        (StudyFilters(patient_id="P-1"), [("PatientID", "P-1")]),
        (StudyFilters(accession="A*"), [("AccessionNumber", "A*")]),
        (StudyFilters(date_from="2024-01-02"), [("StudyDate", "20240102-")]),
        (StudyFilters(date_to="2024-01-02"), [("StudyDate", "-20240102")]),
        (
            StudyFilters(date_from="2024-01-01", date_to="2024-01-31"),
            [("StudyDate", "20240101-20240131")],
        ),
        (StudyFilters(modality="mr"), [("ModalitiesInStudy", "MR")]),
        (StudyFilters(description="HEAD"), [("StudyDescription", "*HEAD*")]),
        (StudyFilters(), []),
    ],
)
def test_filters_are_qido_keys(filters: StudyFilters, params: list[tuple[str, str]]) -> None:
    assert filters.qido_params() == params


def test_the_page_query_is_ordered_and_probes_for_more() -> None:
    view = SearchView(StudyFilters(patient_name="doe"), "", "name", "asc", page=3)
    query, text = view.query(include=frozenset({0x00081030}))
    assert query.order is not None and query.order.tag == 0x00100010
    assert not query.order.descending
    assert query.offset == 100 and query.limit == 50 and query.limit_capped
    assert query.matches[0].kind is MatchKind.WILDCARD
    assert 0x00081030 in query.include
    assert text == "PatientName=doe*&offset=100&limit=50&orderby=name"


def test_sealed_filters_open_only_with_their_session_secret() -> None:
    filters = StudyFilters(patient_name="Doe^Jane", patient_id="SECRET-ID-42")
    token = seal_filters(filters, "session-a")
    assert "Doe" not in token and "SECRET" not in token
    assert open_filters(token, "session-a") == filters
    assert open_filters(token, "session-b") is None
    assert open_filters(token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), "session-a") is None
    assert open_filters("not base64 !", "session-a") is None
    # The same filters seal differently every time (random nonce): a token says nothing.
    assert seal_filters(filters, "session-a") != token


def test_a_query_string_is_read_defensively() -> None:
    view, lost = SearchView.from_query_string(
        {"q": "garbage", "sort": "1;DROP", "dir": "sideways", "page": "99999999999"}, "s"
    )
    assert lost and view.token == "" and view.filters == StudyFilters()
    assert (view.sort, view.direction, view.page) == ("date", "desc", 1)
    view, lost = SearchView.from_query_string({"sort": "name", "page": "7"}, "s")
    assert not lost and (view.sort, view.direction, view.page) == ("name", "asc", 7)
    assert view.url() == "/ui/?sort=name&dir=asc&page=7"
    assert view.sort_url("name") == "/ui/?sort=name&dir=desc"
    assert view.sort_url("date") == "/ui/?sort=date&dir=desc"


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"date_from": "2024-02-30"}, "not a valid calendar date"),
        ({"date_to": "20240101"}, "not a date"),
        ({"date_from": "2024-02-02", "date_to": "2024-02-01"}, "ends before it starts"),
        ({"patient_id": "\x00"}, "control character"),
    ],
)
def test_bad_filters(values: dict[str, str], reason: str) -> None:
    with pytest.raises(BadRequest, match=reason):
        StudyFilters(**values).qido_params()
