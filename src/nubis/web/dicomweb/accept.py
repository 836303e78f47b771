"""DICOMweb content negotiation: parsing ``Accept`` and choosing a representation.

A WADO-RS resource describes what it can produce as a sequence of :class:`Offer` (its preferred
representation first); :func:`negotiate` picks one against the client's media ranges following
RFC 9110 12.5.1 (``q`` weights, the most specific matching range governs, ``q=0`` excludes) and the
DICOM rules of PS3.18 8.7.3 (the ``type`` and ``transfer-syntax`` parameters of
``multipart/related``, default transfer syntaxes of Tables 8.7.3-3 .. 8.7.3-5) and 8.7.5.

The ``accept`` query parameter (PS3.18 8.3.3.1) replaces the header; see
:func:`accept_from_request`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nubis.errors import BadRequest, NotAcceptable

__all__ = [
    "ANY_TRANSFER_SYNTAX",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "FRAME_MEDIA_TYPES",
    "Choice",
    "MediaRange",
    "Offer",
    "accept_from_request",
    "bulkdata_offers",
    "frame_offers",
    "instance_offers",
    "metadata_offers",
    "negotiate",
    "parse_accept",
    "parse_media_type",
    "rendered_offers",
    "split_header_list",
]

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
"""Default transfer syntax of ``application/dicom`` and ``application/octet-stream`` parts
(PS3.18 8.7.3.5.2, Tables 8.7.3-3 and 8.7.3-5)."""

ANY_TRANSFER_SYNTAX = "*"
"""``transfer-syntax=*``: the client takes any transfer syntax, so the origin sends as stored."""

FRAME_MEDIA_TYPES: Mapping[str, tuple[str, ...]] = {
    # PS3.18 Table 8.7.3-5: compressed pixel data media types and their transfer syntaxes, the
    # default (used when the request names no transfer-syntax) first.
    "image/jpeg": (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    ),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": (
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    ),
    "image/jxl": (
        "1.2.840.10008.1.2.4.110",
        "1.2.840.10008.1.2.4.111",
        "1.2.840.10008.1.2.4.112",
    ),
}

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Parameter values are token / quoted-string (RFC 9110 5.6.6), but DICOM clients commonly send
# ``type=application/dicom`` unquoted; "/" is accepted in bare values so they are not refused.
_BARE_VALUE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z/:=?@\[\]{}]+")
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
_OWS = " \t"


def split_header_list(value: str) -> list[str]:
    """Split a comma-separated header list, keeping commas inside quoted strings.

    Parameters
    ----------
    value : str
        A list-valued field (RFC 9110 5.6.1), possibly several field lines joined by ``,``.

    Returns
    -------
    list[str]
        The non-empty elements, stripped; empty elements are dropped as RFC 9110 5.6.1 requires
        recipients to accept them.

    Raises
    ------
    BadRequest
        If a quoted string is not closed.
    """
    items: list[str] = []
    start = 0
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if c == '"':
            i = _skip_quoted(value, i)
            continue
        if c == ",":
            item = value[start:i].strip(_OWS)
            if item:
                items.append(item)
            start = i + 1
        i += 1
    item = value[start:].strip(_OWS)
    if item:
        items.append(item)
    return items


def _skip_quoted(value: str, i: int) -> int:
    """Return the index just past the quoted string that opens at ``value[i]``."""
    n = len(value)
    j = i + 1
    while j < n:
        c = value[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    raise BadRequest(f"unterminated quoted string in header value {value!r}")


def _unquote(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value[1:-1])


def parse_media_type(value: str) -> tuple[str, str, dict[str, str]]:
    """Parse one media type or media range with its parameters (RFC 9110 8.3.1, 12.5.1).

    Parameters
    ----------
    value : str
        For example ``multipart/related; type="application/dicom"; transfer-syntax=*``.

    Returns
    -------
    tuple[str, str, dict[str, str]]
        Lower-cased type and subtype, and the parameters keyed by lower-cased name. Quoted values
        are unquoted; the values of ``type`` (a media type) and ``charset`` are lower-cased since
        they are case-insensitive, all others (``boundary``, ``transfer-syntax``) are kept as sent.

    Raises
    ------
    BadRequest
        If the value is not ``type/subtype`` followed by ``; name=value`` parameters.
    """
    head, _, rest = value.partition(";")
    head = head.strip(_OWS)
    type_, slash, subtype = head.partition("/")
    if not slash or not _TOKEN.fullmatch(type_) or not _TOKEN.fullmatch(subtype):
        raise BadRequest(f"media type {head!r} is not of the form type/subtype")
    params: dict[str, str] = {}
    if rest:
        _parse_params(rest, params, value)
    return type_.lower(), subtype.lower(), params


def _parse_params(rest: str, params: dict[str, str], whole: str) -> None:
    i = 0
    n = len(rest)
    while i < n:
        while i < n and rest[i] in _OWS + ";":
            i += 1
        if i >= n:
            return
        eq = rest.find("=", i)
        if eq < 0:
            raise BadRequest(f"parameter {rest[i:].strip()!r} of {whole!r} has no value")
        name = rest[i:eq].strip(_OWS)
        if not _TOKEN.fullmatch(name):
            raise BadRequest(f"parameter name {name!r} of {whole!r} is not a token")
        j = eq + 1
        while j < n and rest[j] in _OWS:
            j += 1
        if j < n and rest[j] == '"':
            end = _skip_quoted(rest, j)
            val = _unquote(rest[j:end])
        else:
            m = _BARE_VALUE.match(rest, j)
            end = m.end() if m else j
            val = rest[j:end]
            if not val:
                raise BadRequest(f"parameter {name!r} of {whole!r} has an empty value")
        k = end
        while k < n and rest[k] in _OWS:
            k += 1
        if k < n and rest[k] != ";":
            raise BadRequest(f"unexpected {rest[k:]!r} after parameter {name!r} of {whole!r}")
        key = name.lower()
        params[key] = val.lower() if key in ("type", "charset") else val
        i = k


@dataclass(frozen=True)
class MediaRange:
    """One element of an ``Accept`` field (RFC 9110 12.5.1).

    Attributes
    ----------
    type, subtype : str
        Lower-cased; either may be ``*``.
    params : dict[str, str]
        Parameters other than ``q`` (see :func:`parse_media_type` for normalisation).
    q : float
        The weight, 0 to 1; 0 means "not acceptable".
    """

    type: str
    subtype: str
    params: dict[str, str] = field(default_factory=dict, hash=False)
    q: float = 1.0

    @property
    def media_type(self) -> str:
        return f"{self.type}/{self.subtype}"

    @property
    def specificity(self) -> int:
        """Rank used to order ranges of equal weight: concrete types and parameters win.

        Within the ``type`` and ``transfer-syntax`` parameters a wildcard is less specific than a
        concrete value, so ``type="image/jpeg"`` governs over ``type="image/*"``.
        """
        if self.type == "*":
            rank = 0
        elif self.subtype == "*":
            rank = 100
        else:
            rank = 200
        for name, value in self.params.items():
            if name == "type":
                rank += 3 if "*" not in value else (2 if not value.startswith("*") else 1)
            elif name == "transfer-syntax":
                rank += 2 if value != "*" else 1
            else:
                rank += 1
        return rank

    def __str__(self) -> str:
        text = self.media_type
        for name, value in self.params.items():
            text += f'; {name}="{value}"' if name == "type" else f"; {name}={value}"
        if self.q != 1.0:
            text += f"; q={self.q:g}"
        return text


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an ``Accept`` field value (RFC 9110 12.5.1; PS3.18 8.7.5).

    Parameters
    ----------
    header : str or None
        The field value; several ``Accept`` lines must be joined with ``,`` first. ``None`` or an
        empty value means the client takes anything (``*/*``).

    Returns
    -------
    list[MediaRange]
        Sorted by weight (highest first), then specificity (most specific first), then order of
        appearance.

    Raises
    ------
    BadRequest
        If an element is not a media range or a ``q`` value is not a qvalue (0 to 1, at most
        three decimals).
    """
    if header is None or not header.strip(_OWS):
        return [MediaRange("*", "*", {}, 1.0)]
    ranges: list[tuple[float, int, int, MediaRange]] = []
    for index, item in enumerate(split_header_list(header)):
        type_, subtype, params = parse_media_type(item)
        if type_ == "*" and subtype != "*":
            raise BadRequest(f"media range {item!r} has a wildcard type but a concrete subtype")
        q = 1.0
        if "q" in params:
            raw = params.pop("q")
            if not _QVALUE.fullmatch(raw):
                raise BadRequest(f"weight q={raw!r} of media range {item!r} is not between 0 and 1")
            q = float(raw)
        media_range = MediaRange(type_, subtype, params, q)
        ranges.append((-q, -media_range.specificity, index, media_range))
    if not ranges:
        return [MediaRange("*", "*", {}, 1.0)]
    ranges.sort(key=lambda entry: entry[:3])
    return [entry[3] for entry in ranges]


