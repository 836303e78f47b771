"""The CT series QC measurements, pure: data sets and numpy arrays in, numbers out.

What is measured, exactly:

- **Slice positions.** Each slice's position along the slice normal (the cross product of the
  row and column directions of Image Orientation (Patient)) is Image Position (Patient)
  projected on it. Sorted, the steps between neighbours are compared with their median (the
  nominal spacing): a step over 1.5 times the median is a gap of round(step / median) - 1
  missing slices; any other step more than ``spacing_tolerance`` (10 %) off the median is
  uneven; a step under 1 % of the median is a duplicate position. Slices whose orientation
  differs from the first's by more than 0.001 (direction cosines) are counted as tilted.
- **Slice thickness.** The distinct Slice Thickness (0018,0050) values (0.01 mm apart);
  consistent when there is one.
- **Calibration.** Stored values through Rescale Slope and Intercept are Hounsfield units.
  The body is every pixel over -500 HU, keeping on each slice the largest 4-connected region
  (the table and noise specks are smaller). *Air* is every pixel at least 3 pixels outside the
  body, neither the Pixel Padding Value nor under -1500 HU (the fill outside the reconstructed
  circle): its mean should be -1000 HU (within ``air_tolerance_hu``, 50). *Water-like* is the
  peak of the histogram (5 HU bins) of body pixels between -100 and +100 HU, when at least 5 %
  of the body lies there: 0 HU in a water phantom, 20 to 60 in a patient's soft tissue and
  fluids, so it is checked against 0 within ``water_tolerance_hu`` (60): a patient's soft
  tissue passes, a calibration off by a hundred does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom import Dataset

__all__ = [
    "BODY_THRESHOLD_HU",
    "Calibration",
    "SliceGeometry",
    "body_mask",
    "calibration",
    "hounsfield",
    "slice_geometry",
]

BODY_THRESHOLD_HU = -500.0
AIR_HU = -1000.0
_AIR_MARGIN = 3  # pixels between the body and the air sampled
_FILL_BELOW_HU = -1500.0
_WATER_WINDOW = (-100.0, 100.0)
_WATER_MIN_SHARE = 0.05


@dataclass(frozen=True)
class SliceGeometry:
    """The slice positions of one series, in the order along the slice normal."""

    order: tuple[int, ...]  # instance indexes, sorted by position
    positions_mm: tuple[float, ...]
    nominal_spacing_mm: float | None
    missing_slices: int
    gaps: tuple[tuple[float, float], ...]  # (from, to) positions around each gap
    uneven_steps: int
    duplicate_positions: int
    max_spacing_deviation_mm: float
    tilted_slices: int
    thicknesses_mm: tuple[float, ...]
    spacing_tolerance: float = 0.1

    @property
    def thickness_consistent(self) -> bool:
        return len(self.thicknesses_mm) <= 1

    @property
    def even(self) -> bool:
        return not (
            self.missing_slices
            or self.uneven_steps
            or self.duplicate_positions
            or self.tilted_slices
        )


def slice_geometry(datasets: Sequence[Dataset], *, spacing_tolerance: float = 0.1) -> SliceGeometry:
    """Positions, gaps and spacing of the slices of ``datasets`` (single-frame images)."""
    first = np.asarray([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(first[:3], first[3:])
    tilted = 0
    positions = []
    for ds in datasets:
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if np.abs(orientation - first).max() > 1e-3:
            tilted += 1
        positions.append(float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
    order = tuple(int(i) for i in np.argsort(positions, kind="stable"))
    ordered = [positions[i] for i in order]
    steps = np.diff(ordered)
    thicknesses = sorted(
        {round(float(ds.SliceThickness), 2) for ds in datasets if ds.get("SliceThickness")}
    )
    if not len(steps):
        return SliceGeometry(
            order, tuple(ordered), None, 0, (), 0, 0, 0.0, tilted, tuple(thicknesses),
            spacing_tolerance,
        )  # fmt: skip
    nominal = float(np.median(steps))
    missing = uneven = duplicates = 0
    gaps: list[tuple[float, float]] = []
    deviation = 0.0
    for i, step in enumerate(steps.tolist()):
        deviation = max(deviation, abs(step - nominal))
        if nominal > 0 and step < 0.01 * nominal:
            duplicates += 1
        elif nominal > 0 and step > 1.5 * nominal:
            missing += max(1, round(step / nominal) - 1)
            gaps.append((ordered[i], ordered[i + 1]))
        elif abs(step - nominal) > spacing_tolerance * nominal:
            uneven += 1
    return SliceGeometry(
        order=order,
        positions_mm=tuple(ordered),
        nominal_spacing_mm=nominal,
        missing_slices=missing,
        gaps=tuple(gaps),
        uneven_steps=uneven,
        duplicate_positions=duplicates,
        max_spacing_deviation_mm=deviation,
        tilted_slices=tilted,
        thicknesses_mm=tuple(thicknesses),
        spacing_tolerance=spacing_tolerance,
    )


def hounsfield(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values through the Modality LUT's Rescale Slope and Intercept (PS3.3 C.11.1)."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return stored.astype(np.float32) * slope + intercept


def body_mask(hu: np.ndarray) -> np.ndarray:
    """Pixels over BODY_THRESHOLD_HU, only the largest 4-connected region (one slice)."""
    above = hu > BODY_THRESHOLD_HU
    labels = _label(above)
    if labels.max() == 0:
        return above
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _label(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of ``mask`` (0 = background), by union-find over runs:
    numpy only, linear in the number of pixels."""
    rows = mask.shape[0]
    parent: list[int] = [0]
    runs: list[tuple[int, int, int, int]] = []  # row, start, end (exclusive), label
    previous: list[tuple[int, int, int]] = []

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in range(rows):
        line = np.concatenate(([False], mask[r], [False])).astype(np.int8)
        edges = np.flatnonzero(np.diff(line))
        current: list[tuple[int, int, int]] = []
        for start, end in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            label = 0
            for p_start, p_end, p_label in previous:
                if p_start < end and start < p_end:
                    if label == 0:
                        label = find(p_label)
                    else:
                        a, b = find(label), find(p_label)
                        if a != b:
                            parent[max(a, b)] = min(a, b)
                            label = min(a, b)
            if label == 0:
                label = len(parent)
                parent.append(label)
            current.append((start, end, label))
            runs.append((r, start, end, label))
        previous = current
    out = np.zeros(mask.shape, dtype=np.int32)
    for r, start, end, label in runs:
        out[r, start:end] = find(label)
    return out


