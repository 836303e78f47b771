"""End to end through a client written by others: dicomweb-client against a live ``nubis serve``.

Every DICOMweb call goes through ``dicomweb_client.api.DICOMwebClient``; only what that client
cannot express (reading a refused STOW-RS body, thumbnails, WADO-URI) uses ``requests``.

The module stores one archive's worth of data once (module-scoped server) and the read-only
tests share it; tests that delete or conflict work on objects of their own, or on a fresh
server. Expected results of searches are computed from the files' own headers, so the
assertions say "exactly these", never "at least one".
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    generate_uid,
)

from integration import AUTH, CT_PATIENT, MR_PATIENT, DicomFile, encode, multipart_parts

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import LiveServer, ServerFactory

AS_STORED = (("application/dicom", "*"),)
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


# ------------------------------------------------------------------ helpers
def value(item: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object (None if absent or empty)."""
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


def values(items: list[dict[str, Any]], tag: str) -> list[Any]:
    return [value(item, tag) for item in items]


STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"


def on_server(archive: Archive, url: str) -> str:
    """``url`` with the live server's scheme, host and port.

    The server builds absolute URLs from the request's Host header, and dicomweb-client sends
    ``Host: 127.0.0.1`` without the port on most requests (it sets the header itself), which
    by HTTP means port 80; the path is what the server is responsible for.
    """
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.hostname == "127.0.0.1", url
    return archive.server.url + parts.path + (f"?{parts.query}" if parts.query else "")


def http_status(exc: requests.HTTPError) -> int:
    assert exc.response is not None
    return exc.response.status_code


@dataclass
class Archive:
    """The module's server, its client and what was stored in it."""

    server: LiveServer
    client: DICOMwebClient
    files: list[DicomFile]
    store_responses: dict[str, Dataset]
    ct: list[DicomFile]
    mr: list[DicomFile]
    multiframe: DicomFile
    multiframe_j2k: DicomFile
    multiframe_rle: DicomFile
    pyd: dict[str, DicomFile]

    def by_sop(self, sop_uid: str) -> DicomFile:
        return next(f for f in self.files if f.sop_uid == sop_uid)

    def studies_where(self, predicate: Callable[[Dataset], bool]) -> set[str]:
        return {f.study_uid for f in self.files if predicate(f.header)}


@pytest.fixture(scope="module")
def archive(
    server_factory: ServerFactory,
    ct_series: list[DicomFile],
    mr_series: list[DicomFile],
    multiframe: DicomFile,
    multiframe_j2k: DicomFile,
    multiframe_rle: DicomFile,
    pydicom_files: dict[str, DicomFile],
) -> Iterator[Archive]:
    server = server_factory("client-archive")
    try:
        client = DICOMwebClient(url=server.dicomweb, headers=AUTH)
        ct_study = ct_series[0].study_uid
        responses = {
            # One instance per request, to /studies.
            "ct_first": client.store_instances([ct_series[0].dataset()]),
            # Many per request, to /studies/{study}.
            "ct_rest": client.store_instances(
                [f.dataset() for f in ct_series[1:]], study_instance_uid=ct_study
            ),
            "mr": client.store_instances([f.dataset() for f in mr_series]),
            "multiframe": client.store_instances(
                [multiframe.dataset(), multiframe_j2k.dataset(), multiframe_rle.dataset()]
            ),
            "pydicom": client.store_instances([f.dataset() for f in pydicom_files.values()]),
        }
        yield Archive(
            server=server,
            client=client,
            files=[
                *ct_series,
                *mr_series,
                multiframe,
                multiframe_j2k,
                multiframe_rle,
                *pydicom_files.values(),
            ],
            store_responses=responses,
            ct=ct_series,
            mr=mr_series,
            multiframe=multiframe,
            multiframe_j2k=multiframe_j2k,
            multiframe_rle=multiframe_rle,
            pyd=pydicom_files,
        )
    finally:
        server.stop()


# ------------------------------------------------------------------ STOW-RS
def _referenced(response: Dataset) -> list[str]:
    return [str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence]


def test_store_one_instance_per_request(archive: Archive) -> None:
    response = archive.store_responses["ct_first"]
    ct0 = archive.ct[0]
    assert _referenced(response) == [ct0.sop_uid]
    assert "FailedSOPSequence" not in response
    item = response.ReferencedSOPSequence[0]
    assert item.ReferencedSOPClassUID == ct0.sop_class_uid
    # The Retrieve URLs are built from the Host header (PS3.18 Table 10.5.3-1: absolute URLs).
    # dicomweb-client sends "Host: 127.0.0.1" without the port for requests it does not chunk,
    # so only the path can be checked as is; with the port restored, the URLs must work.
    study_path = f"/dicom-web/studies/{ct0.study_uid}"
    assert urlsplit(response.RetrieveURL).path == study_path
    assert urlsplit(item.RetrieveURL).path == (
        f"{study_path}/series/{ct0.series_uid}/instances/{ct0.sop_uid}"
    )
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    got = requests.get(
        on_server(archive, item.RetrieveURL), headers={**AUTH, "Accept": accept}, timeout=30
    )
    assert got.status_code == 200
    assert got.content.count(ct0.data) == 1


def test_store_many_instances_to_the_study_resource(archive: Archive) -> None:
    response = archive.store_responses["ct_rest"]
    assert sorted(_referenced(response)) == sorted(f.sop_uid for f in archive.ct[1:])
    assert "FailedSOPSequence" not in response


