"""The query model shared by every front door (QIDO-RS now, C-FIND later).

A :class:`Query` says *what* to find, in DICOM terms only: the level, the matching keys with their
kind of matching (PS3.4 C.2.2.2), the attributes to return, paging and the scope given by the
resource path. It knows nothing of HTTP or SQL; :func:`parse_qido` builds one from QIDO-RS query
parameters (PS3.18 8.3.4, 10.6.1.2) and :mod:`nubis.index.query_sql` runs it.

Every problem with the request raises :class:`nubis.errors.BadRequest` whose reason names the
offending parameter and the problem, so a hostile or sloppy query never reaches the database.
A reason quotes the value only when the attribute cannot identify a patient
(:mod:`nubis.dicom.identifying`): reasons are logged.
"""

from __future__ import annotations

import datetime as _dt
import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag, tag_for_keyword

from nubis.dicom.identifying import is_identifying
from nubis.dicom.uids import is_usable
from nubis.errors import BadRequest

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_RETURN_TAGS",
    "MATCHING_KEYS",
    "ORDER_TAGS",
    "KeySpec",
    "Level",
    "Match",
    "MatchKind",
    "Order",
    "Query",
    "fold_person_name",
    "keyword_tag",
    "parse_match",
    "parse_qido",
    "tag_hex",
]


class Level(enum.Enum):
    """Query/Retrieve level (PS3.4 C.3); ``depth`` orders them from the root down."""

    STUDY = "STUDY"
    SERIES = "SERIES"
    INSTANCE = "INSTANCE"

    @property
    def depth(self) -> int:
        return _DEPTH[self]


_DEPTH = {Level.STUDY: 1, Level.SERIES: 2, Level.INSTANCE: 3}


class MatchKind(enum.Enum):
    """The matching rules of PS3.4 C.2.2.2 that a :class:`Match` applies."""

    UNIVERSAL = "universal"  # C.2.2.2.3: no constraint, the attribute is still returned
    SINGLE = "single"  # C.2.2.2.1
    LIST = "list"  # C.2.2.2.2 (UIDs; also Modalities in Study, any value matching)
    WILDCARD = "wildcard"  # C.2.2.2.4: ``*`` and ``?``
    RANGE = "range"  # C.2.2.2.5: DA and TM


def keyword_tag(keyword: str) -> int:
    """The tag of a data dictionary keyword."""
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - guards a typo in the tables below
        raise KeyError(keyword)
    return tag


def tag_hex(tag: int) -> str:
    """The DICOM JSON attribute key of ``tag``: eight upper-case hex digits (PS3.18 F.2.1.1)."""
    return f"{tag:08X}"


@dataclass(frozen=True)
class KeySpec:
    """A supported matching key: its tag path, VR and the level the attribute belongs to."""

    path: tuple[int, ...]
    vr: str
    level: Level

    @property
    def name(self) -> str:
        return ".".join(keyword_for_tag(t) or tag_hex(t) for t in self.path)


def _spec(level: Level, *keywords: str) -> KeySpec:
    path = tuple(keyword_tag(k) for k in keywords)
    return KeySpec(path, str(dictionary_VR(path[-1])), level)


