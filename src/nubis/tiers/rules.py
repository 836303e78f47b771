"""Tiers, lifecycle rules and prices, as the settings spell them.

``tiers = "hot=STANDARD,cold=STANDARD_IA,archive=GLACIER"``: named tiers, each mapped to a
*target* that the blob store interprets: an S3 storage class, or for the folder store a folder
(an absolute path, or a folder of that name under ``blobs/tiers/``). The first tier is where new
objects are written.

On S3 a tier other than the first may instead be a bucket of its own (another lifecycle policy,
object lock, replication): ``cold=s3://nubis-cold/prefix`` or
``archive=s3://nubis-archive/prefix?storage_class=GLACIER``, at the same endpoint and with the
same credentials as the ``blobs`` store (nubis.blobs.bucket_tiers).

``lifecycle = "modality=MG age<730d -> hot; unread>365d -> archive; unread>30d -> cold"``: rules,
first match wins, a study no rule matches belongs in the first tier. Conditions (all must hold):

- ``modality=MG`` (or ``modality=MG,CR``): a series of the study has one of these modalities;
- ``partition=NAME``: the study is in that tenant;
- ``unread>30d`` / ``unread<30d``: time since the study was last read (retrieved whole, as
  frames, rendered...; its metadata does not count), or since it was stored if never read;
- ``age>2y`` / ``age<730d``: time since the study was first stored;
- ``*``: always.

Durations are a number and a unit: ``h`` hours, ``d`` days, ``w`` weeks, ``y`` 365 days. A study
pinned to a tier by an operator (``nubis storage tier``) stays there whatever the rules say.

``storage_prices = "hot=0.023,cold=0.0125"``: price per GB-month of a tier (in any currency);
a tier without one is priced from :data:`LIST_PRICES` by its target.

``tier_compression = "cold=htj2k,archive=htj2k"``: what a tier keeps instead of uncompressed
pixels: the ``tier`` job re-encodes each object with native pixel data that is (or arrives) in
the tier losslessly into that transfer syntax, a name of :data:`LOSSLESS_CODECS` or its UID
(nubis.tiers.compression).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = [
    "LIST_PRICES",
    "LOSSLESS_CODECS",
    "Rule",
    "StudyFacts",
    "Tier",
    "TierBucket",
    "Tiers",
    "parse_compression",
    "parse_prices",
    "parse_rules",
    "parse_tiers",
    "target_tier",
]

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# AWS bucket naming rules (which Ceph RGW applies by default).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_STORAGE_CLASS = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_BUCKET_URL = "s3://BUCKET[/PREFIX][?storage_class=CLASS]"
# S3 classes whose objects must be restored before a GET (Glacier Instant Retrieval need not).
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})

# AWS S3 list prices in us-east-1, USD per GB-month for the first 50 TB of a month, as published
# on aws.amazon.com/s3/pricing (2024). Storage only: requests, retrievals, minimum storage
# durations and transfer are extra. A guide, not a quote: set storage_prices for yours.
LIST_PRICES: dict[str, float] = {
    "STANDARD": 0.023,
    "INTELLIGENT_TIERING": 0.023,
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.00099,
}

# Lossless transfer syntaxes a tier may keep its objects in (tier_compression), by the names
# the setting accepts beside the UIDs. Whether this installation can encode one is the
# settings check's to say (nubis.dicom.syntaxes.SUPPORTED_TARGETS).
LOSSLESS_CODECS: dict[str, str] = {
    "htj2k": "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 (Lossless Only)
    "htj2k-rpcl": "1.2.840.10008.1.2.4.202",  # the same with RPCL progression order
    "jpegls": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "j2k": "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "rle": "1.2.840.10008.1.2.5",  # RLE Lossless
}

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
_UNITS = {"h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS, "y": 365 * DAY_MS}
_DURATION_CONDITION = re.compile(r"(unread|age)([<>])(\d+)([hdwy])\Z")
_VALUE_CONDITION = re.compile(r"(modality|partition)=(\S+)\Z")


@dataclass(frozen=True)
class TierBucket:
    """Where a tier kept in a bucket of its own puts its objects."""

    bucket: str
    prefix: str
    # None: a copy into the bucket gets the bucket's default class (STANDARD), and an object
    # there is in the tier whatever class the bucket's own lifecycle policy moved it to.
    storage_class: str | None

    @classmethod
    def parse(cls, target: str) -> TierBucket | None:
        """The bucket ``target`` names, None when it is no URL (a storage class or a folder);
        ValueError names what is wrong with a URL."""
        if not _URL_SCHEME.match(target):
            return None
        url = urlsplit(target)
        if url.scheme != "s3":
            raise ValueError(f"{target!r}: a tier URL names an S3 bucket: {_BUCKET_URL}")
        if "@" in url.netloc:
            # Not echoed: the URL would put the secret in logs and error pages.
            raise ValueError(
                "credentials do not go in a tier URL (tier buckets use the blob store's "
                "endpoint and credentials)"
            )
        if not _BUCKET.match(url.netloc):
            raise ValueError(
                f"{target!r}: bucket name {url.netloc!r} is not valid (3 to 63 lower-case "
                "letters, digits, dots and hyphens, beginning and ending with a letter or digit)"
            )
        if url.fragment:
            raise ValueError(f"{target!r}: unexpected '#{url.fragment}' ({_BUCKET_URL})")
        storage_class = None
        for name, value in parse_qsl(url.query, keep_blank_values=True):
            if name != "storage_class":
                raise ValueError(
                    f"{target!r}: unknown parameter {name!r} (the only one is storage_class; "
                    "the endpoint and credentials are the blob store's)"
                )
            if storage_class is not None:
                raise ValueError(f"{target!r}: storage_class is given twice")
            storage_class = value.strip().upper()
            if not _STORAGE_CLASS.match(storage_class):
                raise ValueError(
                    f"{target!r}: storage_class {value!r} is not an S3 storage class name "
                    "(such as STANDARD_IA, GLACIER)"
                )
        return cls(url.netloc, unquote(url.path).strip("/"), storage_class)


@dataclass(frozen=True)
class Tier:
    name: str
    target: str

    @property
    def bucket(self) -> TierBucket | None:
        """The bucket of its own this tier is kept in; None for a storage class or folder."""
        return TierBucket.parse(self.target)

    @property
    def storage_class(self) -> str:
        """The S3 storage class of the tier's objects: the target itself, else its bucket
        URL's ``storage_class``, else STANDARD (what a copy into a bucket gets)."""
        bucket = self.bucket
        if bucket is None:
            return self.target.upper()
        return bucket.storage_class or "STANDARD"

    @property
    def archived(self) -> bool:
        """Objects here need a restore before they can be read (on S3)."""
        return self.storage_class in ARCHIVE_CLASSES


