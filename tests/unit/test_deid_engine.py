"""De-identification of whole objects (PS3.15 Annex E): nothing identifying left anywhere,
private attributes, curves and overlays, references kept consistent across a cohort, the
pseudonyms of a project, the DICOM JSON view, and dciodvfy's verdict on the output."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread, examples
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary
from test_deid_table import CARRIER, OPTION_SETS, _object

from nubis.deid.engine import deidentify
from nubis.deid.json_view import deidentify_json
from nubis.deid.profile import Profile, load_default_profile
from nubis.tools.synth import PatientSpec, dataset_bytes, series_datasets

KEY = b"project-key-0123456789abcdef"
OTHER_KEY = b"another-project-key-0123456789"
BASIC = Profile("basic", "1", frozenset())


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _identifying(ds: Dataset) -> set[str]:
    """Every PHI value the table-driven object carries (text, UIDs, names), and dates."""
    found = set()
    for elem in ds.iterall():
        value = elem.value
        if elem.VR in ("PN", "LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE", "UI", "DA", "DT"):
            for v in value if elem.VM > 1 else [value]:
                text = str(v)
                if "PHI" in text.upper() or elem.VR in ("UI", "DA", "DT") or elem.VR == "PN":
                    found.add(text)
    found.discard("")
    return found - set(UID_dictionary)  # well-known UIDs name classes, not people


def _with_privates_and_graphics(ds: Dataset) -> Dataset:
    # An unsafe private block, a safe attribute (PS3.15 Table E.3.10-1: GEMS_ACQU_01 0019,xx23)
    # beside an unsafe one in the same block, and a private block nested in a sequence.
    ds.add_new(0x00090010, "LO", "NUBIS PHI CREATOR")
    ds.add_new(0x00091001, "LO", "PHI private Doe^Jane")
    ds.add_new(0x00190010, "LO", "GEMS_ACQU_01")
    ds.add_new(0x00191023, "DS", "5.0")
    ds.add_new(0x00191010, "LO", "PHI unsafe private")
    item = ds[CARRIER].value[0]
    item.add_new(0x00110010, "LO", "NUBIS NESTED")
    item.add_new(0x00111001, "PN", "PHI^NestedPrivate")
    # Curve (50xx) and overlay (60xx) groups, with text in the overlay's comments.
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x50003000, "OW", b"PHICURVE")
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60000011, "US", 8)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60003000, "OW", b"\x01" * 8)
    ds.add_new(0x60004000, "LT", "PHI overlay for Doe^Jane")
    return ds


@pytest.fixture(scope="module")
def phi_object() -> Dataset:
    return _with_privates_and_graphics(_object())


@pytest.mark.parametrize("read", [False, True], ids=["in-memory", "read-from-part10"])
@pytest.mark.parametrize("name", ["basic", "modified-dates-clean"])
def test_no_identifying_string_survives(phi_object: Dataset, name: str, read: bool) -> None:
    """After de-identification no original identifying value appears in any element, sequence,
    private block, the file meta, the Part-10 bytes or the DICOM JSON (PS3.15 E.1.1); also for
    an object read from its bytes, whose untouched elements the engine carries over undecoded."""
    phi_object.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.97.1"
    phi_object.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.97.1"
    phi_object.file_meta.MediaStorageSOPClassUID = phi_object.SOPClassUID
    source = dcmread(io.BytesIO(_part10(phi_object))) if read else phi_object
    profile = Profile(name, "1", OPTION_SETS[name])
    out, _ = deidentify(source, profile, KEY)
    part10 = _part10(out)
    as_json = json.dumps(deidentify_json(phi_object.to_json_dict(), profile, KEY)[0])
    dates_left = {str(e.value) for e in out.iterall() if e.VR in ("DA", "DT")}
    # Curve data are waveforms, kept by the Clean Graphics Option (their text is cleaned).
    curve = set() if "clean_graphics" in profile.options else {"PHICURVE"}
    for value in _identifying(phi_object) | {"Doe", "Jane", "PHI-PATIENT-7"} | curve:
        if re.fullmatch(r"\d{8,14}", value):
            assert value not in dates_left
            continue
        assert value.encode() not in part10, value
        assert value not in as_json, value
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.SOPInstanceUID.startswith("2.25.")


def test_private_attributes_removed_unless_safe(phi_object: Dataset) -> None:
    """PS3.15 E.3.10: only private attributes listed safe for their creator survive, with
    their creator; without the option every private attribute goes."""
    out, report = deidentify(phi_object, Profile("p", "1", frozenset({"retain_safe_private"})), KEY)
    private = [e.tag for e in out if e.tag.group & 1]
    assert private == [0x00190010, 0x00191023]
    assert not any(e.tag.group & 1 for e in out[CARRIER].value[0])
    assert report.private_kept == 1 and report.private_removed >= 3
    out, _ = deidentify(phi_object, BASIC, KEY)
    assert not any(e.tag.is_private for e in out.iterall())


def test_curves_and_overlays(phi_object: Dataset) -> None:
    """Table E.1-1: curve data (50xx) and overlay data and comments (60xx) are X, C under the
    Clean Graphics Option; an overlay plane without its data goes as a whole."""
    out, _ = deidentify(phi_object, BASIC, KEY)
    assert not any(0x5000 <= e.tag.group <= 0x60FF for e in out)
    out, _ = deidentify(phi_object, Profile("g", "1", frozenset({"clean_graphics"})), KEY)
    assert out[0x60003000].value == b"\x01" * 8
    assert "Doe" not in out[0x60004000].value and "Jane" not in out[0x60004000].value
    assert 0x50003000 in out


def test_cleaned_sequences_clean_their_free_text() -> None:
    """C on a sequence (Clean Structured Content, Clean Graphics, PS3.15 E.3.3, E.3.4) keeps
    it with its free text cleaned, also text the table does not list (Text Value, Unformatted
    Text Value); without the options the Basic Profile's D leaves the structure with dummy
    values."""
    ds = _cohort()[0]
    text = Dataset()
    text.UnformattedTextValue = f"Liddell Alice {ds.PatientID} LEFT"
    annotation = Dataset()
    annotation.TextObjectSequence = Sequence([text])
    ds.GraphicAnnotationSequence = Sequence([annotation])
    item = Dataset()
    item.ValueType = "TEXT"
    item.TextValue = "Seen by Alice Liddell, lesion stable"
    ds.ContentSequence = Sequence([item])
    options = frozenset({"clean_graphics", "clean_structured_content"})
    out, _ = deidentify(ds, Profile("c", "1", options), KEY)
    cleaned = out.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    assert cleaned == "LEFT"
    assert out.ContentSequence[0].TextValue == "Seen by , lesion stable"
    out, _ = deidentify(ds, BASIC, KEY)
    dummy_text = out.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    assert dummy_text == out.ContentSequence[0].TextValue == "ANONYMIZED"
    assert out.ContentSequence[0].ValueType == "TEXT"  # coded values keep the tree readable


def test_modified_dates_move_unlisted_dates_too() -> None:
    """A date Table E.1-1 does not list (Expiry Date, a DICOS attribute) moves with the others
    under Modified Dates (PS3.15 E.3.6), so that no original date reveals the shift."""
    ds = _cohort()[0]
    ds.ExpiryDate = "20200111"
    out, report = deidentify(ds, load_default_profile(), KEY)
    assert report.date_shift_days is not None
    assert (_day(out.StudyDate) - _day(out.ExpiryDate)).days == -10
    read, _ = deidentify(dcmread(io.BytesIO(_part10(ds))), load_default_profile(), KEY)
    assert read.ExpiryDate == out.ExpiryDate


def _cohort() -> list[Dataset]:
    """Two studies of one patient and one of another, two instances a series; each second
    instance refers to the first in its Referenced and Source Image Sequences."""
    alice = PatientSpec(patient_id="ALICE-1", patient_name="Liddell^Alice", birth_date="19600202")
    bob = PatientSpec(patient_id="BOB-2", patient_name="Builder^Bob", birth_date="19700303")
    studies = [
        (alice, "20200101", "ACC-A1", 1),
        (alice, "20210615", "ACC-A2", 2),
        (bob, "20200101", "ACC-B1", 3),
    ]
    found = []
    for patient, study_date, accession, seed in studies:
        first, second = series_datasets(
            "CT", n_instances=2, rows=16, columns=16, patient=patient,
            study_date=study_date, accession=accession, seed=seed,
        )  # fmt: skip
        for sequence in ("ReferencedImageSequence", "SourceImageSequence"):
            item = Dataset()
            item.ReferencedSOPClassUID = first.SOPClassUID
            item.ReferencedSOPInstanceUID = first.SOPInstanceUID
            setattr(second, sequence, Sequence([item]))
        found += [first, second]
    return found


def test_cohort_keeps_references_and_pseudonyms_consistent() -> None:
    """A multi-study cohort de-identified one object at a time: study, series, frame of
    reference and referenced instances all point at the same remapped UIDs; one patient has
    one pseudonym and one date shift (longitudinal intervals kept, PS3.15 E.3.6)."""
    profile = load_default_profile()
    source = _cohort()
    out = [deidentify(ds, profile, KEY)[0] for ds in source]
    for i in range(0, len(out), 2):
        first, second = out[i], out[i + 1]
        assert first.StudyInstanceUID == second.StudyInstanceUID
        assert first.SeriesInstanceUID == second.SeriesInstanceUID
        assert first.FrameOfReferenceUID == second.FrameOfReferenceUID
        for sequence in ("ReferencedImageSequence", "SourceImageSequence"):
            item = getattr(second, sequence)[0]
            assert item.ReferencedSOPInstanceUID == first.SOPInstanceUID
            assert item.ReferencedSOPClassUID == source[i].SOPClassUID  # well-known: kept
    assert len({ds.StudyInstanceUID for ds in out}) == 3
    alice_1, alice_2, bob = out[0], out[2], out[4]
    assert alice_1.PatientID == alice_2.PatientID != bob.PatientID
    assert alice_1.PatientName == alice_2.PatientName != bob.PatientName
    days = (_day(alice_2.StudyDate) - _day(alice_1.StudyDate)).days
    assert days == (_day("20210615") - _day("20200101")).days
    assert alice_1.StudyDate != "20200101"


def _day(text: str):  # type: ignore[no-untyped-def]
    from datetime import date

    return date(int(text[:4]), int(text[4:6]), int(text[6:]))


def test_same_patient_same_pseudonym_per_key_only() -> None:
    """Two exports of one project agree; another project's key gives unrelated pseudonyms."""
    ds = _cohort()[0]
    profile = load_default_profile()
    once, report = deidentify(ds, profile, KEY)
    again, _ = deidentify(ds, profile, KEY)
    other, _ = deidentify(ds, profile, OTHER_KEY)
    assert once.PatientID == again.PatientID == report.patient_pseudonym
    assert once.SOPInstanceUID == again.SOPInstanceUID
    assert other.PatientID != once.PatientID
    assert other.SOPInstanceUID != once.SOPInstanceUID
    assert other.StudyDate != once.StudyDate or other.PatientName != once.PatientName
    assert report.uid_map[ds.SOPInstanceUID] == once.SOPInstanceUID


