"""The study browser's search: what a person fills in, how it travels, the Query it becomes.

Filters name patients (name, ID, accession number), and a URL lands in access logs, proxies'
logs and the browser's history. So the form is POSTed (with its CSRF token) and answered by a
redirect to the results page, whose URL carries the filters only sealed: AES-GCM under a key
derived from the browser session's secret CSRF token, in an opaque ``q`` parameter. The
results page can be reloaded, paged, sorted and linked back to while the session lives; the
same URL read from a log, or in another session, says nothing and finds nothing. Sort column,
direction and page number are not patient data and travel in clear.

The filters become QIDO-RS matching keys (``parse_qido``: the same validation, the same errors,
the same Query as ``GET /studies``) and the search runs through ``QueryService``, so it is
scoped and recorded exactly like the QIDO-RS request it stands for.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import secrets
from dataclasses import asdict, dataclass, fields, replace
from typing import Any
from urllib.parse import urlencode

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydicom.datadict import tag_for_keyword
from starlette.datastructures import FormData

from nubis.errors import BadRequest
from nubis.model.query import Level, Order, Query, parse_qido

__all__ = [
    "PAGE_SIZE",
    "SORTS",
    "SearchView",
    "StudyFilters",
    "open_filters",
    "seal_filters",
]

PAGE_SIZE = 50
_MAX_PAGE = 100_000  # 5 million studies deep: far past anyone paging by hand
_MAX_TOKEN_CHARS = 4096
_FIELD_CHARS = 64  # every matched VR here is at most 64 characters (PN components, LO)

# Column name in the URL -> the attribute the index orders by (None: arrival in the archive).
SORTS: dict[str, int | None] = {
    "date": tag_for_keyword("StudyDate"),
    "name": tag_for_keyword("PatientName"),
    "id": tag_for_keyword("PatientID"),
    "accession": tag_for_keyword("AccessionNumber"),
    "received": None,
}
_DEFAULT_SORT = ("date", "desc")
# Key derivation label: a key of this purpose only, whatever else the session's token keys.
_INFO = b"nubis web face: study search filters"
# Principals without a browser session (an API key on a page) get this process's own key:
# their filters last as long as the worker process.
_PROCESS_SECRET = secrets.token_urlsafe(32)
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_WILDCARDS = re.compile(r"[*?]")


@dataclass(frozen=True)
class StudyFilters:
    """The search form's fields, as typed (stripped); empty means "any"."""

    patient_name: str = ""
    patient_id: str = ""
    accession: str = ""
    date_from: str = ""  # YYYY-MM-DD, as <input type="date"> sends it
    date_to: str = ""
    modality: str = ""
    description: str = ""

    @classmethod
    def from_form(cls, form: FormData) -> StudyFilters:
        values: dict[str, str] = {}
        for f in fields(cls):
            raw = form.get(f.name)
            text = raw.strip() if isinstance(raw, str) else ""
            if len(text) > _FIELD_CHARS:
                raise BadRequest(f"{f.name.replace('_', ' ')}: at most {_FIELD_CHARS} characters")
            values[f.name] = text
        filters = cls(**values)
        filters.qido_params()  # refuse bad values now, with QIDO-RS's reasons
        return filters

    @property
    def empty(self) -> bool:
        return not any(asdict(self).values())

    def qido_params(self) -> list[tuple[str, str]]:
        """The QIDO-RS matching keys these filters stand for.

        A patient name without wildcards matches names that begin with it (``doe`` finds
        DOE^JOHN; "Doe, John" is read as Doe^John), case aside, along the name index; IDs and
        accession numbers match exactly unless given with ``*`` or ``?``; a description
        matches anywhere in the text, with its case (PS3.4 C.2.2.2.4).
        """
        params: list[tuple[str, str]] = []
        if self.patient_name:
            name = re.sub(r"\s*,\s*", "^", self.patient_name)
            params.append(("PatientName", name if _WILDCARDS.search(name) else name + "*"))
        if self.patient_id:
            params.append(("PatientID", self.patient_id))
        if self.accession:
            params.append(("AccessionNumber", self.accession))
        if self.date_from or self.date_to:
            low, high = _dicom_date(self.date_from, "from"), _dicom_date(self.date_to, "to")
            if low and high and low > high:
                raise BadRequest("the date range ends before it starts")
            params.append(("StudyDate", f"{low}-{high}"))
        if self.modality:
            params.append(("ModalitiesInStudy", self.modality.upper()))
        if self.description:
            text = self.description
            params.append(("StudyDescription", text if _WILDCARDS.search(text) else f"*{text}*"))
        # Parsed here only to be refused early with the reasons QIDO-RS gives.
        parse_qido(Level.STUDY, params, max_limit=1)
        return params