def accept_from_request(header: str | None, query_accept: str | None) -> list[MediaRange]:
    """Media ranges of a WADO-RS request, the ``accept`` query parameter overriding the header.

    PS3.18 8.3.3.1: when present, the ``accept`` query parameter replaces the ``Accept`` header
    field, so that a plain hyperlink can ask for a representation.

    Parameters
    ----------
    header : str or None
        The ``Accept`` field value (several lines joined with ``,``).
    query_accept : str or None
        The decoded ``accept`` query parameter (several occurrences joined with ``,``).

    Returns
    -------
    list[MediaRange]
        As :func:`parse_accept`.
    """
    if query_accept is not None and query_accept.strip(_OWS):
        return parse_accept(query_accept)
    return parse_accept(header)


@dataclass(frozen=True)
class Offer:
    """One representation a resource can produce.

    Attributes
    ----------
    media_type : str
        The response media type, e.g. ``multipart/related``, ``application/dicom+json``,
        ``image/png``.
    part_type : str or None
        For ``multipart/related``: the media type of every part (the ``type`` parameter, RFC 2387
        3.1), e.g. ``application/dicom``.
    transfer_syntaxes : tuple[str, ...]
        Transfer syntax UIDs the resource can produce for this media type, the default (chosen when
        the request names none, PS3.18 8.7.3.5.2) first; include ``*`` when the resource can send
        objects as stored. Empty for representations without a transfer syntax (metadata,
        rendered).
    aliases : tuple[str, ...]
        Further media types the client may name for the same representation, e.g.
        ``application/json`` for ``application/dicom+json`` (PS3.18 8.7.3.2).
    """

    media_type: str
    part_type: str | None = None
    transfer_syntaxes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.media_type == "multipart/related" and not self.part_type:
            raise ValueError("a multipart/related offer needs a part_type")
        if self.transfer_syntaxes and self.transfer_syntaxes[0] == ANY_TRANSFER_SYNTAX:
            raise ValueError("the default transfer syntax of an offer must be a UID, not '*'")

    @property
    def default_transfer_syntax(self) -> str | None:
        return self.transfer_syntaxes[0] if self.transfer_syntaxes else None

    @property
    def is_multipart(self) -> bool:
        return self.media_type.startswith("multipart/")

    @property
    def concrete_type(self) -> str:
        """The type the client names to get exactly this offer (the part type if multipart)."""
        return self.part_type if self.is_multipart and self.part_type else self.media_type

    def __str__(self) -> str:
        text = self.media_type
        if self.part_type:
            text += f'; type="{self.part_type}"'
        if self.transfer_syntaxes:
            text += f"; transfer-syntax={'|'.join(self.transfer_syntaxes)}"
        return text


