"""Deterministic synthetic DICOM for tests and benchmarks.

Everything here is derived from a seed: the same call with the same arguments produces
byte-identical files (UIDs included), so benchmark corpora can be cached and tests can
assert on exact values.  The objects are meant to pass ``dciodvfy`` for their IODs
(CT Image, MR Image, Multi-frame Grayscale Word Secondary Capture) and to look like
images when rendered (an anatomical-ish phantom with noise), so rendering code paths are
exercised with meaningful pixel values.

Speed matters because benchmarks generate thousands of instances: a base dataset is built
once per series and only the per-instance elements are changed before each write, and
per-slice noise comes from a small pre-computed bank instead of a fresh RNG draw.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import struct
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import itemize_fragment
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from nubis.tools.phantom import Phantom, encode_frame, frame_stream

__all__ = [
    "CT_IMAGE_STORAGE",
    "MR_IMAGE_STORAGE",
    "MULTIFRAME_WORD_SC_STORAGE",
    "PatientSpec",
    "corpus_patient_ids",
    "dataset_bytes",
    "main",
    "make_corpus",
    "make_ct_series",
    "make_large_instance",
    "make_mr_series",
    "make_multiframe",
    "series_datasets",
    "synth_uid",
]

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
MULTIFRAME_WORD_SC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7.3")

# pydicom's own registered root: UIDs under it are valid and globally unique as long as the
# suffix is (the suffix is a hash of the seed and the object's identity).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."
IMPLEMENTATION_CLASS_UID = UID("1.2.826.0.1.3680043.8.498.1")
IMPLEMENTATION_VERSION = "NUBIS_SYNTH_1"

PRIVATE_CREATOR = "NUBIS SYNTH 1.0"

_SUPPORTED_MULTIFRAME_TS = (ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless)

_FIRST_NAMES = (
    "Anna", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas",
    "Kaito", "Lena", "Marco", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tara",
    "Ugo", "Vera", "Wei", "Ximena", "Yusuf", "Zoe",
)  # fmt: skip
_LAST_NAMES = (
    "Adams", "Bauer", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Hansen", "Ito",
    "Jansen", "Kowalski", "Larsen", "Martin", "Novak", "Olsen", "Petit", "Quinn", "Rossi",
    "Schmidt", "Tanaka", "Umar", "Vogel", "Weber", "Xu", "Yilmaz", "Zimmermann",
)  # fmt: skip
_CT_BODY_PARTS = ("HEAD", "CHEST", "ABDOMEN", "PELVIS", "NECK")
_MR_BODY_PARTS = ("BRAIN", "KNEE", "SPINE", "HEAD", "SHOULDER")
_PAIRED_BODY_PARTS = frozenset({"KNEE", "SHOULDER"})
_CT_DESCRIPTIONS = ("CT HEAD W/O CONTRAST", "CT CHEST W CONTRAST", "CT ABDOMEN PELVIS")
_MR_DESCRIPTIONS = ("MR BRAIN W/O CONTRAST", "MR KNEE LEFT", "MR LUMBAR SPINE")


@dataclass(frozen=True)
class PatientSpec:
    """Patient-level attributes shared by every instance of a study."""

    patient_id: str = "NUBIS0001"
    patient_name: str = "Doe^Jane"
    birth_date: str = "19700101"
    sex: str = "F"


def synth_uid(seed: int, *parts: object) -> UID:
    """A valid DICOM UID that depends only on ``seed`` and ``parts``.

    generate_uid hashes its entropy sources, so the same inputs give the same UID while
    distinct inputs give (with overwhelming probability) distinct UIDs.
    """
    return generate_uid(UID_PREFIX, [str(seed), *(str(p) for p in parts)])


def _stable_int(*parts: object) -> int:
    """A 64-bit integer derived from ``parts``; Python's hash() is salted per process."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little")


# --------------------------------------------------------------------------- datasets


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