def test_store_every_kind_of_object(archive: Archive) -> None:
    expected = [
        *(f.sop_uid for f in archive.mr),
        archive.multiframe.sop_uid,
        archive.multiframe_j2k.sop_uid,
        archive.multiframe_rle.sop_uid,
        *(f.sop_uid for f in archive.pyd.values()),
    ]
    got = [
        uid
        for key in ("mr", "multiframe", "pydicom")
        for uid in _referenced(archive.store_responses[key])
    ]
    assert sorted(got) == sorted(expected)


def test_storing_an_identical_instance_again_succeeds(archive: Archive) -> None:
    mr0 = archive.mr[0]
    response = archive.client.store_instances([mr0.dataset()])
    assert _referenced(response) == [mr0.sop_uid]
    assert "FailedSOPSequence" not in response
    assert (
        len(archive.client.search_for_instances(search_filters={"SOPInstanceUID": mr0.sop_uid}))
        == 1
    )


def test_a_different_object_under_a_stored_uid_is_refused_with_0111(archive: Archive) -> None:
    mr1 = archive.mr[1]
    changed = mr1.dataset()
    changed.PatientComments = "a different object under the same SOP Instance UID"
    with pytest.raises(requests.HTTPError) as caught:
        archive.client.store_instances([changed])
    assert http_status(caught.value) == 409
    body = caught.value.response.json()
    failed = body["00081198"]["Value"]
    assert len(failed) == 1
    assert value(failed[0], "00081155") == mr1.sop_uid
    assert value(failed[0], "00081197") == 0x0111
    assert "00081199" not in body
    # The stored object is the first one, unchanged.
    again = archive.client.retrieve_instance(*mr1.uids)
    assert encode(again) == mr1.data


# ------------------------------------------------------------------ QIDO-RS
def test_search_studies_by_patient_id(archive: Archive) -> None:
    found = archive.client.search_for_studies(search_filters={"PatientID": CT_PATIENT.patient_id})
    study_uid = archive.ct[0].study_uid
    assert values(found, STUDY_UID) == [study_uid]
    study = found[0]
    assert value(study, "00201208") == 20  # NumberOfStudyRelatedInstances
    assert value(study, "00201206") == 1  # NumberOfStudyRelatedSeries
    assert study["00080061"]["Value"] == ["CT"]  # ModalitiesInStudy
    assert value(study, "00100010") == {"Alphabetic": CT_PATIENT.patient_name}
    assert value(study, "00080050") == "ACC-CT-0001"
    retrieve_url = value(study, "00081190")
    assert on_server(archive, retrieve_url) == f"{archive.server.dicomweb}/studies/{study_uid}"


@pytest.mark.parametrize("pattern", ["Müller*", "müller^h*", "MÜLL?R^HANS", "*ller*"])
def test_search_patient_name_wildcard_ignores_case(archive: Archive, pattern: str) -> None:
    found = archive.client.search_for_studies(search_filters={"PatientName": pattern})
    assert values(found, STUDY_UID) == [archive.ct[0].study_uid]


def test_search_patient_name_exact_does_not_match_a_prefix(archive: Archive) -> None:
    assert archive.client.search_for_studies(search_filters={"PatientName": "Müller"}) == []


def test_fuzzy_matching_finds_name_parts(archive: Archive) -> None:
    found = archive.client.search_for_studies(
        fuzzymatching=True, search_filters={"PatientName": "hans mül"}
    )
    assert values(found, STUDY_UID) == [archive.ct[0].study_uid]
    # Without fuzzy matching the same value is an exact match, which fails.
    plain = archive.client.search_for_studies(
        fuzzymatching=False, search_filters={"PatientName": "hans mül"}
    )
    assert plain == []


@pytest.mark.parametrize(
    ("date_range", "low", "high"),
    [
        ("20240101-20240131", "20240101", "20240131"),
        ("20240201-", "20240201", "99999999"),
        ("-20240115", "00000000", "20240115"),
        ("20240302", "20240302", "20240302"),
    ],
)
def test_search_studies_by_date_range(
    archive: Archive, date_range: str, low: str, high: str
) -> None:
    expected = archive.studies_where(
        lambda ds: bool(ds.get("StudyDate")) and low <= ds.StudyDate <= high
    )
    found = archive.client.search_for_studies(search_filters={"StudyDate": date_range})
    assert set(values(found, STUDY_UID)) == expected
    assert len(found) == len(expected)
    assert expected  # the data set must make the check meaningful


def test_search_studies_by_modalities_in_study(archive: Archive) -> None:
    found = archive.client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    assert set(values(found, STUDY_UID)) == archive.studies_where(
        lambda ds: ds.get("Modality") == "MR"
    )
    assert archive.mr[0].study_uid in values(found, STUDY_UID)


def test_search_studies_by_accession_number(archive: Archive) -> None:
    found = archive.client.search_for_studies(search_filters={"AccessionNumber": "ACC-MR-0001"})
    assert values(found, STUDY_UID) == [archive.mr[0].study_uid]


def test_search_studies_by_uid_list(archive: Archive) -> None:
    wanted = [archive.ct[0].study_uid, archive.multiframe.study_uid]
    found = archive.client.search_for_studies(search_filters={"StudyInstanceUID": ",".join(wanted)})
    assert sorted(values(found, STUDY_UID)) == sorted(wanted)


