"""A PS3.10 file's file meta information written anew, its data set kept byte for byte.

Real archives hold files whose (0002,0000) File Meta Information Group Length is wrong; dcmtk
trusts it and reads the data set from the wrong byte, pydicom reads group 0002 by its tags. The
store path keeps such an object (issue 12) as the same preamble, a group 0002 of the elements
pydicom read with (0002,0000) their true length, and the data set bytes as they came: what every
reader then reads is what nubis indexed. The change is a coercion of data elements (PS3.4 B.2.3,
0xB000), reported to the sender.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

from pydicom.filebase import DicomFileLike
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.filewriter import write_file_meta_info

__all__ = ["with_file_meta_rewritten"]

_CHUNK = 1 << 20


def with_file_meta_rewritten(fp: BinaryIO, data_set_start: int) -> Iterator[bytes]:
    """The bytes of the file ``fp`` with its group 0002 written anew: the preamble, ``DICM``,
    the file meta elements as pydicom reads them with a true (0002,0000), then the data set
    from ``data_set_start`` to the end, a chunk at a time."""
    fp.seek(0)
    preamble = fp.read(128)
    fp.seek(0)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    if "FileMetaInformationGroupLength" in meta:
        del meta.FileMetaInformationGroupLength
    elements = io.BytesIO()
    write_file_meta_info(DicomFileLike(elements), meta, enforce_standard=False)
    body = elements.getvalue()
    # (0002,0000) UL, explicit VR little endian (PS3.10 7.1): 12 bytes, then its value.
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + len(body).to_bytes(4, "little")
    yield preamble + b"DICM" + group_length + body
    fp.seek(data_set_start)
    while chunk := fp.read(_CHUNK):
        yield chunk
