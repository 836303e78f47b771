"""The de-identification engine: PS3.15 Annex E applied to a data set under a profile.

``deidentify(dataset, profile, project_key) -> (dataset, report)`` walks every element, nested
sequences and private blocks included, and applies the action Table E.1-1 gives it under the
profile's options and rules (``table.TableRow.action``). The input is left unchanged.

Compound actions (X/Z, X/D, X/Z/D, Z/D, X/Z/U*) let the de-identifier remove an attribute
unless the IOD requires it. The engine does not carry each IOD's attribute Types, so it takes
the action that keeps every IOD conformant: X/Z -> Z, X/D, X/Z/D and Z/D -> D, X/Z/U* -> U*
(the sequence kept, the UIDs inside remapped). A non-empty sequence under any of them keeps
its items with every value a dummy (D, or Z's "non-zero length value that may be a dummy"):
an empty one is invalid where the attribute is Type 1, or Type 3 with "one or more Items",
a removed one where it is Type 1 or 2. Nothing identifying survives either way: Z and D carry
no original value.

Attributes the table does not list are kept, except that every UID (VR UI) is remapped unless
it is a well-known one or the Retain UIDs Option applies, and a person name is replaced by a
dummy: a reference inside a sequence then still names the remapped object.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from functools import cache

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from nubis.deid import burned_in, method
from nubis.deid.profile import Profile
from nubis.deid.pseudonyms import Pseudonyms
from nubis.deid.table import (
    CURVE_GROUPS,
    OVERLAY_COMMENTS,
    OVERLAY_DATA,
    TableRow,
    pattern_row,
    rows_by_tag,
    safe_private_attributes,
)
from nubis.deid.values import (
    DUMMY_TEXT,
    TEXT_VRS,
    Scrubber,
    dummy,
    empty,
    identifying_strings,
    shift_values,
)
from nubis.errors import Forbidden

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
PIXEL_DATA = 0x7FE00010
_RESOLVED = {"X/Z": "Z", "X/D": "D", "X/Z/D": "D", "Z/D": "D", "X/Z/U*": "U"}
_DATE_VRS = frozenset({"DA", "DT"})
_FREE_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC", "PN"})
# VRs the walk may change even where the table lists nothing (UIDs, names, sequences' items),
# and the ambiguous ones pydicom resolves on decoding.
_DECODED_VRS = frozenset({"UI", "PN", "SQ", "US or SS", "OB or OW", "US or OW", "US or SS or OW"})


@dataclass
class DeidReport:
    """What one object's de-identification did, for the export's manifest and the audit.

    ``uid_map`` and ``patient_pseudonym`` belong in the re-identification table, never in a
    log line or a response to a researcher.
    """

    profile: str
    method_codes: list[tuple[str, str]] = field(default_factory=list)
    actions: Counter[str] = field(default_factory=Counter)
    private_removed: int = 0
    private_kept: int = 0
    burned_in: str = ""
    date_shift_days: int | None = None
    patient_pseudonym: str = ""
    uid_map: dict[str, str] = field(default_factory=dict)


class ExcludedObject(Forbidden):
    """The profile leaves this object out (burned-in text it cannot blank); never passed."""

    def __init__(self, report: DeidReport) -> None:
        super().__init__(
            f"the de-identification profile leaves this object out ({report.burned_in})"
        )
        self.report = report


def deidentify(
    dataset: Dataset, profile: Profile, project_key: bytes
) -> tuple[Dataset, DeidReport]:
    """The de-identified copy of ``dataset`` (file meta rebuilt) and its report.

    Raises ExcludedObject when the burned-in policy leaves the object out.
    """
    pseudonyms = Pseudonyms(project_key)
    out, report, decision = deidentify_elements(dataset, profile, pseudonyms)
    out.file_meta = _file_meta(out, getattr(dataset, "file_meta", Dataset()), pseudonyms)
    report.uid_map = dict(pseudonyms.uid_map)
    if decision.regions is not None and PIXEL_DATA in out:
        burned_in.blank(out, decision.regions)
    return out, report


def deidentify_elements(
    dataset: Dataset, profile: Profile, pseudonyms: Pseudonyms
) -> tuple[Dataset, DeidReport, burned_in.BurnedInDecision]:
    """The data set de-identified without its file meta or pixel blanking (the JSON view's
    and the Part-10 output's common part)."""
    report = DeidReport(profile=profile.name)
    decision = burned_in.decide(dataset, profile.burned_in)
    report.burned_in = decision.reason
    if decision.excluded:
        raise ExcludedObject(report)
    patient_id = str(dataset.get("PatientID", "") or "")
    walk = _Walk(dataset, profile, pseudonyms, patient_id, report)
    out = walk.dataset(dataset, depth=0)
    report.patient_pseudonym = pseudonyms.patient_id(patient_id)
    out.PatientID = report.patient_pseudonym
    out.PatientName = pseudonyms.patient_name(patient_id)
    options = profile.options
    if "retain_longitudinal_modified_dates" in options or walk.shifted:
        report.date_shift_days = walk.shift
        dates = "MODIFIED"
    elif "retain_longitudinal_full_dates" in options:
        dates = "UNMODIFIED"
    else:
        dates = "REMOVED"
    pixels_cleaned = decision.regions is not None
    if pixels_cleaned:
        # Said here, not where the pixels are zeroed, so that the JSON view says it too.
        out.BurnedInAnnotation = "NO"
    report.method_codes = method.method_codes(options, pixels_cleaned=pixels_cleaned)
    method.mark(out, profile.method, report.method_codes, dates=dates)
    report.uid_map = dict(pseudonyms.uid_map)
    return out, report, decision


def _file_meta(dataset: Dataset, source: Dataset, pseudonyms: Pseudonyms) -> FileMetaDataset:
    """The file meta written anew (PS3.10 7.1): the de-identified object's class and remapped
    instance, or the source file meta's where the data set lacks them, and its transfer syntax."""
    meta = FileMetaDataset()
    sop_class = dataset.get("SOPClassUID") or source.get("MediaStorageSOPClassUID")
    if sop_class:
        meta.MediaStorageSOPClassUID = sop_class
    sop_instance = dataset.get("SOPInstanceUID")
    if not sop_instance and source.get("MediaStorageSOPInstanceUID"):
        sop_instance = pseudonyms.uid(str(source.MediaStorageSOPInstanceUID))
    if sop_instance:
        meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = UID(source.get("TransferSyntaxUID") or ExplicitVRLittleEndian)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "NUBIS_DEID_1"
    return meta


class _Walk:
    """One object's walk: the profile's actions element by element, sequences recursively."""

    def __init__(
        self,
        source: Dataset,
        profile: Profile,
        pseudonyms: Pseudonyms,
        patient_id: str,
        report: DeidReport,
    ) -> None:
        self.source = source
        self.profile = profile
        self.options = profile.options
        self.pseudonyms = pseudonyms
        self.report = report
        self.rows = rows_by_tag()
        self.safe = safe_private_attributes() if "retain_safe_private" in self.options else {}
        self.shift = pseudonyms.date_shift(patient_id, *profile.shift_days)
        self.shifted = False
        # Under Modified Dates a date the table does not list moves too: left as it was, it
        # would give away the shift of every other date.
        self.shift_all_dates = "retain_longitudinal_modified_dates" in self.options
        self._scrubber: Scrubber | None = None
        self.curve_action = _resolve(pattern_row(CURVE_GROUPS).action(self.options))
        self.overlay_action = _resolve(pattern_row(OVERLAY_DATA).action(self.options))
        self.overlay_comment_action = _resolve(pattern_row(OVERLAY_COMMENTS).action(self.options))

    @property
    def scrubber(self) -> Scrubber:
        # Built on first use: most objects have no free text to clean.
        if self._scrubber is None:
            tags = _identifying_tags(self.options)
            self._scrubber = Scrubber(identifying_strings(self.source, tags))
        return self._scrubber

    def dataset(self, source: Dataset, depth: int, *, cleaning: bool = False) -> Dataset:
        """``cleaning``: inside a sequence cleaned by C (structured content, graphic
        annotations), where free text the table does not list is cleaned too."""
        out = Dataset()
        # Elements kept as read are carried over undecoded (most of an image's header): the
        # output then says it has the source's encoding, so pydicom writes them as they were.
        raw_ok = source.original_encoding == (False, True)
        if raw_ok:
            out.set_original_encoding(False, True, source.original_character_set)
        kept_blocks: set[tuple[int, int]] = set()
        creators: dict[tuple[int, int], DataElement] = {}
        for tag in sorted(source.keys()):
            group, element = tag.group, tag.element
            if element == 0 or (depth == 0 and group == 0x0002):
                continue  # group lengths and file meta: written anew
            if raw_ok and self._as_read(source, tag, cleaning, out):
                continue
            elem = source[tag]
            if group & 1:
                if 0x0010 <= element <= 0x00FF:
                    creators[(group, element)] = elem
                elif self._private(source, elem, out):
                    kept_blocks.add((group, element >> 8))
                continue
            new = self.element(elem, depth, cleaning)
            if new is not None:
                out.add(new)
        for block in kept_blocks:
            out.add(creators[block])
        return out

    def _as_read(self, source: Dataset, tag: BaseTag, cleaning: bool, out: Dataset) -> bool:
        """Carries an element over undecoded when the walk would keep it unchanged anyway:
        not listed, not a rule's, not private, curve or overlay, not a UID, name or sequence,
        not free text inside a cleaned sequence."""
        raw = source.get_item(tag)
        if (
            not isinstance(raw, RawDataElement)
            or raw.VR is None
            or raw.VR in _DECODED_VRS
            or (cleaning and raw.VR in _FREE_TEXT_VRS)
            or (self.shift_all_dates and raw.VR in _DATE_VRS)
            or tag in self.rows
            or tag in self.profile.rules
            or tag.group & 1
            or 0x5000 <= tag.group <= 0x60FF
        ):
            return False
        out[tag] = raw
        return True

    def _private(self, source: Dataset, elem: DataElement, out: Dataset) -> bool:
        """Keeps a private element listed safe for its creator (E.3.10); removes the rest."""
        tag = elem.tag
        creator_tag = BaseTag((tag.group << 16) | (tag.element >> 8))
        creator = source.get(creator_tag)
        key = (str(creator.value).strip() if creator else "", tag.group, tag.element & 0xFF)
        if tag.element < 0x1000 or key not in self.safe:
            self.report.private_removed += 1
            self.report.actions["X"] += 1
            return False
        self.report.private_kept += 1
        out.add(self._keep(elem, depth=1, listed=False))
        return True

    def element(self, elem: DataElement, depth: int, cleaning: bool) -> DataElement | None:
        tag = elem.tag
        group = tag.group
        if 0x5000 <= group <= 0x501E:
            action = self.curve_action
        elif 0x6000 <= group <= 0x601E:
            # Without its data an overlay plane is incomplete: the plane goes as a whole.
            action = self.overlay_action
            if action == "C" and tag.element == 0x4000:
                action = self.overlay_comment_action
        elif tag in self.profile.rules:
            action = self.profile.rules[tag]
        else:
            row: TableRow | None = self.rows.get(tag)
            if row is None:
                if (cleaning and elem.VR in _FREE_TEXT_VRS) or (
                    self.shift_all_dates and elem.VR in _DATE_VRS
                ):
                    return self._clean(elem, depth)
                return self._keep(elem, depth, listed=False, cleaning=cleaning)
            action = row.action(self.options)
        return self.apply(elem, action, depth)

    def apply(self, elem: DataElement, code: str, depth: int) -> DataElement | None:
        action = _resolve(code)
        self.report.actions[action] += 1
        if action == "X":
            return None
        if action == "K":
            return self._keep(elem, depth, listed=True)
        if elem.tag == PATIENT_ID and action in ("Z", "D"):
            return _replace(elem, self.pseudonyms.patient_id(str(elem.value or "")))
        if action == "Z" and not (elem.VR == "SQ" and code == "X/Z"):
            return _replace(elem, empty(elem))
        if action in ("Z", "D"):
            if elem.VR == "UI":
                return self._uids(elem)
            if elem.VR == "SQ":
                # Under X/Z a sequence is Z's other form, "a non-zero length value that may be
                # a dummy" (Table E.1-1): an empty sequence breaks the Type 3 ones whose module
                # wants one or more items (Referenced Study Sequence), removal the Type 2 ones
                # (Acquisition Context Sequence); the structure with every value a dummy is
                # valid under either Type and keeps no original value.
                items = [self._dummy_item(item) for item in elem.value]
                return DataElement(elem.tag, "SQ", Sequence(items))
            return _replace(elem, dummy(elem))
        if action == "U":
            if elem.VR == "SQ":
                return self._keep(elem, depth, listed=True)
            return self._uids(elem) if elem.VR == "UI" else _replace(elem, dummy(elem))
        return self._clean(elem, depth)

    def _clean(self, elem: DataElement, depth: int) -> DataElement:
        """Action C: a value of similar meaning without the identifying part (E.3)."""
        vr = elem.VR
        if vr == "SQ":
            return self._keep(elem, depth, listed=True, cleaning=True)
        if vr in _DATE_VRS:
            self.shifted = True
            return _replace(elem, shift_values(elem, self.shift))
        if vr == "UI":
            return self._uids(elem)
        if vr == "AE":
            token = "AE" + self.pseudonyms.token("ae", str(elem.value or ""), 14)
            return _replace(elem, token)
        if vr == "PN":
            return _replace(elem, dummy(elem))
        if vr in TEXT_VRS and elem.value not in (None, ""):
            values = elem.value if elem.VM > 1 else [elem.value]
            # Text made of identifying values only becomes the placeholder, not empty: the
            # attribute may be one that must have a value.
            cleaned = [self.scrubber.clean(str(v)) or DUMMY_TEXT for v in values]
            return _replace(elem, cleaned if len(cleaned) > 1 else cleaned[0])
        return _replace(elem, elem.value)

    def _dummy_item(self, item: Dataset) -> Dataset:
        """An item of the same structure with every value a dummy (action D on a sequence):
        UIDs remapped, coded CS values the table does not list kept (ValueType, Relationship
        Type: enumerations), empty values left empty, private attributes removed."""
        out = Dataset()
        for elem in item:
            if elem.tag.element == 0 or elem.tag.group & 1:
                continue
            if elem.VR == "SQ":
                items = [self._dummy_item(i) for i in elem.value]
                out.add(DataElement(elem.tag, "SQ", Sequence(items)))
            elif elem.VR == "UI":
                out.add(self._uids(elem))
            elif elem.value in (None, "", b"") or (elem.VR == "CS" and elem.tag not in self.rows):
                out.add(_replace(elem, elem.value))
            else:
                out.add(_replace(elem, dummy(elem)))
        return out

    def _keep(
        self, elem: DataElement, depth: int, *, listed: bool, cleaning: bool = False
    ) -> DataElement:
        if elem.VR == "SQ":
            items = [self.dataset(item, depth + 1, cleaning=cleaning) for item in elem.value]
            return DataElement(elem.tag, "SQ", Sequence(items))
        if elem.VR == "UI" and "retain_uids" not in self.options and not listed:
            return self._uids(elem)
        if elem.VR == "PN" and not listed and elem.value not in (None, ""):
            return _replace(elem, dummy(elem))
        return _replace(elem, elem.value)

    def _uids(self, elem: DataElement) -> DataElement:
        if elem.value in (None, ""):
            return _replace(elem, elem.value)
        values = elem.value if elem.VM > 1 else [elem.value]
        remapped = [self.pseudonyms.uid(str(v)) for v in values]
        return _replace(elem, remapped if len(remapped) > 1 else remapped[0])


@cache
def _identifying_tags(options: frozenset[str]) -> frozenset[int]:
    """The attributes whose values are looked for in free text: those the profile does not keep,
    descriptors aside (they are what gets cleaned)."""
    return frozenset(
        tag
        for tag, row in rows_by_tag().items()
        if row.action(options) != "K" and "clean_descriptors" not in row.options
    )


def _resolve(code: str) -> str:
    return _RESOLVED.get(code, code)


def _replace(elem: DataElement, value: object) -> DataElement:
    new = DataElement(elem.tag, elem.VR, value)
    if elem.VR in ("OB", "OW", "UN") and elem.is_undefined_length:
        new.is_undefined_length = True
    return new