@dataclass(frozen=True)
class Choice:
    """The representation :func:`negotiate` chose.

    Attributes
    ----------
    media_type : str
        Response media type, as the client named it when it used an alias
        (``application/json``).
    part_type : str or None
        For multipart responses, the type of every part.
    transfer_syntax : str or None
        A transfer syntax UID, ``*`` (send as stored), or ``None`` when not applicable.
    """

    media_type: str
    part_type: str | None
    transfer_syntax: str | None


def _type_matches(pattern: str, media_type: str) -> bool:
    if pattern == "*/*":
        return True
    p_type, _, p_sub = pattern.partition("/")
    m_type, _, m_sub = media_type.partition("/")
    return p_type == m_type and p_sub in ("*", m_sub)


def _matched_name(media_range: MediaRange, offer: Offer) -> str | None:
    """The offer's media type as the range names it, or ``None`` if the range does not match."""
    pattern = media_range.media_type
    for name in (offer.media_type, *offer.aliases):
        if _type_matches(pattern, name):
            return name if pattern == name else offer.media_type
    return None


def _names_concrete_type(media_range: MediaRange, offer: Offer) -> bool:
    """Whether the range pins the exact type whose transfer syntax it would select."""
    if offer.is_multipart:
        part = media_range.params.get("type")
        return part is not None and "*" not in part
    return media_range.subtype != "*"


