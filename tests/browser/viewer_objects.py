"""Objects for the viewer's browser tests and benchmark, made here where nubis.tools.synth has
no maker for them: a 4k x 4k CR, a tiled whole-slide image (TILED_FULL) whose pixels tell
where they are, and an enhanced MR multi-frame with per-frame windows in functional groups.

Also the expected display of a grayscale pixel, computed with pydicom (PS3.3 C.11.2.1.2), to
compare with what the browser drew.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_windowing
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"


def _base(sop_class: str, modality: str, patient_id: str, study_uid: str, number: int) -> Dataset:
    ds = Dataset()
    sop = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.PatientName = "Viewer^Vera"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240301"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.AccessionNumber = "VIEW1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Viewer objects"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = number
    ds.Modality = modality
    ds.InstanceNumber = 1
    ds.ContentDate = "20240301"
    ds.ContentTime = "101500"
    return ds


def _write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def cr_pixels(size: int = 4096) -> np.ndarray:
    """A diagonal ramp over 12 bits with a bright square a quarter in: every pixel differs
    from its neighbours along both axes, so a misplaced row or column shows."""
    y, x = np.mgrid[0:size, 0:size]
    values = ((x + 2 * y) * 4095 // (3 * (size - 1))).astype(np.uint16)
    quarter = size // 4
    values[quarter : quarter + 64, quarter : quarter + 64] = 4000
    return values


def make_cr(path: Path, *, patient_id: str, study_uid: str, size: int = 4096) -> Path:
    """A size x size CR, MONOCHROME1 (minimum shown white), 12 of 16 bits, window 2048/4096."""
    ds = _base(CR_STORAGE, "CR", patient_id, study_uid, 7)
    ds.SeriesDescription = "CR 4k"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.PixelData = cr_pixels(size).tobytes()
    return _write(ds, path)


def wsi_pixels(width: int, height: int) -> np.ndarray:
    """RGB whose red grows with x and green with y: a pixel's color tells where it belongs."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.zeros((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = x * 255 // (width - 1)
    rgb[..., 1] = y * 255 // (height - 1)
    rgb[..., 2] = ((x // 16 + y // 16) % 2) * 200  # a checkerboard, for the eye
    return rgb


def make_wsi(
    path: Path, *, patient_id: str, study_uid: str, width: int = 1000, height: int = 700,
    tile: int = 256,
) -> Path:  # fmt: skip
    """A VL Whole Slide Microscopy level of width x height in tile x tile frames, TILED_FULL
    (PS3.3 C.7.6.17.3): frames fill the total pixel matrix row by row, edge tiles padded."""
    ds = _base(WSI_STORAGE, "SM", patient_id, study_uid, 8)
    ds.SeriesDescription = "Slide level"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixColumns = width
    ds.TotalPixelMatrixRows = height
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.Rows = tile
    ds.Columns = tile
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    across, down = -(-width // tile), -(-height // tile)
    ds.NumberOfFrames = across * down
    whole = np.zeros((down * tile, across * tile, 3), dtype=np.uint8)
    whole[:height, :width] = wsi_pixels(width, height)
    frames = [
        whole[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
        for r in range(down)
        for c in range(across)
    ]
    ds.PixelData = np.stack(frames).tobytes()
    return _write(ds, path)


ENHANCED_MR_FRAMES = 8
ENHANCED_MR_SLOPE, ENHANCED_MR_INTERCEPT = 2.0, -100.0


def enhanced_mr_window(frame: int) -> tuple[float, float]:
    """The per-frame window (center, width) of 1-based ``frame`` of make_enhanced_mr."""
    return 900.0 + 100.0 * frame, 1200.0 + 50.0 * frame


def enhanced_mr_pixels(frames: int = ENHANCED_MR_FRAMES, size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([((x * 31 + y * 17 + f * 101) % 1024).astype(np.uint16) for f in range(frames)])


def make_enhanced_mr(path: Path, *, patient_id: str, study_uid: str, size: int = 64) -> Path:
    """An Enhanced MR Image with rescale in the shared functional groups and a window per frame
    (PS3.3 C.7.6.16: Pixel Value Transformation and Frame VOI LUT macros)."""
    ds = _base(ENHANCED_MR_STORAGE, "MR", patient_id, study_uid, 9)
    ds.SeriesDescription = "Enhanced MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = ENHANCED_MR_FRAMES
    shared = Dataset()
    transform = Dataset()
    transform.RescaleSlope = ENHANCED_MR_SLOPE
    transform.RescaleIntercept = ENHANCED_MR_INTERCEPT
    transform.RescaleType = "US"
    shared.PixelValueTransformationSequence = Sequence([transform])
    measures = Dataset()
    measures.PixelSpacing = [1, 1]
    measures.SliceThickness = 3
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for frame in range(1, ENHANCED_MR_FRAMES + 1):
        group = Dataset()
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = enhanced_mr_window(frame)
        group.FrameVOILUTSequence = Sequence([voi])
        position = Dataset()
        position.ImagePositionPatient = [0, 0, 3 * frame]
        group.PlanePositionSequence = Sequence([position])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = enhanced_mr_pixels(size=size).tobytes()
    return _write(ds, path)


def windowed(
    stored: np.ndarray | int, *, slope: float = 1.0, intercept: float = 0.0,
    center: float, width: float, monochrome1: bool = False,
) -> np.ndarray:  # fmt: skip
    """Display values 0..255 of stored values through rescale and a LINEAR window."""
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.BitsStored = 8
    voi.PixelRepresentation = 0
    voi.WindowCenter = center
    voi.WindowWidth = width
    values = np.asarray(stored, dtype=np.float64) * slope + intercept
    out = np.clip(np.rint(apply_windowing(values, voi)), 0, 255)
    return 255 - out if monochrome1 else out


def stored_window_display(path: Path) -> np.ndarray:
    """A single-frame grayscale file's display values through its own rescale and window."""
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds)
    center, width = (
        float(v if isinstance(v, str | int | float) else v[0])
        for v in (ds.WindowCenter, ds.WindowWidth)
    )
    inverted = ds.PhotometricInterpretation == "MONOCHROME1"
    return windowed(values, center=center, width=width, monochrome1=inverted)
