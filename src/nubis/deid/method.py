"""What a de-identified object says of its de-identification (PS3.15 E.1.1, PS3.3 C.7.1.1):
Patient Identity Removed, De-identification Method and its Code Sequence from CID 7050."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

# CID 7050 De-identification Method (PS3.16), coding scheme DCM.
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA = ("113101", "Clean Pixel Data Option")
OPTION_CODES = {
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_longitudinal_full_dates": (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    "retain_longitudinal_modified_dates": (
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}


def method_codes(options: frozenset[str], *, pixels_cleaned: bool) -> list[tuple[str, str]]:
    """The CID 7050 codes of the profile and options applied, the Basic Profile first."""
    codes = [BASIC_PROFILE]
    if pixels_cleaned:
        codes.append(CLEAN_PIXEL_DATA)
    codes += sorted(OPTION_CODES[o] for o in options)
    return codes


def mark(dataset: Dataset, method: str, codes: list[tuple[str, str]], *, dates: str) -> None:
    """Writes the de-identification attributes into ``dataset``."""
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = method
    items = []
    for value, meaning in codes:
        item = Dataset()
        item.CodeValue = value
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = meaning
        items.append(item)
    dataset.DeidentificationMethodCodeSequence = Sequence(items)
    # PS3.15 E.3.6: whether dates were kept as they were or moved.
    dataset.LongitudinalTemporalInformationModified = dates
