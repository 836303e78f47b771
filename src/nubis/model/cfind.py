"""C-FIND identifiers as queries: the :class:`~nubis.model.query.Query` a C-FIND (or the
selection of a C-MOVE / C-GET) asks, the one :func:`~nubis.model.query.parse_qido` builds
for the same matching keys (PS3.4 C.4.1.1.3, C.6), so both doors find the same entities.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydicom.multival import MultiValue

from nubis.errors import BadRequest
from nubis.model.query import (
    MATCHING_KEYS,
    Level,
    Match,
    MatchKind,
    Query,
    keyword_tag,
    parse_match,
)

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

__all__ = ["CFIND_LEVELS", "CFIND_MODELS", "PATIENT_TAGS", "parse_cfind"]


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(keyword_tag(k) for k in keywords)


# Query/Retrieve levels of PS3.4 C.3 as C-FIND names them; PATIENT has no Level of its own
# because patient attributes live on the study (docs/architecture.md): a patient level query
# runs at STUDY level and the DIMSE front door folds the studies into distinct patients.
CFIND_LEVELS: dict[str, Level] = {
    "PATIENT": Level.STUDY,
    "STUDY": Level.STUDY,
    "SERIES": Level.SERIES,
    "IMAGE": Level.INSTANCE,
}
# The information models of PS3.4 C.6.1 (Patient Root) and C.6.2 (Study Root).
CFIND_MODELS = ("patient", "study")

PATIENT_TAGS: frozenset[int] = _tags(
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "OtherPatientIDsSequence",
    "EthnicGroup",
    "PatientComments",
)
_PATIENT_PATHS = frozenset(
    (keyword_tag(k),) for k in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
)
# Elements of a C-FIND identifier that steer the query rather than match (PS3.4 C.4.1.1.3).
_CFIND_CONTROL_TAGS = _tags(
    "QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "TimezoneOffsetFromUTC"
)


def _identifier_text(element: DataElement) -> str:
    """A DICOM value as the text QIDO-RS would carry: multiple values joined by backslash."""
    value = element.value
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        raise BadRequest("a binary value cannot be a matching key")
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join("" if v is None else str(v) for v in value)
    return str(value)


def parse_cfind(
    level: str,
    identifier: Dataset,
    *,
    model: str,
    partition: str = "default",
    max_limit: int,
) -> Query:
    """Build a :class:`Query` from a C-FIND request identifier (PS3.4 C.4.1.1.3, C.6).

    The result is the Query :func:`parse_qido` builds for the same matching keys, so a C-FIND
    and a QIDO-RS request asking the same thing get the same entities (PS3.4 C.2.2.2 matching:
    single value, UID list, wildcard, DA/TM range, universal; sequence matching for the Request
    Attributes Sequence).

    Parameters
    ----------
    level : str
        The identifier's Query/Retrieve Level (0008,0052): PATIENT, STUDY, SERIES or IMAGE. A
        PATIENT query becomes a STUDY query on the patient keys alone; the caller folds the
        studies into patients.
    identifier : pydicom.dataset.Dataset
        The request identifier. Each element with a value is a matching key, each empty one a
        return key (C.2.2.1). Keys the index cannot match on (C.4.1.2.2: optional keys) are
        return keys only; keys below the query level are ignored (C.4.1.2.1).
    model : str
        ``"patient"`` (Patient Root, C.6.1) or ``"study"`` (Study Root, C.6.2).
    partition : str
        The partition searched.
    max_limit : int
        The page size; callers walk the pages with ``offset`` until ``Page.more`` is false.

    Returns
    -------
    Query
        ``include`` holds the identifier's top-level attributes, which the response identifier
        returns (C.4.1.1.3.2); ``limit_capped`` is set so each page tells whether more exist.

    Raises
    ------
    BadRequest
        0xC000 / 0xA900 (PS3.4 C.4.1.1.4): an unknown level, a level the model does not have
        (PATIENT in Study Root), or a malformed value, range or UID.
    """
    name = level.strip().upper()
    if model not in CFIND_MODELS:
        raise ValueError(f"unknown information model {model!r}")
    if name not in CFIND_LEVELS:
        raise BadRequest(f"QueryRetrieveLevel {level!r} is not PATIENT, STUDY, SERIES or IMAGE")
    if name == "PATIENT" and model == "study":
        raise BadRequest("the Study Root model has no PATIENT level (PS3.4 C.6.2)")
    query_level = CFIND_LEVELS[name]

    matches: list[Match] = []
    include: set[int] = set()
    for element in identifier:
        tag = int(element.tag)
        if tag in _CFIND_CONTROL_TAGS or element.tag.group in (0x0000, 0x0002):
            if tag == keyword_tag("TimezoneOffsetFromUTC"):
                include.add(tag)
            continue
        include.add(tag)
        if element.VR == "SQ":
            matches.extend(_sequence_matches(element, query_level))
            continue
        spec = MATCHING_KEYS.get((tag,))
        if spec is None or spec.level.depth > query_level.depth:
            continue  # a return key only (C.4.1.2.2), or below the level (C.4.1.2.1)
        if name == "PATIENT" and spec.path not in _PATIENT_PATHS:
            continue
        raw = _identifier_text(element)
        if raw == "":
            continue  # universal matching: a return key (C.2.2.2.3)
        matches.append(parse_match(spec.name, spec, raw, allow_reversed_time=False))

    if name == "PATIENT":
        include = {t for t in include if t in PATIENT_TAGS} | {
            keyword_tag("PatientID"),
            keyword_tag("NumberOfStudyRelatedSeries"),
            keyword_tag("NumberOfStudyRelatedInstances"),
        }
    else:
        # The UIDs of the entity and its parents always come back: they say where it lives.
        include.add(keyword_tag("StudyInstanceUID"))
        if query_level.depth >= Level.SERIES.depth:
            include.add(keyword_tag("SeriesInstanceUID"))
        if query_level is Level.INSTANCE:
            include.add(keyword_tag("SOPInstanceUID"))
    return Query(
        level=query_level,
        matches=tuple(m for m in matches if m.kind is not MatchKind.UNIVERSAL),
        include=frozenset(include),
        limit=max_limit,
        offset=0,
        limit_capped=True,
        partition=partition,
    )


def _sequence_matches(element: DataElement, level: Level) -> list[Match]:
    """Sequence matching (C.2.2.2.6): the one item's non-empty keys, as nested matching keys."""
    items = element.value or []
    if len(items) != 1:
        if len(items) > 1:
            raise BadRequest("a sequence matching key holds exactly one item (PS3.4 C.2.2.2.6)")
        return []
    out = []
    for sub in items[0]:
        path = (int(element.tag), int(sub.tag))
        spec = MATCHING_KEYS.get(path)
        raw = _identifier_text(sub)
        if spec is None or spec.level.depth > level.depth or raw == "":
            continue
        out.append(parse_match(spec.name, spec, raw, allow_reversed_time=False))
    return out
