"""Where each frame of a stored object's pixel data lies, found at ingest without decoding.

Either reader of :mod:`nubis.dicom.inspect` records the layout of the top-level pixel data
(its extent, and for encapsulated data its Basic Offset Table and fragment extents) while it
walks the data set; :func:`frame_index` turns that layout and the decoded Image Pixel module
values into byte ranges, so that WADO-RS frame requests are plain reads of the stored blob.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, BinaryIO

from pydicom.encaps import generate_fragmented_frames

__all__ = ["EXTENDED_OFFSET_TABLE", "EXTENDED_OFFSET_TABLE_LENGTHS", "PixelLayout", "frame_index"]

EXTENDED_OFFSET_TABLE = 0x7FE00001
EXTENDED_OFFSET_TABLE_LENGTHS = 0x7FE00002

FrameIndex = list[tuple[tuple[int, int], ...]]


@dataclass(slots=True)
class PixelLayout:
    """The top-level pixel data as found in the file.

    ``pixel``: ``(offset, length)`` of its value (for encapsulated data, from the Basic Offset
    Table item up to the Sequence Delimitation Item); ``fragments``: for encapsulated data, the
    Basic Offset Table, the offset of the first fragment item and each fragment's ``(offset of
    its first data byte, length)`` (PS3.5 A.4); ``offset_tables``: the values of (7FE0,0001)
    Extended Offset Table and (7FE0,0002) Extended Offset Table Lengths.
    """

    pixel: tuple[int, int] | None = None
    fragments: tuple[list[int], int, list[tuple[int, int]]] | None = None
    offset_tables: dict[int, bytes] = field(default_factory=dict)


def frame_index(
    layout: PixelLayout, tree: dict[str, Any], fp: BinaryIO, size: int
) -> FrameIndex | None:
    """Locate every frame of the top-level pixel data (PS3.5 Section 8 and Annex A.4).

    ``tree`` is the JSON model of the data set, whose Image Pixel module values are already
    decoded; ``fp`` the file of ``size`` bytes the layout was found in, read only when the
    fragments of an encapsulated multi-frame object must be split by their markers.
    """
    if layout.pixel is None:
        return None
    nr_frames = _first_value(tree, "00280008")  # PS3.3 C.7.6.6: absent means one frame
    if nr_frames is None:
        nr_frames = 1
    if not isinstance(nr_frames, int) or nr_frames < 1:
        return None
    if layout.fragments is not None:
        return _encapsulated_frames(layout, nr_frames, fp, size)
    offset, length = layout.pixel
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


def _encapsulated_frames(
    layout: PixelLayout, nr_frames: int, fp: BinaryIO, size: int
) -> FrameIndex | None:
    assert layout.fragments is not None
    bot, first, fragments = layout.fragments
    if not fragments:
        return None
    offsets = layout.offset_tables.get(EXTENDED_OFFSET_TABLE)
    lengths = layout.offset_tables.get(EXTENDED_OFFSET_TABLE_LENGTHS)
    if offsets and lengths and len(offsets) == len(lengths) and not len(offsets) % 8:
        # PS3.3 C.7.6.3.1.8: one fragment per frame, offsets from the first fragment item.
        count = len(offsets) // 8
        starts = struct.unpack(f"<{count}Q", offsets)
        sizes = struct.unpack(f"<{count}Q", lengths)
        frames: FrameIndex = [
            ((first + start + 8, length),) for start, length in zip(starts, sizes, strict=True)
        ]
        if all(start + length <= size for ((start, length),) in frames):
            return frames
        return None
    if bot and bot[0] == 0 and all(a < b for a, b in pairwise(bot)):
        # PS3.5 A.4: a frame is every fragment whose item starts before the next frame's.
        frames_of: list[list[tuple[int, int]]] = [[] for _ in bot]
        frame = 0
        for start, length in fragments:
            relative = start - 8 - first
            while frame + 1 < len(bot) and relative >= bot[frame + 1]:
                frame += 1
            frames_of[frame].append((start, length))
        if all(frames_of):
            return [tuple(f) for f in frames_of]
    if len(fragments) == 1 or nr_frames == 1:
        return [tuple(fragments)]
    if len(fragments) == nr_frames:
        return [(fragment,) for fragment in fragments]
    if len(fragments) < nr_frames:
        return None
    return _frames_by_markers(layout, nr_frames, fp)


def _frames_by_markers(layout: PixelLayout, nr_frames: int, fp: BinaryIO) -> FrameIndex | None:
    """Split fragments into frames the way pydicom does when no offset table helps.

    pydicom looks for the JPEG EOI / JPEG 2000 EOC marker that ends each frame; it yields the
    fragment contents in file order, so counting them maps frames onto the known extents.
    """
    assert layout.pixel is not None and layout.fragments is not None
    fragments = layout.fragments[2]
    fp.seek(layout.pixel[0])
    frames: FrameIndex = []
    used = 0
    try:
        for frame in generate_fragmented_frames(fp, number_of_frames=nr_frames):
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
