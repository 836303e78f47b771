"""Burned-in text (PS3.15 E.3.1 Clean Pixel Data): which objects may carry it, and blanking
the regions a device is known to write it into.

An object is suspect when Burned In Annotation (0028,0301) is YES, or when the flag is absent
and its modality or storage class usually carries text in its pixels (ultrasound, secondary
capture). A suspect object is excluded, or under the ``blank`` policy has its device's regions
zeroed; with no region rule for its device it is excluded too. Nothing suspect passes as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from nubis.deid.profile import BurnedIn, DeviceRegions


@dataclass(frozen=True)
class BurnedInDecision:
    """What the profile does with one object's pixels, and why (said in the report)."""

    suspect: bool
    reason: str
    regions: DeviceRegions | None = None

    @property
    def excluded(self) -> bool:
        return self.suspect and self.regions is None


def decide(dataset: Dataset, policy: BurnedIn) -> BurnedInDecision:
    flag = str(dataset.get("BurnedInAnnotation", "") or "").strip().upper()
    modality = str(dataset.get("Modality", "") or "").strip().upper()
    sop_class = str(dataset.get("SOPClassUID", "") or "")
    if flag == "YES":
        why = "Burned In Annotation is YES"
    elif flag == "NO":
        return BurnedInDecision(False, "Burned In Annotation is NO")
    elif modality in policy.suspect_modalities:
        why = f"modality {modality} usually carries burned-in text and the flag is absent"
    elif sop_class in policy.suspect_sop_classes:
        why = "its storage class usually carries burned-in text and the flag is absent"
    else:
        return BurnedInDecision(False, "not suspected of burned-in text")
    if "PixelData" not in dataset and flag != "YES":
        return BurnedInDecision(False, "no pixel data")
    if policy.policy == "exclude":
        return BurnedInDecision(True, f"excluded: {why}")
    manufacturer = str(dataset.get("Manufacturer", "") or "")
    model = str(dataset.get("ManufacturerModelName", "") or "")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    for regions in policy.regions:
        if regions.matches(manufacturer, model, rows, columns):
            return BurnedInDecision(
                True, f"blanked {len(regions.rectangles)} region(s): {why}", regions
            )
    return BurnedInDecision(True, f"excluded: {why}, and no region rule fits its device")


def blank(dataset: Dataset, regions: DeviceRegions) -> None:
    """Zeroes the regions in every frame and writes the pixels uncompressed (Explicit VR
    Little Endian), so no encoder's loss can bring the text back."""
    pixels = dataset.pixel_array.copy()
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    view = pixels if frames > 1 else pixels[np.newaxis, ...]
    for rect in regions.rectangles:
        view[:, rect.y : rect.y + rect.height, rect.x : rect.x + rect.width, ...] = 0
    # The decoded samples are stored anew, interleaved and uncompressed.
    if "PlanarConfiguration" in dataset:
        dataset.PlanarConfiguration = 0
    if str(dataset.get("PhotometricInterpretation", "")).startswith("YBR"):
        dataset.PhotometricInterpretation = "RGB" if dataset.SamplesPerPixel == 3 else "MONOCHROME2"
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.PixelData = np.ascontiguousarray(pixels).tobytes()
    dataset["PixelData"].VR = "OB" if dataset.BitsAllocated <= 8 else "OW"
    dataset["PixelData"].is_undefined_length = False