def test_input_left_unchanged() -> None:
    ds = _cohort()[0]
    before = dataset_bytes(ds)
    deidentify(ds, load_default_profile(), KEY)
    assert dataset_bytes(ds) == before


def test_json_view_matches_part10_output() -> None:
    """The researcher's metadata view and an export of the same project agree element for
    element; a BulkDataURI names the remapped object."""
    ds = _cohort()[1]
    profile = load_default_profile()
    out, _ = deidentify(ds, profile, KEY)
    metadata = ds.to_json_dict()
    uri = (
        f"https://archive/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/bulk/7FE00010"
    )
    metadata["7FE00010"] = {"vr": "OW", "BulkDataURI": uri}
    view, report = deidentify_json(metadata, profile, KEY)
    expected = out.to_json_dict()
    del expected["7FE00010"], view["7FE00010"]
    assert view == expected
    bulk = deidentify_json(metadata, profile, KEY)[0]["7FE00010"]["BulkDataURI"]
    assert ds.StudyInstanceUID not in bulk and out.SOPInstanceUID in bulk
    assert report.patient_pseudonym == out.PatientID


def _dciodvfy_errors(path: Path) -> set[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return {
        line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")
    }


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy not installed")
@pytest.mark.parametrize("kind", ["CT_small", "synth", "ECG"])
def test_dciodvfy_reports_no_new_errors(tmp_path: Path, kind: str) -> None:
    """The de-identified object is still valid for its IOD (PS3.15 E.1.1: the output conforms
    to its IOD): dciodvfy finds no error that the original did not have. The 12-lead ECG
    carries a non-empty Acquisition Context Sequence (X/Z in Table E.1-1), Type 2 in the
    waveform IODs (PS3.3 C.7.6.14): it must stay present, items dummied."""
    if kind == "CT_small":
        ds = dcmread(examples.get_path("ct"))
    elif kind == "ECG":
        ds = dcmread(get_testdata_file("waveform_ecg.dcm"))
        assert len(ds.AcquisitionContextSequence) > 0
    else:
        ds = _cohort()[1]
    before, after = tmp_path / "before.dcm", tmp_path / "after.dcm"
    ds.save_as(before, enforce_file_format=True)
    for profile in (BASIC, load_default_profile()):
        deidentified, _ = deidentify(ds, profile, KEY)
        deidentified.save_as(after, enforce_file_format=True)
        assert _dciodvfy_errors(after) <= _dciodvfy_errors(before), profile.name
