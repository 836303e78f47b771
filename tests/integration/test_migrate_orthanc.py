"""``nubis migrate`` from a legacy PACS: Debian's Orthanc, over DICOMweb and DIMSE.

Orthanc runs on loopback with free ports (integration.orthanc), loaded with generated studies.
Each migration goes into an archive of its own, through the CLI, and its report must show
every source instance in nubis (zero gaps); over DICOMweb the bytes are the source's own, so
every SHA-256 compares equal.
"""

from __future__ import annotations

import contextlib
import io
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from integration.migrate_helpers import job_progress, migrate, report, start_migration
from integration.orthanc import Orthanc, free_port
from integration.server import index_rows, read_blob
from nubis.tools import synth
from nubis.tools.real_world import part10_files

N_STUDIES = 30
PER_STUDY = 4
TOTAL = N_STUDIES * PER_STUDY
GE_PRIVATE_CLASS = "1.2.840.113619.4.26"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synth.make_corpus(
        tmp_path_factory.mktemp("pacs-corpus"),
        n_studies=N_STUDIES,
        series_per_study=2,
        instances_per_series=PER_STUDY // 2,
        rows=32,
        columns=32,
        seed=1202,
    )


@pytest.fixture(scope="module")
def move_port() -> int:
    """Where ``nubis migrate`` receives C-MOVE sub-operations (Orthanc's modality NUBIS)."""
    return free_port()


@pytest.fixture(scope="module")
def legacy(corpus: list[Path], move_port: int) -> Iterator[Orthanc]:
    pacs = Orthanc(DicomModalities={"nubis": ["NUBIS", "127.0.0.1", move_port]})
    try:
        assert pacs.load(corpus) == TOTAL
        yield pacs
    finally:
        pacs.stop()


def _zero_gaps(data: Path, name: str) -> dict[str, int]:
    totals = report(data, name)["totals"]
    assert totals["studies"] == totals["studies_done"] == N_STUDIES
    assert totals["source_instances"] == totals["nubis_instances"] == TOTAL
    assert totals["missing"] == totals["extra"] == totals["refused"] == 0
    assert totals["silent_gaps"] == totals["listing_gaps"] == 0
    return totals