def _range_transfer_syntax(media_range: MediaRange, offer: Offer) -> tuple[bool, str | None]:
    """Transfer syntax the range asks of the offer: ``(matches, transfer syntax to send)``."""
    if media_range.type == "*" or media_range.subtype == "*":
        # A wildcard range names no type, so any parameter on it cannot select a syntax.
        return True, offer.default_transfer_syntax
    if offer.is_multipart:
        part = media_range.params.get("type")
        if part is not None and not _type_matches(part, offer.part_type or ""):
            return False, None
    charset = media_range.params.get("charset")
    if charset is not None and charset != "utf-8" and offer.media_type.endswith("json"):
        # PS3.18 8.7.3.2: DICOM JSON is UTF-8 only.
        return False, None
    if not offer.transfer_syntaxes:
        return True, None
    asked = media_range.params.get("transfer-syntax")
    if asked is None:
        return True, offer.default_transfer_syntax
    if asked == ANY_TRANSFER_SYNTAX:
        if ANY_TRANSFER_SYNTAX in offer.transfer_syntaxes:
            return True, ANY_TRANSFER_SYNTAX
        return True, offer.default_transfer_syntax
    return (True, asked) if asked in offer.transfer_syntaxes else (False, None)


def _covers(media_range: MediaRange, offer: Offer, transfer_syntax: str | None) -> bool:
    """Whether the range includes this exact representation (used for exclusions and overrides)."""
    if _matched_name(media_range, offer) is None:
        return False
    ok, chosen = _range_transfer_syntax(media_range, offer)
    if not ok:
        return False
    if transfer_syntax is None or not _names_concrete_type(media_range, offer):
        return True
    asked = media_range.params.get("transfer-syntax")
    if asked == ANY_TRANSFER_SYNTAX:
        return True
    return chosen == transfer_syntax


def negotiate(accept: Sequence[MediaRange], offers: Sequence[Offer]) -> Choice:
    """Choose the representation of a resource for a request (PS3.18 8.7.5, RFC 9110 12.5.1).

    Each range is tried in the order of :func:`parse_accept` (weight, then specificity) against
    the offers in the resource's order of preference. A representation is governed by the most
    specific range that covers it: a broader range does not select it when a more specific one
    also covers it (``image/*, image/jpeg;q=0.1`` prefers PNG), and ``q=0`` excludes it.

    A range that names the part type without ``transfer-syntax`` asks for that type's default
    transfer syntax; ``transfer-syntax=*`` takes anything and yields ``*`` (as stored) when the
    offer lists it; ``*/*``, ``type/*`` and ``multipart/related`` without ``type`` yield the first
    matching offer with its default transfer syntax.

    Parameters
    ----------
    accept : Sequence[MediaRange]
        From :func:`parse_accept` or :func:`accept_from_request`.
    offers : Sequence[Offer]
        What the resource can produce, preferred first.

    Returns
    -------
    Choice

    Raises
    ------
    NotAcceptable
        Naming the requested media ranges and the offered representations.
    """
    positive = [r for r in accept if r.q > 0]
    for media_range in positive:
        for offer in offers:
            name = _matched_name(media_range, offer)
            if name is None:
                continue
            ok, transfer_syntax = _range_transfer_syntax(media_range, offer)
            if not ok:
                continue
            if _governed_elsewhere(media_range, accept, offer, transfer_syntax):
                continue
            return Choice(
                media_type=name,
                part_type=offer.part_type if offer.is_multipart else None,
                transfer_syntax=transfer_syntax,
            )
    asked = ", ".join(str(r) for r in accept) or "nothing"
    available = ", ".join(str(o) for o in offers) or "nothing"
    raise NotAcceptable(
        f"none of the requested media types ({asked}) can be produced by this resource; "
        f"it offers: {available}"
    )