@dataclass
class Calibration:
    """Air and water-like HU of a series, accumulated slice by slice."""

    air_sum: float = 0.0
    air_sq: float = 0.0
    air_count: int = 0
    water_hist: np.ndarray = field(default_factory=lambda: np.zeros(40, dtype=np.int64))
    body_count: int = 0

    def add(self, hu: np.ndarray, body: np.ndarray, padding: float | None) -> None:
        outside = ~_dilated(body, _AIR_MARGIN) & (hu >= _FILL_BELOW_HU)
        if padding is not None:
            outside &= hu != padding
        air = hu[outside].astype(np.float64)
        self.air_sum += float(air.sum())
        self.air_sq += float((air * air).sum())
        self.air_count += int(air.size)
        inside = hu[body]
        self.body_count += int(inside.size)
        counts, _ = np.histogram(inside, bins=40, range=_WATER_WINDOW)
        self.water_hist += counts

    @property
    def air_mean_hu(self) -> float | None:
        return self.air_sum / self.air_count if self.air_count else None

    @property
    def air_sd_hu(self) -> float | None:
        if not self.air_count:
            return None
        mean = self.air_sum / self.air_count
        return float(np.sqrt(max(self.air_sq / self.air_count - mean * mean, 0.0)))

    @property
    def water_peak_hu(self) -> float | None:
        """The centre of the fullest 5 HU bin in [-100, 100], or None when under 5 % of the
        body lies in that window (no water-like region to speak of)."""
        inside = int(self.water_hist.sum())
        if not self.body_count or inside < _WATER_MIN_SHARE * self.body_count:
            return None
        low, high = _WATER_WINDOW
        width = (high - low) / len(self.water_hist)
        return low + width * (int(self.water_hist.argmax()) + 0.5)


def calibration(hu_slices: Sequence[tuple[np.ndarray, np.ndarray, float | None]]) -> Calibration:
    """Calibration of (HU, body mask, padding value in HU) slices."""
    found = Calibration()
    for hu, body, padding in hu_slices:
        found.add(hu, body, padding)
    return found


def _dilated(mask: np.ndarray, steps: int) -> np.ndarray:
    """``mask`` grown by ``steps`` pixels (4-neighbourhood)."""
    grown = mask.copy()
    for _ in range(steps):
        step = grown.copy()
        step[1:] |= grown[:-1]
        step[:-1] |= grown[1:]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    return grown
