"""End to end on Ceph: ``nubis serve`` with ``blobs = s3://...`` stores through STOW-RS and
serves byte-exact objects, frames and renderings through WADO-RS, from a real Ceph RGW over
HTTPS (the archive encrypts at rest by default, so reads go through the encrypted store and
the S3 store's seekable ``open``). A store that is down refuses objects, never acknowledges them.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000Lossless

from contract import Ceph
from integration import AUTH
from integration.server import ACCEPT_AS_STORED, Server, start_server
from nubis.tools import synth
from nubis.web.dicomweb.multipart import iter_multipart, new_boundary

PATIENT = synth.PatientSpec("NUBIS-S3-01", "Ceph^Rados", "19800101", "O")
FRAME_BYTES = 256 * 256 * 2


@dataclass(frozen=True)
class Stored:
    path: Path

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def header(self) -> pydicom.Dataset:
        return pydicom.dcmread(self.path, stop_before_pixels=True)

    def url(self, server: Server) -> str:
        h = self.header
        return (
            f"{server.dicomweb}/studies/{h.StudyInstanceUID}/series/{h.SeriesInstanceUID}"
            f"/instances/{h.SOPInstanceUID}"
        )


def stow(server: Server, files: list[Path]) -> httpx.Response:
    boundary = new_boundary()
    parts = [({"Content-Type": "application/dicom"}, [p.read_bytes()]) for p in files]
    return httpx.post(
        f"{server.dicomweb}/studies",
        content=b"".join(iter_multipart(parts, boundary)),
        headers={
            **AUTH,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=120,
    )


def multipart_parts(response: httpx.Response) -> list[bytes]:
    """Bodies of a multipart/related response, in order."""
    boundary = response.headers["content-type"].split("boundary=", 1)[1].strip('"').split(";")[0]
    delimiter = b"\r\n--" + boundary.strip('"').encode()
    body = b"\r\n" + response.content
    bodies = []
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        bodies.append(part.split(b"\r\n\r\n", 1)[1])
    return bodies


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stored]:
    folder = tmp_path_factory.mktemp("s3-objects")
    # 160 native frames: 21 MB, over the 8 MiB multipart threshold of the store below.
    large = synth.make_multiframe(folder / "mf.dcm", frames=160, seed=31, patient=PATIENT)
    study = str(pydicom.dcmread(large, stop_before_pixels=True).StudyInstanceUID)
    j2k = synth.make_multiframe(
        folder / "j2k.dcm",
        frames=6,
        seed=32,
        patient=PATIENT,
        study_uid=study,
        transfer_syntax=JPEG2000Lossless,
    )
    ct = synth.make_ct_series(
        folder / "ct",
        n_instances=3,
        patient=PATIENT,
        seed=33,
        rows=128,
        columns=128,
        study_uid=study,
    )
    out = {"multiframe": Stored(large), "j2k": Stored(j2k)}
    out.update({f"ct{i}": Stored(p) for i, p in enumerate(ct)})
    return out


@pytest.fixture(scope="module")
def archive(
    ceph: Ceph, tmp_path_factory: pytest.TempPathFactory, files: dict[str, Stored]
) -> Iterator[tuple[Server, str]]:
    prefix = "e2e-archive"
    url = ceph.url(prefix, tls=True, multipart_threshold="8M", part_size="8M")
    server = start_server(
        tmp_path_factory.mktemp("s3-archive") / "data",
        env={"NUBIS_BLOBS": url},
        log_level="warning",
    )
    try:
        response = stow(server, [f.path for f in files.values()])
        assert response.status_code == 200, f"{response.text[:500]}\n{server.log()[-3000:]}"
        yield server, prefix
    finally:
        server.stop()


def test_objects_live_in_the_bucket(
    archive: tuple[Server, str], ceph: Ceph, files: dict[str, Stored]
) -> None:
    server, prefix = archive
    listed = ceph.client().list_objects_v2(Bucket=ceph.bucket, Prefix=prefix + "/")
    assert len(listed.get("Contents", [])) == len(files)
    # Stateless node: nothing of the objects stays on the node's disk.
    local_blobs = server.data_dir / "blobs"
    assert not local_blobs.exists() or not any(p.is_file() for p in local_blobs.rglob("*"))


def test_instances_are_retrieved_byte_exact(
    archive: tuple[Server, str], files: dict[str, Stored]
) -> None:
    server, _ = archive
    for name, stored in files.items():
        response = httpx.get(
            stored.url(server), headers={**AUTH, "Accept": ACCEPT_AS_STORED}, timeout=60
        )
        assert response.status_code == 200, (name, response.text[:300])
        assert multipart_parts(response) == [stored.data], name


def test_study_is_retrieved_whole_and_in_order(
    archive: tuple[Server, str], files: dict[str, Stored]
) -> None:
    """A study from the object store: small objects are fetched ahead in parallel, the 21 MB one
    streams; the response holds every object byte-exact in the archive's stable order (the
    order of the study's metadata, PS3.18 10.4.1.1.1)."""
    server, _ = archive
    study = str(files["multiframe"].header.StudyInstanceUID)
    by_uid = {str(f.header.SOPInstanceUID): f.data for f in files.values()}
    metadata = httpx.get(
        f"{server.dicomweb}/studies/{study}/metadata", headers=AUTH, timeout=60
    ).json()
    order = [item["00080018"]["Value"][0] for item in metadata]
    assert sorted(order) == sorted(by_uid)
    response = httpx.get(
        f"{server.dicomweb}/studies/{study}",
        headers={**AUTH, "Accept": ACCEPT_AS_STORED},
        timeout=60,
    )
    assert response.status_code == 200, response.text[:300]
    assert multipart_parts(response) == [by_uid[uid] for uid in order]


