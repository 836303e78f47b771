"""Inspect a spooled PS3.10 file once, at ingest, without loading its bulk data.

Both front doors (STOW-RS and C-STORE) spool the received object to a local file and hand it to
:func:`inspect_file`, which validates it and returns everything the archive needs to store and
later serve it: the PS3.18 Annex F.2 JSON metadata with bulk values replaced by ``BulkDataURI``
placeholders, and the byte positions of every bulk value and frame so that WADO-RS bulk data and
frame requests can be answered with plain byte ranges of the stored blob.

Two readers walk the file into the same :class:`~nubis.dicom.fast_parse.ParsedDataSet`.
:mod:`nubis.dicom.fast_parse` reads the common encodings in one pass over the bytes; whatever
it is not sure of, it leaves to pydicom, the rule it follows. pydicom reads the data set with
``defer_size`` so that values larger than the bulk threshold are skipped over (only their
position is remembered), and :class:`_Walker` turns it into the JSON model, walking
encapsulated Pixel Data item by item with :mod:`pydicom.encaps`. Memory therefore stays bounded
by the header size whatever the size of the pixel data, with one exception inherited from
pydicom: values inside sequence items are always read into memory (nested bulk data such as
icon images or waveforms is small in practice).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import MutableSequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom.charset import default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import parse_basic_offsets, parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.filereader import (
    _read_file_meta_info,
    dcmread,
    read_deferred_data_element,
    read_preamble,
)
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.hooks import hooks
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import AMBIGUOUS_VR

from nubis.dicom.consistency import (
    VRS,
    check_file_meta,
    check_pixel_data_encoding,
    check_vr_encoding,
    end_of_last_element,
    has_invalid_vr,
    invalid_vr,
)
from nubis.dicom.fast_parse import ParsedDataSet, parse
from nubis.dicom.frames import (
    EXTENDED_OFFSET_TABLE,
    EXTENDED_OFFSET_TABLE_LENGTHS,
    PixelLayout,
    frame_index,
)
from nubis.dicom.json_values import BULK_URI_MARKER, BULK_VRS, DECODED_VRS, element_json
from nubis.dicom.leniency import (
    IDENTIFYING_TAGS,
    META_SOP_CLASS,
    META_SOP_INSTANCE,
    NOT_CONFORMANT,
    SOP_CLASS,
    SOP_INSTANCE,
    charset_warnings,
    identifying_uids,
    meta_disagreements,
    shown_uid,
)
from nubis.errors import InvalidInstance
from nubis.model.records import IngestWarning

__all__ = ["BULK_URI_MARKER", "InspectedInstance", "inspect_file"]

# PS3.4 Table B.2-1 / PS3.18 Table 10.5.3-1 failure reasons.
_CANNOT_UNDERSTAND = 0xC000
_TRANSFER_SYNTAX_UNSUPPORTED = 0xC122

_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_ITEM_TAG_BIG_ENDIAN = b"\xff\xfe\xe0\x00"
_JSON = json.JSONEncoder(separators=(",", ":"), check_circular=False)  # a walked tree has none


@dataclass(frozen=True, slots=True)
class InspectedInstance:
    """What ingest learns about one stored object.

    Attributes
    ----------
    transfer_syntax_uid : str
        (0002,0010) of the file meta information.
    sop_class_uid, sop_instance_uid, study_instance_uid, series_instance_uid : str
        The validated identifying UIDs of the data set.
    metadata_json : str
        The data set (without group 0002) in the DICOM JSON model (PS3.18 Annex F.2), compact.
        Bulk values are ``{"vr": ..., "BulkDataURI": BULK_URI_MARKER + <bulk path>}``.
    frame_index : list of tuple of (int, int) tuples, or None
        Per frame, the ``(absolute offset, length)`` of each of its fragments in the file; native
        frames are a single fragment. ``None`` when the frames cannot be located by byte ranges
        (no pixel data, 1-bit native data, inconsistent pixel attributes, deflated data set).
        Native frames are the stored bytes: big endian for Explicit VR Big Endian.
    bulk_index : dict of str to (int, int)
        Bulk path to ``(absolute offset of the first value byte, value length)``. For
        encapsulated values (see :attr:`encapsulated_paths`) the range spans the Basic Offset
        Table item and every fragment item, headers included, up to but not including the
        Sequence Delimitation Item (PS3.5 A.4). Empty for a deflated data set, whose values have
        no position in the stored file.
    encapsulated_paths : frozenset of str
        The bulk paths whose value is encapsulated (item-framed) rather than native.
    """

    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    metadata_json: str
    frame_index: list[tuple[tuple[int, int], ...]] | None
    bulk_index: dict[str, tuple[int, int]]
    encapsulated_paths: frozenset[str] = frozenset()
    # The decoded form of metadata_json, so the store path need not parse it back.
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    # What was odd about the object, which was accepted all the same (issue 12).
    warnings: tuple[IngestWarning, ...] = ()


def inspect_file(
    path: Path | BinaryIO, *, bulk_threshold: int = 1024, fast: bool = True
) -> InspectedInstance:
    """Validate a PS3.10 file and index its metadata, bulk data and frames in one pass.

    Parameters
    ----------
    path : Path or binary file
        A DICOM file in the PS3.10 Section 7 format (preamble, ``DICM``, file meta information),
        or a seekable file object over one (an encrypted spool file's plaintext); a file object
        is read from its start and closed.
    bulk_threshold : int, optional
        Values of VR OB, OD, OF, OL, OV, OW or UN longer than this many bytes are bulk data;
        Pixel Data, Float Pixel Data and Double Float Pixel Data always are.
    fast : bool, optional
        Try :mod:`nubis.dicom.fast_parse` first (the result is the same either way; False
        reads with pydicom only, which the tests compare it with).

    Returns
    -------
    InspectedInstance
        The DICOM JSON metadata (PS3.18 Annex F.2) and bulk and frame positions.

    Raises
    ------
    nubis.errors.InvalidInstance
        With the PS3.4 Annex B.2.3 status: 0xC000 if the file is not PS3.10, is truncated or
        cannot be parsed, or other readers would read it otherwise than pydicom does (data set
        or Pixel Data not encoded as the transfer syntax says, unknown VRs, malformed items:
        :mod:`nubis.dicom.consistency`); 0xC122 if its transfer syntax is unknown; 0xA900 if
        the SOP Instance, Study or Series Instance UID is missing or not usable (digits and
        dots, at most 64 characters: PS3.5 Section 9.1), or the SOP Class UID is, in the data
        set and the file meta alike. What is odd but usable is in
        :attr:`InspectedInstance.warnings` instead (issue 12): a file meta naming another
        object, a SOP Class UID taken from the file meta, UID lapses, unknown character sets.
    """
    # Unbuffered for the fast reader's few large reads; buffered for pydicom's small ones.
    raw: io.FileIO | None = None
    if isinstance(path, Path):
        raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        path = cast(BinaryIO, raw)
    with path as fp:
        size = fp.seek(0, 2)
        fp.seek(0)
        parsed = parse(fp, size, bulk_threshold) if fast else None
        if raw is not None and (parsed is None or parsed.layout.fragments is not None):
            fp = cast(BinaryIO, io.BufferedReader(raw))
        try:
            if parsed is None:
                parsed = _read_with_pydicom(fp, size, bulk_threshold)
            return _inspected(parsed, fp, size)
        except InvalidInstance:
            raise
        except Exception as exc:
            # pydicom converts most values lazily, so corrupt ones only surface here.
            raise InvalidInstance(
                f"the data set cannot be parsed ({type(exc).__name__})",
                dimse_status=_CANNOT_UNDERSTAND,
            ) from exc


def _inspected(parsed: ParsedDataSet, fp: BinaryIO, size: int) -> InspectedInstance:
    """The checks and findings on a walked data set, whichever reader walked it."""
    tree = parsed.tree
    transfer_syntax = parsed.transfer_syntax
    if "BulkDataURI" in tree.get("7FE00010", {}):
        check_pixel_data_encoding("7FE00010" in parsed.encapsulated, transfer_syntax)
    # The JSON values are already decoded: reading them avoids converting elements twice.
    # The instance, study and series UIDs identify the object: without them it is refused.
    warnings: list[IngestWarning] = []
    uids = identifying_uids(tree, parsed.raw_uids, parsed.meta_uids, warnings)
    warnings.extend(meta_disagreements(parsed.meta_uids, uids[SOP_CLASS], uids[SOP_INSTANCE]))
    warnings.extend(charset_warnings(tree))
    if parsed.text_beyond_ascii:
        warnings.append(
            IngestWarning(
                "charset-missing",
                NOT_CONFORMANT,
                "text has bytes beyond ASCII, and no (0008,0005) Specific Character Set says "
                "what they are: read as ISO 8859-1 (PS3.5 6.1.2.3)",
            )
        )
    metadata_json = _JSON.encode(tree)
    if metadata_json.count(BULK_URI_MARKER) != parsed.bulk_count:
        metadata_json = _escape_stray_markers(metadata_json)
    return InspectedInstance(
        transfer_syntax_uid=str(transfer_syntax),
        sop_class_uid=uids[SOP_CLASS],
        sop_instance_uid=uids[SOP_INSTANCE],
        study_instance_uid=uids[0x0020000D],
        series_instance_uid=uids[0x0020000E],
        metadata_json=metadata_json,
        frame_index=frame_index(parsed.layout, tree, fp, size),
        bulk_index=parsed.bulk_index,
        encapsulated_paths=frozenset(parsed.encapsulated),
        metadata=tree,
        warnings=tuple(warnings),
    )


def _read_with_pydicom(fp: BinaryIO, size: int, bulk_threshold: int) -> ParsedDataSet:
    fp.seek(0)
    reader = _CutShortReader(fp)
    ds = _read(reader, fp, bulk_threshold)
    try:
        return _walked(ds, fp, reader, size, bulk_threshold)
    finally:
        ds.buffer = None  # drop the spool file, or the inflated copy of a deflated data set


def _walked(
    ds: FileDataset, fp: BinaryIO, reader: _CutShortReader, size: int, bulk_threshold: int
) -> ParsedDataSet:
    transfer_syntax = _transfer_syntax(ds)
    check_file_meta(ds, fp)
    check_vr_encoding(ds, transfer_syntax)
    deflated = transfer_syntax == DeflatedExplicitVRLittleEndian
    if deflated:
        # Values lie in the inflated copy of the data set, read by pydicom without a
        # _CutShortReader: a last element header cut short is seen by where its element ends.
        # pydicom keeps the DicomBytesIO it inflated into as ds.buffer (and casts it so itself).
        inflated = cast(BinaryIO, ds.buffer)
        stream, end, cut_short = "inflated data set", inflated.tell(), False
        stream_size = inflated.seek(0, 2)
        end = end_of_last_element(ds) or end
    else:
        stream, end, cut_short, stream_size = "file", reader.tell(), reader.cut_short, size
    if cut_short or end > stream_size:
        raise _truncated()
    if end != stream_size:
        raise InvalidInstance(
            f"the data set cannot be parsed past byte {end} of {stream_size} of the {stream}",
            dimse_status=_CANNOT_UNDERSTAND,
        )
    walker = _Walker(
        inflated if deflated else fp,
        stream_size,
        bulk_threshold,
        positional=not deflated,
        little_endian=transfer_syntax.is_little_endian,
    )
    tree = walker.dataset(ds, "", 0, top_level=True)
    meta = ds.file_meta
    return ParsedDataSet(
        transfer_syntax=transfer_syntax,
        tree=tree,
        raw_uids={tag: getattr(ds.get_item(tag), "value", None) for tag in IDENTIFYING_TAGS},
        meta_uids={
            tag: str(meta[tag].value or "") if tag in meta else ""
            for tag in (META_SOP_CLASS, META_SOP_INSTANCE)
        },
        bulk_index=walker.bulk_index,
        encapsulated=walker.encapsulated,
        bulk_count=walker.bulk_count,
        layout=walker.layout,
        text_beyond_ascii=walker.text_beyond_ascii,
    )


class _CutShortReader:
    """A binary file that remembers whether a read ended early.

    pydicom stops quietly when the file ends inside an element header or value, so a file cut at
    such a point would otherwise parse as a shorter, valid-looking data set.
    """

    __slots__ = ("_read", "cut_short", "name", "seek", "tell")

    def __init__(self, fp: BinaryIO) -> None:
        self._read = fp.read
        self.seek = fp.seek
        self.tell = fp.tell
        self.name = fp.name
        self.cut_short = False

    def read(self, size: int = -1) -> bytes:
        data = self._read(size)
        if 0 < len(data) < size:
            self.cut_short = True
        return data


def _read(reader: _CutShortReader, fp: BinaryIO, bulk_threshold: int) -> FileDataset:
    try:
        return dcmread(reader, defer_size=bulk_threshold)
    except InvalidDicomError:
        raise InvalidInstance(
            "not a DICOM PS3.10 file: no 128-byte preamble followed by 'DICM'",
            dimse_status=_CANNOT_UNDERSTAND,
        ) from None
    except (zlib.error, EOFError) as exc:
        raise _truncated() from exc
    except Exception as exc:
        # Whatever pydicom trips over, an unknown transfer syntax is the likelier cause to report.
        try:
            fp.seek(0)
            read_preamble(fp, False)
            _transfer_syntax(_read_file_meta_info(fp))
        except InvalidInstance as meta_problem:
            raise meta_problem from exc
        except Exception:
            pass
        raise InvalidInstance(
            "the file cannot be parsed as a DICOM data set", dimse_status=_CANNOT_UNDERSTAND
        ) from exc


def _transfer_syntax(ds: Dataset) -> UID:
    meta = ds.file_meta if isinstance(ds, FileDataset) else ds
    value = meta.get("TransferSyntaxUID")
    if not value:
        raise InvalidInstance(
            "the file meta information has no (0002,0010) Transfer Syntax UID",
            dimse_status=_CANNOT_UNDERSTAND,
        )
    uid = UID(str(value))
    try:
        known = uid.is_transfer_syntax
    except ValueError:
        known = False
    if not known:
        raise InvalidInstance(
            f"unknown transfer syntax {shown_uid(uid)}", dimse_status=_TRANSFER_SYNTAX_UNSUPPORTED
        )
    return uid


def _truncated() -> InvalidInstance:
    return InvalidInstance(
        "the file is truncated: it ends before the end of a data element",
        dimse_status=_CANNOT_UNDERSTAND,
    )


def _escape_stray_markers(text: str) -> str:
    # A data set value that happens to contain the marker must not look like a placeholder to
    # anyone searching for it; "\u002d" is a JSON escape of the same hyphen.
    escaped = BULK_URI_MARKER.replace("-", "\\u002d")
    return text.replace(BULK_URI_MARKER, escaped).replace(
        '"BulkDataURI":"' + escaped, '"BulkDataURI":"' + BULK_URI_MARKER
    )


class _Walker:
    """Builds the JSON model of a data set while recording where its bulk values lie.

    Positions: pydicom reports ``value_tell`` relative to the stream an element was parsed from.
    Items of an undefined-length sequence are parsed from their parent's stream, while a
    defined-length sequence is parsed from a copy of its own value, so its items' positions are
    relative to that value's first byte; ``base`` carries the absolute offset of that stream.
    ``fp`` is the outermost stream and ``size`` its length, which no value may run past: the
    file, or the inflated data set of a deflated one, whose values have no position in the
    stored file (``positional`` false).
    """

    def __init__(
        self, fp: BinaryIO, size: int, threshold: int, *, positional: bool, little_endian: bool
    ) -> None:
        self.fp = fp
        self.item_tag = _ITEM_TAG if little_endian else _ITEM_TAG_BIG_ENDIAN
        self.length_format = "<L" if little_endian else ">L"
        self.size = size
        self.threshold = threshold
        self.positional = positional
        self.bulk_index: dict[str, tuple[int, int]] = {}
        self.encapsulated: set[str] = set()
        self.bulk_count = 0
        self.layout = PixelLayout()
        # No (0008,0005), yet text with bytes beyond ASCII (the default repertoire).
        self.charset_missing = False
        self.text_beyond_ascii = False

    def dataset(self, ds: Dataset, prefix: str, base: int, *, top_level: bool = False) -> dict:
        out: dict[str, Any] = {}
        encodings = ds.original_character_set or [default_encoding]
        if isinstance(encodings, str):
            encodings = [encodings]
        if top_level:
            self.charset_missing = 0x00080005 not in ds
        charset_missing = self.charset_missing
        threshold = self.threshold
        limit = self.size - base
        # Dataset.values() hands out the elements as read, without converting or loading them.
        for elem in list(ds.values()):
            tag = int(elem.tag)  # BaseTag compares in Python; int comparisons are much cheaper
            if top_level and tag < 0x00030000:
                continue  # command or file meta group elements are not part of the data set
            key = f"{tag:08X}"
            if isinstance(elem, DataElement):
                # Only undefined-length sequences arrive already converted.
                if elem.VR == "SQ":
                    out[key] = self.sequence(ds[tag], prefix + key, base, base)
                else:
                    out[key] = _pydicom_json(ds, tag)
                continue
            vr = elem.VR
            if vr not in VRS and has_invalid_vr(elem):
                raise invalid_vr(tag, vr, "an explicit VR data set")
            if vr is None or vr == "UN" or vr in AMBIGUOUS_VR:
                vr = self.vr(elem, ds, encodings)
            length = elem.length
            if length == _UNDEFINED_LENGTH and tag != _PIXEL_DATA and vr not in ("SQ", "UN"):
                # pydicom reads such a value as encapsulated fragments; other readers stop.
                raise InvalidInstance(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) has VR {vr} and an undefined "
                    "length, which only sequences and Pixel Data may have (PS3.5 7.1.3, A.4)",
                    dimse_status=_CANNOT_UNDERSTAND,
                )
            if length and (tag in _PIXEL_TAGS or (vr in BULK_VRS and length > threshold)):
                path = prefix + key
                out[key] = {"vr": vr, "BulkDataURI": BULK_URI_MARKER + path}
                self.bulk_count += 1
                self.record_bulk(path, tag, elem, base, top_level=top_level)
                continue
            value = elem.value
            if length != _UNDEFINED_LENGTH:
                if (value is not None and len(value) < length) or elem.value_tell + length > limit:
                    raise _truncated()
                if value is None and length:
                    elem = read_deferred_data_element(
                        ds.fileobj_type,
                        ds.buffer,
                        None,
                        elem,
                    )
                    ds[tag] = elem
            if top_level and tag in (EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS):
                self.layout.offset_tables[tag] = elem.value or b""
            if vr == "SQ":
                child_base = base + elem.value_tell if length != _UNDEFINED_LENGTH else base
                out[key] = self.sequence(ds[tag], prefix + key, base, child_base)
                continue
            if charset_missing and vr in DECODED_VRS and elem.value and not elem.value.isascii():
                self.text_beyond_ascii = True
            try:
                out[key] = element_json(
                    vr, elem.value, encodings, little_endian=elem.is_little_endian
                )
            except (ValueError, struct.error, UnicodeError, LookupError):
                out[key] = _pydicom_json(ds, tag)
        return out

    def sequence(self, elem: DataElement, path: str, base: int, child_base: int) -> dict[str, Any]:
        """``base``: the offset of the stream the sequence element was parsed from, to which
        its items' ``file_tell`` is relative; ``child_base``: that of its items' elements."""
        items = elem.value or ()
        for item in items:
            self.check_item(elem.tag, item, base + item.file_tell, child_base)
        tree = [self.dataset(item, f"{path}/{i}/", child_base) for i, item in enumerate(items)]
        return {"vr": "SQ", "Value": tree} if tree else {"vr": "SQ"}

    def check_item(self, sequence_tag: int, item: Dataset, offset: int, child_base: int) -> None:
        """pydicom reads an item whatever its tag, and an element that runs past the end of its
        item as if it did not; other readers stop at either (PS3.5 7.5)."""
        self.fp.seek(offset)
        header = self.fp.read(8)
        problem = None
        if header[:4] != self.item_tag:
            problem = "does not start with the Item tag (FFFE,E000)"
        else:
            length = struct.unpack(self.length_format, header[4:])[0]
            end = end_of_last_element(item)
            if (
                length != _UNDEFINED_LENGTH
                and end is not None
                and child_base + end != offset + 8 + length
            ):
                problem = "has elements that do not end where its Item Length says it ends"
        if problem is not None:
            raise InvalidInstance(
                f"an item of sequence ({sequence_tag >> 16:04X},{sequence_tag & 0xFFFF:04X}) at "
                f"byte {offset} {problem} (PS3.5 7.5)",
                dimse_status=_CANNOT_UNDERSTAND,
            )

    def vr(self, raw: RawDataElement, ds: Dataset, encodings: MutableSequence[str]) -> str:
        vr = raw.VR
        if vr is None or vr == "UN":
            data: dict[str, Any] = {}
            hooks.raw_element_vr(raw, data, encoding=encodings, ds=ds, **hooks.raw_element_kwargs)
            vr = data["VR"]
        if vr in AMBIGUOUS_VR:
            # The resolution depends on the tag and on sibling attributes (Bits Allocated,
            # Pixel Representation...), never on the value itself, so an empty stand-in lets
            # pydicom decide without reading a possibly huge value.
            stand_in = DataElement(
                raw.tag, vr, b"", is_undefined_length=raw.length == _UNDEFINED_LENGTH
            )
            vr = correct_ambiguous_vr_element(stand_in, ds, raw.is_little_endian).VR
        return str(vr)

    def check_extent(self, raw: RawDataElement, base: int) -> None:
        if raw.value is not None and len(raw.value) < raw.length:
            raise _truncated()
        if base + raw.value_tell + raw.length > self.size:
            raise _truncated()

    def record_bulk(
        self, path: str, tag: int, raw: RawDataElement, base: int, *, top_level: bool
    ) -> None:
        offset = base + raw.value_tell
        if raw.length == _UNDEFINED_LENGTH:
            self.encapsulated.add(path)
            if not self.positional:
                return
            bot, first, fragments = self.walk_fragments(offset)
            end = fragments[-1][0] + fragments[-1][1] if fragments else first
            self.bulk_index[path] = (offset, end - offset)
            if top_level and tag == _PIXEL_DATA:
                self.layout.pixel = (offset, end - offset)
                self.layout.fragments = (bot, first, fragments)
            return
        self.check_extent(raw, base)
        if not self.positional:
            return
        self.bulk_index[path] = (offset, raw.length)
        if top_level and tag in _PIXEL_TAGS:
            self.layout.pixel = (offset, raw.length)
        elif top_level and tag in (EXTENDED_OFFSET_TABLE, EXTENDED_OFFSET_TABLE_LENGTHS):
            # 8 bytes per frame: small enough to read even when it counts as bulk data.
            self.fp.seek(offset)
            self.layout.offset_tables[tag] = raw.value or self.fp.read(raw.length)

    def walk_fragments(self, offset: int) -> tuple[list[int], int, list[tuple[int, int]]]:
        """Return the Basic Offset Table, first fragment item offset and fragment extents.

        Fragment extents are ``(offset of the first data byte, length)`` (PS3.5 A.4).
        """
        fp = self.fp
        fp.seek(offset)
        problem = InvalidInstance(
            f"the encapsulated value at byte {offset} is truncated or malformed",
            dimse_status=_CANNOT_UNDERSTAND,
        )
        try:
            bot = parse_basic_offsets(fp)
            first = fp.tell()
            _, item_offsets = parse_fragments(fp)
        except (ValueError, struct.error) as exc:
            raise problem from exc
        fragments = [
            (start + 8, following - start - 8) for start, following in pairwise(item_offsets)
        ]
        end = first
        if item_offsets:
            # parse_fragments gives where items start; the last one's length says where it ends.
            fp.seek(item_offsets[-1] + 4)
            last_length = fp.read(4)
            if len(last_length) < 4:
                raise problem
            end = item_offsets[-1] + 8 + struct.unpack("<L", last_length)[0]
            fragments.append((item_offsets[-1] + 8, end - item_offsets[-1] - 8))
        fp.seek(end)
        if end + 8 > self.size or fp.read(len(_SEQUENCE_DELIMITER)) != _SEQUENCE_DELIMITER:
            raise problem
        return bot, first, fragments


def _pydicom_json(ds: Dataset, tag: int) -> dict[str, Any]:
    """Let pydicom encode an element the fast path does not handle (PS3.18 F.2)."""
    try:
        return ds[tag].to_json_dict(None, 0)
    except Exception:
        # A value pydicom cannot decode either is still kept, as the opaque bytes it is.
        raw = ds.get_item(tag, keep_deferred=True)
        value = raw.value if isinstance(raw.value, bytes) else b""
        return {"vr": "UN", "InlineBinary": base64.b64encode(value).decode("ascii")}
