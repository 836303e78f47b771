"""One pass over a PS3.10 file's bytes for what ingest needs, without building a pydicom Dataset.

:func:`nubis.dicom.inspect.inspect_file` asks this reader first. It walks the file meta
information and the data set element by element with :func:`struct.unpack_from` over a window
of the file, straight into the DICOM JSON model (PS3.18 Annex F.2) with bulk values replaced by
their positions, which are skipped over and never read. It handles the common encodings only:
Explicit VR Little Endian, Implicit VR Little Endian and the encapsulated transfer syntaxes
whose data set is Explicit VR Little Endian (JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE...), in the
character sets without code extensions.

Whatever it is not sure it reads as pydicom does, it does not read: it returns None and the
caller reads the file with pydicom, which then also gives the error a faulty file deserves. So
a deflated or big endian data set, an explicit VR no reader agrees on, an explicit UN that
pydicom would read as a private, sequence or ambiguous VR, elements out of order or repeated,
an ambiguous VR it cannot resolve alone, items that do not end where their length says, a
value running past its container, a text before (0008,0005) it would decode otherwise,
anything unusual in the file meta or the pixel data's items: all go to pydicom. The rule is
pydicom's reading; this is its shortcut for the files that are read alike either way
(tests/unit/test_fast_parse.py runs both over every test file).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from struct import Struct
from struct import error as struct_error
from typing import Any, BinaryIO

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.filewriter import _AMBIGUOUS_US_SS_TAGS
from pydicom.uid import UID
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, STANDARD_VR

from nubis.dicom.frames import EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS, PixelLayout
from nubis.dicom.json_values import (
    BULK_URI_MARKER,
    BULK_VRS,
    DECODED_VRS,
    DEFAULT_CODEC,
    VALUE_DECODERS,
    ValueDecoder,
)
from nubis.dicom.leniency import IDENTIFYING_TAGS, META_SOP_CLASS, META_SOP_INSTANCE

__all__ = ["ParsedDataSet", "parse"]

_PREAMBLE_END = 132  # 128-byte preamble and "DICM" (PS3.10 7.1)
_META_GROUP_START = _PREAMBLE_END + 12  # where (0002,0000) counts from
_WINDOW = 64 * 1024
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_OFFSET_TABLES = (EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS)
_CHARSET = 0x00080005
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_PIXEL_REPRESENTATION = 0x00280103
_ITEM_BYTES = b"\xfe\xff\x00\xe0"
# File meta elements read: group length, Media Storage SOP Class and Instance, Transfer Syntax.
_META_VALUES = frozenset({0x00020000, META_SOP_CLASS, META_SOP_INSTANCE, 0x00020010})
# Top-level elements whose bytes the checks after the walk need.
_WATCHED = frozenset({*IDENTIFYING_TAGS, _PIXEL_REPRESENTATION, *_OFFSET_TABLES})
_LOOKED_AT = {tag: f"{tag:08X}" for tag in (*_WATCHED, _CHARSET)}

_TAG_LENGTH = Struct("<HHL")
_TAG_VR_LENGTH = Struct("<HH2sH")
_LONG_LENGTH = Struct("<L")
_US = Struct("<H")


class _NotHere(Exception):
    """The file is to be read by pydicom."""


def _undecodable(vr: str, value: bytes, encodings: Sequence[str]) -> dict[str, Any]:
    raise _NotHere


def _decoder(vr: str) -> ValueDecoder:
    return VALUE_DECODERS.get(vr, _undecodable)


# Explicit VRs, with whether their length takes 4 bytes (PS3.5 7.1.2), their decoder and
# whether (0008,0005) says how to decode them. UN is read as pydicom reads it (_Parser.un_vr).
_EXPLICIT = {
    str(vr).encode(): (
        str(vr),
        vr in EXPLICIT_VR_LENGTH_32,
        _decoder(str(vr)),
        str(vr) in DECODED_VRS,
    )
    for vr in STANDARD_VR
}
_IMPLICIT_SYNTAX = "1.2.840.10008.1.2"
# Charsets without code extensions: one term, decoded as pydicom decodes it.
_CHARSETS = frozenset(
    {
        "ISO_IR 6", "ISO_IR 13", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110",
        "ISO_IR 126", "ISO_IR 127", "ISO_IR 138", "ISO_IR 144", "ISO_IR 148", "ISO_IR 166",
        "ISO_IR 192", "GB18030", "GBK",
    }
)  # fmt: skip


@dataclass(slots=True)
class ParsedDataSet:
    """What one walk of a data set found, whichever reader walked it.

    ``tree``: the data set in the DICOM JSON model, bulk values as ``BulkDataURI``
    placeholders; ``bulk_index``: bulk path to ``(offset, length)`` in the file;
    ``encapsulated``: the bulk paths of encapsulated values; ``bulk_count``: how many
    placeholders ``tree`` holds; ``layout``: the top-level pixel data, for the frame index;
    ``text_beyond_ascii``: text with bytes beyond ASCII and no (0008,0005);
    ``raw_uids``: the identifying UIDs' bytes as stored; ``meta_uids``: the file meta's
    Media Storage SOP Class and Instance UIDs ("" if absent).
    """

    transfer_syntax: UID
    tree: dict[str, Any]
    raw_uids: dict[int, bytes | None]
    meta_uids: dict[int, str]
    bulk_index: dict[str, tuple[int, int]] = field(default_factory=dict)
    encapsulated: set[str] = field(default_factory=set)
    bulk_count: int = 0
    layout: PixelLayout = field(default_factory=PixelLayout)
    text_beyond_ascii: bool = False


def parse(fp: BinaryIO, size: int, bulk_threshold: int) -> ParsedDataSet | None:
    """Read the PS3.10 file ``fp`` of ``size`` bytes, or None when pydicom is to read it."""
    try:
        return _Parser(fp, size, bulk_threshold).parse()
    except (_NotHere, struct_error, ValueError, UnicodeError, LookupError, KeyError, TypeError):
        return None


class _Parser:
    def __init__(self, fp: BinaryIO, size: int, threshold: int) -> None:
        self.fp = fp
        self.size = size
        self.threshold = threshold
        self.base = 0  # file offset of self.buf[0]
        self.buf = b""
        self.implicit = False
        self.charset_seen = False
        self.text_beyond_ascii = False
        self.bulk_index: dict[str, tuple[int, int]] = {}
        self.encapsulated: set[str] = set()
        self.bulk_count = 0
        self.layout = PixelLayout()
        self.pixel_representation: int | None = None
        self.raw_uids: dict[int, bytes | None] = dict.fromkeys(IDENTIFYING_TAGS)

    # ------------------------------------------------------------------ bytes of the file

    def window(self, pos: int, length: int) -> int:
        """Where ``length`` bytes at file offset ``pos`` start in ``self.buf``, reading them
        (and what follows, up to a window) if they are not there yet."""
        offset = pos - self.base
        if offset >= 0 and offset + length <= len(self.buf):
            return offset
        if pos + length > self.size:
            raise _NotHere
        self.fp.seek(pos)
        self.buf = self.fp.read(min(max(length, _WINDOW), self.size - pos))
        self.base = pos
        if len(self.buf) < length:
            raise _NotHere
        return 0

    def read(self, pos: int, length: int) -> bytes:
        offset = self.window(pos, length)
        return self.buf[offset : offset + length]

    # ------------------------------------------------------------------ the file

    def parse(self) -> ParsedDataSet:
        if self.size <= _PREAMBLE_END or self.read(128, 4) != b"DICM":
            raise _NotHere
        syntax, meta_uids, start = self.file_meta()
        if start >= self.size:
            raise _NotHere  # no data set: pydicom says what is missing
        if self.implicit:
            # pydicom reads the data set as its first element looks (explicit VR when it has
            # letters where a VR would be), and ingest then refuses it (consistency.py).
            offset = self.window(start, 6)
            if all(0x40 < b < 0x5B for b in self.buf[offset + 4 : offset + 6]):
                raise _NotHere
        tree, end = self.dataset(start, self.size, "", [default_encoding], top_level=True)
        if end != self.size:
            raise _NotHere
        return ParsedDataSet(
            transfer_syntax=syntax,
            tree=tree,
            raw_uids=self.raw_uids,
            meta_uids=meta_uids,
            bulk_index=self.bulk_index,
            encapsulated=self.encapsulated,
            bulk_count=self.bulk_count,
            layout=self.layout,
            text_beyond_ascii=self.text_beyond_ascii and not self.charset_seen,
        )

    def file_meta(self) -> tuple[UID, dict[int, str], int]:
        """Group 0002 (PS3.10 7.1), always Explicit VR Little Endian: the transfer syntax, the
        Media Storage UIDs and where the data set starts."""
        pos = _PREAMBLE_END
        values: dict[int, bytes] = {}
        last = -1
        buf, base = self.buf, self.base
        while pos + 8 <= self.size:
            offset = pos - base
            if offset < 0 or offset + 12 > len(buf):
                offset = self.window(pos, 8)
                buf, base = self.buf, self.base
            group, element, vr_bytes, length = _TAG_VR_LENGTH.unpack_from(buf, offset)
            if group != 2:
                break
            tag = group << 16 | element
            known = _EXPLICIT.get(vr_bytes)
            if known is None or known[0] == "UN" or tag <= last:
                raise _NotHere
            last = tag
            vr, long_length, _, _ = known
            header = 8
            if long_length:
                length = _LONG_LENGTH.unpack_from(buf, self.window(pos + 8, 4))[0]
                buf, base = self.buf, self.base
                header = 12
            if length == _UNDEFINED or vr == "SQ":
                raise _NotHere
            if tag in _META_VALUES:
                if vr != ("UL" if tag == 0x00020000 else "UI"):
                    raise _NotHere
                values[tag] = self.read(pos + header, length)
                buf, base = self.buf, self.base
            pos += header + length
        if pos > self.size:
            raise _NotHere
        stated = values.get(0x00020000)
        if stated is not None and (
            len(stated) != 4 or _LONG_LENGTH.unpack(stated)[0] != pos - _META_GROUP_START
        ):
            raise _NotHere  # pydicom finds what is wrong with the group length
        syntax = _syntax(_uid_text(values.get(0x00020010, b"")))
        self.implicit = syntax == _IMPLICIT_SYNTAX
        meta_uids = {
            tag: _uid_text(values.get(tag, b"")) for tag in (META_SOP_CLASS, META_SOP_INSTANCE)
        }
        return syntax, meta_uids, pos

    # ------------------------------------------------------------------ the data set

    def dataset(
        self,
        pos: int,
        end: int | None,
        prefix: str,
        encodings: list[str],
        *,
        top_level: bool = False,
    ) -> tuple[dict[str, Any], int]:
        """The elements from ``pos`` up to ``end`` (None: up to an Item Delimitation Item),
        in the JSON model, and where they end."""
        out: dict[str, Any] = {}
        # Elements ascend, and the data set's start after group 0002 (PS3.5 7.1, PS3.10 7.1).
        last = 0x0002FFFF if top_level else -1
        stop = self.size if end is None else end
        text_seen = False  # a text decoded before (0008,0005) would be decoded otherwise
        creators: dict[int, str | None] = {}
        implicit = self.implicit
        threshold = self.threshold
        unpack_header = _TAG_LENGTH.unpack_from
        unpack_explicit = _TAG_VR_LENGTH.unpack_from
        explicit_vrs = _EXPLICIT
        keys = _KEYS
        implicit_vrs = _IMPLICIT_VRS
        watched = _WATCHED if top_level else frozenset()
        # The window is refilled by self.window only: these locals are reloaded after it.
        buf, base, available = self.buf, self.base, len(self.buf)
        while pos < stop:
            offset = pos - base
            if offset < 0 or offset + 12 > available:
                offset = self.window(pos, 8)
                buf, base, available = self.buf, self.base, len(self.buf)
            if implicit:
                group, element, length = unpack_header(buf, offset)
            else:
                group, element, vr_bytes, length = unpack_explicit(buf, offset)
            tag = group << 16 | element
            if group == 0xFFFE:
                length = _LONG_LENGTH.unpack_from(buf, offset + 4)[0]
                if end is None and tag == _ITEM_END and length == 0:
                    return out, pos + 8
                raise _NotHere
            if tag <= last:
                raise _NotHere
            last = tag
            if not implicit:
                known = explicit_vrs.get(vr_bytes)
                if known is None:
                    raise _NotHere
                vr, long_length, decode, text = known
                if not long_length:
                    # The most frequent case, in short: a value of at most 64 KiB that is
                    # neither bulk data nor a sequence (PS3.5 7.1.2).
                    pos += 8
                    if pos + length > stop:
                        raise _NotHere
                    offset = pos - base
                    if offset + length > available:
                        offset = self.window(pos, length)
                        buf, base, available = self.buf, self.base, len(self.buf)
                    value = buf[offset : offset + length]
                    pos += length
                    key = keys.get(tag)
                    if key is None:  # not seen yet, or one of the tags looked at here
                        key = _key(tag)
                        if tag == _CHARSET:
                            if text_seen or vr != "CS":
                                raise _NotHere  # pydicom may read the terms otherwise
                            encodings = _encodings(value)
                            if top_level:
                                self.charset_seen = True
                        elif text:
                            text_seen = True
                            if not value.isascii():
                                self.text_beyond_ascii = True
                        if tag in watched:
                            self.watch(tag, vr, value)
                    elif text:
                        text_seen = True
                        if not value.isascii():
                            self.text_beyond_ascii = True
                    out[key] = decode(vr, value, encodings) if value else {"vr": vr}
                    continue
                if offset + 12 > available:
                    offset = self.window(pos, 12)
                    buf, base, available = self.buf, self.base, len(self.buf)
                length = _LONG_LENGTH.unpack_from(buf, offset + 8)[0]
                pos += 12
                if vr == "UN":
                    vr = self.un_vr(tag, length)
                    decode = _decoder(vr)
            else:
                by_tag = implicit_vrs.get(tag)
                if by_tag is None:
                    vr = self.implicit_vr(tag, creators, top_level, length)
                    decode = _decoder(vr)
                else:
                    vr, decode = by_tag
                pos += 8
                if length == _UNDEFINED and vr != "SQ" and _dictionary_vr(tag) is None:
                    # pydicom takes an unknown element of undefined length for a sequence
                    # when items follow (PS3.5 6.2.2)
                    if self.read(pos, 4) == _ITEM_BYTES:
                        vr = "SQ"
                    buf, base, available = self.buf, self.base, len(self.buf)
            key = keys.get(tag) or _key(tag)
            if length == _UNDEFINED:
                if vr == "SQ":
                    out[key], pos = self.sequence(pos, None, prefix + key, encodings)
                elif top_level and tag == _PIXEL_DATA and not implicit:
                    out[key] = self.bulk(vr, prefix + key)
                    pos = self.encapsulated_pixels(pos, prefix + key)
                else:
                    raise _NotHere
                buf, base, available = self.buf, self.base, len(self.buf)
                continue
            if pos + length > stop:
                raise _NotHere
            if length and (tag in _PIXEL_TAGS or (vr in BULK_VRS and length > threshold)):
                if pos + length > self.size:
                    raise _NotHere
                path = prefix + key
                out[key] = self.bulk(vr, path)
                self.bulk_index[path] = (pos, length)
                if top_level and tag in _PIXEL_TAGS:
                    self.layout.pixel = (pos, length)
                elif top_level and tag in _OFFSET_TABLES:
                    self.layout.offset_tables[tag] = self.read(pos, length)
                    buf, base, available = self.buf, self.base, len(self.buf)
                pos += length
                continue
            if vr == "SQ":
                out[key], pos = self.sequence(pos, pos + length, prefix + key, encodings)
                buf, base, available = self.buf, self.base, len(self.buf)
                continue
            offset = pos - base
            if offset < 0 or offset + length > available:
                offset = self.window(pos, length)
                buf, base, available = self.buf, self.base, len(self.buf)
            value = buf[offset : offset + length]
            pos += length
            if tag == _CHARSET:
                if text_seen or vr != "CS":
                    raise _NotHere
                encodings = _encodings(value)
                if top_level:
                    self.charset_seen = True
            elif vr in DECODED_VRS:
                text_seen = True
                if not value.isascii():
                    self.text_beyond_ascii = True
            if tag in watched:
                self.watch(tag, vr, value)
            if implicit and group & 1 and 0x0010 <= element <= 0x00FF:
                creators[tag] = _creator(value)
            out[key] = decode(vr, value, encodings) if value else {"vr": vr}
        if pos != end:
            raise _NotHere
        return out, pos

    def watch(self, tag: int, vr: str, value: bytes) -> None:
        """Keep what the checks after the walk need of a top-level element."""
        if tag in self.raw_uids:
            self.raw_uids[tag] = value
        elif tag == _PIXEL_REPRESENTATION and vr == "US" and len(value) == 2:
            self.pixel_representation = _US.unpack(value)[0]
        elif tag in _OFFSET_TABLES:
            self.layout.offset_tables[tag] = value

    def bulk(self, vr: str, path: str) -> dict[str, str]:
        self.bulk_count += 1
        return {"vr": vr, "BulkDataURI": BULK_URI_MARKER + path}

    def implicit_vr(
        self, tag: int, creators: dict[int, str | None], top_level: bool, length: int
    ) -> str:
        """The VR pydicom gives an Implicit VR element (its ``raw_element_vr`` hook, and
        ``correct_ambiguous_vr_element`` where it can be decided here)."""
        vr = _dictionary_vr(tag)
        if vr is not None and " or " not in vr and len(_IMPLICIT_VRS) < 1 << 14:
            _IMPLICIT_VRS[tag] = (vr, _decoder(vr))  # the tag alone says
        if vr is None:
            group, element = tag >> 16, tag & 0xFFFF
            if group & 1:
                if 0x0010 <= element <= 0x00FF:
                    return "LO"  # a private creator (PS3.5 7.8.1)
                creator = creators.get(group << 16 | element >> 8, "") if element >> 8 else ""
                if creator is None:
                    raise _NotHere
                if creator:
                    try:
                        return str(private_dictionary_VR(tag, creator))
                    except KeyError:
                        pass
                return "UN"
            return "UL" if element == 0 else "UN"
        if " or " not in vr:
            return vr
        if tag == _PIXEL_DATA and length != _UNDEFINED:
            return "OW"  # PS3.5 A.1: native pixel data of Implicit VR is OW
        if top_level and tag in _AMBIGUOUS_US_SS_TAGS and self.pixel_representation in (0, 1):
            return "US" if self.pixel_representation == 0 else "SS"
        raise _NotHere

    @staticmethod
    def un_vr(tag: int, length: int) -> str:
        """The VR pydicom gives an element sent with an explicit VR of UN, where it can be
        told here: a public element's dictionary VR unless its value is 64 KiB or more
        (``raw_element_vr``), or UN for a tag the dictionary does not know (PS3.5 6.2.2)."""
        if tag >> 16 & 1 or tag == _CHARSET or length >= 0xFFFF:
            raise _NotHere  # a private or undefined-length one, or the character set
        vr = _dictionary_vr(tag)
        if vr is None:
            return "UN"
        if vr not in VALUE_DECODERS:
            raise _NotHere  # a sequence, an ambiguous VR
        return vr

    def sequence(
        self, pos: int, end: int | None, path: str, encodings: list[str]
    ) -> tuple[dict[str, Any], int]:
        """A sequence's items from ``pos`` (PS3.5 7.5), up to ``end`` or, for an undefined
        length, its Sequence Delimitation Item."""
        items: list[dict[str, Any]] = []
        while end is None or pos < end:
            offset = self.window(pos, 8)
            group, element, length = _TAG_LENGTH.unpack_from(self.buf, offset)
            tag = group << 16 | element
            if tag == _SEQUENCE_END and end is None and length == 0:
                pos += 8
                break
            if tag != _ITEM:
                raise _NotHere
            prefix = f"{path}/{len(items)}/"
            if length == _UNDEFINED:
                item, pos = self.dataset(pos + 8, None, prefix, encodings)
            else:
                item, pos = self.dataset(pos + 8, pos + 8 + length, prefix, encodings)
            items.append(item)
        if end is not None and pos != end:
            raise _NotHere
        return ({"vr": "SQ", "Value": items} if items else {"vr": "SQ"}), pos

    def encapsulated_pixels(self, pos: int, path: str) -> int:
        """Encapsulated Pixel Data from its value's first byte (PS3.5 A.4): the Basic Offset
        Table item, the fragment items, the Sequence Delimitation Item; only item headers are
        read. Returns where the delimiter ends."""
        offset = self.window(pos, 8)
        tag_group, tag_element, length = _TAG_LENGTH.unpack_from(self.buf, offset)
        if (tag_group << 16 | tag_element) != _ITEM or length % 4 or length == _UNDEFINED:
            raise _NotHere
        table = self.read(pos + 8, length)
        bot = list(Struct(f"<{length // 4}L").unpack(table))
        first = item = pos + 8 + length
        fragments: list[tuple[int, int]] = []
        while True:
            offset = self.window(item, 8)
            tag_group, tag_element, length = _TAG_LENGTH.unpack_from(self.buf, offset)
            tag = tag_group << 16 | tag_element
            if tag == _SEQUENCE_END and length == 0:
                break
            if tag != _ITEM or length == _UNDEFINED:
                raise _NotHere
            fragments.append((item + 8, length))
            item += 8 + length
        self.encapsulated.add(path)
        self.bulk_index[path] = (pos, item - pos)
        self.layout.pixel = (pos, item - pos)
        self.layout.fragments = (bot, first, fragments)
        return item + 8


_VR_CACHE: dict[int, str | None] = {}
# Implicit VR: the public tags whose dictionary VR is one VR, with their decoder.
_IMPLICIT_VRS: dict[int, tuple[str, ValueDecoder]] = {}
_KEYS: dict[int, str] = {}


def _key(tag: int) -> str:
    """The DICOM JSON key of a tag (PS3.18 F.2.1.1), kept for the next file (a modality's
    private tags recur as much as public ones) but for the tags whose values the walk looks
    at, which the walk knows by their key's absence."""
    key = _LOOKED_AT.get(tag)
    if key is None:
        key = f"{tag:08X}"
        if len(_KEYS) < 1 << 14:
            _KEYS[tag] = key
    return key


