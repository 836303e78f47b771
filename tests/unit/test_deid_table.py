"""Every rule of PS3.15 Table E.1-1, from the package's data file (generated from the standard's
machine-readable table), on an object carrying PHI in every attribute the table lists, at the
top level and nested in a sequence, under several option sets (PS3.15 E.1.1, E.2, E.3)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from nubis.deid.engine import deidentify
from nubis.deid.profile import Profile
from nubis.deid.pseudonyms import Pseudonyms
from nubis.deid.table import TABLE_OPTIONS, TableRow, rows_by_tag, table_e1_1

KEY = b"project-key-0123456789abcdef"
PATIENT_ID = "PHI-PATIENT-7"
# A sequence the table does not list, kept and walked: every listed attribute goes inside it too.
CARRIER = Tag(0x0008, 0x9215)  # Derivation Code Sequence
# Attributes the engine writes itself whatever their rule, and the command group (0000),
# which is no part of a stored data set.
WRITTEN = {Tag(0x00100010), Tag(0x00100020), Tag(0x00120062), Tag(0x00120063), Tag(0x00120064)}
OPTION_SETS = {
    "basic": frozenset(),
    "retain-all": frozenset(
        o for o in TABLE_OPTIONS if o not in ("retain_longitudinal_modified_dates",)
    )
    - {"clean_descriptors", "clean_structured_content", "clean_graphics"},
    "modified-dates-clean": frozenset(
        {
            "retain_longitudinal_modified_dates",
            "clean_descriptors",
            "clean_structured_content",
            "clean_graphics",
            "retain_safe_private",
        }
    ),
}
RESOLVED = {"X/Z": "Z", "X/D": "D", "X/Z/D": "D", "Z/D": "D", "X/Z/U*": "U"}


def _rows() -> list[TableRow]:
    return [
        row
        for tag, row in rows_by_tag().items()
        if tag >> 16 not in (0x0000, 0x0002) and dictionary_has_tag(tag) and tag not in WRITTEN
    ]


def _phi(tag: int, vr: str, index: int) -> object:
    """A value of ``vr`` unique to ``tag``, so that any copy left behind can be found."""
    if vr == "PN":
        return f"Phi{tag:08X}^Person"
    if vr in ("LO", "SH", "LT", "ST", "UT", "UC", "CS", "AE", "UR"):
        return f"PHI{tag:08X}"
    if vr == "DA":
        return (date(2001, 1, 1) + timedelta(days=index)).strftime("%Y%m%d")
    if vr == "DT":
        return (date(2001, 1, 1) + timedelta(days=index)).strftime("%Y%m%d") + "101010"
    if vr == "TM":
        return "101010"
    if vr == "UI":
        return f"1.2.826.0.1.3680043.8.498.99.{tag}"
    if vr == "AS":
        return "042Y"
    if vr in ("DS", "IS"):
        return "123"
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"):
        return 7
    if vr == "AT":
        return 0x00100010
    if vr == "SQ":
        item = Dataset()
        item.PersonName = f"Nested{tag:08X}^Phi"
        item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.98.{tag}"
        return Sequence([item])
    return b"PHIBYTES"


def _element(row: TableRow, index: int) -> DataElement:
    tag = int(row.tag, 16)
    vr = dictionary_VR(tag).split(" or ")[0]
    return DataElement(tag, vr, _phi(tag, vr, index))


def _object() -> Dataset:
    ds = Dataset()
    nested = Dataset()
    for index, row in enumerate(_rows()):
        ds.add(_element(row, index))
        nested.add(_element(row, index))
    ds.add(DataElement(CARRIER, "SQ", Sequence([nested])))
    ds.PatientID = PATIENT_ID
    ds.PatientName = "Doe^Jane"
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.fixture(scope="module")
def source() -> Dataset:
    return _object()


def test_table_data_file_is_the_standards() -> None:
    table = table_e1_1()
    assert "Table E.1-1" in table.source and table.edition and len(table.source_commit) == 40
    # Every code is one the standard defines (PS3.15 E.1.1: D, Z, X, K, C, U and combinations).
    assert {r.basic for r in table.rows} <= {"D", "Z", "X", "U", *RESOLVED}
    assert {c for r in table.rows for c in r.options.values()} <= {"K", "C"}
    assert rows_by_tag()[0x00100010].basic == "Z"  # Patient's Name
    assert rows_by_tag()[0x00080018].basic == "U"  # SOP Instance UID
    assert len(table.rows) > 600
    assert CARRIER not in rows_by_tag()
    # Every row is exercised below but the command group's two, the file meta's one (checked
    # on the rebuilt file meta), the attributes the engine writes itself and the four patterns.
    assert len(_rows()) == len(table.rows) - 3 - len(WRITTEN & rows_by_tag().keys()) - 4


def _check(
    row: TableRow,
    before: DataElement,
    after: DataElement | None,
    options: frozenset[str],
    shift: int,
) -> None:
    code = row.action(options)
    action = RESOLVED.get(code, code)
    if before.VR == "SQ" and code == "X/Z":
        # Z's non-zero-length form (Table E.1-1: "or a non-zero length value that may be a
        # dummy"): a sequence keeps its items, every value a dummy (see engine.py).
        action = "D"
    where = f"{row.tag} {row.name} ({code})"
    if action == "X":
        assert after is None, where
        return
    assert after is not None, where
    if action == "K":
        if before.VR == "SQ":
            assert len(after.value) == len(before.value), where
        else:
            assert after.value == before.value, where
    elif action == "Z":
        assert after.value in ("", None, b"") or len(after.value) == 0, where
    elif action == "D":
        if before.VR == "SQ":
            # The same structure with every value a dummy, UIDs remapped.
            item = after.value[0]
            assert str(item.PersonName) == "ANONYMIZED", where
            assert item.ReferencedSOPInstanceUID.startswith("2.25."), where
        else:
            assert after.value not in ("", None) and after.value != before.value, where
    elif action == "U":
        if before.VR == "SQ":
            item = after.value[0]
            assert item.ReferencedSOPInstanceUID.startswith("2.25."), where
            assert "PersonName" not in item or "Nested" not in str(item.PersonName), where
        else:
            assert str(after.value).startswith("2.25."), where
    else:  # C
        if before.VR == "DA":
            moved = date.fromisoformat(str(before.value)) + timedelta(days=shift)
            assert after.value == moved.strftime("%Y%m%d"), where
        elif before.VR == "DT":
            assert str(after.value)[8:] == "101010" and after.value != before.value, where
        elif before.VR == "TM":
            assert after.value == before.value, where  # whole days: times are kept (E.3.6)
        elif before.VR == "SQ":
            assert "Nested" not in str(after.value[0].get("PersonName", "")), where
        elif before.VR in ("AE", "PN", "UI"):
            assert after.value != before.value, where
        elif isinstance(before.value, str):
            # Cleaned of the object's identifying values; the placeholder itself is not one.
            assert "Doe" not in str(after.value), where


@pytest.mark.parametrize("name", sorted(OPTION_SETS))
def test_every_rule_of_table_e1_1(source: Dataset, name: str) -> None:
    options = OPTION_SETS[name]
    profile = Profile(name=name, version="1", options=options, shift_days=(-400, -10))
    out, report = deidentify(source, profile, KEY)
    shift = Pseudonyms(KEY).date_shift(PATIENT_ID, -400, -10)
    nested = out[CARRIER].value[0]
    for row in _rows():
        tag = int(row.tag, 16)
        _check(row, source[tag], out.get(tag), options, shift)
        _check(row, source[CARRIER].value[0][tag], nested.get(tag), options, shift)
    assert report.actions["X"] > 300


def test_patient_identity_and_method_codes(source: Dataset) -> None:
    """PS3.15 E.1.1: Patient Identity Removed YES, the method and its CID 7050 codes."""
    options = OPTION_SETS["modified-dates-clean"]
    out, _ = deidentify(source, Profile("p", "1", options), KEY)
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethod == "nubis p v1"
    codes = {
        (i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence
    }
    assert codes == {
        ("113100", "DCM"),  # Basic Application Confidentiality Profile
        ("113107", "DCM"),  # Modified Dates
        ("113105", "DCM"),  # Clean Descriptors
        ("113104", "DCM"),  # Clean Structured Content
        ("113103", "DCM"),  # Clean Graphics
        ("113111", "DCM"),  # Retain Safe Private
    }
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert out.PatientID == Pseudonyms(KEY).patient_id(PATIENT_ID)
    assert "Doe" not in str(out.PatientName)
