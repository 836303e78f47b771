"""The correction overlay (nubis.dicom.overlay): which attributes may be corrected, and how the
overlay is applied to metadata JSON and to PS3.10 files without touching anything else."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from nubis.dicom import overlay
from nubis.errors import BadRequest


def test_elements_follow_dicom_json() -> None:
    """PS3.18 F.2.2: PN values are objects of component groups; other text VRs are strings;
    no value is an element without Value (the attribute emptied)."""
    assert overlay.element("PatientName", "Doe^Jane=ドウ^ジェーン") == (
        "00100010",
        {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane", "Ideographic": "ドウ^ジェーン"}]},
    )
    assert overlay.element("00100020", "PID-1") == ("00100020", {"vr": "LO", "Value": ["PID-1"]})
    assert overlay.element("OtherPatientNames", "A^B\\C^D")[1]["Value"] == [
        {"Alphabetic": "A^B"},
        {"Alphabetic": "C^D"},
    ]
    assert overlay.element("PatientSex", None) == ("00100040", {"vr": "CS"})
    assert overlay.element("StudyDescription", "") == ("00081030", {"vr": "LO"})


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("StudyInstanceUID", "1.2.3", "StudyInstanceUID"),  # identity: never corrected
        ("SeriesDescription", "x", "SeriesDescription"),  # series level
        ("Rows", "5", "Rows"),  # image level
        ("PatientWeight", "70", "PatientWeight"),  # DS: not a text VR
        ("OtherPatientIDsSequence", "x", "OtherPatientIDsSequence"),  # a sequence
        ("NoSuchKeyword", "x", "NoSuchKeyword"),
        ("PatientID", "x" * 65, "PatientID"),  # LO: 64 characters (PS3.5 6.2)
        ("PatientBirthDate", "1980-01-01", "PatientBirthDate"),  # DA: YYYYMMDD
        ("PatientSex", "m", "PatientSex"),  # CS: upper case
        ("PatientName", "A^B\nC", "PatientName"),  # control characters
    ],
)
def test_what_cannot_be_corrected_is_refused_by_name(name: str, value: str, named: str) -> None:
    with pytest.raises(BadRequest) as refused:
        overlay.element(name, value)
    assert named in refused.value.reason
    # The value (which may be patient data) is not repeated in the reason.
    assert value not in refused.value.reason or len(value) < 3


def test_metadata_takes_the_overlay_elements_and_keeps_the_rest() -> None:
    stored = json.dumps(
        {
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Wrong^Name"}]},
            "00100020": {"vr": "LO", "Value": ["OLD"]},
            "00280010": {"vr": "US", "Value": [64]},
        }
    )
    corrected = json.loads(
        overlay.apply_to_metadata(stored, dict([overlay.element("PatientID", "NEW")]))
    )
    assert corrected["00100020"] == {"vr": "LO", "Value": ["NEW"]}
    assert corrected["00100010"]["Value"][0]["Alphabetic"] == "Wrong^Name"
    assert corrected["00280010"] == {"vr": "US", "Value": [64]}
    assert overlay.apply_to_metadata(stored, {}) is stored


def _file(syntax: str, **attrs: object) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "OLD"
    ds.PatientName = "Wrong^Name"
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 2, 2, 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x01\x02\x03\x04"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_a_file_keeps_its_syntax_pixels_and_identity(syntax: str) -> None:
    stored = _file(syntax)
    corrections = dict(
        [overlay.element("PatientID", "NEW"), overlay.element("PatientName", "Right^Name")]
    )
    ds = pydicom.dcmread(io.BytesIO(overlay.apply_to_file(io.BytesIO(stored), corrections)))
    before = pydicom.dcmread(io.BytesIO(stored))
    assert (ds.PatientID, str(ds.PatientName)) == ("NEW", "Right^Name")
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.PixelData == before.PixelData
    assert ds.SOPInstanceUID == before.SOPInstanceUID


def test_a_name_outside_the_character_set_switches_the_file_to_utf8() -> None:
    """PS3.5 6.1.2.3: the Specific Character Set must cover every value. A Polish name in a
    Latin-1 file makes it UTF-8 (ISO_IR 192); its other Latin-1 values are re-encoded, not
    left as Latin-1 bytes that a UTF-8 reader would misread."""
    stored = _file(
        ExplicitVRLittleEndian, SpecificCharacterSet="ISO_IR 100", StudyDescription="Müller"
    )
    corrections = dict([overlay.element("PatientName", "Łukasik^Ąna")])
    out = overlay.apply_to_file(io.BytesIO(stored), corrections)
    ds = pydicom.dcmread(io.BytesIO(out))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Łukasik^Ąna"
    assert ds.StudyDescription == "Müller"
    assert "Müller".encode() in out


def test_a_deflated_file_stays_deflated() -> None:
    path = get_testdata_file("image_dfl.dcm")
    assert path is not None
    with open(path, "rb") as stored:
        out = overlay.apply_to_file(stored, dict([overlay.element("PatientID", "NEW")]))
    ds = pydicom.dcmread(io.BytesIO(out))
    original = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert ds.PatientID == "NEW"
    assert ds.PixelData == original.PixelData


_CORRECTED = (0x00100010, 0x00100020)


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm"]
)
def test_a_stream_is_spliced_not_rewritten(name: str) -> None:
    """Explicit and implicit VR, little and big endian, encapsulated: the file meta and
    everything after the corrected attributes leave as stored, byte for byte, and the first
    corrected bytes leave after the first chunk of the stored object was read."""
    path = get_testdata_file(name)
    assert path is not None
    with open(path, "rb") as f:
        data = f.read()
    pulled = []

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 4096):
            pulled.append(i)
            yield data[i : i + 4096]

    corrections = dict(
        [overlay.element("PatientID", "NEW"), overlay.element("PatientName", "Right^Name")]
    )
    out_chunks = overlay.corrected_chunks(chunks(), corrections)
    first = next(out_chunks)
    assert len(pulled) == 1
    out = first + b"".join(out_chunks)
    corrected, stored = pydicom.dcmread(io.BytesIO(out)), pydicom.dcmread(io.BytesIO(data))
    assert (corrected.PatientID, str(corrected.PatientName)) == ("NEW", "Right^Name")
    for element in stored:
        if element.tag not in _CORRECTED:
            assert corrected[element.tag] == element, element.tag
    meta_end = 132 + 12 + stored.file_meta.FileMetaInformationGroupLength
    assert out[:meta_end] == data[:meta_end]
    # Pixel Data, as stored, ends both.
    assert out.endswith(data[-len(stored.PixelData) :])


def test_a_stream_needing_another_character_set_is_rewritten_whole_with_its_file_meta() -> None:
    stored = _file(
        ExplicitVRLittleEndian, SpecificCharacterSet="ISO_IR 100", StudyDescription="Müller"
    )
    corrections = dict([overlay.element("PatientName", "Łukasik^Ąna")])
    out = b"".join(overlay.corrected_chunks(iter([stored[:200], stored[200:]]), corrections))
    ds = pydicom.dcmread(io.BytesIO(out))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert (str(ds.PatientName), ds.StudyDescription) == ("Łukasik^Ąna", "Müller")
    meta_end = 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    assert out[:meta_end] == stored[:meta_end]
