"""A seekable, read-only file over bytes that are fetched on demand (object store, ciphertext).

Decoders (pydicom) need a real binary file; subclasses keep ``_pos`` and ``_size`` and supply
``read``/``readinto``; position arithmetic lives here once.
"""

from __future__ import annotations

import io


class PositionedReader(io.RawIOBase):
    _pos: int = 0
    _size: int = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError("negative seek position")
        self._pos = pos
        return pos