def _dictionary_vr(tag: int) -> str | None:
    try:
        return _VR_CACHE[tag]
    except KeyError:
        pass
    try:
        vr: str | None = str(dictionary_VR(tag))
    except KeyError:
        vr = None
    _VR_CACHE[tag] = vr
    return vr


_SYNTAXES: dict[str, UID | None] = {}


def _syntax(text: str) -> UID:
    """The transfer syntax if read here: Implicit VR Little Endian, or a known Explicit VR
    Little Endian one (native or encapsulated) but Deflated."""
    try:
        syntax = _SYNTAXES[text]
    except KeyError:
        uid = UID(text)
        # pydicom reads every syntax but Implicit VR Little Endian itself as explicit VR
        known = (
            text
            and uid.is_transfer_syntax
            and uid.is_little_endian
            and not uid.is_deflated
            and (text == _IMPLICIT_SYNTAX or not uid.is_implicit_VR)
        )
        syntax = uid if known else None
        if len(_SYNTAXES) < 256:
            _SYNTAXES[text] = syntax
    if syntax is None:
        raise _NotHere
    return syntax


def _uid_text(value: bytes) -> str:
    """A UI value as pydicom reads it; one value only."""
    text = value.decode(DEFAULT_CODEC).rstrip("\0 ")
    if "\\" in text:
        raise _NotHere
    return text


def _encodings(value: bytes) -> list[str]:
    term = value.decode(DEFAULT_CODEC).rstrip("\0 ")
    if term not in _CHARSETS:
        raise _NotHere
    return list(convert_encodings(term))


def _creator(value: bytes) -> str | None:
    """A private creator as pydicom looks it up; None if it might read it otherwise."""
    if not value.isascii() or b"\\" in value:
        return None
    return value.decode("ascii").rstrip("\0 ")