def _patient_study_base(
    ds: Dataset,
    *,
    patient: PatientSpec,
    study_uid: str,
    study_date: str,
    study_time: str,
    accession: str,
    study_id: str,
    study_description: str,
) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "NUBIS"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.StudyID = study_id
    ds.StudyDescription = study_description
    ds.ReferringPhysicianName = "Referrer^Rita"
    age = _age_string(patient.birth_date, study_date)
    if age:
        ds.PatientAge = age


def _age_string(birth_date: str, study_date: str) -> str:
    try:
        born = dt.datetime.strptime(birth_date, "%Y%m%d").date()
        seen = dt.datetime.strptime(study_date, "%Y%m%d").date()
    except ValueError:
        return ""
    years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return f"{max(years, 0):03d}Y"


def _equipment(ds: Dataset, modality: str) -> None:
    ds.Manufacturer = "Nubis Synthetic Imaging"
    ds.InstitutionName = "Nubis General Hospital"
    ds.StationName = f"{modality}01"
    ds.ManufacturerModelName = f"Synth {modality} 3000"
    ds.DeviceSerialNumber = "SN-0042"
    ds.SoftwareVersions = IMPLEMENTATION_VERSION


def _private_block(ds: Dataset, *, seed: int, series_number: int) -> None:
    # A private block is part of every real vendor's output; archives must store and
    # return it untouched, so the synthetic data carries one too.
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", "synthetic")
    block.add_new(0x11, "UL", seed & 0xFFFFFFFF)
    block.add_new(0x12, "DS", f"{series_number}.5")
    block.add_new(0x13, "OB", bytes(range(16)))


def _series_base(
    *,
    modality: str,
    n_instances: int,
    rows: int,
    columns: int,
    patient: PatientSpec,
    study_uid: str,
    study_date: str,
    study_time: str,
    accession: str,
    seed: int,
    series_number: int,
    series_description: str,
    body_part: str,
) -> Dataset:
    series_uid = synth_uid(seed, "series", study_uid, series_number, modality)
    ds = Dataset()
    _patient_study_base(
        ds,
        patient=patient,
        study_uid=study_uid,
        study_date=study_date,
        study_time=study_time,
        accession=accession,
        study_id=f"{_stable_int(study_uid) % 100000}",
        study_description=(_CT_DESCRIPTIONS if modality == "CT" else _MR_DESCRIPTIONS)[
            _stable_int(study_uid, "desc") % 3
        ],
    )
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description
    ds.SeriesDate = study_date
    ds.SeriesTime = study_time
    ds.BodyPartExamined = body_part
    if body_part in _PAIRED_BODY_PARTS:
        # Type 2C in General Series: required for paired structures.
        ds.Laterality = "L"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = synth_uid(seed, "for", series_uid)
    ds.PositionReferenceIndicator = ""
    _equipment(ds, modality)
    ds.ContentDate = study_date
    ds.ContentTime = study_time
    ds.AcquisitionDate = study_date
    ds.AcquisitionTime = study_time
    ds.AcquisitionNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    fov = 350.0 if modality == "CT" else 240.0
    spacing = f"{fov / columns:.6f}".rstrip("0")
    ds.PixelSpacing = [spacing, spacing]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    thickness = 1.25 if modality == "CT" else 4.0
    ds.SliceThickness = thickness
    ds.ImagesInAcquisition = n_instances
    _private_block(ds, seed=seed, series_number=series_number)
    return ds


def _ct_specific(ds: Dataset) -> None:
    ds.KVP = 120
    ds.XRayTubeCurrent = 250
    ds.ExposureTime = 500
    ds.ConvolutionKernel = "STANDARD"
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.WindowCenterWidthExplanation = "SOFT TISSUE"


def _mr_specific(ds: Dataset) -> None:
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = 500
    ds.EchoTime = 15
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = 1.5
    ds.ImagingFrequency = 63.87
    ds.ImagedNucleus = "1H"
    ds.SequenceName = "se2d1"
    ds.FlipAngle = 90
    ds.WindowCenter = 800
    ds.WindowWidth = 1600


