"""The CT series QC results as DICOM objects, built with highdicom.

- One Comprehensive 3D SR per study: a TID 1500 Measurement Report holding, per CT series, a
  TID 1501 measurement group (tracking identifier "CT QC series N") with the measurements
  and a Normal/Abnormal qualitative evaluation per check, its source images referenced.
- One binary Segmentation per CT series: the body mask, one segment "Body".

Concepts without a standard code are coded in the private scheme ``99NUBIS`` (PS3.16 8.2:
designators beginning with 99 are for local use). UIDs are derived from the analyzer, its
version and the study and series, so a retried run produces the same objects' UIDs and never
a second report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid

from nubis.analyzers.ct_qc.checks import Calibration, SliceGeometry

__all__ = ["SeriesQc", "body_segmentation", "measurement_report", "result_uid"]

MANUFACTURER = "nubis"
_SCHEME = "99NUBIS"
MISSING_SLICES = Code("CTQC01", _SCHEME, "Missing slices")
UNEVEN_STEPS = Code("CTQC02", _SCHEME, "Uneven slice steps")
DUPLICATE_POSITIONS = Code("CTQC03", _SCHEME, "Duplicate slice positions")
SPACING_DEVIATION = Code("CTQC04", _SCHEME, "Largest slice spacing deviation")
AIR_MEAN = Code("CTQC05", _SCHEME, "Mean HU of air outside the body")
AIR_SD = Code("CTQC06", _SCHEME, "Standard deviation of HU of air outside the body")
WATER_PEAK = Code("CTQC07", _SCHEME, "Water-like HU peak in the body")
SPACING_CHECK = Code("CTQC10", _SCHEME, "Slice spacing check")
THICKNESS_CHECK = Code("CTQC11", _SCHEME, "Slice thickness consistency check")
AIR_CHECK = Code("CTQC12", _SCHEME, "Air calibration check")
WATER_CHECK = Code("CTQC13", _SCHEME, "Water calibration check")
_BODY_SEGMENT = hd.seg.SegmentDescription(
    segment_number=1,
    segment_label="Body",
    segmented_property_category=codes.SCT.AnatomicalStructure,
    segmented_property_type=codes.SCT.EntireBody,
    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
    algorithm_identification=hd.AlgorithmIdentificationSequence(
        name="nubis ct-qc body threshold", family=codes.DCM.QualityControl, version="1"
    ),
)


@dataclass(frozen=True)
class SeriesQc:
    """One CT series' QC: its slices in position order, geometry, calibration, verdicts."""

    series_uid: str
    series_number: int | None
    sources: tuple[Dataset, ...]  # in position order, Pixel Data left out
    geometry: SliceGeometry
    calibration: Calibration
    air_ok: bool | None
    water_ok: bool | None


def result_uid(*parts: str) -> UID:
    return generate_uid(entropy_srcs=["nubis analyzer result", *parts])


def _verdict(ok: bool) -> Code:
    return codes.SCT.Normal if ok else codes.SCT.Abnormal


def _group(qc: SeriesQc, name: str, version: str) -> Any:
    analyzer = hd.sr.AlgorithmIdentification(name=f"nubis {name}", version=version)
    geo, cal = qc.geometry, qc.calibration
    measurements = [
        hd.sr.Measurement(name=MISSING_SLICES, value=geo.missing_slices, unit=codes.UCUM.NoUnits),
        hd.sr.Measurement(name=UNEVEN_STEPS, value=geo.uneven_steps, unit=codes.UCUM.NoUnits),
        hd.sr.Measurement(
            name=DUPLICATE_POSITIONS, value=geo.duplicate_positions, unit=codes.UCUM.NoUnits
        ),
        hd.sr.Measurement(
            name=SPACING_DEVIATION,
            value=round(geo.max_spacing_deviation_mm, 3),
            unit=codes.UCUM.Millimeter,
        ),
    ]
    if geo.nominal_spacing_mm is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.DCM.SpacingBetweenSlices,
                value=round(geo.nominal_spacing_mm, 3),
                unit=codes.UCUM.Millimeter,
            )
        )
    measurements += [
        hd.sr.Measurement(name=codes.DCM.SliceThickness, value=t, unit=codes.UCUM.Millimeter)
        for t in geo.thicknesses_mm
    ]
    evaluations = [
        hd.sr.QualitativeEvaluation(SPACING_CHECK, _verdict(geo.even)),
        hd.sr.QualitativeEvaluation(THICKNESS_CHECK, _verdict(geo.thickness_consistent)),
    ]
    if cal.air_mean_hu is not None and cal.air_sd_hu is not None:
        measurements += [
            hd.sr.Measurement(
                name=AIR_MEAN, value=round(cal.air_mean_hu, 1), unit=codes.UCUM.HounsfieldUnit
            ),
            hd.sr.Measurement(
                name=AIR_SD, value=round(cal.air_sd_hu, 1), unit=codes.UCUM.HounsfieldUnit
            ),
        ]
    if cal.water_peak_hu is not None:
        measurements.append(
            hd.sr.Measurement(
                name=WATER_PEAK, value=round(cal.water_peak_hu, 1), unit=codes.UCUM.HounsfieldUnit
            )
        )
    if qc.air_ok is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(AIR_CHECK, _verdict(qc.air_ok)))
    if qc.water_ok is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(WATER_CHECK, _verdict(qc.water_ok)))
    label = f"CT QC series {qc.series_number}" if qc.series_number is not None else "CT QC"
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid(name, version, qc.series_uid, "tracking"),
            identifier=label,
        ),
        algorithm_id=analyzer,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in qc.sources
        ],
    )


def measurement_report(
    study: Sequence[SeriesQc], *, name: str, version: str, study_uid: str, series_number: int
) -> Dataset:
    """The study's TID 1500 Measurement Report (Comprehensive 3D SR)."""
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid(name, "device"), name=f"nubis {name}", manufacturer_name=MANUFACTURER
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[_group(qc, name, version) for qc in study],
    )
    evidence = [ds for qc in study for ds in qc.sources]
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=result_uid(name, version, study_uid, "sr series"),
        series_number=series_number,
        sop_instance_uid=result_uid(name, version, study_uid, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=f"{name} {version} report",
    )


def body_segmentation(
    qc: SeriesQc,
    masks: np.ndarray,
    *,
    name: str,
    version: str,
    study_uid: str,
    series_number: int,
) -> Dataset:
    """The binary body mask of one series (``masks`` in the order of ``qc.sources``; the
    source images' attributes are enough, their Pixel Data is not needed)."""
    return hd.seg.Segmentation(
        source_images=list(qc.sources),
        pixel_array=masks.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_BODY_SEGMENT],
        series_instance_uid=result_uid(name, version, study_uid, qc.series_uid, "seg series"),
        series_number=series_number,
        sop_instance_uid=result_uid(name, version, study_uid, qc.series_uid, "seg"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"nubis {name}",
        software_versions=version,
        device_serial_number="0",
        content_label="BODY",
        content_description=f"{name}: body, HU > -500",
        series_description=f"{name} {version} body mask",
    )