# Required matching keys of PS3.18 Table 10.6.1-5, plus a few cheap extras that the index holds in
# columns anyway (PatientBirthDate, PatientSex, StudyDescription, SeriesDescription). Keys of an
# upper level are also matching keys at the levels below it (relational query, e.g.
# /series?PatientID=x), which is why each key records its own level.
_KEY_LIST = (
    _spec(Level.STUDY, "StudyDate"),
    _spec(Level.STUDY, "StudyTime"),
    _spec(Level.STUDY, "AccessionNumber"),
    _spec(Level.STUDY, "ModalitiesInStudy"),
    _spec(Level.STUDY, "ReferringPhysicianName"),
    _spec(Level.STUDY, "PatientName"),
    _spec(Level.STUDY, "PatientID"),
    _spec(Level.STUDY, "PatientBirthDate"),
    _spec(Level.STUDY, "PatientSex"),
    _spec(Level.STUDY, "StudyInstanceUID"),
    _spec(Level.STUDY, "StudyID"),
    _spec(Level.STUDY, "StudyDescription"),
    _spec(Level.SERIES, "Modality"),
    _spec(Level.SERIES, "SeriesInstanceUID"),
    _spec(Level.SERIES, "SeriesNumber"),
    _spec(Level.SERIES, "SeriesDescription"),
    _spec(Level.SERIES, "PerformedProcedureStepStartDate"),
    _spec(Level.SERIES, "PerformedProcedureStepStartTime"),
    _spec(Level.SERIES, "RequestAttributesSequence", "ScheduledProcedureStepID"),
    _spec(Level.SERIES, "RequestAttributesSequence", "RequestedProcedureID"),
    _spec(Level.INSTANCE, "SOPClassUID"),
    _spec(Level.INSTANCE, "SOPInstanceUID"),
    _spec(Level.INSTANCE, "InstanceNumber"),
)
MATCHING_KEYS: dict[tuple[int, ...], KeySpec] = {k.path: k for k in _KEY_LIST}


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(keyword_tag(k) for k in keywords)


