"""The pixel data of nubis.tools.synth: deterministic phantom slices and frame encoding."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydicom.uid import JPEG2000Lossless

__all__ = ["Phantom", "encode_frame", "frame_stream"]


class Phantom:
    """Cheap, deterministic 16-bit phantom slices (stored values, not HU).

    Distance maps and a noise bank are computed once; each slice is then a handful of
    vectorised comparisons plus a rolled noise field, i.e. a few milliseconds at 512x512.
    """

    def __init__(self, rows: int, columns: int, seed: int, *, kind: str) -> None:
        self.rows = rows
        self.columns = columns
        self.kind = kind
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
        # Normalised coordinates in [-1, 1] so features scale with the matrix size.
        self.yn = (y - rows / 2) / (rows / 2)
        self.xn = (x - columns / 2) / (columns / 2)
        sigma = 12.0 if kind == "CT" else 18.0
        self.noise = [
            rng.normal(0.0, sigma, size=(rows, columns)).astype(np.int16) for _ in range(4)
        ]
        # A few randomly placed "lesions" per phantom so different seeds look different.
        self.lesions = [
            (float(rng.uniform(-0.4, 0.4)), float(rng.uniform(-0.3, 0.3)),
             float(rng.uniform(0.03, 0.08)), float(rng.uniform(30, 120)))
            for _ in range(3)
        ]  # fmt: skip

    def slice(self, index: int, count: int) -> np.ndarray:
        """Stored pixel values for slice ``index`` of ``count`` (uint16, 12 significant bits)."""
        # z in [-1, 1]: the body cross-section shrinks towards both ends of the volume.
        z = 0.0 if count <= 1 else (2.0 * index / (count - 1)) - 1.0
        scale = float(np.sqrt(max(1.0 - 0.5 * z * z, 0.2)))
        xn, yn = self.xn, self.yn
        body = (xn / (0.85 * scale)) ** 2 + (yn / (0.65 * scale)) ** 2 <= 1.0
        if self.kind == "CT":
            # Values in HU; stored = HU + 1024 (RescaleIntercept -1024, slope 1).
            img = np.full((self.rows, self.columns), -1000.0, dtype=np.float32)
            img[body] = 40.0  # soft tissue
            lungs = ((xn - 0.35 * scale) ** 2 + yn**2 <= (0.22 * scale) ** 2) | (
                (xn + 0.35 * scale) ** 2 + yn**2 <= (0.22 * scale) ** 2
            )
            img[lungs & body] = -850.0
            spine = xn**2 + (yn - 0.45 * scale) ** 2 <= (0.09 * scale) ** 2
            img[spine] = 700.0
            ring = (xn / (0.85 * scale)) ** 2 + (yn / (0.65 * scale)) ** 2
            img[body & (ring >= 0.88)] = 1000.0 - 200.0 * abs(z)  # cortical shell
            offset = 1024.0
        else:
            img = np.zeros((self.rows, self.columns), dtype=np.float32)
            img[body] = 600.0
            csf = xn**2 + yn**2 <= (0.18 * scale) ** 2
            img[csf] = 1500.0
            offset = 0.0
        for cx, cy, r, delta in self.lesions:
            lesion = (xn - cx * scale) ** 2 + (yn - cy * scale) ** 2 <= (r * scale) ** 2
            img[lesion & body] += delta
        noise = self.noise[index % len(self.noise)]
        shift = (index * 37) % self.rows
        stored = img + offset + np.roll(noise, shift, axis=0)
        return np.clip(stored, 0, 4095).astype("<u2")


def frame_stream(
    frames: int, rows: int, columns: int, seed: int, distinct: int | None = None
) -> Iterator[np.ndarray]:
    """``frames`` phantom slices; with ``distinct``, that many computed once and repeated."""
    phantom = Phantom(rows, columns, seed, kind="CT")
    cycle = frames if distinct is None else max(1, min(distinct, frames))
    cache: dict[int, np.ndarray] = {}
    for i in range(frames):
        key = i % cycle
        if distinct is None:
            yield phantom.slice(key, cycle)
            continue
        if key not in cache:
            cache[key] = phantom.slice(key, cycle)
        yield cache[key]


def encode_frame(frame: np.ndarray, transfer_syntax: str) -> bytes:
    """One 12-bit frame as a JPEG 2000 lossless or RLE lossless codestream."""
    from pydicom.pixels.encoders.base import JPEG2000LosslessEncoder, RLELosslessEncoder

    encoder = JPEG2000LosslessEncoder if transfer_syntax == JPEG2000Lossless else RLELosslessEncoder
    rows, columns = frame.shape
    return encoder.encode(
        frame,
        rows=rows,
        columns=columns,
        samples_per_pixel=1,
        bits_allocated=16,
        bits_stored=12,
        pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
        number_of_frames=1,
    )