def _dicom_date(value: str, which: str) -> str:
    if not value:
        return ""
    if not _ISO_DATE.match(value):
        raise BadRequest(f"date {which}: not a date (YYYY-MM-DD)")
    try:
        return dt.date.fromisoformat(value).strftime("%Y%m%d")
    except ValueError:
        raise BadRequest(f"date {which}: not a valid calendar date") from None


def _key(secret: str | None) -> AESGCM:
    material = (secret or _PROCESS_SECRET).encode()
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO)
    return AESGCM(hkdf.derive(material))


def seal_filters(filters: StudyFilters, secret: str | None) -> str:
    """``filters`` as an opaque URL-safe token, readable only with ``secret`` (the session's
    CSRF token)."""
    plain = json.dumps({k: v for k, v in asdict(filters).items() if v}, separators=(",", ":"))
    nonce = secrets.token_bytes(12)
    sealed = nonce + _key(secret).encrypt(nonce, plain.encode(), _INFO)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()


def open_filters(token: str, secret: str | None) -> StudyFilters | None:
    """The filters sealed in ``token``; None when it is not one this session sealed (another
    session's, expired with its session, damaged, or forged)."""
    if not token or len(token) > _MAX_TOKEN_CHARS:
        return None
    try:
        sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        plain = _key(secret).decrypt(sealed[:12], sealed[12:], _INFO)
        values = json.loads(plain)
        return StudyFilters(**{f.name: str(values.get(f.name, "")) for f in fields(StudyFilters)})
    except (binascii.Error, ValueError, InvalidTag, TypeError, AttributeError):
        return None


@dataclass(frozen=True)
class SearchView:
    """One results page: filters (sealed in ``token``), sort column and direction, page."""

    filters: StudyFilters
    token: str
    sort: str = _DEFAULT_SORT[0]
    direction: str = _DEFAULT_SORT[1]
    page: int = 1

    @classmethod
    def from_query_string(
        cls, params: dict[str, str], secret: str | None
    ) -> tuple[SearchView, bool]:
        """The view a results URL names, and whether its sealed filters were lost (a token
        this session cannot open: the page then shows every study, and says so)."""
        token = params.get("q", "")
        filters = open_filters(token, secret) if token else StudyFilters()
        lost = filters is None
        sort = params.get("sort", _DEFAULT_SORT[0])
        direction = params.get("dir", "")
        if sort not in SORTS:
            sort = _DEFAULT_SORT[0]
        if direction not in ("asc", "desc"):
            direction = _default_direction(sort)
        page = params.get("page", "1")
        number = int(page) if page.isdigit() and len(page) < 8 else 1
        return (
            cls(filters or StudyFilters(), "" if lost else token, sort, direction,
                min(max(number, 1), _MAX_PAGE)),
            lost,
        )  # fmt: skip

    def url(self, **changes: Any) -> str:
        """The results URL of this view with ``changes`` (sort, direction, page)."""
        view = replace(self, **changes)
        params = {"q": view.token} if view.token else {}
        params |= {"sort": view.sort, "dir": view.direction}
        if view.page > 1:
            params["page"] = str(view.page)
        return "/ui/?" + urlencode(params)

    def sort_url(self, column: str) -> str:
        """Sort by ``column``; the current column again reverses the direction."""
        if column == self.sort:
            return self.url(direction="asc" if self.direction == "desc" else "desc", page=1)
        return self.url(sort=column, direction=_default_direction(column), page=1)

    def query(self, *, include: frozenset[int]) -> tuple[Query, str]:
        """The study Query of this page (one row more than a page, to tell whether there is a
        next), and the QIDO-RS request it stands for, for the audit record."""
        params = self.filters.qido_params()
        offset = (self.page - 1) * PAGE_SIZE
        paging = [("offset", str(offset))] if offset else []
        query = parse_qido(
            Level.STUDY, params + paging, max_limit=PAGE_SIZE, default_limit=PAGE_SIZE
        )
        order = Order(SORTS[self.sort], descending=self.direction == "desc")
        # Nothing here asks for includefield=all; if it did, "all" already holds ``include``.
        wanted = query.include if query.include == "all" else query.include | include
        query = replace(query, include=wanted, order=order)
        shown = params + paging + [("limit", str(PAGE_SIZE))]
        text = (
            urlencode(shown, safe="*?^,") + f"&orderby={'-' if order.descending else ''}{self.sort}"
        )
        return query, text


def _default_direction(column: str) -> str:
    # Newest first for dates and arrival; alphabetical for names and numbers.
    return "desc" if column in ("date", "received") else "asc"