def test_search_series_by_series_number(archive: Archive) -> None:
    found = archive.client.search_for_series(
        study_instance_uid=archive.ct[0].study_uid, search_filters={"SeriesNumber": 3}
    )
    assert values(found, SERIES_UID) == [archive.ct[0].series_uid]
    assert value(found[0], "00080060") == "CT"
    assert value(found[0], "00201209") == 20  # NumberOfSeriesRelatedInstances
    none = archive.client.search_for_series(
        study_instance_uid=archive.ct[0].study_uid, search_filters={"SeriesNumber": 4}
    )
    assert none == []


def test_search_all_series_by_modality_across_studies(archive: Archive) -> None:
    found = archive.client.search_for_series(search_filters={"Modality": "MR"})
    expected = {f.series_uid for f in archive.files if f.header.get("Modality") == "MR"}
    assert set(values(found, SERIES_UID)) == expected
    # A query across studies returns the study's attributes as well (PS3.18 10.6.3.3).
    mine = next(s for s in found if value(s, SERIES_UID) == archive.mr[0].series_uid)
    assert value(mine, "00100020") == MR_PATIENT.patient_id


def test_search_instances_by_sop_class(archive: Archive) -> None:
    found = archive.client.search_for_instances(search_filters={"SOPClassUID": MR_IMAGE_STORAGE})
    expected = {f.sop_uid for f in archive.files if f.sop_class_uid == MR_IMAGE_STORAGE}
    assert set(values(found, SOP_UID)) == expected
    assert len(found) == len(expected)


def test_search_instances_of_a_series(archive: Archive) -> None:
    mr0 = archive.mr[0]
    found = archive.client.search_for_instances(
        study_instance_uid=mr0.study_uid, series_instance_uid=mr0.series_uid
    )
    assert sorted(values(found, SOP_UID)) == sorted(f.sop_uid for f in archive.mr)
    by_sop = {value(i, SOP_UID): i for i in found}
    for f in archive.mr:
        item = by_sop[f.sop_uid]
        assert value(item, "00200013") == int(f.header.InstanceNumber)
        assert value(item, "00280010") == int(f.header.Rows)


def test_includefield_returns_more_attributes(archive: Archive) -> None:
    ct0 = archive.ct[0]
    plain = archive.client.search_for_studies(search_filters={"StudyInstanceUID": ct0.study_uid})
    assert "00081030" not in plain[0]  # StudyDescription is not a default attribute
    found = archive.client.search_for_studies(
        fields=["StudyDescription", "00101010"],  # by keyword and by tag (PatientAge)
        search_filters={"StudyInstanceUID": ct0.study_uid},
    )
    assert value(found[0], "00081030") == ct0.header.StudyDescription
    assert value(found[0], "00101010") == ct0.header.PatientAge


@pytest.mark.parametrize(
    "search", ["search_for_studies", "search_for_series", "search_for_instances"]
)
def test_includefield_never_gives_a_wrong_vr(archive: Archive, search: str) -> None:
    """includefield (PS3.18 10.6.1.2) for Pixel Data (7FE00010, OB or OW) and Smallest Image
    Pixel Value (00280106, US or SS) of CT_small: signed 16-bit, Pixel Data OW, no Smallest
    Image Pixel Value. The dictionary cannot tell these VRs, only the object can, and DICOM
    JSON must name the element's VR (PS3.18 F.2.3): each is left out, or has the object's own
    VR, and Pixel Data only as a BulkDataURI, never inline (QIDO-RS results hold no bulk data).
    Study and series rows hold no pixel data at all."""
    ct = archive.pyd["explicit_le"]
    found = getattr(archive.client, search)(
        fields=["7FE00010", "00280106"], search_filters={"StudyInstanceUID": ct.study_uid}
    )
    assert found
    for item in found:
        pixel_data = item.get("7FE00010")
        assert pixel_data is None or (
            search == "search_for_instances"
            and pixel_data["vr"] == "OW"
            and set(pixel_data) == {"vr", "BulkDataURI"}
        ), pixel_data
        assert "00280106" not in item or item["00280106"]["vr"] == "SS", item["00280106"]


def test_paging_walks_every_instance_exactly_once(archive: Archive) -> None:
    client = archive.client
    everything = client.search_for_instances()
    assert sorted(values(everything, SOP_UID)) == sorted(f.sop_uid for f in archive.files)
    seen: list[str] = []
    offset = 0
    while True:
        page = client.search_for_instances(limit=7, offset=offset)
        assert len(page) <= 7
        if not page:
            break
        seen += values(page, SOP_UID)
        offset += len(page)
    assert len(seen) == len(set(seen)) == len(archive.files)
    assert set(seen) == {f.sop_uid for f in archive.files}
    # dicomweb-client's own paging (get_remaining) sees the same.
    walked = client.search_for_instances(limit=5, get_remaining=True)
    assert sorted(values(walked, SOP_UID)) == sorted(seen)


def test_paging_studies_with_filters(archive: Archive) -> None:
    expected = archive.studies_where(lambda ds: ds.get("StudyDate", "") >= "20000101")
    seen: list[str] = []
    for offset in range(0, len(expected) + 2, 2):
        page = archive.client.search_for_studies(
            limit=2, offset=offset, search_filters={"StudyDate": "20000101-"}
        )
        seen += values(page, STUDY_UID)
    assert sorted(seen) == sorted(expected)