def _write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def dataset_bytes(ds: Dataset) -> bytes:
    """Serialise ``ds`` as a PS3.10 file (preamble, DICM, meta) in memory, e.g. for STOW."""
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _iter_series(
    *,
    modality: str,
    n_instances: int,
    rows: int,
    columns: int,
    patient: PatientSpec | None,
    study_uid: str | None,
    study_date: str,
    study_time: str,
    accession: str,
    seed: int,
    series_number: int,
    series_description: str | None,
    body_part: str | None,
) -> Iterator[Dataset]:
    if n_instances < 1:
        raise ValueError("n_instances must be >= 1")
    patient = patient or PatientSpec()
    study_uid = study_uid or synth_uid(seed, "study", patient.patient_id, accession)
    parts = _CT_BODY_PARTS if modality == "CT" else _MR_BODY_PARTS
    base = _series_base(
        modality=modality,
        n_instances=n_instances,
        rows=rows,
        columns=columns,
        patient=patient,
        study_uid=study_uid,
        study_date=study_date,
        study_time=study_time,
        accession=accession,
        seed=seed,
        series_number=series_number,
        series_description=series_description or f"{modality} synthetic series {series_number}",
        body_part=body_part or parts[_stable_int(seed, study_uid) % len(parts)],
    )
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    base.SOPClassUID = sop_class
    (_ct_specific if modality == "CT" else _mr_specific)(base)
    phantom = Phantom(rows, columns, _stable_int(seed, base.SeriesInstanceUID), kind=modality)
    spacing_z = float(base.SliceThickness)
    first_pixel_x = -float(base.PixelSpacing[0]) * columns / 2
    first_pixel_y = -float(base.PixelSpacing[1]) * rows / 2
    z0 = -spacing_z * (n_instances - 1) / 2
    for i in range(n_instances):
        # New element dict sharing the base's element objects: cheap, and safe because the
        # base holds none of the per-instance tags, so each assignment below creates a new
        # element instead of mutating a shared one.
        ds = Dataset(dict(base._dict))
        sop_uid = synth_uid(seed, "sop", base.SeriesInstanceUID, i)
        ds.file_meta = _file_meta(sop_class, sop_uid, ExplicitVRLittleEndian)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = i + 1
        z = round(z0 + i * spacing_z, 4)
        ds.ImagePositionPatient = [
            round(first_pixel_x, 4), round(first_pixel_y, 4), z,
        ]  # fmt: skip
        ds.SliceLocation = z
        ds.InstanceCreationDate = study_date
        ds.InstanceCreationTime = study_time
        ds.PixelData = phantom.slice(i, n_instances).tobytes()
        yield ds


def series_datasets(modality: str, *, n_instances: int, **kwargs: object) -> Iterator[Dataset]:
    """The datasets make_ct_series / make_mr_series would write, in memory (for STOW tests).

    ``modality`` is "CT" or "MR"; keyword arguments are those of make_ct_series.
    Serialise with dataset_bytes().
    """
    if modality not in ("CT", "MR"):
        raise ValueError(f"unsupported modality {modality!r}")
    defaults: dict[str, object] = {
        "rows": 512 if modality == "CT" else 256,
        "columns": 512 if modality == "CT" else 256,
        "patient": None,
        "study_uid": None,
        "study_date": "20240115",
        "study_time": "093000" if modality == "CT" else "101500",
        "accession": "ACC0001",
        "seed": 0,
        "series_number": 1,
        "series_description": None,
        "body_part": None,
    }
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"unexpected arguments: {sorted(unknown)}")
    return _iter_series(modality=modality, n_instances=n_instances, **{**defaults, **kwargs})  # type: ignore[arg-type]


def make_ct_series(out_dir: Path, *, n_instances: int, **options: object) -> list[Path]:
    """Write an axial CT Image series (one file per slice) and return the paths in order.

    ``options``: rows, columns (512), patient (PatientSpec), study_uid, study_date, study_time,
    accession, seed, series_number, series_description, body_part.
    """
    return _write_series(
        out_dir, series_datasets("CT", n_instances=n_instances, **options), prefix="CT"
    )


