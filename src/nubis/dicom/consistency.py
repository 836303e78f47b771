"""Checks that a PS3.10 file reads the same in every reader, for ingest to refuse one that does not.

pydicom reads past faults that other readers stop at or read otherwise: a data set in implicit VR
under an explicit VR transfer syntax (it looks at the first element and follows what it finds),
an unknown VR (2-byte length, where dcmtk assumes 4), a (0002,0000) group length that is not the
length of the file meta information (pydicom parses group 0002, dcmtk counts bytes). Stored as
it is, such an object would be served to tools that trust its header and cannot read it, so
ingest refuses it with 0xC000 and a reason naming the fault; except the store path, which
keeps a data set whose only fault is the group length under a file meta it writes anew
(MetaGroupLengthWrong, nubis.dicom.file_meta: warning 0xB000, issue 12).

Each check only finds the fault; what is done about it is the caller's (refusing now; a lenient
ingest could instead store the data set under a file meta that says what it is).
"""

from __future__ import annotations

from typing import BinaryIO

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID
from pydicom.valuerep import VR

from nubis.errors import InvalidInstance

__all__ = [
    "VRS",
    "MetaGroupLengthWrong",
    "check_file_meta",
    "check_pixel_data_encoding",
    "check_vr_encoding",
    "end_of_last_element",
    "has_invalid_vr",
    "invalid_vr",
]

_CANNOT_UNDERSTAND = 0xC000  # PS3.4 Table B.2-1
_UNDEFINED_LENGTH = 0xFFFFFFFF
# After the preamble, "DICM" and the (0002,0000) element, from whose end the group length
# counts (PS3.10 7.1).
_META_GROUP_START = 128 + 4 + 12

# PS3.5 Table 6.2-1: the VRs an explicit VR element may have.
VRS = frozenset(vr.value for vr in VR if " " not in vr.value)


class MetaGroupLengthWrong(InvalidInstance):
    """(0002,0000) is not the length of the file meta information: dcmtk trusts it and reads
    the data set from the wrong byte. Refused as it is (0xC000); the store path may instead
    keep the data set under a file meta written anew (nubis.dicom.file_meta)."""

    def __init__(self, reason: str, *, data_set_start: int) -> None:
        super().__init__(reason, dimse_status=_CANNOT_UNDERSTAND)
        self.data_set_start = data_set_start


def check_file_meta(ds: FileDataset, fp: BinaryIO) -> None:
    """The file meta information has only known VRs, and (0002,0000), where other readers find
    the start of the data set, is the length of what pydicom parsed as group 0002.

    ``fp`` is the file ``ds`` was read from; its position is kept.
    """
    for elem in ds.file_meta.values():
        if isinstance(elem, RawDataElement) and has_invalid_vr(elem):
            raise invalid_vr(int(elem.tag), elem.VR, "the file meta information")
    stated = ds.file_meta.get("FileMetaInformationGroupLength")
    if stated is None:
        return  # readers then find the end of group 0002 as pydicom does
    meta_end = end_of_last_element(ds.file_meta)
    if meta_end is None:  # the last element was converted already: find its end again
        position = fp.tell()
        fp.seek(0)
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        meta_end = fp.tell()
        fp.seek(position)
    if stated != meta_end - _META_GROUP_START:
        raise MetaGroupLengthWrong(
            f"(0002,0000) File Meta Information Group Length is {stated}, but the file meta "
            f"information that follows it is {meta_end - _META_GROUP_START} bytes long "
            "(PS3.10 7.1)",
            data_set_start=meta_end,
        )


def check_vr_encoding(ds: Dataset, transfer_syntax: UID) -> None:
    """The data set is in the VR encoding its transfer syntax names (PS3.10 7.1, PS3.5 10).

    pydicom looks at the first element and reads the data set the way it is encoded, whatever
    (0002,0010) says; dcmdump on such a file fails ("premature end of stream").
    """
    found_implicit = _found_implicit_vr(ds)
    if found_implicit is None or found_implicit == transfer_syntax.is_implicit_VR:
        return
    found, said = ("implicit", "explicit") if found_implicit else ("explicit", "implicit")
    raise InvalidInstance(
        f"the data set is encoded in {found} VR, but (0002,0010) Transfer Syntax UID is "
        f"{transfer_syntax} ({transfer_syntax.name}), which is {said} VR",
        dimse_status=_CANNOT_UNDERSTAND,
    )


def _found_implicit_vr(ds: Dataset) -> bool | None:
    """Whether pydicom found the top-level elements in implicit VR, whatever the transfer
    syntax said; None when no element tells (a data set of undefined-length sequences only)."""
    for elem in ds.values():
        if isinstance(elem, RawDataElement) and elem.tag >= 0x00030000:
            return bool(elem.is_implicit_VR)
    return None


def check_pixel_data_encoding(encapsulated: bool, transfer_syntax: UID) -> None:
    """Top-level Pixel Data is encapsulated exactly when the transfer syntax compresses it
    (PS3.5 8.2, A.4); otherwise frames would be served as the bitstreams, or the native
    pixels, they are not."""
    if encapsulated == transfer_syntax.is_encapsulated:
        return
    found, needed = (
        ("encapsulated", "a defined length") if encapsulated else ("native", "it encapsulated")
    )
    raise InvalidInstance(
        f"(7FE0,0010) Pixel Data is {found}, but Transfer Syntax UID {transfer_syntax} "
        f"({transfer_syntax.name}) requires {needed} (PS3.5 8.2, A.4)",
        dimse_status=_CANNOT_UNDERSTAND,
    )


def has_invalid_vr(elem: RawDataElement) -> bool:
    """Whether an element as read has a VR no reader agrees on.

    pydicom reads an unknown VR with a 2-byte length, and bytes that are not letters as an
    implicit VR element; dcmtk reads both with a 4-byte, or a 2-byte, length. Implicit VR
    elements have no VR of their own (None).
    """
    return elem.VR not in VRS and (elem.VR is not None or not elem.is_implicit_VR)


def invalid_vr(tag: int, vr: str | None, where: str) -> InvalidInstance:
    what = f"the VR {vr!r}" if vr is not None else "bytes that are not a VR"
    return InvalidInstance(
        f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) of {where} has {what} (PS3.5 6.2, 7.1.2)",
        dimse_status=_CANNOT_UNDERSTAND,
    )


def end_of_last_element(ds: Dataset) -> int | None:
    """Where the last element of ``ds`` ends in the stream it was read from, when it is still
    as read and has a defined length (an undefined-length one ends at its delimiter)."""
    # pydicom annotates values() as a ValuesView; it is its dict's, which is reversible.
    last = next(reversed(ds.values()), None)  # type: ignore[call-overload]
    if isinstance(last, RawDataElement) and last.length != _UNDEFINED_LENGTH:
        return int(last.value_tell) + int(last.length)
    return None