@dataclass(frozen=True)
class Tiers:
    """The configured tiers in order; the first is where new objects go."""

    all: tuple[Tier, ...]

    @property
    def default(self) -> Tier:
        return self.all[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.all)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def get(self, name: str) -> Tier:
        for tier in self.all:
            if tier.name == name:
                return tier
        raise KeyError(f"no tier {name!r} (tiers: {', '.join(self.names)})")


def parse_tiers(text: str) -> Tiers:
    """``name=target,...`` into :class:`Tiers`; ValueError names what is wrong."""
    found: list[Tier] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, target = (p.strip() for p in item.partition("="))
        if not sep or not target:
            raise ValueError(
                f"{item!r}: expected NAME=TARGET (a storage class, a folder or an S3 bucket URL)"
            )
        if not _NAME.match(name):
            raise ValueError(f"tier name {name!r}: lower-case letters, digits, - and _")
        if any(t.name == name for t in found):
            raise ValueError(f"tier {name!r} is named twice")
        try:
            bucket = TierBucket.parse(target)
        except ValueError as exc:
            raise ValueError(f"tier {name!r}: {exc}") from None
        if bucket is not None and not found:
            raise ValueError(
                f"tier {name!r}: the first tier is where new objects are written, in the blob "
                "store's own bucket: give it a storage class (such as STANDARD), not a bucket"
            )
        found.append(Tier(name, target))
    if not found:
        raise ValueError("at least one tier is needed (the one new objects are written to)")
    return Tiers(tuple(found))


@dataclass(frozen=True)
class StudyFacts:
    """What the rules look at, for one study; times in milliseconds since the epoch."""

    partition: str
    modalities: frozenset[str]
    created_at: int
    last_read_at: int | None = None
    pin: str | None = None
    pin_until: int | None = None

    @property
    def last_used(self) -> int:
        return max(self.created_at, self.last_read_at or 0)


@dataclass(frozen=True)
class Rule:
    text: str
    tier: str
    modalities: frozenset[str] | None = None
    partition: str | None = None
    unread_over: int | None = None
    unread_under: int | None = None
    age_over: int | None = None
    age_under: int | None = None

    def matches(self, study: StudyFacts, now: int) -> bool:
        if self.modalities is not None and not (self.modalities & study.modalities):
            return False
        if self.partition is not None and study.partition != self.partition:
            return False
        unread, age = now - study.last_used, now - study.created_at
        return (
            (self.unread_over is None or unread > self.unread_over)
            and (self.unread_under is None or unread < self.unread_under)
            and (self.age_over is None or age > self.age_over)
            and (self.age_under is None or age < self.age_under)
        )