def make_mr_series(out_dir: Path, *, n_instances: int, **options: object) -> list[Path]:
    """Write an axial spin-echo MR Image series and return the paths in order.

    ``options`` as make_ct_series (rows and columns default to 256).
    """
    return _write_series(
        out_dir, series_datasets("MR", n_instances=n_instances, **options), prefix="MR"
    )


def _write_series(out_dir: Path, datasets: Iterator[Dataset], *, prefix: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        paths.append(
            _write(ds, out_dir / f"{prefix}{int(ds.SeriesNumber):03d}_{ds.InstanceNumber:05d}.dcm")
        )
    return paths


# --------------------------------------------------------------------------- multi-frame


def _multiframe_header(
    *,
    frames: int,
    rows: int,
    columns: int,
    seed: int,
    transfer_syntax: str,
    patient: PatientSpec | None,
    study_uid: str | None,
    label: str,
) -> Dataset:
    """Multi-frame Grayscale Word SC header (everything but Pixel Data)."""
    patient = patient or PatientSpec()
    study_date, study_time = "20240115", "120000"
    study_uid = study_uid or synth_uid(seed, "mf-study", patient.patient_id, label)
    ds = Dataset()
    _patient_study_base(
        ds,
        patient=patient,
        study_uid=study_uid,
        study_date=study_date,
        study_time=study_time,
        accession=f"MF{seed:06d}",
        study_id="MF1",
        study_description=f"Synthetic multi-frame {label}",
    )
    series_uid = synth_uid(seed, "mf-series", study_uid, label)
    sop_uid = synth_uid(seed, "mf-sop", series_uid, frames, rows, columns, transfer_syntax)
    ds.file_meta = _file_meta(MULTIFRAME_WORD_SC_STORAGE, sop_uid, transfer_syntax)
    ds.SOPClassUID = MULTIFRAME_WORD_SC_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "OT"
    ds.BodyPartExamined = "CHEST"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"Synthetic multi-frame {label}"
    _equipment(ds, "SC")
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate = study_date
    ds.ContentTime = study_time
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter = 1064
    ds.WindowWidth = 400
    ds.NumberOfFrames = frames
    # Frames are a time series: the SC Multi-frame module requires a Frame Increment
    # Pointer, and Frame Time (Cine module) is the simplest valid target for it.
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 40.0
    if transfer_syntax != ExplicitVRLittleEndian:
        ds.LossyImageCompression = "00"
    _private_block(ds, seed=seed, series_number=1)
    return ds


def _header_bytes(ds: Dataset) -> bytes:
    if "PixelData" in ds:
        raise ValueError("header dataset must not contain Pixel Data")
    return dataset_bytes(ds)


def _native_pixel_element_header(length: int) -> bytes:
    # Explicit VR Little Endian, VR OW: tag, VR, 2 reserved bytes, 32-bit length.
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)


def _write_native_multiframe(
    path: Path, header: Dataset, frames: Iterator[np.ndarray], frame_bytes: int, n_frames: int
) -> None:
    total = frame_bytes * n_frames
    if total % 2:
        raise ValueError("native pixel data length must be even")
    if total > 0xFFFFFFFE:
        raise ValueError("native pixel data exceeds the 32-bit element length limit")
    with path.open("wb") as fh:
        fh.write(_header_bytes(header))
        fh.write(_native_pixel_element_header(total))
        for frame in frames:
            fh.write(frame.tobytes())


def _write_encapsulated_multiframe(path: Path, header: Dataset, fragments: Sequence[bytes]) -> None:
    # One fragment per frame; items must have even length, so pad odd codestreams with a
    # trailing zero byte as PS3.5 A.4 allows.
    items = [[itemize_fragment(f + b"\x00" if len(f) % 2 else f)] for f in fragments]
    # A Basic Offset Table lets readers seek to a frame without scanning every fragment;
    # offsets are measured from the first byte of the first fragment item.
    offsets = []
    pos = 0
    for frame_items in items:
        offsets.append(pos)
        pos += sum(len(part) for part in frame_items)
    if pos > 0xFFFFFFFF:
        raise ValueError("encapsulated pixel data too large for a Basic Offset Table")
    bot = struct.pack(f"<{len(offsets)}I", *offsets)
    with path.open("wb") as fh:
        fh.write(_header_bytes(header))
        # (7FE0,0010) OB with undefined length.
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        fh.write(struct.pack("<HHI", 0xFFFE, 0xE000, len(bot)))
        fh.write(bot)
        for frame_items in items:
            for part in frame_items:
                fh.write(part)
        fh.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))


