"""The migration report's forms (nubis.migrate.report): a study held in quarantine is listed
as such, with its reason codes, in JSON, CSV and text, and counted in the totals; it is not a
gap. The report of a real migration is checked end to end in
tests/integration/test_migrate_media.py."""

from __future__ import annotations

import csv
import io

from nubis.migrate.report import Report, StudyReport


def _report() -> Report:
    clean = StudyReport("1.2.3.1", "20200101", "done", 2, 2, sha256_matched=2)
    held = StudyReport(
        "1.2.3.2", "20200102", "done", 1, 1, sha256_matched=1,
        quarantined=True, quarantine_reasons=["series-conflict", "patient-conflict"],
    )  # fmt: skip
    return Report("old-pacs", [clean, held])


def test_held_studies_are_counted_and_are_not_gaps() -> None:
    report = _report()
    totals = report.totals
    assert totals["studies_quarantined"] == 1
    assert (totals["missing"], totals["silent_gaps"], totals["refused"]) == (0, 0, 0)
    rows = {r["study_uid"]: r for r in report.as_json()["studies"]}
    assert rows["1.2.3.2"]["quarantined"] is True
    assert rows["1.2.3.2"]["quarantine_reasons"] == ["series-conflict", "patient-conflict"]
    assert rows["1.2.3.1"]["quarantined"] is False and rows["1.2.3.1"]["quarantine_reasons"] == []


def test_each_csv_row_says_whether_its_study_is_held_and_why() -> None:
    rows = {r["study_uid"]: r for r in csv.DictReader(io.StringIO(_report().as_csv()))}
    assert (rows["1.2.3.1"]["quarantined"], rows["1.2.3.1"]["quarantine_reasons"]) == ("no", "")
    assert (rows["1.2.3.2"]["quarantined"], rows["1.2.3.2"]["quarantine_reasons"]) == (
        "yes", "series-conflict patient-conflict"
    )  # fmt: skip


def test_the_summary_lists_held_studies() -> None:
    text = _report().as_text()
    assert "held in quarantine 1 studies" in text
    assert (
        "study 1.2.3.2: source 1, nubis 1, held in quarantine (series-conflict, patient-conflict)"
        in text
    )
    assert "study 1.2.3.1" not in text  # nothing to say about it
    assert "every source instance is in nubis" in text
