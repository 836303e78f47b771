"""Inspect a spooled PS3.10 file once, at ingest, without loading its bulk data.

Both front doors (STOW-RS and C-STORE) spool the received object to a local file and hand it to
:func:`inspect_file`, which validates it and returns everything the archive needs to store and
later serve it: the header for the index, the PS3.18 Annex F.2 JSON metadata with bulk values
replaced by ``BulkDataURI`` placeholders, and the byte positions of every bulk value and frame so
that WADO-RS bulk data and frame requests can be answered with plain byte ranges of the stored
blob.

pydicom does the parsing: the data set is read with ``defer_size`` so that values larger than the
bulk threshold are skipped over (only their position is remembered), and encapsulated Pixel Data
is walked item by item with :mod:`pydicom.encaps`. Memory therefore stays bounded by the header
size whatever the size of the pixel data, with one exception inherited from pydicom: values inside
sequence items are always read into memory (nested bulk data such as icon images or waveforms is
small in practice).
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, BinaryIO, cast

from pydicom.charset import decode_bytes, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import generate_fragmented_frames, parse_basic_offsets, parse_fragments
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
from nubis.dicom.leniency import (
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

BULK_URI_MARKER = "nubis-bulk:"
"""Prefix of every ``BulkDataURI`` in :attr:`InspectedInstance.metadata_json`.

The serving layer turns the placeholders into real URLs by replacing ``"BulkDataURI":"nubis-bulk:``
with ``"BulkDataURI":"<url prefix>``; the bulk path follows the marker.
"""

# PS3.4 Table B.2-1 / PS3.18 Table 10.5.3-1 failure reasons.
_CANNOT_UNDERSTAND = 0xC000
_TRANSFER_SYNTAX_UNSUPPORTED = 0xC122

_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_PIXEL_DATA = 0x7FE00010
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002
_UNDEFINED_LENGTH = 0xFFFFFFFF
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_ITEM_TAG_BIG_ENDIAN = b"\xff\xfe\xe0\x00"


_NUMBER_FORMATS = {
    "US": ("H", 2),
    "SS": ("h", 2),
    "UL": ("L", 4),
    "SL": ("l", 4),
    "UV": ("Q", 8),
    "SV": ("q", 8),
    "FL": ("f", 4),
    "FD": ("d", 8),
}
# PS3.5 Table 6.2-1: these never depend on (0008,0005) Specific Character Set, and the spaces or
# nulls around their values are padding.
_PLAIN_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
_TEXT_VRS = frozenset({"SH", "LO", "UC"})
_SINGLE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
# Where an ISO 2022 code extension ends within a value (PS3.5 6.1.2.5.3): at the value
# delimiter of a multi-valued element. pydicom compares them with the bytes of the value.
_TEXT_DELIMITERS = {ord("\\")}
_FLOAT_VRS = frozenset({"FL", "FD"})
# Text whose bytes (0008,0005) Specific Character Set says how to decode (PS3.5 6.1.2.3).
_DECODED_VRS = _TEXT_VRS | _SINGLE_TEXT_VRS | {"PN"}


@dataclass(frozen=True, slots=True)
class InspectedInstance:
    """What ingest learns about one stored object.

    Attributes
    ----------
    header : pydicom.Dataset
        The data set (with ``file_meta``) minus every bulk value, i.e. every element that appears
        with a ``BulkDataURI`` in :attr:`metadata_json`. It no longer refers to the spooled file.
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

    header: Dataset
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


def inspect_file(path: Path | BinaryIO, *, bulk_threshold: int = 1024) -> InspectedInstance:
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

    Returns
    -------
    InspectedInstance
        The header, DICOM JSON metadata (PS3.18 Annex F.2) and bulk and frame positions.

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
    opened = open(path, "rb") if isinstance(path, Path) else path  # noqa: SIM115 - closed below
    with opened as fp:
        size = fp.seek(0, 2)
        fp.seek(0)
        reader = _CutShortReader(fp)
        ds = _read(reader, fp, bulk_threshold)
        try:
            result = _inspect(ds, fp, reader, size, bulk_threshold)
        except InvalidInstance:
            raise
        except Exception as exc:
            # pydicom converts most values lazily, so corrupt ones only surface here.
            raise InvalidInstance(
                f"the data set cannot be parsed ({type(exc).__name__})",
                dimse_status=_CANNOT_UNDERSTAND,
            ) from exc
    ds.buffer = None  # drop the closed spool file, or the inflated copy of a deflated data set
    return result


