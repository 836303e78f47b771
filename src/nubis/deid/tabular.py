"""The engine's decisions for attributes exported as table columns (analytics, Parquet).

A metadata export writes a few attributes per row for a million rows: running the engine over a
data set per row would cost minutes. Instead the engine is asked once per profile what it does
to each exported attribute, by de-identifying a probe data set that carries every one of them
(:func:`column_rules`): an attribute that comes out unchanged is kept, a date that comes out
moved by the patient's shift is shifted, a UID that comes out as its pseudonym is remapped, and
anything else (removed, emptied, a dummy, cleaned) is left out of the export. Each row then
applies those rules with the same :class:`~nubis.deid.pseudonyms.Pseudonyms` and date shift the
engine uses, so a de-identified export agrees value for value with the project's on-the-fly
views (tests/unit/test_metadata_export.py checks it against ``deidentify_json``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from nubis.deid import burned_in
from nubis.deid.engine import deidentify_elements
from nubis.deid.profile import Profile
from nubis.deid.pseudonyms import Pseudonyms
from nubis.deid.values import shift_date

__all__ = ["ColumnRule", "column_rules", "excluded"]


class ColumnRule(enum.Enum):
    KEEP = "keep"
    SHIFT_DATE = "shift date"
    REMAP_UID = "remap UID"
    PSEUDONYM = "patient pseudonym"
    DROP = "drop"


_PROBE_PATIENT = "NUBIS-PROBE-PATIENT"
_PROBE_KEY = b"nubis column probe key, not a project's"
# Probe values that identify nothing and are valid for their VR.
_PROBES = {
    "DA": "20200115",
    "UI": "1.2.826.0.1.3680043.10.543.1.2.3",
    "CS": "PROBE",
    "DS": "2.5",
    "IS": "7",
    "US": 16,
    "PN": "PROBE^NAME",
    "TM": "101010",
}


def column_rules(profile: Profile, keywords: Iterable[str]) -> dict[str, ColumnRule]:
    """What ``profile`` does to each attribute named by ``keywords`` (see the module docs)."""
    pseudonyms = Pseudonyms(_PROBE_KEY)
    probe = Dataset()
    probe.PatientID = _PROBE_PATIENT
    # Neither suspect of burned-in text nor without pixels: the probe is never excluded.
    probe.Modality = "CT"
    probe.BurnedInAnnotation = "NO"
    given: dict[str, object] = {}
    for keyword in keywords:
        if keyword in ("PatientID", "Modality"):
            continue
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"not a DICOM keyword: {keyword}")
        vr = dictionary_VR(tag)
        value = _PROBES.get(vr, "PROBE TEXT")
        if keyword == "SOPClassUID":
            value = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        setattr(probe, keyword, value)
        given[keyword] = value
    out, _report, _decision = deidentify_elements(probe, profile, pseudonyms)
    shift = pseudonyms.date_shift(_PROBE_PATIENT, *profile.shift_days)
    rules: dict[str, ColumnRule] = {}
    for keyword in keywords:
        if keyword == "PatientID":
            rules[keyword] = ColumnRule.PSEUDONYM
            continue
        if keyword == "Modality":
            # Kept by every option of Table E.1-1 (it is not in the table).
            rules[keyword] = ColumnRule.KEEP
            continue
        before = given[keyword]
        value = out.get(keyword)
        if value in (None, "", b""):
            rules[keyword] = ColumnRule.DROP
        elif str(value) == str(before):
            rules[keyword] = ColumnRule.KEEP
        elif isinstance(before, str) and str(value) == shift_date(before, shift):
            rules[keyword] = ColumnRule.SHIFT_DATE
        elif isinstance(before, str) and str(value) == pseudonyms.uid(before):
            rules[keyword] = ColumnRule.REMAP_UID
        else:
            rules[keyword] = ColumnRule.DROP
    return rules


def excluded(
    profile: Profile,
    *,
    modality: str | None,
    sop_class_uid: str,
    burned_in_annotation: str | None,
    has_pixel_data: bool,
) -> bool:
    """Whether the engine would exclude this object (burned-in text), from its columns: an
    export leaves out what a view of the project would refuse."""
    dataset = Dataset()
    dataset.Modality = modality or ""
    dataset.SOPClassUID = sop_class_uid
    if burned_in_annotation:
        dataset.BurnedInAnnotation = burned_in_annotation
    if has_pixel_data:
        dataset.PixelData = b""
    decision = burned_in.decide(dataset, profile.burned_in)
    # Regions are blanked by device: the export carries no pixels, so only exclusion matters.
    return decision.excluded