# ------------------------------------------------------------------ WADO-RS: objects
def test_retrieve_study_as_stored_is_byte_identical(archive: Archive) -> None:
    # Without media_types, dicomweb-client asks for plain application/dicom, i.e. Explicit VR
    # Little Endian (PS3.18 8.7.3.5.2); ('application/dicom', '*') asks for the stored syntax.
    ct_study = archive.ct[0].study_uid
    got = archive.client.retrieve_study(ct_study, media_types=AS_STORED)
    assert sorted(str(ds.SOPInstanceUID) for ds in got) == sorted(f.sop_uid for f in archive.ct)
    for ds in got:
        assert encode(ds) == archive.by_sop(str(ds.SOPInstanceUID)).data


def test_retrieve_study_of_mixed_syntaxes_as_stored(archive: Archive) -> None:
    mf = archive.multiframe
    got = archive.client.retrieve_study(mf.study_uid, media_types=AS_STORED)
    assert {str(ds.SOPInstanceUID) for ds in got} == {mf.sop_uid, archive.multiframe_j2k.sop_uid}
    for ds in got:
        original = archive.by_sop(str(ds.SOPInstanceUID))
        assert ds.file_meta.TransferSyntaxUID == original.transfer_syntax
        assert encode(ds) == original.data


def test_retrieve_series_as_stored(archive: Archive) -> None:
    mr0 = archive.mr[0]
    got = archive.client.retrieve_series(mr0.study_uid, mr0.series_uid, media_types=AS_STORED)
    assert len(got) == len(archive.mr)
    for ds in got:
        assert encode(ds) == archive.by_sop(str(ds.SOPInstanceUID)).data


@pytest.mark.parametrize(
    "key",
    [
        "explicit_le",
        "jpeg_baseline",
        "jpeg_ls",
        "j2k",
        "j2k_lossless",
        "rle",
        "rle_2frame",
        "deflate",
        "big_endian",
        "implicit",
        "priv_sq",
        "nested_priv_sq",
        "rtplan",
        "rtstruct",
        "sr",
    ],
)
def test_retrieve_instance_as_stored(archive: Archive, key: str) -> None:
    f = archive.pyd[key]
    # retrieve_instance's default media type is ('application/dicom', '*').
    got = archive.client.retrieve_instance(*f.uids)
    assert got.file_meta.TransferSyntaxUID == f.transfer_syntax
    assert encode(got) == f.data


def test_private_sequences_survive(archive: Archive) -> None:
    for key in ("priv_sq", "nested_priv_sq"):
        f = archive.pyd[key]
        got = archive.client.retrieve_instance(*f.uids)
        assert got == f.dataset()
        private = [e for e in got.iterall() if e.tag.is_private]
        assert private, f"{key} lost its private elements"


def test_default_retrieve_decompresses_jpeg2000(archive: Archive) -> None:
    j2k = archive.multiframe_j2k
    assert j2k.transfer_syntax == JPEG2000Lossless
    got = archive.client.retrieve_instance(
        *j2k.uids, media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, j2k.dataset().pixel_array)
    # Plain application/dicom (dicomweb-client's retrieve_series default) means the same.
    series = archive.client.retrieve_series(j2k.study_uid, j2k.series_uid)
    assert j2k.sop_uid in [ds.SOPInstanceUID for ds in series]
    assert {ds.file_meta.TransferSyntaxUID for ds in series} == {ExplicitVRLittleEndian}


def test_retrieve_with_transfer_syntax_star_keeps_jpeg2000(archive: Archive) -> None:
    j2k = archive.multiframe_j2k
    got = archive.client.retrieve_instance(*j2k.uids, media_types=AS_STORED)
    assert got.file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert encode(got) == j2k.data


def test_unsupported_transfer_syntax_is_406(archive: Archive) -> None:
    j2k = archive.multiframe_j2k
    mpeg2 = "1.2.840.10008.1.2.4.100"
    with pytest.raises(requests.HTTPError) as caught:
        archive.client.retrieve_instance(*j2k.uids, media_types=(("application/dicom", mpeg2),))
    assert http_status(caught.value) == 406
    assert "reason" in caught.value.response.json()


# ------------------------------------------------------------------ WADO-RS: metadata, bulk
def test_study_metadata(archive: Archive) -> None:
    ct = archive.ct
    meta = archive.client.retrieve_study_metadata(ct[0].study_uid)
    assert sorted(values(meta, SOP_UID)) == sorted(f.sop_uid for f in ct)
    for item in meta:
        f = archive.by_sop(value(item, SOP_UID))
        assert value(item, "00100020") == CT_PATIENT.patient_id
        assert value(item, "00200013") == int(f.header.InstanceNumber)
        assert item["00280030"]["Value"] == [float(v) for v in f.header.PixelSpacing]
        pixel = item["7FE00010"]
        assert "Value" not in pixel and "InlineBinary" not in pixel
        assert on_server(archive, pixel["BulkDataURI"]).startswith(
            f"{archive.server.dicomweb}/studies/{f.study_uid}/series/{f.series_uid}"
            f"/instances/{f.sop_uid}/"
        )


def test_series_and_instance_metadata_match_pydicom(archive: Archive) -> None:
    mr0 = archive.mr[0]
    series_meta = archive.client.retrieve_series_metadata(mr0.study_uid, mr0.series_uid)
    assert sorted(values(series_meta, SOP_UID)) == sorted(f.sop_uid for f in archive.mr)
    instance_meta = archive.client.retrieve_instance_metadata(*mr0.uids)
    assert instance_meta in series_meta
    # The JSON is the PS3.18 Annex F model: apart from bulk data it must read back into the
    # same data set that was stored.
    expected = mr0.dataset()
    del expected.PixelData
    uri_free = {k: v for k, v in instance_meta.items() if "BulkDataURI" not in v}
    assert Dataset.from_json(uri_free) == expected