def _inspect(
    ds: FileDataset, fp: BinaryIO, reader: _CutShortReader, size: int, bulk_threshold: int
) -> InspectedInstance:
    transfer_syntax = _transfer_syntax(ds)
    warnings: list[IngestWarning] = []
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
    if "BulkDataURI" in tree.get("7FE00010", {}):
        check_pixel_data_encoding("7FE00010" in walker.encapsulated, transfer_syntax)
    # The JSON values are already decoded: reading them avoids converting elements twice.
    # The instance, study and series UIDs identify the object: without them it is refused.
    uids = identifying_uids(ds, tree, warnings)
    warnings.extend(meta_disagreements(ds, uids[SOP_CLASS], uids[SOP_INSTANCE]))
    warnings.extend(charset_warnings(tree))
    if walker.text_beyond_ascii:
        warnings.append(
            IngestWarning(
                "charset-missing",
                NOT_CONFORMANT,
                "text has bytes beyond ASCII, and no (0008,0005) Specific Character Set says "
                "what they are: read as ISO 8859-1 (PS3.5 6.1.2.3)",
            )
        )
    frame_index = None if deflated else walker.frame_index(tree)

    metadata_json = json.dumps(tree, separators=(",", ":"))
    if metadata_json.count(BULK_URI_MARKER) != walker.bulk_count:
        metadata_json = _escape_stray_markers(metadata_json)
    return InspectedInstance(
        header=ds,
        transfer_syntax_uid=str(transfer_syntax),
        sop_class_uid=uids[SOP_CLASS],
        sop_instance_uid=uids[SOP_INSTANCE],
        study_instance_uid=uids[0x0020000D],
        series_instance_uid=uids[0x0020000E],
        metadata_json=metadata_json,
        frame_index=frame_index,
        bulk_index=walker.bulk_index,
        encapsulated_paths=frozenset(walker.encapsulated),
        metadata=tree,
        warnings=tuple(warnings),
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
        self.pixel: tuple[int, int] | None = None  # top-level pixel data (offset, length)
        self.fragments: tuple[list[int], int, list[tuple[int, int]]] | None = None
        self.offset_tables: dict[int, bytes] = {}
        # No (0008,0005), yet text with bytes beyond ASCII (the default repertoire).
        self.charset_missing = False
        self.text_beyond_ascii = False

    def dataset(self, ds: Dataset, prefix: str, base: int, *, top_level: bool = False) -> dict:
        out: dict[str, Any] = {}
        bulk_tags: list[int] = []
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
            if length and (tag in _PIXEL_TAGS or (vr in _BULK_VRS and length > threshold)):
                path = prefix + key
                out[key] = {"vr": vr, "BulkDataURI": BULK_URI_MARKER + path}
                self.bulk_count += 1
                self.record_bulk(path, tag, elem, base, top_level=top_level)
                bulk_tags.append(tag)
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
            if top_level and tag in (_EXTENDED_OFFSET_TABLE, _EXTENDED_OFFSET_TABLE_LENGTHS):
                self.offset_tables[tag] = elem.value or b""
            if vr == "SQ":
                child_base = base + elem.value_tell if length != _UNDEFINED_LENGTH else base
                out[key] = self.sequence(ds[tag], prefix + key, base, child_base)
                continue
            if charset_missing and vr in _DECODED_VRS and elem.value and not elem.value.isascii():
                self.text_beyond_ascii = True
            try:
                out[key] = _element_json(vr, elem, encodings)
            except (ValueError, struct.error, UnicodeError, LookupError):
                out[key] = _pydicom_json(ds, tag)
        for tag in bulk_tags:
            del ds[tag]
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
                self.pixel = (offset, end - offset)
                self.fragments = (bot, first, fragments)
            return
        self.check_extent(raw, base)
        if not self.positional:
            return
        self.bulk_index[path] = (offset, raw.length)
        if top_level and tag in _PIXEL_TAGS:
            self.pixel = (offset, raw.length)
        elif top_level and tag in (_EXTENDED_OFFSET_TABLE, _EXTENDED_OFFSET_TABLE_LENGTHS):
            # 8 bytes per frame: small enough to read even when it counts as bulk data.
            self.fp.seek(offset)
            self.offset_tables[tag] = raw.value or self.fp.read(raw.length)

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

    def frame_index(self, tree: dict[str, Any]) -> list[tuple[tuple[int, int], ...]] | None:
        """Locate every frame of the top-level pixel data (PS3.5 Section 8 and Annex A.4).

        ``tree`` is the JSON model of the data set, whose Image Pixel module values are already
        decoded.
        """
        if self.pixel is None:
            return None
        nr_frames = _first_value(tree, "00280008")  # PS3.3 C.7.6.6: absent means one frame
        if nr_frames is None:
            nr_frames = 1
        if not isinstance(nr_frames, int) or nr_frames < 1:
            return None
        if self.fragments is not None:
            return self.encapsulated_frames(nr_frames)
        offset, length = self.pixel
        rows = _first_value(tree, "00280010")
        columns = _first_value(tree, "00280011")
        samples = _first_value(tree, "00280002")
        bits = _first_value(tree, "00280100")
        numbers = (rows, columns, samples, bits)
        if not all(isinstance(n, int) and n > 0 for n in numbers) or bits % 8:
            return None
        frame_size = rows * columns * samples * (bits // 8)
        if _first_value(tree, "00280004") == "YBR_FULL_422":
            frame_size = frame_size // 3 * 2  # PS3.3 C.7.6.3.1.2: two chroma samples per pair
        if frame_size * nr_frames > length:
            return None
        return [((offset + i * frame_size, frame_size),) for i in range(nr_frames)]

    def encapsulated_frames(self, nr_frames: int) -> list[tuple[tuple[int, int], ...]] | None:
        assert self.fragments is not None
        bot, first, fragments = self.fragments
        if not fragments:
            return None
        offsets = self.offset_tables.get(_EXTENDED_OFFSET_TABLE)
        lengths = self.offset_tables.get(_EXTENDED_OFFSET_TABLE_LENGTHS)
        if offsets and lengths and len(offsets) == len(lengths) and not len(offsets) % 8:
            # PS3.3 C.7.6.3.1.8: one fragment per frame, offsets from the first fragment item.
            count = len(offsets) // 8
            starts = struct.unpack(f"<{count}Q", offsets)
            sizes = struct.unpack(f"<{count}Q", lengths)
            frames: list[tuple[tuple[int, int], ...]] = [
                ((first + start + 8, size),) for start, size in zip(starts, sizes, strict=True)
            ]
            if all(start + size <= self.size for ((start, size),) in frames):
                return frames
            return None
        if bot and bot[0] == 0 and all(a < b for a, b in pairwise(bot)):
            # PS3.5 A.4: a frame is every fragment whose item starts before the next frame's.
            frames_of: list[list[tuple[int, int]]] = [[] for _ in bot]
            frame = 0
            for start, size in fragments:
                relative = start - 8 - first
                while frame + 1 < len(bot) and relative >= bot[frame + 1]:
                    frame += 1
                frames_of[frame].append((start, size))
            if all(frames_of):
                return [tuple(f) for f in frames_of]
        if len(fragments) == 1 or nr_frames == 1:
            return [tuple(fragments)]
        if len(fragments) == nr_frames:
            return [(fragment,) for fragment in fragments]
        if len(fragments) < nr_frames:
            return None
        return self.frames_by_markers(nr_frames)

    def frames_by_markers(self, nr_frames: int) -> list[tuple[tuple[int, int], ...]] | None:
        """Split fragments into frames the way pydicom does when no offset table helps.

        pydicom looks for the JPEG EOI / JPEG 2000 EOC marker that ends each frame; it yields the
        fragment contents in file order, so counting them maps frames onto the known extents.
        """
        assert self.pixel is not None and self.fragments is not None
        fragments = self.fragments[2]
        self.fp.seek(self.pixel[0])
        frames: list[tuple[tuple[int, int], ...]] = []
        used = 0
        try:
            for frame in generate_fragmented_frames(self.fp, number_of_frames=nr_frames):
                frames.append(tuple(fragments[used : used + len(frame)]))
                used += len(frame)
        except ValueError:
            return None
        if len(frames) != nr_frames or used != len(fragments):
            return None
        return frames


def _first_value(tree: dict[str, Any], key: str) -> Any:
    values = tree.get(key, {}).get("Value")
    return values[0] if values else None


def _pydicom_json(ds: Dataset, tag: int) -> dict[str, Any]:
    """Let pydicom encode an element the fast path does not handle (PS3.18 F.2)."""
    try:
        return ds[tag].to_json_dict(None, 0)
    except Exception:
        # A value pydicom cannot decode either is still kept, as the opaque bytes it is.
        raw = ds.get_item(tag, keep_deferred=True)
        value = raw.value if isinstance(raw.value, bytes) else b""
        return {"vr": "UN", "InlineBinary": base64.b64encode(value).decode("ascii")}


def _element_json(vr: str, raw: RawDataElement, encodings: MutableSequence[str]) -> dict[str, Any]:
    """Encode one element in the DICOM JSON model (PS3.18 F.2.2 to F.2.7).

    pydicom's own ``to_json_dict`` builds a full ``DataElement`` (with value objects such as
    ``DSfloat`` and ``PersonName``) first; decoding the raw bytes straight to JSON values here is
    several times faster, which matters because every stored object goes through it. Values are
    the same as pydicom's, except that insignificant spaces are trimmed and empty values inside
    a multi-valued element are ``null`` (PS3.18 F.2.5).
    """
    value = raw.value
    if not value:
        return {"vr": vr}
    if vr in _BULK_VRS:
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    values: list[Any]
    if vr in _NUMBER_FORMATS:
        code, width = _NUMBER_FORMATS[vr]
        count, rest = divmod(len(value), width)
        if rest:
            raise ValueError(f"{len(value)} bytes is not a whole number of {vr} values")
        order = "<" if raw.is_little_endian else ">"
        values = list(struct.unpack(f"{order}{count}{code}", value))
        if vr in _FLOAT_VRS:
            values = [_json_float(v) for v in values]
    elif vr in _PLAIN_STRING_VRS:
        values = [v.strip(" \x00") or None for v in value.decode(default_encoding).split("\\")]
    elif vr in ("DS", "IS"):
        values = [_json_number(v, vr) for v in value.decode(default_encoding).split("\\")]
    elif vr in _TEXT_VRS:
        text = decode_bytes(value, encodings, _TEXT_DELIMITERS)
        values = [v.rstrip(" \x00") or None for v in text.split("\\")]
    elif vr in _SINGLE_TEXT_VRS:
        values = [decode_bytes(value, encodings, _TEXT_DELIMITERS).rstrip(" \x00") or None]
    elif vr == "UR":
        values = [value.decode(default_encoding).rstrip(" \x00") or None]
    elif vr == "PN":
        values = _person_names(value, encodings)
    elif vr == "AT":
        count, rest = divmod(len(value), 4)
        if rest:
            raise ValueError(f"{len(value)} bytes is not a whole number of AT values")
        order = "<" if raw.is_little_endian else ">"
        numbers = struct.unpack(f"{order}{count * 2}H", value)
        values = [f"{numbers[i]:04X}{numbers[i + 1]:04X}" for i in range(0, len(numbers), 2)]
    else:
        raise ValueError(f"no fast JSON encoding for VR {vr}")
    if len(values) == 1 and values[0] is None:
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def _json_float(number: float) -> float | str | None:
    # JSON has no NaN or infinity; PS3.18 F.2.3.1 leaves them out, so keep them as text rather
    # than emit the invalid JSON that json.dumps would.
    return number if math.isfinite(number) else str(number)


def _json_number(text: str, vr: str) -> int | float | str | None:
    text = text.strip(" \x00")
    if not text:
        return None
    if vr == "IS":
        try:
            return int(text)
        except ValueError:
            pass  # "1.0" and the like: accepted by pydicom, so here too when integral
    try:
        number = float(text)
    except ValueError:
        return text  # not a number: keep what was sent rather than lose it
    if not math.isfinite(number):
        return text
    if vr == "IS" and number.is_integer():
        return int(number)
    return number


def _person_names(value: bytes, encodings: Sequence[str]) -> list[dict[str, str] | None]:
    """Split PN values into component groups (PS3.5 6.2, PS3.18 F.2.2)."""
    if b"\x1b" in value:
        # ISO 2022 code extensions may differ per component group: pydicom knows how to decode.
        from pydicom.values import convert_PN

        converted = convert_PN(value, list(encodings))
        names = converted if isinstance(converted, MutableSequence) else [converted]
        groups = [list(name.components) if name else [] for name in names]
    else:
        text = decode_bytes(value, encodings, _TEXT_DELIMITERS).rstrip(" \x00")
        groups = [name.split("=") if name else [] for name in text.split("\\")]
    return [_name_groups(g) for g in groups]


def _name_groups(groups: list[str] | list[Any]) -> dict[str, str] | None:
    keys = ("Alphabetic", "Ideographic", "Phonetic")
    named = {k: str(g).rstrip(" ") for k, g in zip(keys, groups, strict=False) if g}
    return named or None