# Default return attributes of PS3.18 Tables 10.6.3-3 (study), 10.6.3-4 (series) and 10.6.3-5
# (instance). Specific Character Set is left out because DICOM JSON is always UTF-8 (PS3.18 F.2),
# and Retrieve URL because only the HTTP layer knows the base URL.
DEFAULT_RETURN_TAGS: dict[Level, frozenset[int]] = {
    Level.STUDY: _tags(
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "TimezoneOffsetFromUTC",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: _tags(
        "Modality",
        "TimezoneOffsetFromUTC",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
    ),
    Level.INSTANCE: _tags(
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "TimezoneOffsetFromUTC",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),
}

_STUDY_UID = keyword_tag("StudyInstanceUID")
_SERIES_UID = keyword_tag("SeriesInstanceUID")
_MODALITIES_IN_STUDY = keyword_tag("ModalitiesInStudy")
# Study attributes a study query may be ordered by: each has an index of the study table.
ORDER_TAGS = _tags("StudyDate", "PatientName", "PatientID", "AccessionNumber")


@dataclass(frozen=True)
class Match:
    """One matching key of a query and how it matches (PS3.4 C.2.2.2).

    ``values`` holds the value for SINGLE and WILDCARD (one element, ``*``/``?`` left in place for
    WILDCARD), or the alternatives for LIST; integer VRs (IS) hold ``int``. For RANGE, ``low`` and
    ``high`` are the inclusive bounds as comparable strings (either may be ``None``, open); a TM
    upper bound is already widened to the end of the interval its precision denotes, so ``1100``
    becomes ``115959.999999``.
    """

    path: tuple[int, ...]
    vr: str
    kind: MatchKind
    values: tuple[str | int, ...] = ()
    low: str | None = None
    high: str | None = None

    @property
    def tag(self) -> int:
        """The top-level attribute, which is what the result returns."""
        return self.path[0]

    @property
    def name(self) -> str:
        return ".".join(keyword_for_tag(t) or tag_hex(t) for t in self.path)


@dataclass(frozen=True)
class Order:
    """The order of a study query's results, for people browsing them (the web face).

    QIDO-RS and C-FIND leave the order to the server (PS3.18 8.3.4, PS3.4 C.4.1.2.3); nubis
    returns them by primary key, which :attr:`Query.order` ``None`` keeps. ``tag`` sorts by an
    attribute the index keeps in an indexed column (:data:`ORDER_TAGS`: a page is then read
    along that index, never sorted from the whole partition), ties and ``tag=None`` by arrival
    in the archive; ``descending`` reverses both.
    """

    tag: int | None = None
    descending: bool = False

    def __post_init__(self) -> None:
        if self.tag is not None and self.tag not in ORDER_TAGS:
            raise ValueError(f"cannot order by {tag_hex(self.tag)}: not an indexed attribute")


@dataclass(frozen=True)
class Query:
    """A front-door-neutral query.

    Attributes
    ----------
    level : Level
        The level of the entities returned.
    matches : tuple of Match
        The matching keys; all must match (PS3.4 C.2.2.2). Every matched attribute is returned.
    include : frozenset of int or "all"
        The further top-level attributes to return. :func:`parse_qido` puts the level's default
        return attributes (PS3.18 Tables 10.6.3-3/4/5) and the ``includefield`` ones here;
        ``"all"`` returns everything the index holds for the entity.
    limit, offset : int
        Paging; results are in a stable order, so walking the offsets visits each entity once.
    limit_capped : bool
        ``limit`` is the server's cap, not the client's own choice, so a full page means more
        results may exist (PS3.18 8.3.4.4: the server then warns that more can be requested).
    fuzzy : bool
        Fuzzy semantic matching of person names (PS3.18 8.3.4.5); see :mod:`nubis.index.query_sql`
        for the rule.
    combine_datetime : bool
        Match a date key and its time key as one date-time range when both are ranges (PS3.4
        C.2.2.2.5, granted by extended negotiation in DIMSE). QIDO-RS leaves it off: the two
        ranges then match independently.
    study_uid, series_uid : str or None
        The scope from the resource path (``/studies/{study}/series``).
    partition : str
        Only entities of this partition are seen.
    grantee : str or None
        When set, only studies granted to this principal (per patient or per study, table
        ``grants``) are seen; set by the services from the caller's scope
        (:mod:`nubis.security.policy`), never by a front door.
    project_id : int or None
        When set, only the studies of this research project's cohort are seen (table
        ``research_studies``); set by the researcher's de-identified view
        (:mod:`nubis.services.research_view`) once membership is checked, never by a front door.
    hide_quarantined : bool
        Studies held in quarantine (instances that disagree on the patient, issue 12) are not
        seen; the services clear it for admins (``Scope.sees_quarantine``).
    warnings : tuple of str
        Human-readable notes for the client, e.g. that the limit was lowered; the HTTP layer
        sends each as ``Warning: 299 {service}: "<text>"`` (PS3.18 8.3.4.4).
    order : Order or None
        The order of the results of a STUDY level query (see :class:`Order`); None for the
        server's own, which QIDO-RS and C-FIND use.
    """

    level: Level
    matches: tuple[Match, ...] = ()
    include: frozenset[int] | Literal["all"] = frozenset()
    limit: int = 1000
    offset: int = 0
    limit_capped: bool = False
    fuzzy: bool = False
    combine_datetime: bool = False
    study_uid: str | None = None
    series_uid: str | None = None
    partition: str = "default"
    grantee: str | None = None
    project_id: int | None = None
    hide_quarantined: bool = True
    warnings: tuple[str, ...] = field(default=())
    order: Order | None = None

    def __post_init__(self) -> None:
        if self.order is not None and self.level is not Level.STUDY:
            raise ValueError("only a study level query can be ordered")


# --- value syntax -------------------------------------------------------------------------------

_DA_RE = re.compile(r"[0-9]{8}\Z")
# The ACR-NEMA form, which PS3.5 6.2 (DA, Note) recommends reading for backward compatibility.
_DOTTED_DA_RE = re.compile(r"([0-9]{4})\.([0-9]{2})\.([0-9]{2})\Z")
_TM_RE = re.compile(r"([0-9]{2})(?:([0-9]{2})(?:([0-9]{2})(?:\.([0-9]{1,6}))?)?)?\Z")
_INT_RE = re.compile(r"[+-]?[0-9]{1,12}\Z")
_HEX_TAG_RE = re.compile(r"[0-9A-Fa-f]{8}\Z")
# C0 controls and DEL never occur in the string VRs that are matched (PS3.5 6.1.3), and lone
# surrogates (from undecodable percent-escapes) cannot be stored, so either is rejected up front.
_BAD_CHAR_RE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")

_MAX_VALUE_CHARS = 1024  # far above any matchable VR length (PN: 3 x 64 + 2)
_MAX_LIST_VALUES = 1000
# includefield attributes per request, repeats counted: far above what a viewer asks for
# (includefield=all returns everything), and each one is an element in every result.
_MAX_INCLUDEFIELDS = 100
_MAX_STARS = 16  # bounds the backtracking of LIKE/GLOB on hostile patterns
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1  # IS range (PS3.5 Table 6.2-1)
_MAX_OFFSET = 2**62  # far beyond any table, and below SQL's 64-bit integer limit

_STRING_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})