@pytest.mark.parametrize("which", ["ct", "multiframe", "multiframe_j2k", "rle", "deflate"])
def test_bulkdata_uri_gives_the_pixel_data(archive: Archive, which: str) -> None:
    f = {
        "ct": archive.ct[4],
        "multiframe": archive.multiframe,
        "multiframe_j2k": archive.multiframe_j2k,
        "rle": archive.pyd["rle"],
        "deflate": archive.pyd["deflate"],
    }[which]
    meta = archive.client.retrieve_instance_metadata(*f.uids)
    uri = on_server(archive, meta["7FE00010"]["BulkDataURI"])
    parts = archive.client.retrieve_bulkdata(uri)
    assert len(parts) == 1
    # For encapsulated Pixel Data the value is the item-framed fragments, as pydicom holds it.
    assert parts[0] == f.dataset().PixelData
    # A byte range of it (PS3.18 8.3.? Range on bulk data) is that slice.
    start, end = 100, 1123
    ranged = archive.client.retrieve_bulkdata(uri, byte_range=(start, end))
    assert ranged == [parts[0][start : end + 1]]


# ------------------------------------------------------------------ WADO-RS: frames
def test_native_frames_single_and_list(archive: Archive) -> None:
    mf = archive.multiframe
    pixels = mf.dataset().pixel_array
    client = archive.client
    [first] = client.retrieve_instance_frames(*mf.uids, frame_numbers=[1])
    assert first == pixels[0].tobytes()
    # In any order; each frame once (PS3.18 10.4.1.1.4: non-duplicate frame numbers).
    wanted = [50, 2, 25]
    got = client.retrieve_instance_frames(*mf.uids, frame_numbers=wanted)
    assert got == [pixels[n - 1].tobytes() for n in wanted]
    with pytest.raises(requests.HTTPError) as refused:
        client.retrieve_instance_frames(*mf.uids, frame_numbers=[50, 2, 25, 2])
    assert refused.value.response.status_code == 400


def test_single_frame_instance_has_frame_one(archive: Archive) -> None:
    ct5 = archive.ct[5]
    [frame] = archive.client.retrieve_instance_frames(*ct5.uids, frame_numbers=[1])
    assert frame == ct5.dataset().PixelData


def test_compressed_frames_as_stored(archive: Archive) -> None:
    j2k = archive.multiframe_j2k
    ds = j2k.dataset()
    fragments = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    got = archive.client.retrieve_instance_frames(
        *j2k.uids, frame_numbers=[3, 1, 50], media_types=(("image/jp2", JPEG2000Lossless),)
    )
    assert got == [fragments[2], fragments[0], fragments[49]]


def test_compressed_frames_decoded_on_request(archive: Archive) -> None:
    j2k, native = archive.multiframe_j2k, archive.multiframe
    pixels = native.dataset().pixel_array  # the same pixels, lossless
    # dicomweb-client's default frame media type is application/octet-stream (uncompressed).
    got = archive.client.retrieve_instance_frames(*j2k.uids, frame_numbers=[7, 42])
    assert got == [pixels[6].tobytes(), pixels[41].tobytes()]