def make_multiframe(
    out_path: Path,
    *,
    frames: int = 2000,
    rows: int = 256,
    columns: int = 256,
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
    patient: PatientSpec | None = None,
    study_uid: str | None = None,
) -> Path:
    """Write a Multi-frame Grayscale Word SC instance, native or JPEG 2000 / RLE lossless.

    The file is streamed frame by frame, so memory stays at a frame (native) or at the
    compressed fragments (encapsulated), never at the decoded volume.
    """
    if frames < 1:
        raise ValueError("frames must be >= 1")
    if transfer_syntax not in _SUPPORTED_MULTIFRAME_TS:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    header = _multiframe_header(
        frames=frames,
        rows=rows,
        columns=columns,
        seed=seed,
        transfer_syntax=transfer_syntax,
        patient=patient,
        study_uid=study_uid,
        label=f"{frames}x{rows}x{columns}",
    )
    stream = frame_stream(frames, rows, columns, seed)
    if transfer_syntax == ExplicitVRLittleEndian:
        _write_native_multiframe(out_path, header, stream, rows * columns * 2, frames)
    else:
        _write_encapsulated_multiframe(
            out_path, header, [encode_frame(f, transfer_syntax) for f in stream]
        )
    return out_path


def make_large_instance(
    out_path: Path,
    *,
    size_bytes: int,
    seed: int = 0,
    rows: int = 512,
    columns: int = 512,
) -> Path:
    """Write a native multi-frame instance whose Pixel Data is about ``size_bytes``.

    The header goes through pydicom; the pixel bytes are appended one frame at a time from
    a small cycle of pre-computed frames, so a 2 GB object costs a few MB of memory.
    """
    frame_bytes = rows * columns * 2
    frames = max(1, size_bytes // frame_bytes)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    header = _multiframe_header(
        frames=frames,
        rows=rows,
        columns=columns,
        seed=seed,
        transfer_syntax=ExplicitVRLittleEndian,
        patient=None,
        study_uid=None,
        label=f"large-{size_bytes}",
    )
    stream = frame_stream(frames, rows, columns, seed, distinct=16)
    _write_native_multiframe(out_path, header, stream, frame_bytes, frames)
    return out_path


# --------------------------------------------------------------------------- corpus


def _corpus_patient(seed: int, index: int) -> PatientSpec:
    h = _stable_int(seed, "patient", index)
    first = _FIRST_NAMES[h % len(_FIRST_NAMES)]
    last = _LAST_NAMES[(h >> 8) % len(_LAST_NAMES)]
    born = dt.date(1930, 1, 1) + dt.timedelta(days=(h >> 16) % (365 * 85))
    return PatientSpec(
        patient_id=f"P{seed % 1000:03d}{index:06d}",
        patient_name=f"{last}^{first}",
        birth_date=born.strftime("%Y%m%d"),
        sex="F" if (h >> 40) % 2 else "M",
    )


def corpus_patient_ids(n_studies: int, *, seed: int = 0) -> list[str]:
    """Patient IDs used by make_corpus, in study order (patients may repeat)."""
    return [
        _corpus_patient(seed, _corpus_patient_index(seed, i, n_studies)).patient_id
        for i in range(n_studies)
    ]