def _show(value: str) -> str:
    """``value`` quoted for an error reason, shortened so a hostile value cannot flood a log."""
    text = value if len(value) <= 64 else value[:61] + "..."
    return repr(text)


def fold_person_name(value: str) -> str:
    """The case-insensitive matching form of a PN value, as kept in the ``*_folded`` columns.

    Upper-cases (PS3.4 C.2.2.2.1 lets PN matching ignore case) and drops trailing empty
    components and component groups, which PS3.5 6.2 makes insignificant, so that ``Doe^John^^``
    and ``doe^john`` fold alike. Ingest must fold stored names with this same function.
    """
    groups = [g.rstrip("^ ") for g in value.strip().upper().split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _shown_value(spec: KeySpec, value: str) -> str:
    """How an error reason refers to a matching key's value: quoted, unless the attribute may
    identify a patient (nubis.dicom.identifying), whose values no reason or log line carries."""
    return "the value" if is_identifying(*spec.path) else _show(value)


def _check_chars(param: str, value: str) -> None:
    # Never quoted: control characters make a value unreadable in a log anyway.
    if match := _BAD_CHAR_RE.search(value):
        raise BadRequest(f"{param}: the value has a control character at {match.start() + 1}")


def _parse_uid(param: str, value: str) -> str:
    # Not quoted: a value that is not a UID may be anything, a patient's name included.
    # PS3.5 9.1 UIDs, and the non-conformant ones stored objects carry (nubis.dicom.uids): such
    # an object must stay findable.
    if not is_usable(value):
        raise BadRequest(f"{param}: the value ({len(value)} characters) is not a valid UID")
    return value


def _parse_date(param: str, value: str, shown: str) -> str:
    """A DA key value (single, or a bound of a range) as YYYYMMDD; YYYY.MM.DD is read too."""
    if dotted := _DOTTED_DA_RE.match(value):
        value = "".join(dotted.groups())
    if not _DA_RE.match(value):
        raise BadRequest(f"{param}: {shown} is not a date (YYYYMMDD or YYYY.MM.DD)")
    try:
        _dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise BadRequest(f"{param}: {shown} is not a valid calendar date") from None
    return value


def _parse_time(param: str, value: str, shown: str) -> tuple[str, str]:
    """``(low, high)``: the time as given, and the last instant its precision covers."""
    m = _TM_RE.match(value)
    if not m:
        raise BadRequest(f"{param}: {shown} is not a time (HH[MM[SS[.FFFFFF]]])")
    hh, mm, ss, frac = m.groups()
    # Second 60 is allowed for leap seconds (PS3.5 Table 6.2-1, TM).
    if int(hh) > 23 or (mm and int(mm) > 59) or (ss and int(ss) > 60):
        raise BadRequest(f"{param}: {shown} is not a valid time of day")
    high = hh + (mm or "59") + (ss or "59") + "." + (frac or "").ljust(6, "9")
    return value, high


def _parse_int(param: str, value: str, shown: str) -> int:
    text = value.strip()
    if not _INT_RE.match(text) or not _INT_MIN <= int(text) <= _INT_MAX:
        raise BadRequest(f"{param}: {shown} is not an integer string (IS)")
    return int(text)


def _parse_range(
    param: str, spec: KeySpec, value: str, *, allow_reversed: bool
) -> tuple[str | None, str | None]:
    parts = value.split("-")
    if len(parts) != 2 or parts == ["", ""]:
        raise BadRequest(f"{param}: {_shown_value(spec, value)} is not a range (a-b, -b or a-)")
    a, b = (p.strip() for p in parts)
    if spec.vr == "DA":
        low = _parse_date(param, a, _shown_value(spec, a)) if a else None
        high = _parse_date(param, b, _shown_value(spec, b)) if b else None
    else:
        low = _parse_time(param, a, _shown_value(spec, a))[0] if a else None
        high = _parse_time(param, b, _shown_value(spec, b))[1] if b else None
    reversed_ = low is not None and high is not None and low > high
    # PS3.4 C.2.2.2.5 defines "<a> - <b>" only for a <= b; a reversed range is a malformed key,
    # not an empty result, so the client learns of its mistake.
    if reversed_ and not allow_reversed:
        raise BadRequest(f"{param}: the range {_shown_value(spec, value)} ends before it starts")
    return low, high


def parse_match(param: str, spec: KeySpec, raw: str, *, allow_reversed_time: bool) -> Match:
    """Classify one matching key value by the rules of PS3.4 C.2.2.2 and validate it."""
    vr = spec.vr
    _check_chars(param, raw)
    shown = _shown_value(spec, raw.strip())
    value = raw if vr == "UI" else raw.strip()  # C.2.2.2.1: padding spaces are insignificant
    if value == "" or value == "*":
        # C.2.2.2.3 universal matching; a lone "*" matches every value including an empty one
        # (C.2.2.2.4), which is the same thing and is what many clients send.
        return Match(spec.path, vr, MatchKind.UNIVERSAL)
    if vr == "UI":
        if len(value) > _MAX_LIST_VALUES * 65:
            raise BadRequest(f"{param}: too many UIDs (at most {_MAX_LIST_VALUES})")
        # PS3.18 8.3.4.1: a UID list is separated by commas or backslashes (C.2.2.2.2).
        uids = re.split(r"[,\\]", value)
        if len(uids) > _MAX_LIST_VALUES:
            raise BadRequest(f"{param}: too many UIDs (at most {_MAX_LIST_VALUES})")
        parsed = tuple(dict.fromkeys(_parse_uid(param, u.strip()) for u in uids))
        kind = MatchKind.SINGLE if len(parsed) == 1 else MatchKind.LIST
        return Match(spec.path, vr, kind, parsed)
    if len(value) > _MAX_VALUE_CHARS:
        raise BadRequest(f"{param}: value is longer than {_MAX_VALUE_CHARS} characters")
    if vr in ("DA", "TM"):
        if "-" in value:
            low, high = _parse_range(param, spec, value, allow_reversed=allow_reversed_time)
            return Match(spec.path, vr, MatchKind.RANGE, low=low, high=high)
        if vr == "DA":
            return Match(spec.path, vr, MatchKind.SINGLE, (_parse_date(param, value, shown),))
        # A single time matches the whole interval its precision denotes (``1030`` is 10:30:00
        # to 10:30:59.999999); C.2.2.2.1 leaves TM precision to the SCP.
        low, high = _parse_time(param, value, shown)
        return Match(spec.path, vr, MatchKind.RANGE, low=low, high=high)
    if vr == "IS":
        return Match(spec.path, vr, MatchKind.SINGLE, (_parse_int(param, value, shown),))
    if vr not in _STRING_VRS:  # pragma: no cover - every key in MATCHING_KEYS is covered above
        raise BadRequest(f"{param}: matching on VR {vr} is not supported")
    if spec.path == (_MODALITIES_IN_STUDY,) and re.search(r"[,\\]", value):
        # Modalities in Study is multi-valued: a list matches a study having any of the values.
        codes = tuple(dict.fromkeys(c.strip() for c in re.split(r"[,\\]", value)))
        if "" in codes or any("*" in c or "?" in c for c in codes):
            raise BadRequest(f"{param}: {shown} is not a list of modality codes")
        return Match(spec.path, vr, MatchKind.LIST, codes)
    if "\\" in value:
        raise BadRequest(f"{param}: {shown} has several values; only one is allowed")
    if "*" in value or "?" in value:
        # Runs of "*" mean the same as one; collapsing them keeps the pattern cheap to match.
        pattern = re.sub(r"\*+", "*", value)
        if vr == "PN":
            # Stored names are folded (trailing empty components and groups dropped, PS3.5
            # 6.2): a pattern is folded alike, or "?UBOIS^QUINN^^^" would look for a "^" that
            # no stored name keeps. C-FIND and QIDO-RS both parse keys here.
            pattern = fold_person_name(pattern)
            if pattern == "*":
                return Match(spec.path, vr, MatchKind.UNIVERSAL)
        if pattern.count("*") > _MAX_STARS:
            raise BadRequest(f"{param}: more than {_MAX_STARS} '*' wildcards in {shown}")
        return Match(spec.path, vr, MatchKind.WILDCARD, (pattern,))
    return Match(spec.path, vr, MatchKind.SINGLE, (value,))


# --- parameter names ----------------------------------------------------------------------------


def _parse_element(component: str) -> int | None:
    """A keyword or eight-hex-digit tag as a tag, or None when it is neither."""
    if _HEX_TAG_RE.match(component):
        return int(component, 16)
    if component.isascii() and component.isidentifier():
        return tag_for_keyword(component)
    return None


def _parse_path(param: str, text: str) -> tuple[int, ...]:
    """An attribute path: ``PatientID``, ``00100020`` or ``Sequence.Attribute`` (PS3.18 8.3.4.1)."""
    parts = text.split(".")
    if len(parts) > 8:
        raise BadRequest(f"{param}: {_show(text)} is not a DICOM attribute")
    path: list[int] = []
    for i, part in enumerate(parts):
        tag = _parse_element(part)
        if tag is None:
            raise BadRequest(f"{param}: {_show(text)} is not a DICOM attribute keyword or tag")
        if i < len(parts) - 1 and dictionary_has_tag(tag) and dictionary_VR(tag) != "SQ":
            raise BadRequest(f"{param}: {_show(part)} in {_show(text)} is not a sequence")
        path.append(tag)
    return tuple(path)


def _parse_includefield(values: Iterable[str]) -> frozenset[int] | Literal["all"]:
    tags: set[int] = set()
    count = 0
    for raw in values:
        for item in raw.split(","):
            text = item.strip()
            if not text:
                continue
            count += 1
            if count > _MAX_INCLUDEFIELDS:
                raise BadRequest(
                    f"includefield: more than {_MAX_INCLUDEFIELDS} attributes; "
                    "ask for fewer, or for includefield=all"
                )
            if text.lower() == "all":
                return "all"
            # Private and other tags outside the dictionary are allowed: the stored attributes
            # may hold them. Only the top-level element is returned for a nested path.
            tags.add(_parse_path("includefield", text)[0])
    return frozenset(tags)


def _parse_count(param: str, value: str) -> int:
    text = value.strip()
    if not re.fullmatch(r"[0-9]{1,19}", text):
        raise BadRequest(f"{param}: {_show(value)} is not a non-negative integer")
    return int(text)


# Query parameters that are not attribute matches (PS3.18 8.3.4). ``accept`` and ``charset``
# (PS3.18 8.3.3.1) are media negotiation, handled by the HTTP layer and ignored here.
_CONTROL_PARAMS = frozenset({"includefield", "limit", "offset", "fuzzymatching"})
_IGNORED_PARAMS = frozenset({"accept", "charset"})


def parse_qido(
    level: Level,
    params: Sequence[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    partition: str = "default",
    max_limit: int,
    default_limit: int | None = None,
) -> Query:
    """Build a :class:`Query` from QIDO-RS query parameters (PS3.18 8.3.4, 10.6.1.2).

    Parameters
    ----------
    level : Level
        The level of the resource searched (``/studies``, ``/series``, ``/instances``).
    params : sequence of (str, str)
        The decoded query parameters, in request order, repeats kept.
    study_uid, series_uid : str, optional
        The UIDs from the resource path, e.g. ``/studies/{study}/series``.
    partition : str
        The partition searched.
    max_limit : int
        The largest page the server returns. A larger ``limit`` is lowered to it with a warning
        (PS3.18 8.3.4.4 lets the server cap results).
    default_limit : int, optional
        The page size when the request gives no ``limit``; ``max_limit`` when omitted.

    Returns
    -------
    Query

    Raises
    ------
    BadRequest
        For a parameter that is not a DICOM attribute, an attribute that is not a matching key at
        this level (PS3.18 10.6.1.2 lets the server refuse unsupported keys with 400), a malformed
        value, range or UID, a repeated parameter other than ``includefield``, a malformed or
        negative ``limit``/``offset`` or a bad ``fuzzymatching``.
    """
    if series_uid is not None and level is not Level.INSTANCE:
        raise ValueError("a series scope only applies to an instance level query")
    if study_uid is not None and level is Level.STUDY:
        raise ValueError("a study scope does not apply to a study level query")
    if study_uid is not None:
        study_uid = _parse_uid("StudyInstanceUID in the path", study_uid)
    if series_uid is not None:
        series_uid = _parse_uid("SeriesInstanceUID in the path", series_uid)

    seen: set[object] = set()
    raw_matches: list[tuple[str, KeySpec, str]] = []
    include_values: list[str] = []
    limit: int | None = None
    offset = 0
    fuzzy = False
    warnings: list[str] = []

    for key, value in params:
        if key in _IGNORED_PARAMS:
            continue
        if key == "includefield":
            _check_chars(key, value)
            include_values.append(value)
            continue
        if key in _CONTROL_PARAMS:
            if key in seen:
                raise BadRequest(f"{key}: given more than once")
            seen.add(key)
            _check_chars(key, value)
            if key == "limit":
                limit = _parse_count(key, value)
            elif key == "offset":
                offset = _parse_count(key, value)
                if offset > _MAX_OFFSET:
                    raise BadRequest(f"offset: {_show(value)} is too large")
            else:
                lowered = value.strip().lower()
                if lowered not in ("true", "false"):
                    raise BadRequest(f"fuzzymatching: {_show(value)} is not true or false")
                fuzzy = lowered == "true"
            continue
        path = _parse_path(key, key)
        spec = MATCHING_KEYS.get(path)
        if spec is None or spec.level.depth > level.depth:
            name = ".".join(keyword_for_tag(t) or tag_hex(t) for t in path)
            raise BadRequest(
                f"{key}: {name} is not a supported matching key for a "
                f"{level.value.lower()} level query"
            )
        if path in seen:
            raise BadRequest(f"{key}: {spec.name} is given more than once")
        seen.add(path)
        raw_matches.append((key, spec, value))

    matches = tuple(
        parse_match(key, spec, value, allow_reversed_time=False) for key, spec, value in raw_matches
    )

    capped = False
    if limit is None:
        limit = min(default_limit if default_limit is not None else max_limit, max_limit)
        capped = True
    elif limit > max_limit:
        warnings.append(
            f"The limit {limit} exceeds the maximum of {max_limit} results per request; "
            f"at most {max_limit} are returned, further results can be requested with offset."
        )
        limit = max_limit
        capped = True

    include: frozenset[int] | Literal["all"]
    includefield = _parse_includefield(include_values)
    if includefield == "all":
        include = "all"
    else:
        tags = set(DEFAULT_RETURN_TAGS[level]) | includefield
        # A query across parents returns the parents' default attributes too (PS3.18 10.6.3.3):
        # /series without a study, /instances without a series or study.
        if level.depth >= Level.SERIES.depth and study_uid is None:
            tags |= DEFAULT_RETURN_TAGS[Level.STUDY]
        if level is Level.INSTANCE and series_uid is None:
            tags |= DEFAULT_RETURN_TAGS[Level.SERIES]
        # The parents' UIDs always identify where an entity lives.
        if level.depth >= Level.SERIES.depth:
            tags.add(_STUDY_UID)
        if level is Level.INSTANCE:
            tags.add(_SERIES_UID)
        include = frozenset(tags)

    return Query(
        level=level,
        matches=matches,
        include=include,
        limit=limit,
        offset=offset,
        limit_capped=capped,
        fuzzy=fuzzy,
        study_uid=study_uid,
        series_uid=series_uid,
        partition=partition,
        warnings=tuple(warnings),
    )