def test_native_frames_are_byte_ranges(
    archive: tuple[Server, str], files: dict[str, Stored]
) -> None:
    server, _ = archive
    stored = files["multiframe"]
    pixels = pydicom.dcmread(stored.path).PixelData
    wanted = [1, 2, 64, 65, 160]  # frame 64/65 straddle the first 8 MiB part boundary
    response = httpx.get(
        f"{stored.url(server)}/frames/{','.join(map(str, wanted))}",
        headers={**AUTH, "Accept": 'multipart/related; type="application/octet-stream"'},
        timeout=60,
    )
    assert response.status_code == 200, response.text[:300]
    expected = [pixels[(n - 1) * FRAME_BYTES : n * FRAME_BYTES] for n in wanted]
    assert multipart_parts(response) == expected


def test_compressed_frames_as_stored(archive: tuple[Server, str], files: dict[str, Stored]) -> None:
    server, _ = archive
    stored = files["j2k"]
    ds = pydicom.dcmread(stored.path)
    fragments = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    response = httpx.get(
        f"{stored.url(server)}/frames/1,6",
        headers={
            **AUTH,
            "Accept": f'multipart/related; type="image/jp2"; transfer-syntax={JPEG2000Lossless}',
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text[:300]
    assert multipart_parts(response) == [fragments[0], fragments[5]]


def test_rendered_frame_decodes_from_the_store(
    archive: tuple[Server, str], files: dict[str, Stored]
) -> None:
    server, _ = archive
    response = httpx.get(
        f"{files['j2k'].url(server)}/frames/3/rendered",
        headers={**AUTH, "Accept": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200, response.text[:300]
    assert response.content.startswith(b"\x89PNG")


def test_store_down_refuses_and_acknowledges_nothing(
    ceph: Ceph, tmp_path: Path, files: dict[str, Stored]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = sock.getsockname()[1]
        url = f"s3://{ceph.bucket}/down?endpoint=http://127.0.0.1:{port}&max_attempts=2"
        server = start_server(tmp_path / "data", env={"NUBIS_BLOBS": url}, log_level="error")
        try:
            response = stow(server, [files["ct0"].path])
            assert response.status_code == 409, response.text[:300]
            [failed] = response.json()["00081198"]["Value"]
            assert failed["00081197"]["Value"] == [0xA700]
            search = httpx.get(
                f"{server.dicomweb}/studies",
                params={"PatientID": PATIENT.patient_id},
                headers=AUTH,
                timeout=30,
            )
            assert search.status_code in (200, 204) and not search.content.strip(b"[]")
        finally:
            server.stop()