def _corpus_patient_index(seed: int, study_index: int, n_studies: int) -> int:
    # About 1.5 studies per patient, so QIDO by PatientID sometimes matches several studies.
    n_patients = max(1, (n_studies * 2) // 3)
    return _stable_int(seed, "who", study_index) % n_patients


def make_corpus(
    out_dir: Path,
    *,
    n_studies: int,
    series_per_study: int = 1,
    instances_per_series: int = 1,
    rows: int = 64,
    columns: int = 64,
    seed: int = 0,
    modalities: Sequence[str] = ("CT", "MR"),
) -> list[Path]:
    """Write many small studies with varied patients, dates, modalities and accessions.

    Defaults give metadata-light studies (one 64x64 instance each) for QIDO benchmarks.
    Files go to ``out_dir/<study index>/``.
    """
    for modality in modalities:
        if modality not in ("CT", "MR"):
            raise ValueError(f"unsupported modality {modality!r}")
    paths: list[Path] = []
    base_day = dt.date(2005, 1, 1)
    for s in range(n_studies):
        patient = _corpus_patient(seed, _corpus_patient_index(seed, s, n_studies))
        h = _stable_int(seed, "study", s)
        study_date = (base_day + dt.timedelta(days=h % (365 * 20))).strftime("%Y%m%d")
        study_time = f"{(h >> 20) % 24:02d}{(h >> 28) % 60:02d}{(h >> 34) % 60:02d}"
        accession = f"A{seed % 100:02d}{s:07d}"
        study_uid = synth_uid(seed, "corpus-study", s)
        for series_number in range(1, series_per_study + 1):
            modality = modalities[(h + series_number) % len(modalities)]
            maker = make_ct_series if modality == "CT" else make_mr_series
            paths.extend(
                maker(
                    out_dir / f"{s:06d}",
                    n_instances=instances_per_series,
                    rows=rows,
                    columns=columns,
                    patient=patient,
                    study_uid=study_uid,
                    study_date=study_date,
                    study_time=study_time,
                    accession=accession,
                    seed=seed + s,
                    series_number=series_number,
                )
            )
    return paths


# --------------------------------------------------------------------------- CLI


def _ts_from_name(name: str) -> str:
    table = {"explicit": ExplicitVRLittleEndian, "j2k": JPEG2000Lossless, "rle": RLELossless}
    if name in table:
        return table[name]
    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nubis.tools.synth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("corpus", help="many small studies (QIDO corpus)")
    p.add_argument("out", type=Path)
    p.add_argument("--studies", type=int, required=True)
    p.add_argument("--series-per-study", type=int, default=1)
    p.add_argument("--instances-per-series", type=int, default=1)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--columns", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)

    for name in ("ct", "mr"):
        p = sub.add_parser(name, help=f"one {name.upper()} series")
        p.add_argument("out", type=Path)
        p.add_argument("--instances", type=int, required=True)
        p.add_argument("--rows", type=int, default=512 if name == "ct" else 256)
        p.add_argument("--columns", type=int, default=512 if name == "ct" else 256)
        p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("multiframe", help="one multi-frame instance")
    p.add_argument("out", type=Path)
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--columns", type=int, default=256)
    p.add_argument("--transfer-syntax", default="explicit", help="explicit, j2k, rle or a UID")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("large", help="one large native instance")
    p.add_argument("out", type=Path)
    p.add_argument("--size-bytes", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)

    args = parser.parse_args(argv)
    if args.command == "corpus":
        paths = make_corpus(
            args.out,
            n_studies=args.studies,
            series_per_study=args.series_per_study,
            instances_per_series=args.instances_per_series,
            rows=args.rows,
            columns=args.columns,
            seed=args.seed,
        )
        print(f"wrote {len(paths)} files under {args.out}")
    elif args.command in ("ct", "mr"):
        maker = make_ct_series if args.command == "ct" else make_mr_series
        paths = maker(
            args.out,
            n_instances=args.instances,
            rows=args.rows,
            columns=args.columns,
            seed=args.seed,
        )
        print(f"wrote {len(paths)} files under {args.out}")
    elif args.command == "multiframe":
        path = make_multiframe(
            args.out,
            frames=args.frames,
            rows=args.rows,
            columns=args.columns,
            transfer_syntax=_ts_from_name(args.transfer_syntax),
            seed=args.seed,
        )
        print(f"wrote {path}")
    else:
        path = make_large_instance(args.out, size_bytes=args.size_bytes, seed=args.seed)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