def _governed_elsewhere(
    media_range: MediaRange,
    accept: Sequence[MediaRange],
    offer: Offer,
    transfer_syntax: str | None,
) -> bool:
    for other in accept:
        if other is media_range:
            continue
        if other.q == 0 and other.specificity >= media_range.specificity:
            if _covers(other, offer, transfer_syntax):
                return True
        elif other.specificity > media_range.specificity and _covers(other, offer, transfer_syntax):
            return True
    return False


def _with_any(transfer_syntaxes: Iterable[str], as_stored: bool) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(transfer_syntaxes))
    return (*unique, ANY_TRANSFER_SYNTAX) if as_stored else unique


def instance_offers(
    transfer_syntaxes: Iterable[str] = (EXPLICIT_VR_LITTLE_ENDIAN,), *, as_stored: bool = True
) -> tuple[Offer, ...]:
    """Offers of an instance resource: ``multipart/related; type="application/dicom"``.

    Parameters
    ----------
    transfer_syntaxes : Iterable[str]
        UIDs the archive can transcode to, in any order: Explicit VR Little Endian, when listed,
        is moved first because PS3.18 8.7.3.5.2 makes it the default; otherwise the first UID is
        the default.
    as_stored : bool
        Whether ``transfer-syntax=*`` may return each instance as stored.
    """
    uids = [uid for uid in transfer_syntaxes if uid != ANY_TRANSFER_SYNTAX]
    if EXPLICIT_VR_LITTLE_ENDIAN in uids:
        uids.remove(EXPLICIT_VR_LITTLE_ENDIAN)
        uids.insert(0, EXPLICIT_VR_LITTLE_ENDIAN)
    return (
        Offer(
            "multipart/related",
            part_type="application/dicom",
            transfer_syntaxes=_with_any(uids, as_stored),
        ),
    )


def metadata_offers() -> tuple[Offer, ...]:
    """Offers of a metadata resource: DICOM JSON (PS3.18 8.7.3.2, F.2)."""
    return (Offer("application/dicom+json", aliases=("application/json",)),)


def bulkdata_offers(*, as_stored: bool = True) -> tuple[Offer, ...]:
    """Offers of a bulk data resource: native octet streams (PS3.18 Table 8.7.3-4)."""
    return (
        Offer(
            "multipart/related",
            part_type="application/octet-stream",
            transfer_syntaxes=_with_any((EXPLICIT_VR_LITTLE_ENDIAN,), as_stored),
        ),
    )


def frame_offers(
    compressed: Iterable[str] = (), *, native: bool = True, as_stored: bool = True
) -> tuple[Offer, ...]:
    """Offers of a frames resource (PS3.18 Table 8.7.3-5).

    Parameters
    ----------
    compressed : Iterable[str]
        Transfer syntax UIDs whose frames the archive can send as compressed pixel data (stored or
        by transcoding); each becomes a ``multipart/related`` offer of its media type from
        :data:`FRAME_MEDIA_TYPES`, in that table's order. Unknown UIDs are ignored.
    native : bool
        Whether uncompressed frames (``application/octet-stream``) can be sent; this offer comes
        first, as it is the default representation of frames.
    as_stored : bool
        Whether ``transfer-syntax=*`` on ``application/octet-stream`` may send frames as stored.
    """
    wanted = set(compressed)
    offers: list[Offer] = []
    if native:
        offers.extend(bulkdata_offers(as_stored=as_stored))
    for media_type, uids in FRAME_MEDIA_TYPES.items():
        available = tuple(uid for uid in uids if uid in wanted)
        if not available:
            continue
        # Table order puts the PS3.18 default first, so a bare type= gets it when it is offered.
        offers.append(Offer("multipart/related", part_type=media_type, transfer_syntaxes=available))
    return tuple(offers)


def rendered_offers(
    media_types: Iterable[str] = ("image/jpeg", "image/png", "image/gif"),
) -> tuple[Offer, ...]:
    """Offers of a rendered resource (PS3.18 8.7.4, Table 8.7.4-1), JPEG being the default."""
    return tuple(Offer(media_type) for media_type in media_types)