@pytest.mark.parametrize(
    ("key", "media_type"),
    [
        ("rle", ("image/dicom-rle", "1.2.840.10008.1.2.5")),
        ("jpeg_baseline", ("image/jpeg", "1.2.840.10008.1.2.4.50")),
        ("jpeg_ls", ("image/jls", "1.2.840.10008.1.2.4.80")),
    ],
)
def test_compressed_frames_of_pydicom_files(
    archive: Archive, key: str, media_type: tuple[str, str]
) -> None:
    f = archive.pyd[key]
    ds = f.dataset()
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
    got = archive.client.retrieve_instance_frames(
        *f.uids, frame_numbers=[1], media_types=(media_type,)
    )
    assert got == [frames[0]]
    decoded = archive.client.retrieve_instance_frames(*f.uids, frame_numbers=[1])
    assert len(decoded[0]) == ds.Rows * ds.Columns * ds.SamplesPerPixel * (ds.BitsAllocated // 8)


# ------------------------------------------------------------------ rendered, thumbnails
def _image(data: bytes, fmt: str) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == fmt
    return image


def test_rendered_instance(archive: Archive) -> None:
    ct3 = archive.ct[3]
    jpeg = archive.client.retrieve_instance_rendered(*ct3.uids, media_types=("image/jpeg",))
    image = _image(jpeg, "JPEG")
    assert image.size == (ct3.header.Columns, ct3.header.Rows)
    png = archive.client.retrieve_instance_rendered(*ct3.uids, media_types=("image/png",))
    assert _image(png, "PNG").size == image.size
    # The phantom is not a blank image.
    assert np.asarray(image).std() > 5


def test_rendered_frames(archive: Archive) -> None:
    mf = archive.multiframe
    first = archive.client.retrieve_instance_frames_rendered(
        *mf.uids, frame_numbers=[1], media_types=("image/png",)
    )
    last = archive.client.retrieve_instance_frames_rendered(
        *mf.uids, frame_numbers=[50], media_types=("image/png",)
    )
    a, b = _image(first, "PNG"), _image(last, "PNG")
    assert a.size == b.size == (mf.header.Columns, mf.header.Rows)
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_rendered_with_viewport(archive: Archive) -> None:
    mr0 = archive.mr[0]
    jpeg = archive.client.retrieve_instance_rendered(
        *mr0.uids, media_types=("image/jpeg",), params={"viewport": "64,64"}
    )
    assert max(_image(jpeg, "JPEG").size) == 64


def test_rendered_compressed_color(archive: Archive) -> None:
    f = archive.pyd["jpeg_baseline"]
    jpeg = archive.client.retrieve_instance_rendered(*f.uids, media_types=("image/jpeg",))
    assert _image(jpeg, "JPEG").mode == "RGB"


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_thumbnails(archive: Archive, level: str) -> None:
    # dicomweb-client has no thumbnail call (PS3.18 10.4.1.1.? thumbnail resources): requests.
    ct0 = archive.ct[0]
    path = {
        "study": f"/studies/{ct0.study_uid}",
        "series": f"/studies/{ct0.study_uid}/series/{ct0.series_uid}",
        "instance": f"/studies/{ct0.study_uid}/series/{ct0.series_uid}/instances/{ct0.sop_uid}",
    }[level]
    response = requests.get(
        f"{archive.server.dicomweb}{path}/thumbnail",
        headers={**AUTH, "Accept": "image/jpeg"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/jpeg")
    assert max(_image(response.content, "JPEG").size) <= 128


# ------------------------------------------------------------------ WADO-URI
def _wado_uri(archive: Archive, f: DicomFile, **params: str) -> requests.Response:
    query = {
        "requestType": "WADO",
        "studyUID": f.study_uid,
        "seriesUID": f.series_uid,
        "objectUID": f.sop_uid,
        **params,
    }
    return requests.get(f"{archive.server.url}/wado", params=query, timeout=30, headers=AUTH)


def test_wado_uri_application_dicom(archive: Archive) -> None:
    f = archive.pyd["j2k"]
    response = _wado_uri(archive, f, contentType="application/dicom")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom")
    assert response.content == f.data


def test_wado_uri_image_jpeg(archive: Archive) -> None:
    ct0 = archive.ct[0]
    response = _wado_uri(archive, ct0, contentType="image/jpeg")
    assert response.status_code == 200
    assert _image(response.content, "JPEG").size == (ct0.header.Columns, ct0.header.Rows)
    default = _wado_uri(archive, ct0, rows="100", columns="100")
    assert max(_image(default.content, "JPEG").size) <= 100


# ------------------------------------------------------------------ DELETE (a fresh archive)
def _store_and_check(client: DICOMwebClient, files: list[DicomFile]) -> None:
    response = client.store_instances([f.dataset() for f in files])
    assert sorted(_referenced(response)) == sorted(f.sop_uid for f in files)


def _assert_gone(client: DICOMwebClient, f: DicomFile) -> None:
    with pytest.raises(requests.HTTPError) as caught:
        client.retrieve_instance(*f.uids)
    assert http_status(caught.value) == 404
    with pytest.raises(requests.HTTPError) as caught:
        client.retrieve_instance_metadata(*f.uids)
    assert http_status(caught.value) == 404
    assert client.search_for_instances(search_filters={"SOPInstanceUID": f.sop_uid}) == []


def test_delete_instance_series_and_study(
    fresh_server: LiveServer, mr_series: list[DicomFile], multiframe: DicomFile,
    multiframe_j2k: DicomFile,
) -> None:  # fmt: skip
    client = DICOMwebClient(url=fresh_server.dicomweb, headers=AUTH)
    _store_and_check(client, [*mr_series, multiframe, multiframe_j2k])

    victim = mr_series[0]
    client.delete_instance(*victim.uids)
    _assert_gone(client, victim)
    remaining = client.search_for_instances(
        study_instance_uid=victim.study_uid, series_instance_uid=victim.series_uid
    )
    assert sorted(values(remaining, SOP_UID)) == sorted(f.sop_uid for f in mr_series[1:])
    [study] = client.search_for_studies(search_filters={"StudyInstanceUID": victim.study_uid})
    assert value(study, "00201208") == len(mr_series) - 1

    client.delete_series(victim.study_uid, victim.series_uid)
    for f in mr_series:
        _assert_gone(client, f)
    assert client.search_for_series(search_filters={"SeriesInstanceUID": victim.series_uid}) == []

    client.delete_study(multiframe.study_uid)
    _assert_gone(client, multiframe)
    _assert_gone(client, multiframe_j2k)
    with pytest.raises(requests.HTTPError) as caught:
        client.retrieve_study(multiframe.study_uid)
    assert http_status(caught.value) == 404
    assert client.search_for_studies() == []

    # A deleted object may be stored again, and is then the same as before.
    _store_and_check(client, [multiframe])
    assert encode(client.retrieve_instance(*multiframe.uids)) == multiframe.data


def test_delete_of_unknown_resource_is_404(archive: Archive) -> None:
    # The module's archive: no study there has this UID, and nothing is deleted.
    with pytest.raises(requests.HTTPError) as caught:
        archive.client.delete_study("1.2.3.4.5")
    assert http_status(caught.value) == 404


# ------------------------------------------------------------------ every transfer syntax
IMAGE_KEYS = [
    "explicit_le",
    "jpeg_baseline",
    "jpeg_ls",
    "j2k",
    "j2k_lossless",
    "rle",
    "rle_2frame",
    "deflate",
    "big_endian",
    "implicit",
]
ALL_PYDICOM_KEYS = [*IMAGE_KEYS, "priv_sq", "nested_priv_sq", "rtplan", "rtstruct", "sr"]


@pytest.mark.parametrize("key", ALL_PYDICOM_KEYS)
def test_instance_metadata_reads_back_as_the_stored_data_set(archive: Archive, key: str) -> None:
    f = archive.pyd[key]
    meta = archive.client.retrieve_instance_metadata(*f.uids)
    expected = f.dataset()
    # nested_priv_SQ.dcm keeps its sequences in group 0001, which PS3.5 7.8.1 forbids; the
    # archive stores and returns them in the object but leaves them out of the metadata.
    for element in list(expected):
        if element.tag.group < 0x0008:
            del expected[element.tag]
    bulk = {tag for tag, element in meta.items() if "BulkDataURI" in element}
    for tag in bulk:
        del expected[int(tag, 16)]
    without_bulk = {tag: element for tag, element in meta.items() if tag not in bulk}
    got = Dataset.from_json(without_bulk)
    assert got == expected
    if "PixelData" in f.header or key in IMAGE_KEYS:
        assert "7FE00010" in bulk


@pytest.mark.parametrize("key", IMAGE_KEYS)
def test_bulkdata_of_every_transfer_syntax(archive: Archive, key: str) -> None:
    f = archive.pyd[key]
    meta = archive.client.retrieve_instance_metadata(*f.uids)
    [pixels] = archive.client.retrieve_bulkdata(on_server(archive, meta["7FE00010"]["BulkDataURI"]))
    assert pixels == f.dataset().PixelData


@pytest.mark.parametrize("key", IMAGE_KEYS)
def test_decoded_frames_of_every_transfer_syntax(archive: Archive, key: str) -> None:
    # application/octet-stream frames are native little-endian pixels (PS3.18 8.7.3.5.2),
    # whatever the stored syntax: big endian and deflated objects included.
    f = archive.pyd[key]
    ds = f.dataset()
    count = int(ds.get("NumberOfFrames", 1))
    arr = ds.pixel_array.reshape(count, -1)
    got = archive.client.retrieve_instance_frames(*f.uids, frame_numbers=list(range(1, count + 1)))
    assert len(got) == count
    for n, frame in enumerate(got):
        expected = arr[n].astype(arr.dtype.newbyteorder("<")).tobytes()
        if key == "jpeg_baseline":
            # A lossy JPEG decodes to slightly different values in different decoders.
            assert len(frame) == len(expected)
        else:
            assert frame == expected, f"frame {n + 1}"


@pytest.mark.parametrize("key", IMAGE_KEYS)
def test_explicit_vr_le_retrieve_of_every_transfer_syntax(archive: Archive, key: str) -> None:
    f = archive.pyd[key]
    got = archive.client.retrieve_instance(
        *f.uids, media_types=(("application/dicom", ExplicitVRLittleEndian),)
    )
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    original = f.dataset()
    if key == "jpeg_baseline":
        assert got.pixel_array.shape == original.pixel_array.shape
    else:
        assert np.array_equal(got.pixel_array, original.pixel_array)
    assert got.SOPInstanceUID == f.sop_uid
    assert got.PatientName == original.PatientName


@pytest.mark.parametrize("key", IMAGE_KEYS)
def test_rendered_of_every_transfer_syntax(archive: Archive, key: str) -> None:
    f = archive.pyd[key]
    png = archive.client.retrieve_instance_rendered(*f.uids, media_types=("image/png",))
    assert _image(png, "PNG").size == (f.header.Columns, f.header.Rows)


@pytest.mark.parametrize(
    "target",
    [
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.5",  # RLE Lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    ],
)
@pytest.mark.parametrize("which", ["ct", "mr", "multiframe_rle", "big_endian"])
def test_transcoding_to_every_offered_syntax_is_lossless(
    archive: Archive, target: str, which: str
) -> None:
    f = {
        "ct": archive.ct[9],
        "mr": archive.mr[3],
        "multiframe_rle": archive.multiframe_rle,
        "big_endian": archive.pyd["big_endian"],
    }[which]
    if target in ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"):
        got = archive.client.retrieve_instance(
            *f.uids, media_types=(("application/dicom", target),)
        )
    else:
        # dicomweb-client refuses to ask for Implicit VR or Deflate in Accept, so the request
        # names the syntax in the accept query parameter, which wins (PS3.18 8.3.3.1).
        accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
        got = archive.client.retrieve_instance(*f.uids, additional_params={"accept": accept})
    assert got.file_meta.TransferSyntaxUID == target
    assert np.array_equal(got.pixel_array, f.dataset().pixel_array)
    assert got.SOPInstanceUID == f.sop_uid


# ------------------------------------------------------------------ WADO-RS: transcoding (issue 11)
def _retrieve_in(archive: Archive, f: DicomFile, target: str) -> Dataset:
    if target == JPEGLSLossless:
        return archive.client.retrieve_instance(
            *f.uids, media_types=(("application/dicom", target),)
        )
    # dicomweb-client's own list of transfer syntaxes predates HTJ2K and refuses to put it in
    # Accept, so the request names it in the accept query parameter, which wins (PS3.18 8.3.3.1).
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
    return archive.client.retrieve_instance(*f.uids, additional_params={"accept": accept})


@pytest.mark.parametrize("target", [HTJ2KLossless, JPEGLSLossless])
@pytest.mark.parametrize("key", ["ct", "multiframe", "multiframe_rle", "rle_2frame", "jpeg_ls"])
def test_retrieve_in_htj2k_or_jpeg_ls_lossless(archive: Archive, key: str, target: str) -> None:
    """PS3.18 8.7.3.5.2: a transfer-syntax parameter the origin supports is honoured; HTJ2K
    Lossless and JPEG-LS Lossless were 406 before issue 11."""
    picked = {"ct": archive.ct[3], "multiframe": archive.multiframe}
    picked["multiframe_rle"] = archive.multiframe_rle
    f = picked.get(key) or archive.pyd[key]
    got = _retrieve_in(archive, f, target)
    assert got.file_meta.TransferSyntaxUID == target
    assert got.SOPInstanceUID == f.sop_uid
    assert np.array_equal(got.pixel_array, f.dataset().pixel_array)


@pytest.mark.parametrize(
    "target",
    [
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline: lossy
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless: lossy
        "1.2.840.10008.1.2.4.91",  # JPEG 2000 (lossy allowed)
        "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL: progression order not produced
        "1.2.840.10008.1.2.4.203",  # HTJ2K (lossy allowed)
    ],
)
def test_lossy_or_unproduced_syntax_stays_406(archive: Archive, target: str) -> None:
    """PS3.18 8.7.3.5.2 / 8.7.3.3: a syntax the origin does not offer is 406 Not Acceptable.
    nubis never encodes lossily (that would need a new SOP Instance UID, PS3.4 C.4.3.1.2), so
    the new HTJ2K and JPEG-LS encoders add only their lossless syntaxes."""
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
    with pytest.raises(requests.HTTPError) as caught:
        archive.client.retrieve_instance(*archive.ct[3].uids, additional_params={"accept": accept})
    assert http_status(caught.value) == 406
    assert "reason" in caught.value.response.json()


@pytest.mark.parametrize("target", [HTJ2KLossless, JPEGLSLossless])
def test_instance_without_pixels_in_a_codec_is_406(archive: Archive, target: str) -> None:
    """An SR has no pixel data to encode: a codec syntax cannot represent it (PS3.5 A.4), so
    asking for only that syntax is 406, not a relabelled copy."""
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
    with pytest.raises(requests.HTTPError) as caught:
        archive.client.retrieve_instance(
            *archive.pyd["sr"].uids, additional_params={"accept": accept}
        )
    assert http_status(caught.value) == 406


def test_htj2k_part_says_its_transfer_syntax(archive: Archive) -> None:
    f = archive.ct[0]
    url = (
        f"{archive.server.dicomweb}/studies/{f.study_uid}/series/{f.series_uid}"
        f"/instances/{f.sop_uid}"
    )
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={HTJ2KLossless}'
    response = httpx.get(url, headers={**AUTH, "Accept": accept}, timeout=60)
    assert response.status_code == 200, response.text
    assert f"transfer-syntax={HTJ2KLossless}" in response.headers["content-type"]
    [(headers, payload)] = multipart_parts(response.headers["content-type"], response.content)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={HTJ2KLossless}"
    assert dcmread(io.BytesIO(payload)).file_meta.TransferSyntaxUID == HTJ2KLossless


def test_jpeg_lossless_instance_served_native(
    live_server: LiveServer, ct_series: list[DicomFile], tmp_path: Path
) -> None:
    """A JPEG lossless object (dcmtk's encoder, the default install's decoder, no GPL codec)
    retrieved in Explicit VR Little Endian has exactly the pixels that were compressed. It goes
    to the session's archive under UIDs of its own, so this module's archive stays as listed."""
    if shutil.which("dcmcjpeg") is None:
        pytest.skip(reason="dcmtk is installed by scripts/test.sh")
    source = ct_series[5]
    compressed = tmp_path / "jll.dcm"
    subprocess.run(["dcmcjpeg", "+e1", str(source.path), str(compressed)], check=True, timeout=60)
    ds = dcmread(compressed)
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID = "I11-JPEG-LOSSLESS"
    client = DICOMwebClient(url=live_server.dicomweb, headers=AUTH)
    client.store_instances([ds])
    got = client.retrieve_instance(
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        media_types=(("application/dicom", ExplicitVRLittleEndian),),
    )
    assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(got.pixel_array, source.dataset().pixel_array)


def test_study_streamed_as_stored_has_its_length(archive: Archive) -> None:
    """An answer sent as stored has a Content-Length known before its first byte (RFC 9112
    6.3): the client need not undo a chunked coding, and a cut answer is seen as cut."""
    mf = archive.multiframe
    url = f"{archive.server.dicomweb}/studies/{mf.study_uid}"
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    with httpx.stream("GET", url, headers={**AUTH, "Accept": accept}, timeout=60) as r:
        assert r.status_code == 200
        body = b"".join(r.iter_raw())
        assert "transfer-encoding" not in r.headers
        assert int(r.headers["content-length"]) == len(body) > 4 << 20
    parts = multipart_parts(r.headers["content-type"], body)
    assert sorted(len(payload) for _, payload in parts) == sorted(
        len(archive.by_sop(uid).data) for uid in (mf.sop_uid, archive.multiframe_j2k.sop_uid)
    )
