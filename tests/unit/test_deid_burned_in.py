"""Burned-in text (PS3.15 E.3.1 Clean Pixel Data): suspect objects are excluded, or blanked
in the regions their device writes text into; never passed silently."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from nubis.deid.engine import ExcludedObject, deidentify
from nubis.deid.json_view import deidentify_json
from nubis.deid.profile import parse_profile
from nubis.tools.synth import PatientSpec, series_datasets

KEY = b"project-key-0123456789abcdef"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
BLANKING = """
name = "blank"
[burned_in]
policy = "blank"
[[burned_in.regions]]
manufacturer = "ACME Sono"
model = "S1"
rows = 32
columns = 48
rectangles = [[0, 0, 48, 6], [40, 20, 8, 12]]
"""


def _ultrasound(*, flag: str | None = None, compressed: bool = False) -> Dataset:
    """An ultrasound image whose top band holds 'text' (value 255) over a gray picture (100)."""
    (ds,) = series_datasets(
        "CT", n_instances=1, rows=32, columns=48, patient=PatientSpec("US-PAT", "Echo^Ella")
    )
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
    ds.Modality = "US"
    ds.Manufacturer, ds.ManufacturerModelName = "ACME Sono", "S1"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    pixels = np.full((32, 48), 100, dtype=np.uint8)
    pixels[:6, :] = 255
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB"
    for name in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if name in ds:
            delattr(ds, name)
    if flag is not None:
        ds.BurnedInAnnotation = flag
    if compressed:
        ds.compress(RLELossless)
    return ds


def test_suspect_ultrasound_is_excluded_by_default() -> None:
    profile = parse_profile('name = "x"')
    with pytest.raises(ExcludedObject) as caught:
        deidentify(_ultrasound(), profile, KEY)
    assert "excluded" in caught.value.report.burned_in
    assert "Echo" not in caught.value.reason and "US-PAT" not in caught.value.reason


def test_flag_yes_excludes_any_modality() -> None:
    (ct,) = series_datasets("CT", n_instances=1, rows=16, columns=16)
    ct.BurnedInAnnotation = "YES"
    with pytest.raises(ExcludedObject, match="Burned In Annotation is YES"):
        deidentify(ct, parse_profile('name = "x"'), KEY)


def test_flag_no_passes_an_ultrasound() -> None:
    out, report = deidentify(_ultrasound(flag="NO"), parse_profile('name = "x"'), KEY)
    assert report.burned_in == "Burned In Annotation is NO"
    assert "113101" not in {i.CodeValue for i in out.DeidentificationMethodCodeSequence}


@pytest.mark.parametrize("compressed", [False, True], ids=["native", "rle"])
def test_blank_policy_zeroes_the_device_regions(compressed: bool) -> None:
    out, report = deidentify(_ultrasound(compressed=compressed), parse_profile(BLANKING), KEY)
    pixels = out.pixel_array
    assert (pixels[:6, :] == 0).all() and (pixels[20:32, 40:48] == 0).all()
    assert (pixels[6:20, :] == 100).all() and (pixels[20:, :40] == 100).all()
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in {i.CodeValue for i in out.DeidentificationMethodCodeSequence}
    assert report.burned_in.startswith("blanked 2 region(s)")


def test_blank_policy_excludes_a_device_without_a_rule() -> None:
    ds = _ultrasound()
    ds.ManufacturerModelName = "S2"
    with pytest.raises(ExcludedObject, match="no region rule fits"):
        deidentify(ds, parse_profile(BLANKING), KEY)


def test_json_view_of_a_blanked_object_agrees() -> None:
    """The researcher's metadata says what the exported object says: text blanked, 113101."""
    ds = _ultrasound()
    out, _ = deidentify(ds, parse_profile(BLANKING), KEY)
    view, _ = deidentify_json(ds.to_json_dict(), parse_profile(BLANKING), KEY)
    assert view["00280301"]["Value"] == ["NO"] == [out.BurnedInAnnotation]
    codes = [item["00080100"]["Value"][0] for item in view["00120064"]["Value"]]
    assert codes == [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    with pytest.raises(ExcludedObject):
        deidentify_json(ds.to_json_dict(), parse_profile('name = "x"'), KEY)
