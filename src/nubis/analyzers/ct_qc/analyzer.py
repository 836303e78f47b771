"""The built-in CT series QC analyzer (``ct-qc``).

Per CT Image series of a study (three slices at least): missing, uneven and duplicate slice
positions, slice thickness consistency, the HU of air outside the body and of a water-like
region (nubis.analyzers.ct_qc.checks says exactly what is measured), and the body mask.
Results: one TID 1500 Measurement Report for the study and one binary Segmentation per series
(nubis.analyzers.ct_qc.report), stored in the study by the ``analyze`` job.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.uid import CTImageStorage

from nubis.analyzers.contract import Findings, SeriesView, StudyView, Wants
from nubis.analyzers.ct_qc.checks import (
    AIR_HU,
    body_mask,
    calibration,
    hounsfield,
    slice_geometry,
)
from nubis.analyzers.ct_qc.report import SeriesQc, body_segmentation, measurement_report

__all__ = ["CtSeriesQc"]

# Result series numbers: high, so they sort after the acquired series in a viewer.
_SR_SERIES_NUMBER = 9900
_SEG_SERIES_NUMBER = 9901


class CtSeriesQc:
    name = "ct-qc"
    version = "1"
    wants = Wants(
        modalities=frozenset({"CT"}), sop_classes=frozenset({CTImageStorage}), min_instances=3
    )

    def __init__(
        self,
        *,
        air_tolerance_hu: float = 50.0,
        water_tolerance_hu: float = 60.0,
        spacing_tolerance: float = 0.1,
    ) -> None:
        self.air_tolerance_hu = air_tolerance_hu
        self.water_tolerance_hu = water_tolerance_hu
        self.spacing_tolerance = spacing_tolerance

    def analyze(self, study: StudyView) -> Findings:
        results: list[SeriesQc] = []
        segmentations = []
        for n, series in enumerate(study.series):
            qc, masks = self._series(series)
            results.append(qc)
            if not masks.any():
                continue  # nothing over -500 HU: no body to outline (a SEG needs a frame)
            segmentations.append(
                body_segmentation(
                    qc,
                    masks,
                    name=self.name,
                    version=self.version,
                    study_uid=study.study_uid,
                    series_number=_SEG_SERIES_NUMBER + n,
                )
            )
        report = measurement_report(
            results,
            name=self.name,
            version=self.version,
            study_uid=study.study_uid,
            series_number=_SR_SERIES_NUMBER,
        )
        return Findings(objects=(report, *segmentations), summary=_summary(results))

    def _series(self, series: SeriesView) -> tuple[SeriesQc, np.ndarray]:
        geometry = slice_geometry(series.datasets, spacing_tolerance=self.spacing_tolerance)
        masks = []
        slices = []
        for i in geometry.order:
            ds = series.datasets[i]
            hu = hounsfield(series.pixels(i), ds)
            body = body_mask(hu)
            masks.append(body)
            padding = ds.get("PixelPaddingValue")
            padding_hu = (
                None if padding is None else float(hounsfield(np.asarray([padding]), ds)[0])
            )
            slices.append((hu, body, padding_hu))
        found = calibration(slices)
        air, water = found.air_mean_hu, found.water_peak_hu
        qc = SeriesQc(
            series_uid=series.series_uid,
            series_number=_int(series.datasets[0].get("SeriesNumber")),
            sources=tuple(series.datasets[i] for i in geometry.order),
            geometry=geometry,
            calibration=found,
            air_ok=None if air is None else abs(air - AIR_HU) <= self.air_tolerance_hu,
            water_ok=None if water is None else abs(water) <= self.water_tolerance_hu,
        )
        return qc, np.stack(masks)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _summary(results: list[SeriesQc]) -> dict[str, Any]:
    """Per series: the verdicts and counts (UIDs and numbers only: no patient data)."""
    return {
        "series": [
            {
                "series_uid": qc.series_uid,
                "slices": len(qc.sources),
                "missing_slices": qc.geometry.missing_slices,
                "uneven_steps": qc.geometry.uneven_steps,
                "duplicate_positions": qc.geometry.duplicate_positions,
                "spacing_mm": None
                if qc.geometry.nominal_spacing_mm is None
                else round(qc.geometry.nominal_spacing_mm, 3),
                "thicknesses_mm": list(qc.geometry.thicknesses_mm),
                "air_hu": None
                if qc.calibration.air_mean_hu is None
                else round(qc.calibration.air_mean_hu, 1),
                "water_hu": qc.calibration.water_peak_hu,
                "air_ok": qc.air_ok,
                "water_ok": qc.water_ok,
                "even": qc.geometry.even,
            }
            for qc in results
        ]
    }