@contextlib.contextmanager
def _source_changes(legacy: Orthanc, corpus: list[Path], folder: Path) -> Iterator[list[Path]]:
    """The PACS keeps receiving until the cut-over: in the first study one instance is deleted
    and another added to its series (the study's count is unchanged), and the second study
    gains one. The new objects (copies under new SOP Instance UIDs) are yielded; the PACS is
    put back as it was afterwards, for the module's other tests."""
    first, second = corpus[0], corpus[PER_STUDY]
    assert _study(first) != _study(second) and _study(first) == _study(corpus[1])
    folder.mkdir()
    added = []
    for n, original in enumerate((corpus[1], second)):
        ds = pydicom.dcmread(original)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = 100 + n
        ds.save_as(folder / f"added-{n}.dcm", enforce_file_format=True)
        added.append(folder / f"added-{n}.dcm")
    legacy.delete(pydicom.dcmread(first, stop_before_pixels=True).SOPInstanceUID)
    assert legacy.load(added) == 2
    try:
        yield added
    finally:
        for path in added:
            legacy.delete(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        legacy.load([first])


def _study(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _delta_zero_gaps(data: Path, name: str) -> None:
    """The report after the source changed: the deleted instance is kept in nubis and listed
    as removed at the source; nothing else differs."""
    totals = report(data, name)["totals"]
    assert totals["source_instances"] == TOTAL + 1
    assert totals["nubis_instances"] == TOTAL + 2
    assert totals["removed_at_source"] == 1
    assert totals["missing"] == totals["extra"] == totals["refused"] == 0
    assert totals["silent_gaps"] == totals["listing_gaps"] == 0


def test_dicomweb_migration_then_delta(legacy: Orthanc, corpus: list[Path], tmp_path: Path) -> None:
    data = tmp_path / "data"

    result = migrate(data, legacy.dicomweb, "--name", "web", "--concurrency", "2")

    assert result["instances_stored"] == TOTAL
    totals = _zero_gaps(data, "web")
    # WADO-RS gave the objects as stored (transfer-syntax=*): the source's own bytes.
    assert totals["sha256_matched"] == TOTAL

    with _source_changes(legacy, corpus, tmp_path / "added") as added:
        delta = migrate(data, legacy.dicomweb, "--name", "web", "--since-last-run")

    # Each changed study is listed by SOP Instance UID and only the new objects move, byte for
    # byte; the 28 unchanged studies are compared with the ledger and skipped.
    assert delta["instances_stored"] == 2
    assert delta["bytes_moved"] == sum(p.stat().st_size for p in added)
    assert delta["studies_skipped"] == N_STUDIES - 2
    assert delta["instances_present"] == 2 * PER_STUDY - 1
    _delta_zero_gaps(data, "web")


def test_dimse_c_move_migration_then_delta(
    legacy: Orthanc, corpus: list[Path], move_port: int, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    options = ("--name", "move", "--listen-port", str(move_port))

    result = migrate(data, legacy.dimse, *options, "--concurrency", "2")

    assert result["instances_stored"] == TOTAL
    totals = _zero_gaps(data, "move")
    # Over DIMSE the objects are re-encoded on the network: the source gives no digest.
    assert totals["sha256_not_given"] == TOTAL

    with _source_changes(legacy, corpus, tmp_path / "added"):
        delta = migrate(data, legacy.dimse, *options, "--since-last-run")

    # The study whose count is unchanged is found by its SOP Instance UIDs; from each changed
    # study the new instance alone is moved (a C-MOVE of a SOP Instance UID list, not the
    # whole study); the 28 unchanged studies are compared with the ledger and skipped.
    assert delta["instances_stored"] == 2
    assert delta["instances_present"] == 2 * PER_STUDY - 1
    assert delta["studies_skipped"] == N_STUDIES - 2
    _delta_zero_gaps(data, "move")


def test_dimse_c_get_migration(legacy: Orthanc, tmp_path: Path) -> None:
    data = tmp_path / "data"

    result = migrate(data, legacy.dimse, "--name", "get", "--retrieve", "get")

    assert result["instances_stored"] == TOTAL
    _zero_gaps(data, "get")


def test_capped_c_find_shrinks_its_date_window(corpus: list[Path], tmp_path: Path) -> None:
    """Orthanc answers at most LimitFindResults matches (ending with 0xFE00): the migration
    splits its date windows until every answer is whole, and so lists every study."""
    pacs = Orthanc(
        DicomModalities={"nubis": ["NUBIS", "127.0.0.1", free_port()]}, LimitFindResults=7
    )
    try:
        pacs.load(corpus)
        data = tmp_path / "data"

        # Dates asked for: no study without a Study Date is expected (see below).
        result = migrate(
            data, pacs.dimse, "--name", "capped", "--retrieve", "get", "--from", "19000101"
        )
        undated = migrate(tmp_path / "undated", pacs.dimse, "--name", "u", "--retrieve", "get")
    finally:
        pacs.stop()

    assert result["studies"] == N_STUDIES
    assert result["find_windows"] > N_STUDIES // 7
    assert result["listing_gaps"] == []
    _zero_gaps(data, "capped")
    # Without dates, a capped source may hide studies without a Study Date, which no window
    # matches: not silently.
    assert undated["studies"] == N_STUDIES
    assert [g["what"] for g in undated["listing_gaps"]] == ["studies without a Study Date"]


def test_sigkill_mid_migration_then_resume(legacy: Orthanc, move_port: int, tmp_path: Path) -> None:
    """A migration killed with SIGKILL resumes when run again: what was stored and verified
    is not moved again, and the report shows zero gaps."""
    data = tmp_path / "data"
    options = ("--name", "killed", "--listen-port", str(move_port))
    # Throttled so that it is still running when killed.
    process = start_migration(data, legacy.dimse, *options, "--max-mb-per-s", "0.05")
    try:
        deadline = time.monotonic() + 120
        while (progress := job_progress(data))["done"] < TOTAL // 4:
            assert process.poll() is None, "the migration ended before it could be killed"
            assert time.monotonic() < deadline, "the migration made no progress"
            time.sleep(0.5)
        # `nubis jobs` shows how far it is and when it should end.
        assert progress["total"] == TOTAL and progress["eta_seconds"] > 0
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    result = migrate(data, legacy.dimse, *options)

    # Studies finished before the kill are skipped whole; of one cut short, what was stored
    # is found present; only the rest is moved.
    assert result["studies_skipped"] > 0
    assert result["instances_stored"] < TOTAL
    skipped, present = result["instances_skipped"], result["instances_present"]
    assert skipped + present + result["instances_stored"] == TOTAL
    _zero_gaps(data, "killed")


def test_study_without_a_study_date_is_listed(tmp_path: Path) -> None:
    """Old archives hold studies without a Study Date, which no C-FIND date range matches;
    from a source that answers whole, the first query (no date key) lists them."""
    paths = synth.make_corpus(
        tmp_path / "src", n_studies=2, instances_per_series=2, rows=16, columns=16, seed=1204
    )
    for path in paths[:2]:  # the first study's two instances
        ds = pydicom.dcmread(path)
        del ds.StudyDate
        ds.save_as(path, enforce_file_format=True)
    pacs = Orthanc(DicomModalities={"nubis": ["NUBIS", "127.0.0.1", free_port()]})
    try:
        pacs.load(paths)
        result = migrate(tmp_path / "data", pacs.dimse, "--name", "undated", "--retrieve", "get")
    finally:
        pacs.stop()

    assert result["studies"] == 2 and result["instances_stored"] == 4
    assert result["listing_gaps"] == []


def test_real_world_corpus_migrates_without_silent_gaps(
    legacy: Orthanc, move_port: int, tmp_path: Path
) -> None:
    """The real-world corpus (pydicom's test files and pydicom-data) loaded into the PACS in
    one zip, migrated over C-MOVE (faster than DICOMweb here: Orthanc's instance-level
    QIDO-RS reads each file): every source instance is in nubis or listed with its reason.

    Orthanc 1.10.1 keeps the files it accepts (the others repeat a SOP Instance UID in
    another encoding, or are refused by it); one Study Instance UID under two Patient IDs
    ("id11111" and "id11111 ") is two studies to Orthanc, listed once here. Every instance
    comes in, none missing:
    - bad_sequence.dcm, whose Study, Series and SOP Instance UIDs are 64 hexadecimal
      characters, with warning 0xB007 (nubis.dicom.uids; it was refused as unidentifiable);
    - color-pl.dcm (Ultrasound Image Storage (Retired)) and an object of a GE private class,
      since the receiver takes every storage class (nubis.dimse.storage_classes); before,
      Orthanc's C-MOVE of them failed (0xC000) and so did that of explicit_VR-UN.dcm (a CT
      image; why it now comes through was not traced).
    Over DICOMweb the study under two Patient IDs is refused by Orthanc's WADO-RS (404) and
    listed with that reason.
    """
    files = part10_files()
    assert len(files) >= 140, "pydicom-data (the test extra) is not installed"
    private = _private_class_object(tmp_path)
    ids = legacy.load_zip([*files, private])
    data = tmp_path / "data"
    try:
        result = migrate(data, legacy.dimse, "--name", "real", "--listen-port", str(move_port))
    finally:
        legacy.delete_ids(ids)

    listed = report(data, "real", expect_gaps=True)
    totals = listed["totals"]
    assert totals["silent_gaps"] == totals["listing_gaps"] == 0
    assert totals["source_instances"] == TOTAL + len(ids) - 1  # a UID twice at the source
    assert totals["nubis_instances"] + totals["missing"] == totals["source_instances"]
    hexadecimal = "05fa52f0e599f17b8186ff18fcdf2b5570a52206a75c4d03afebf5c475dc8758"
    [bad_sequence] = [s for s in listed["studies"] if s["study_uid"] == hexadecimal]
    assert bad_sequence["nubis_count"] == bad_sequence["source_count"] == 1
    assert totals["missing"] == 0
    assert totals["nubis_instances"] == totals["source_instances"]
    assert result["instances_stored"] == totals["nubis_instances"]
    # Retired and private storage classes come in (nubis.dimse.storage_classes).
    rows = {r.sop_instance_uid: r for r in index_rows(data)}
    for path in (_named(files, "color-pl.dcm"), private):
        sent = pydicom.dcmread(path, stop_before_pixels=True)
        stored = pydicom.dcmread(io.BytesIO(read_blob(data, rows[str(sent.SOPInstanceUID)])))
        assert stored.SOPClassUID == sent.SOPClassUID


def _named(files: list[Path], name: str) -> Path:
    (path,) = [p for p in files if p.name == name]
    return path


def _private_class_object(folder: Path) -> Path:
    """pydicom's SC_rgb.dcm as an object of a GE private storage class."""
    ds = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = GE_PRIVATE_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.save_as(folder / "private-class.dcm", enforce_file_format=True)
    return folder / "private-class.dcm"
