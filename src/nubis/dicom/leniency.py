"""What ingest accepts with a warning rather than refusing (issue 12): real archives hold
objects that break a rule of the standard and stay usable. The data set is the authority;
each lapse is recorded as an :class:`~nubis.model.records.IngestWarning`, and only an object
that cannot be identified is refused here.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from typing import Any

from pydicom.charset import python_encoding

from nubis.dicom.uids import MAX_LENGTH, is_conformant, is_usable
from nubis.errors import InvalidInstance
from nubis.model.records import IngestWarning

# PS3.5 9.1: no component but "0" itself starts with a zero. Legacy objects break this rule
# and stay usable (the UID is still digits and dots, a valid URL path segment).
_LEADING_ZERO_RE = re.compile(r"(^|\.)0[0-9]")
_CONFORMANT_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")  # both rules at once
SOP_CLASS, SOP_INSTANCE = 0x00080016, 0x00080018
# The file meta UIDs compared with the data set's: Media Storage SOP Class and Instance UID.
META_SOP_CLASS, META_SOP_INSTANCE = 0x00020002, 0x00020003
_TERM_RE = re.compile(r"[A-Z0-9_ ]{1,16}")  # CS: a defined term (PS3.5 Table 6.2-1)
_IDENTIFYING_UIDS = (
    ("SOP Instance UID", SOP_INSTANCE),
    ("Study Instance UID", 0x0020000D),
    ("Series Instance UID", 0x0020000E),
)
# PS3.4 Table B.2-1 / PS3.18 Table 10.5.3-1 warnings: stored as sent, but the data set does not
# conform. 0xB000 (coercion) is kept for what is served otherwise than it was sent.
NOT_CONFORMANT = 0xB007
_DATA_SET_MISMATCH = 0xA900


IDENTIFYING_TAGS = (SOP_CLASS, SOP_INSTANCE, 0x0020000D, 0x0020000E)
"""The tags whose raw bytes :func:`identifying_uids` looks at for padding lapses."""
_KEYS = {tag: f"{tag:08X}" for tag in IDENTIFYING_TAGS}


def identifying_uids(
    tree: dict[str, Any],
    raw_uids: Mapping[int, bytes | None],
    meta_uids: Mapping[int, str],
    warnings: list[IngestWarning],
) -> dict[int, str]:
    """The SOP Instance, Study, Series and SOP Class UIDs by tag, read from ``tree`` (the data
    set's DICOM JSON, values already decoded); InvalidInstance when one is missing or
    unusable, a warning appended for each usable lapse.

    ``raw_uids``: the bytes of each of :data:`IDENTIFYING_TAGS` as stored (None if absent);
    ``meta_uids``: the file meta's UIDs by tag as pydicom reads them ("" if absent).
    """
    uids = {
        tag: _valid_uid(tree, raw_uids.get(tag), name, tag, warnings, lenient=True)
        for name, tag in _IDENTIFYING_UIDS
    }
    uids[SOP_CLASS] = _sop_class(tree, raw_uids.get(SOP_CLASS), meta_uids, warnings)
    return uids


def shown_uid(value: object) -> str:
    """A UID for an error reason, quoted; a value that is not one is described, not quoted:
    it may be anything, a patient's name included (nubis.dicom.identifying)."""
    text = str(value)
    if is_conformant(text):
        return repr(text)
    return f"(a value of {len(text)} characters that is not a UID)"


def _valid_uid(
    tree: dict[str, Any],
    raw: bytes | None,
    name: str,
    tag: int,
    warnings: list[IngestWarning],
    *,
    lenient: bool = False,
) -> str:
    """The UID, usable: digits and dots in non-empty components, at most 64 characters once
    its padding is cut; a PS3.5 9.1 lapse that leaves it usable is a warning. ``lenient``
    (the UIDs that identify the object) also takes, with a warning, the hexadecimal digits and
    dots some systems name their objects by (nubis.dicom.uids); a SOP Class UID names a class
    the standard defines, or none."""
    label = _label(name, tag)
    element = tree.get(_KEYS[tag])
    values = (element.get("Value") if element else None) or [None]
    value = values[0]
    if not value:
        raise InvalidInstance(f"{label} is missing", dimse_status=_DATA_SET_MISMATCH)
    if len(values) > 1 or not isinstance(value, str):
        raise InvalidInstance(f"{label} has several values", dimse_status=_DATA_SET_MISMATCH)
    # The common case first: one regular expression for both PS3.5 9.1 rules.
    strict = len(value) <= MAX_LENGTH and _CONFORMANT_UID_RE.fullmatch(value) is not None
    conformant = strict or is_conformant(value)
    if not conformant and not (lenient and is_usable(value)):
        # Not quoted: a value that is no UID may be anything (nubis.dicom.identifying).
        raise InvalidInstance(
            f"{label} is not a valid UID ({len(value)} characters{_unusable(value)})",
            dimse_status=_DATA_SET_MISMATCH,
        )
    lapses = []
    if not conformant:
        lapses.append("letters or an empty component")
    elif not strict and _LEADING_ZERO_RE.search(value):
        lapses.append("a component with a leading zero")
    if isinstance(raw, bytes) and raw != (encoded := value.encode()) and raw != encoded + b"\x00":
        lapses.append("padding other than one trailing NUL")  # PS3.5 9.1: pads an odd length
    if lapses:
        warnings.append(
            IngestWarning(
                "uid-not-conformant",
                NOT_CONFORMANT,
                f"{label} {value} has {' and '.join(lapses)} (PS3.5 9.1)",
            )
        )
    return value


def _label(name: str, tag: int) -> str:
    return f"{name} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _unusable(value: str) -> str:
    """Why ``value`` names no object, for a refusal's reason (the value itself unquoted)."""
    if len(value) > MAX_LENGTH:
        return f", more than {MAX_LENGTH}"
    if any(c.isspace() for c in value.strip()):
        return ", a space inside"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return ", a control character"
    return ", not hexadecimal digits and dots with a decimal digit, or two dots in a row"


def _sop_class(
    tree: dict[str, Any],
    raw: bytes | None,
    meta_uids: Mapping[int, str],
    warnings: list[IngestWarning],
) -> str:
    """(0008,0016), or where the data set lacks it, the file meta's (0002,0002) with a warning:
    the object is identified without it, and the file meta says what it is."""
    if tree.get(_KEYS[SOP_CLASS], {}).get("Value"):
        return _valid_uid(tree, raw, "SOP Class UID", SOP_CLASS, warnings)
    meta_class = meta_uids.get(META_SOP_CLASS, "").rstrip(" \x00")
    if not meta_class or not is_conformant(meta_class):
        raise InvalidInstance(
            "SOP Class UID (0008,0016) is missing, and so is a valid (0002,0002) Media "
            "Storage SOP Class UID to take it from",
            dimse_status=_DATA_SET_MISMATCH,
        )
    warnings.append(
        IngestWarning(
            "sop-class-from-file-meta",
            NOT_CONFORMANT,
            f"SOP Class UID (0008,0016) is missing: {meta_class} of (0002,0002) is used",
        )
    )
    return meta_class


def meta_disagreements(
    meta_uids: Mapping[int, str], sop_class: str, sop_instance: str
) -> list[IngestWarning]:
    """The file meta naming another object than its data set: the data set is the authority
    (it is what is indexed and served), the disagreement a warning (PS3.10 7.1)."""
    found = []
    for meta_tag, name, uid in (
        (META_SOP_CLASS, "Media Storage SOP Class UID", sop_class),
        (META_SOP_INSTANCE, "Media Storage SOP Instance UID", sop_instance),
    ):
        meta_uid = meta_uids.get(meta_tag, "").rstrip(" \x00")
        if meta_uid and meta_uid != uid:
            where = f"({meta_tag >> 16:04X},{meta_tag & 0xFFFF:04X})"
            found.append(f"{where} {name} {shown_uid(meta_uid)}")
    if not found:
        return []
    return [
        IngestWarning(
            "file-meta-mismatch",
            NOT_CONFORMANT,
            f"the file meta disagrees with the data set, whose UIDs are used: {'; '.join(found)}",
        )
    ]


def charset_warnings(tree: dict[str, Any]) -> list[IngestWarning]:
    """(0008,0005) terms not defined by PS3.3 C.12.1.1.2. pydicom reads a common misspelling
    ("ISO IR 100") as the term meant, and a Python codec name as that codec; any other term's
    text is decoded as the default repertoire (PS3.5 6.1.2.3), maybe not what was meant."""
    terms = tree.get("00080005", {}).get("Value") or []
    odd = [t for t in terms if t and t not in python_encoding]
    if not odd:
        return []
    said = []
    for term in odd[:3]:
        # Quoted when it looks like a defined term; anything else may be any text, a name too.
        shown = repr(term) if _TERM_RE.fullmatch(term) else f"a value of {len(term)} characters"
        meant = _misspelled_term(term)
        if meant is not None:
            said.append(f"{shown}, read as {meant!r}")
        elif _is_codec(term):
            said.append(f"{shown}, read as that Python codec")
        else:
            said.append(f"{shown}, read as the default repertoire")
    return [
        IngestWarning(
            "charset-not-defined",
            NOT_CONFORMANT,
            "(0008,0005) Specific Character Set names terms not defined by PS3.3 C.12.1.1.2: "
            + "; ".join(said),
        )
    ]


def _misspelled_term(term: str) -> str | None:
    """The defined term pydicom takes ``term`` for (its spelling fixes), if any."""
    if re.match("^ISO[^_]IR", term):
        patched = "ISO_IR" + term[6:]
    elif re.match("^(?=ISO.2022.IR.)(?!ISO 2022 IR )", term):
        patched = "ISO 2022 IR " + term[12:]
    else:
        return None
    return patched if patched in python_encoding else None


def _is_codec(term: str) -> bool:
    try:
        codecs.lookup(term)
    except LookupError:
        return False
    return True