def parse_rules(text: str, tiers: Tiers | None = None) -> tuple[Rule, ...]:
    """Rules separated by ``;`` or new lines, each ``CONDITIONS -> TIER``; see the module."""
    rules = []
    for raw in re.split(r"[;\n]", text):
        line = raw.strip()
        if not line:
            continue
        conditions, arrow, tier = line.rpartition("->")
        tier = tier.strip()
        if not arrow or not tier:
            raise ValueError(f"lifecycle rule {line!r}: expected CONDITIONS -> TIER")
        if tiers is not None and tier not in tiers:
            raise ValueError(
                f"lifecycle rule {line!r}: no tier {tier!r} (tiers: {', '.join(tiers.names)})"
            )
        fields: dict[str, object] = {}
        words = conditions.split()
        if not words:
            raise ValueError(f"lifecycle rule {line!r}: no condition (write * for always)")
        for word in words:
            if word == "*":
                continue
            if m := _VALUE_CONDITION.match(word):
                if m[1] == "modality":
                    fields["modalities"] = frozenset(v for v in m[2].upper().split(",") if v)
                else:
                    fields["partition"] = m[2]
            elif m := _DURATION_CONDITION.match(word):
                bound = "over" if m[2] == ">" else "under"
                fields[f"{m[1]}_{bound}"] = int(m[3]) * _UNITS[m[4]]
            else:
                raise ValueError(
                    f"lifecycle rule {line!r}: cannot read {word!r} (modality=MG, "
                    "partition=NAME, unread>30d, age<2y, *)"
                )
        rules.append(Rule(line, tier, **fields))  # type: ignore[arg-type]
    return tuple(rules)


def target_tier(study: StudyFacts, rules: tuple[Rule, ...], tiers: Tiers, now: int) -> str:
    """The tier ``study`` belongs in now: its pin, else the first matching rule, else the first
    tier. A pin to a tier no longer configured is ignored rather than obeyed blindly."""
    if study.pin in tiers and (study.pin_until is None or study.pin_until > now):
        return study.pin  # type: ignore[return-value]
    for rule in rules:
        if rule.tier in tiers and rule.matches(study, now):
            return rule.tier
    return tiers.default.name


def parse_prices(text: str, tiers: Tiers) -> dict[str, float | None]:
    """Price per GB-month of every tier: ``storage_prices``, else the list price of its
    storage class; None for a tier priced nowhere (a folder without a price)."""
    given: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = (p.strip() for p in item.partition("="))
        if not sep:
            raise ValueError(f"{item!r}: expected TIER=PRICE")
        if name not in tiers:
            raise ValueError(f"storage_prices: no tier {name!r} (tiers: {', '.join(tiers.names)})")
        try:
            price = float(value)
        except ValueError:
            raise ValueError(f"storage_prices: {value!r} is not a number") from None
        if price < 0:
            raise ValueError(f"storage_prices: {name} has a negative price")
        given[name] = price
    return {t.name: given.get(t.name, LIST_PRICES.get(t.storage_class)) for t in tiers.all}


def parse_compression(
    text: str, tiers: Tiers, encodable: Collection[str] | None = None
) -> dict[str, str]:
    """``tier_compression``: tier name -> the lossless transfer syntax UID it keeps objects in.

    ``TIER=CODEC,...`` where CODEC is a name of :data:`LOSSLESS_CODECS` or its UID. With
    ``encodable`` (the syntaxes this installation can encode), a codec outside it is refused
    too. ValueError names what is wrong.
    """
    found: dict[str, str] = {}
    names = {uid: name for name, uid in LOSSLESS_CODECS.items()}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, codec = (p.strip() for p in item.partition("="))
        if not sep or not codec:
            raise ValueError(f"{item!r}: expected TIER=CODEC such as cold=htj2k")
        if name not in tiers:
            raise ValueError(f"no tier {name!r} (tiers: {', '.join(tiers.names)})")
        if name in found:
            raise ValueError(f"tier {name!r} is named twice")
        uid = LOSSLESS_CODECS.get(codec.lower(), codec)
        if uid not in names:
            raise ValueError(
                f"{name}={codec}: not a lossless codec a tier can keep (one of "
                f"{', '.join(LOSSLESS_CODECS)}, or its transfer syntax UID)"
            )
        if encodable is not None and uid not in encodable:
            can = [n for n, u in LOSSLESS_CODECS.items() if u in encodable]
            raise ValueError(
                f"{name}={codec}: this installation has no encoder for {names[uid]} ({uid}); "
                f"it can encode {', '.join(can) or 'none of them'}"
            )
        found[name] = uid
    return found
