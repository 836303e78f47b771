"""A correction overlay: patient and study attributes that replace the stored ones on output.

A correction (nubis.services.corrections) never rewrites a stored object. It keeps, per study,
the DICOM JSON (PS3.18 F.2) of the attributes it changed, and this module applies that JSON to
what is served: the metadata JSON kept at ingest (WADO-RS metadata, instance-level QIDO-RS) and
the PS3.10 file itself (WADO-RS, WADO-URI, C-MOVE, C-GET, ZIP export). Pure functions: no I/O
beyond the file object handed in.

Only top-level, non-sequence attributes of the Patient and Study levels (nubis.dicom.levels)
with string values can be corrected (:func:`element`), so an overlay never touches UIDs, pixel
data or anything an offset index points into.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.filewriter import write_dataset
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pydicom.valuerep import validate_value

from nubis.dicom.levels import study_level
from nubis.errors import BadRequest

__all__ = [
    "CORRECTABLE_VRS",
    "Overlay",
    "apply_to_file",
    "apply_to_metadata",
    "corrected_chunks",
    "element",
    "is_empty",
    "parse",
    "tag_of",
]

# DICOM JSON keyed by upper-case tag hex ("00100020"), as the index keeps metadata.
Overlay = dict[str, dict[str, Any]]

# Value representations whose DICOM JSON value is a string (PS3.18 F.2.3): numbers (IS, DS,
# US...) and sequences are left out, so an overlay value is text with one meaning.
CORRECTABLE_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UT"}
)
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_UTF8 = "ISO_IR 192"
# The most of a stored file read to find the end of the attributes an overlay replaces; they
# come first in the data set (groups 0008 to 0020), so a few KiB usually do. Past this (a
# hostile file), the object is rewritten whole like a deflated one.
HEAD_LIMIT = 16 << 20


def tag_of(name: str) -> int:
    """The tag of a correctable attribute named by keyword (``PatientName``) or hex
    (``00100010``); BadRequest naming it when it is unknown or may not be corrected."""
    tag = tag_for_keyword(name)
    if tag is None and len(name) == 8:
        try:
            tag = int(name, 16)
        except ValueError:
            tag = None
    if tag is None:
        raise BadRequest(f"{name[:64]!r} is not a DICOM attribute keyword or tag")
    keyword = keyword_for_tag(tag) or f"{tag:08X}"
    if tag == tag_for_keyword("StudyInstanceUID") or not study_level(tag):
        raise BadRequest(
            f"{keyword} cannot be corrected: only patient and study attributes other than "
            "Study Instance UID can"
        )
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        raise BadRequest(f"{keyword} cannot be corrected: its VR is not known") from None
    if vr not in CORRECTABLE_VRS:
        raise BadRequest(f"{keyword} cannot be corrected: its VR {vr} is not a text VR")
    return tag


def element(name: str, value: str | None) -> tuple[str, dict[str, Any]]:
    """(tag hex, DICOM JSON element) setting attribute ``name`` to ``value`` (DICOM text:
    ``\\`` between values, ``=`` between a Person Name's groups); None or "" empties it.
    BadRequest naming the attribute when the value does not fit its VR (PS3.5 6.2)."""
    tag = tag_of(name)
    vr = str(dictionary_VR(tag))
    keyword = keyword_for_tag(tag) or f"{tag:08X}"
    if not value:
        return f"{tag:08X}", {"vr": vr}
    if any(c in value for c in "\r\n\x00") and vr not in ("LT", "ST", "UT"):
        raise BadRequest(f"{keyword}: the value holds a control character")
    values = [value] if vr in ("LT", "ST", "UT", "UC") else value.split("\\")
    for one in values:
        try:
            validate_value(vr, one, pydicom_config.RAISE)
        except (ValueError, TypeError) as exc:
            # The reason names the rule broken, not the value (it may be patient data).
            raise BadRequest(f"{keyword}: the value does not fit VR {vr}: {_rule(exc)}") from None
    if vr == "PN":
        items: list[Any] = [
            {g: part for g, part in zip(_PN_GROUPS, one.split("="), strict=False) if part}
            for one in values
        ]
        return f"{tag:08X}", {"vr": vr, "Value": items}
    return f"{tag:08X}", {"vr": vr, "Value": values}


def _rule(exc: Exception) -> str:
    text = str(exc)
    # pydicom quotes the value first ("The value length (70) exceeds..."): keep the rule.
    for marker in ("exceeds", "allowed", "must", "invalid", "contains"):
        at = text.find(marker)
        if at >= 0:
            return text[at:][:120]
    return "not a valid value"


def parse(text: str | None) -> Overlay:
    """The overlay kept in the index (JSON text), or an empty one."""
    return json.loads(text) if text else {}


def is_empty(text: str | None) -> bool:
    return not text or text == "{}"


def apply_to_metadata(metadata_json: str, overlay: Mapping[str, dict[str, Any]]) -> str:
    """Stored metadata JSON (one instance) with the overlay's elements in place of its own."""
    if not overlay:
        return metadata_json
    data = json.loads(metadata_json)
    data.update(overlay)
    return json.dumps(dict(sorted(data.items())), separators=(",", ":"), ensure_ascii=False)


def apply_to_file(source: BinaryIO, overlay: Mapping[str, dict[str, Any]]) -> bytes:
    """A PS3.10 file with the overlay applied, in the transfer syntax it is stored in.

    The file meta is kept as it is (it names no patient or study attribute). Group lengths of
    the data set, which would no longer be right, are not written (pydicom leaves them out:
    retired, PS3.5 7.2). A value
    outside the file's Specific Character Set switches it to UTF-8 (ISO_IR 192), every text
    value then re-encoded from its decoded form.
    """
    ds = dcmread(source)
    corrections = Dataset.from_json({k: dict(v) for k, v in overlay.items()})
    if _needs_utf8(ds, corrections):
        for _ in ds.iterall():  # decode every raw text element with the old character set
            pass
        ds.SpecificCharacterSet = _UTF8
    for elem in corrections:
        ds[elem.tag] = elem
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _needs_utf8(ds: Dataset, corrections: Dataset) -> bool:
    if all(str(e.value).isascii() for e in corrections if e.value not in (None, "")):
        return False
    charset = ds.get("SpecificCharacterSet") or ""
    names = [charset] if isinstance(charset, str) else list(charset)
    return _UTF8 not in names


class _Whole(Exception):
    """The stored object cannot be spliced (deflated, a character set to change, a head too
    large or unreadable): rewrite it whole."""


def corrected_chunks(
    stored: Iterator[bytes], overlay: Mapping[str, dict[str, Any]]
) -> Iterator[bytes]:
    """The stored PS3.10 file ``stored`` (chunks, already checked or being checked as they
    come) with the overlay applied, streamed: the preamble and file meta as stored, the data
    set's first elements up to the last attribute the overlay replaces rewritten, and the
    rest (series, image, pixel data) passed through as stored. Memory holds that head, not
    the object. A deflated object, or one whose Specific Character Set must change to hold a
    corrected value (every text value is then re-encoded), is read whole and rewritten.
    """
    if not overlay:
        yield from stored
        return
    corrections = Dataset.from_json({k: dict(v) for k, v in overlay.items()})
    last = max(int(k, 16) for k in overlay)
    head = bytearray()
    ended = False
    split: tuple[bytes, int] | None = None
    while split is None:
        try:
            split = _split(bytes(head), corrections, last, ended)
        except _Whole:
            break
        if split is None:
            if ended or len(head) > HEAD_LIMIT:
                break
            chunk = next(stored, None)
            if chunk is None:
                ended = True
            else:
                head += chunk
    if split is None:
        yield _rewritten(bytes(head) + b"".join(stored), corrections, overlay)
        return
    new_head, consumed = split
    yield new_head
    if consumed < len(head):
        yield bytes(head[consumed:])
    yield from stored


def _rewritten(data: bytes, corrections: Dataset, overlay: Mapping[str, dict[str, Any]]) -> bytes:
    """The whole file corrected: its file meta as stored unless it is deflated."""
    try:
        whole = _split(data, corrections, None, True)
    except _Whole:
        whole = None
    return apply_to_file(io.BytesIO(data), overlay) if whole is None else whole[0]


def _split(
    head: bytes, corrections: Dataset, last: int | None, ended: bool
) -> tuple[bytes, int] | None:
    """(the rewritten file up to the first element past ``last``, where that element starts
    in ``head``); None when ``head`` is too short to tell (more bytes are needed). ``last``
    None: the whole data set, its character set changed to UTF-8 if a value needs it."""
    fp = io.BytesIO(head)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        syntax = str(meta.TransferSyntaxUID)
    except Exception:  # a short head, or not a file pydicom reads: decided below
        if ended or len(head) > HEAD_LIMIT:
            raise _Whole from None
        return None
    start = fp.tell()
    if syntax == DeflatedExplicitVRLittleEndian:
        raise _Whole
    implicit = syntax == ImplicitVRLittleEndian
    little = syntax != ExplicitVRBigEndian
    stopped: list[int] = []

    def past_last(tag: BaseTag, _vr: str | None, _length: int) -> bool:
        if last is not None and tag > last:
            stopped.append(tag)
            return True
        return False

    try:
        ds = read_dataset(fp, implicit, little, stop_when=past_last)
    except Exception:  # cut mid-element: more bytes tell
        if ended:
            raise _Whole from None
        return None
    if stopped:
        end = fp.tell()
    elif ended:
        end = len(head)
    else:
        return None
    if _needs_utf8(ds, corrections):
        if last is not None:
            raise _Whole  # every text value must be re-encoded, the tail's too
        for _ in ds.iterall():  # decode every raw text element with the old character set
            pass
        ds.SpecificCharacterSet = _UTF8
    for elem in corrections:
        ds[elem.tag] = elem
    out = DicomBytesIO()
    out.is_little_endian = little
    out.is_implicit_VR = implicit
    write_dataset(out, ds)
    return head[:start] + out.getvalue(), end
