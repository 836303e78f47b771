"""DIMSE Verification and Storage SCP against dcmtk's echoscu, storescu and dcmsend.

PS3.4 A (Verification), B (Storage: B.2.3 statuses), PS3.7 9.1.1 (C-STORE) and 9.1.5
(C-ECHO). What arrives by C-STORE is stored byte-exact and found by QIDO-RS.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, HTJ2KLossless, JPEG2000Lossless, RLELossless
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from integration import AUTH, DicomFile
from integration.dimse_helpers import AE as NUBIS_AE
from integration.dimse_helpers import (
    Dimse,
    data_set_offset,
    dataset_bytes,
    file_data_set_sha256,
    findscu,
    free_port,
    need_dcmtk,
    run,
    sent_by_dcmtk,
)
from integration.server import ACCEPT_AS_STORED, index_rows, read_blob, start_server
from nubis.tools import synth
from nubis.tools.synth import make_large_instance

PYDICOM_TS_FLAG = {
    # storescu proposes only uncompressed syntaxes unless told which compressed one to offer.
    "jpeg_baseline": "-xy",
    "jpeg_ls": "-xt",
    "j2k": "-xw",
    "rle": "-xr",
    "rle_2frame": "-xr",
    "deflate": "-xd",
}


@pytest.fixture(scope="module")
def dimse(server_factory) -> Iterator[Dimse]:  # type: ignore[no-untyped-def]
    need_dcmtk("echoscu", "storescu", "dcmsend")
    port = free_port()
    server = server_factory("dimse-store", "--dimse-port", str(port))
    yield Dimse(server, port)


def stored_bytes(dimse: Dimse, sop_uid: str) -> bytes:
    rows = {r.sop_instance_uid: r for r in index_rows(dimse.data_dir)}
    return read_blob(dimse.data_dir, rows[sop_uid])


def test_echo(dimse: Dimse) -> None:
    """C-ECHO (PS3.7 9.1.5) answers success."""
    run(["echoscu", "-aet", "ECHOER", "-aec", NUBIS_AE, "127.0.0.1", str(dimse.port)])


def test_storescu_uncompressed_and_compressed(
    dimse: Dimse, pydicom_files: dict[str, DicomFile]
) -> None:
    """storescu C-STORE (PS3.4 B.2) in each file's own transfer syntax: stored byte-exact
    (the data set as sent; the file meta is rebuilt from the request, PS3.10 7.1)."""
    for key in ("explicit_le", "implicit", "jpeg_baseline", "jpeg_ls", "j2k", "rle", "deflate"):
        f = pydicom_files[key]
        flags = [PYDICOM_TS_FLAG[key]] if key in PYDICOM_TS_FLAG else []
        if key == "implicit":
            flags = ["-xi"]
        run(["storescu", *flags, "-aet", "MODALITY", "-aec", NUBIS_AE, "127.0.0.1",
             str(dimse.port), str(f.path)])  # fmt: skip
        stored = stored_bytes(dimse, f.sop_uid)
        stored_ds = pydicom.dcmread(io.BytesIO(stored))
        assert str(stored_ds.file_meta.TransferSyntaxUID) == f.transfer_syntax, key
        if dataset_bytes(stored) != sent_by_dcmtk(f.data):
            # dcmtk itself rewrites some files (e.g. encapsulated Pixel Data as OB, not OW);
            # then every value must still be what the file holds.
            original = pydicom.dcmread(f.path)
            for element in original:
                if element.tag != 0xFFFCFFFC:
                    assert stored_ds[element.tag].value == element.value, (key, element.tag)


def test_dcmsend_many_syntaxes(dimse: Dimse, pydicom_files: dict[str, DicomFile]) -> None:
    """dcmsend negotiates each file's syntax itself; all are stored and found by QIDO-RS
    (PS3.18 10.6) with the same UIDs, so both front doors see one archive."""
    keys = ["rle_2frame", "big_endian", "rtplan", "rtstruct", "sr", "priv_sq", "j2k_lossless"]
    files = [pydicom_files[k] for k in keys]
    run(["dcmsend", "-aet", "MODALITY", "-aec", NUBIS_AE, "127.0.0.1", str(dimse.port),
         *[str(f.path) for f in files]], check=False)  # fmt: skip
    stored = {r.sop_instance_uid for r in index_rows(dimse.data_dir)}
    for key, f in zip(keys, files, strict=True):
        if key == "j2k_lossless":
            continue  # dcmtk refuses this file's odd-length pixel data before sending
        assert f.sop_uid in stored, key
        found = httpx.get(
            f"{dimse.http}/instances",
            params={"SOPInstanceUID": f.sop_uid},
            timeout=30,
            headers=AUTH,
        ).json()
        assert found and found[0]["00080018"]["Value"] == [f.sop_uid]


def test_htj2k_and_j2k_byte_exact(dimse: Dimse, tmp_path: Path) -> None:
    """HTJ2K and JPEG 2000 objects (PS3.5 A.4.4, A.4.11) sent by a pynetdicom SCU in their own
    syntax are stored as sent."""
    j2k = synth.make_multiframe(
        tmp_path / "j2k.dcm", frames=3, rows=64, columns=64, seed=31,
        patient=synth.PatientSpec("DIMSE-HT-1", "Ht^One", "19700101", "F"),
        transfer_syntax=JPEG2000Lossless,
    )  # fmt: skip
    ds = pydicom.dcmread(j2k)
    ht = copy.deepcopy(ds)
    # An HTJ2K Lossless codestream may hold Part 1 code blocks (ITU-T T.814), so the same
    # frames are a valid HTJ2K object under a UID of its own.
    ht.file_meta.TransferSyntaxUID = HTJ2KLossless
    ht.SOPInstanceUID = ht.file_meta.MediaStorageSOPInstanceUID = synth.synth_uid(31, "ht")
    ae = AE(ae_title="PYNET")
    assoc = ae.associate(
        "127.0.0.1",
        dimse.port,
        ae_title=NUBIS_AE,
        contexts=[build_context(ds.SOPClassUID, JPEG2000Lossless),
                  build_context(ds.SOPClassUID, HTJ2KLossless)],
    )  # fmt: skip
    assert assoc.is_established
    try:
        for item in (ds, ht):
            assert assoc.send_c_store(item).Status == 0x0000
    finally:
        assoc.release()
    for item in (ds, ht):
        stored = pydicom.dcmread(io.BytesIO(stored_bytes(dimse, item.SOPInstanceUID)))
        assert stored.file_meta.TransferSyntaxUID == item.file_meta.TransferSyntaxUID
        assert stored.PixelData == item.PixelData
    # pynetdicom sends the data set as pydicom encodes it, which for this file is its bytes.
    assert dataset_bytes(stored_bytes(dimse, ds.SOPInstanceUID)) == dataset_bytes(j2k.read_bytes())


def test_failures_get_a_status_and_the_association_carries_on(dimse: Dimse) -> None:
    """PS3.4 B.2.3: a data set without its UIDs is 0xA900 (does not match the SOP class), a
    different object under a stored SOP Instance UID is 0x0111 (PS3.7 C.4.2), and neither
    aborts the association: the next object on it is stored."""
    good = next(synth.series_datasets("CT", n_instances=1, seed=41, patient=synth.PatientSpec(
        "DIMSE-FAIL-1", "Fail^One", "19800101", "M")))  # fmt: skip
    broken = copy.deepcopy(good)
    del broken.StudyInstanceUID
    broken.SOPInstanceUID = synth.synth_uid(41, "broken")
    clash = copy.deepcopy(good)
    clash.SeriesDescription = "not the same object"
    ae = AE(ae_title="PYNET")
    ae.add_requested_context(good.SOPClassUID, good.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=NUBIS_AE)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(good).Status == 0x0000
        status = assoc.send_c_store(broken)
        assert status.Status == 0xA900, status
        assert "ErrorComment" in status
        assert assoc.send_c_store(clash).Status == 0x0111
        assert assoc.send_c_store(good).Status == 0x0000  # identical again: success
        assert assoc.is_established
    finally:
        assoc.release()


def test_another_patient_under_a_stored_study_is_refused(dimse: Dimse) -> None:
    """A study belongs to one patient (docs/security.md): a C-STORE naming another Patient ID
    under a stored study answers 0xA900 with an Error Comment (PS3.4 B.2.3), C-FIND by that
    Patient ID finds nothing, and the study still holds only its own patient."""
    original = next(synth.series_datasets("CT", n_instances=1, seed=43, patient=synth.PatientSpec(
        "DIMSE-PAT-A", "Owner^Ann", "19800101", "F")))  # fmt: skip
    evil = next(synth.series_datasets("CT", n_instances=1, seed=44, patient=synth.PatientSpec(
        "DIMSE-PAT-EVIL", "Intruder^Eve", "19800101", "F")))  # fmt: skip
    evil.StudyInstanceUID = original.StudyInstanceUID
    ae = AE(ae_title="PYNET")
    ae.add_requested_context(original.SOPClassUID, original.file_meta.TransferSyntaxUID)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=NUBIS_AE)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(original).Status == 0x0000
        status = assoc.send_c_store(evil)
        assert status.Status == 0xA900, status
        assert "another patient" in status.ErrorComment
        assert "DIMSE-PAT" not in status.ErrorComment
        found = {}
        for patient in ("DIMSE-PAT-A", "DIMSE-PAT-EVIL"):
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.PatientID = patient
            query.StudyInstanceUID = ""
            found[patient] = [
                str(identifier.StudyInstanceUID)
                for status, identifier in assoc.send_c_find(
                    query, StudyRootQueryRetrieveInformationModelFind
                )
                if status.Status in (0xFF00, 0xFF01)
            ]
    finally:
        assoc.release()
    assert found == {"DIMSE-PAT-A": [str(original.StudyInstanceUID)], "DIMSE-PAT-EVIL": []}
    metadata = httpx.get(
        f"{dimse.http}/studies/{original.StudyInstanceUID}/metadata", headers=AUTH, timeout=30
    ).json()
    assert [m["00100020"]["Value"][0] for m in metadata] == ["DIMSE-PAT-A"]


def test_a_series_of_another_study_is_refused(dimse: Dimse, tmp_path: Path) -> None:
    """A series belongs to one study (docs/security.md): with patient_conflict = refuse (the
    default) dcmtk's storescu gets 0xA900 (PS3.4 B.2.3) for an object whose Series Instance
    UID another study holds, and nothing of it is kept; the association carries on. (With
    quarantine on it is held instead: test_patient_consistency.py.)"""
    original = next(synth.series_datasets("CT", n_instances=1, seed=49, patient=synth.PatientSpec(
        "DIMSE-SERIES-1", "Series^Sam", "19800101", "M")))  # fmt: skip
    moved = next(synth.series_datasets("CT", n_instances=1, seed=50, patient=synth.PatientSpec(
        "DIMSE-SERIES-1", "Series^Sam", "19800101", "M")))  # fmt: skip
    moved.SeriesInstanceUID = original.SeriesInstanceUID
    paths = []
    for name, ds in (("original.dcm", original), ("moved.dcm", moved)):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        paths.append(str(tmp_path / name))
    sent = run(["storescu", "-v", "-aet", "MODALITY", "-aec", NUBIS_AE, "127.0.0.1",
                str(dimse.port), *paths], check=False)  # fmt: skip
    statuses = [line for line in (sent.stdout + sent.stderr).splitlines()
                if "Received Store Response" in line]  # fmt: skip
    assert len(statuses) == 2 and "(Success)" in statuses[0], sent.stdout + sent.stderr
    assert "Error: DataSetDoesNotMatchSOPClass" in statuses[1], statuses  # 0xA900
    rows = {r.sop_instance_uid: r for r in index_rows(dimse.data_dir)}
    assert str(original.SOPInstanceUID) in rows and str(moved.SOPInstanceUID) not in rows
    response = httpx.get(f"{dimse.http}/studies/{moved.StudyInstanceUID}/metadata", headers=AUTH)
    assert response.status_code == 404


def _send_file_as_it_is(assoc: Any, path: Path, monkeypatch: pytest.MonkeyPatch) -> Dataset:
    """C-STORE the data set of ``path`` byte for byte on the context of its file meta's SOP
    class and transfer syntax, whatever the data set holds (pynetdicom's chunked send)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    return assoc.send_c_store(path)


def test_data_set_of_another_sop_class_than_its_context_is_a900(
    dimse: Dimse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PS3.4 B.2.3: a data set that does not match the SOP class of its presentation context
    (an MR image on a CT Image Storage context) is refused with 0xA900 and stored nowhere; the
    same MR image on an MR context is stored, on the same association."""
    mr = next(synth.series_datasets("MR", n_instances=1, seed=43, rows=32, columns=32,
        patient=synth.PatientSpec("DIMSE-CLASS-1", "Class^One", "19800101", "F")))  # fmt: skip
    ct_class = "1.2.840.10008.5.1.4.1.1.2"
    assert mr.SOPClassUID != ct_class
    syntax = mr.file_meta.TransferSyntaxUID
    mr.preamble = b"\0" * 128  # a PS3.10 file, which the chunked send reads
    as_ct = tmp_path / "mr_as_ct.dcm"
    mr.file_meta.MediaStorageSOPClassUID = ct_class  # picks the context of the C-STORE
    pydicom.dcmwrite(as_ct, mr)
    as_mr = tmp_path / "mr.dcm"
    mr.file_meta.MediaStorageSOPClassUID = mr.SOPClassUID
    pydicom.dcmwrite(as_mr, mr)
    ae = AE(ae_title="PYNET")
    ae.add_requested_context(ct_class, syntax)
    ae.add_requested_context(mr.SOPClassUID, syntax)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=NUBIS_AE)
    assert assoc.is_established
    try:
        refused = _send_file_as_it_is(assoc, as_ct, monkeypatch)
        assert refused.Status == 0xA900, refused
        assert "SOP Class" in refused.ErrorComment, refused.ErrorComment
        assert mr.SOPInstanceUID not in {r.sop_instance_uid for r in index_rows(dimse.data_dir)}
        assert _send_file_as_it_is(assoc, as_mr, monkeypatch).Status == 0x0000
    finally:
        assoc.release()
    assert stored_bytes(dimse, mr.SOPInstanceUID)


def test_data_set_encoded_unlike_its_context_is_c000(
    dimse: Dimse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PS3.4 B.2.3 with PS3.5 10: a data set sent in implicit VR on an Explicit VR Little Endian
    context cannot be understood (0xC000); it is not stored to be served as explicit VR, which
    dcmdump cannot read. The same data set sent in explicit VR is stored."""
    ds = next(synth.series_datasets("CT", n_instances=1, seed=44, rows=32, columns=32,
        patient=synth.PatientSpec("DIMSE-VR-1", "Vr^One", "19800101", "M")))  # fmt: skip
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = b"\0" * 128
    unlike = tmp_path / "implicit_under_explicit.dcm"
    pydicom.dcmwrite(unlike, ds, implicit_vr=True, little_endian=True, force_encoding=True)
    assert run(["dcmdump", str(unlike)], check=False).returncode != 0
    ae = AE(ae_title="PYNET")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=NUBIS_AE)
    assert assoc.is_established
    try:
        refused = _send_file_as_it_is(assoc, unlike, monkeypatch)
        assert refused.Status == 0xC000, refused
        assert "implicit VR" in refused.ErrorComment, refused.ErrorComment
        assert ds.SOPInstanceUID not in {r.sop_instance_uid for r in index_rows(dimse.data_dir)}
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(stored_bytes(dimse, ds.SOPInstanceUID))
    run(["dcmdump", str(stored)])


def test_concurrent_associations_lose_nothing(dimse: Dimse, tmp_path: Path) -> None:
    """Four storescu processes, each its own association, store 40 objects at once; every one
    is stored byte-exact (PS3.4 B.2: each success means stored)."""
    folders = []
    for n in range(4):
        folder = tmp_path / f"batch{n}"
        synth.make_ct_series(
            folder, n_instances=10, seed=500 + n, rows=128, columns=128,
            patient=synth.PatientSpec(f"DIMSE-CONC-{n}", f"Conc^{n}", "19900101", "O"),
        )  # fmt: skip
        folders.append(folder)
    errors: list[BaseException] = []

    def send(folder: Path) -> None:
        try:
            run(["storescu", "+sd", "-aet", f"CONC{folders.index(folder)}", "-aec", NUBIS_AE,
                 "127.0.0.1", str(dimse.port), str(folder)])  # fmt: skip
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    sent = {pydicom.dcmread(p).SOPInstanceUID: p for f in folders for p in f.glob("*.dcm")}
    assert len(sent) == 40
    for uid, path in sent.items():
        assert dataset_bytes(stored_bytes(dimse, uid)) == sent_by_dcmtk(path.read_bytes())


GIGABYTE = 1 << 30
MAX_SERVER_RSS = 300 << 20  # far below the object: only a bounded receive fits
CHUNK = 1 << 20


def _retrieved_data_set_sha256(response: httpx.Response) -> tuple[str, int]:
    """SHA-256 and size of the data set in the single part of a streamed multipart/related
    WADO-RS response; only part headers and a delimiter's worth of bytes are held back."""
    boundary = response.headers["content-type"].split('boundary="', 1)[1].split('"', 1)[0]
    closing = b"\r\n--" + boundary.encode() + b"--\r\n"
    digest, size = hashlib.sha256(), 0
    head, pending, skip = b"", b"", -1
    for chunk in response.iter_bytes(CHUNK):
        if skip < 0:
            head += chunk
            end = head.find(b"\r\n\r\n")
            if end < 0 or len(head) < end + 4 + 144:
                continue
            body = head[end + 4 :]
            skip = data_set_offset(body[:144])
            chunk = body
        pending += chunk
        if len(pending) > len(closing):
            body, pending = pending[: -len(closing)], pending[-len(closing) :]
            if skip:
                cut = min(skip, len(body))
                body, skip = body[cut:], skip - cut
            digest.update(body)
            size += len(body)
    assert pending == closing, pending[-200:]
    return digest.hexdigest(), size


@pytest.mark.slow
def test_one_gigabyte_c_store_with_bounded_memory(tmp_path: Path) -> None:
    """storescu sends a 1 GB object (PS3.4 B.2.3, PS3.7 9.1.1): the server's resident memory
    stays far below the object's size, because pynetdicom writes each P-DATA fragment into a
    sealed spool file in the data folder as it arrives (never plaintext in the system's
    temporary folder: TMPDIR stays empty, the spool file is ciphertext); the object is then
    retrieved through WADO-RS with its data set byte-exact (PS3.10 7.1: the file meta is
    rebuilt from the C-STORE request)."""
    need_dcmtk("storescu")
    free = shutil.disk_usage(tmp_path).free
    if free < 4 * GIGABYTE:
        pytest.skip(reason=f"needs 4 GB free in {tmp_path}; {free / GIGABYTE:.1f} GB free")
    path = make_large_instance(tmp_path / "large.dcm", size_bytes=GIGABYTE, seed=3)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    expected = file_data_set_sha256(path)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    port = free_port()
    server = start_server(
        tmp_path / "data",
        # One process, so the process that receives is the one measured.
        env={"NUBIS_DIMSE_PORT": str(port), "NUBIS_WORKERS": "1", "TMPDIR": str(temporary)},
        log_level="warning",
    )
    spool = server.data_dir / "spool"
    seen: dict[str, Any] = {"spool_sizes": [], "tmp": set(), "plaintext": False}
    sending = threading.Event()
    patient_id = str(header.PatientID).encode()

    def watch() -> None:
        while sending.is_set():
            seen["tmp"] |= {p.name for p in temporary.iterdir()}
            for p in spool.iterdir() if spool.exists() else []:
                with contextlib.suppress(OSError), p.open("rb") as f:
                    first = f.read(1 << 20)
                    seen["spool_sizes"].append(p.stat().st_size)
                    seen["plaintext"] |= first[128:132] == b"DICM" or patient_id in first
            time.sleep(0.2)

    try:
        idle = server.peak_rss_bytes()
        sending.set()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        proc = subprocess.run(
            ["storescu", "-aet", "BIGMODALITY", "-aec", NUBIS_AE, "127.0.0.1", str(port),
             str(path)],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        store_seconds = time.monotonic() - started
        sending.clear()
        watcher.join()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        after_store = server.peak_rss_bytes()

        url = (
            f"{server.dicomweb}/studies/{header.StudyInstanceUID}/series/"
            f"{header.SeriesInstanceUID}/instances/{header.SOPInstanceUID}"
        )
        with (
            httpx.Client(timeout=httpx.Timeout(600, connect=10), headers=AUTH) as client,
            client.stream("GET", url, headers={"Accept": ACCEPT_AS_STORED}) as response,
        ):
            assert response.status_code == 200
            got = _retrieved_data_set_sha256(response)
        after_retrieve = server.peak_rss_bytes()
    finally:
        sending.clear()
        server.stop()
    print(
        f"\n{path.stat().st_size / GIGABYTE:.2f} GB C-STORE in {store_seconds:.1f}s; server "
        f"peak RSS: idle {idle >> 20} MB, after C-STORE {after_store >> 20} MB, after "
        f"WADO-RS {after_retrieve >> 20} MB"
    )
    assert got == expected
    assert after_store < MAX_SERVER_RSS, f"peak RSS {after_store >> 20} MB during C-STORE"
    assert seen["spool_sizes"] and max(seen["spool_sizes"]) > 64 << 20, "never saw the spool"
    assert not seen["tmp"], f"pynetdicom's temporary file was used: {seen['tmp']}"
    assert not seen["plaintext"], "a spool file held plaintext"


def test_cut_off_c_store_leaves_no_spool_file(dimse: Dimse, tmp_path: Path) -> None:
    """A storescu killed in the middle of a 256 MB C-STORE: the association is aborted (PS3.8
    9.1.8) and the spool file its data set was streaming into is removed at once, not at the
    next start; the server carries on (C-ECHO, PS3.7 9.1.5)."""
    path = make_large_instance(tmp_path / "cut.dcm", size_bytes=256 << 20, seed=4)
    spool = dimse.data_dir / "spool"
    before = set(spool.iterdir())
    sender = subprocess.Popen(
        ["storescu", "-aet", "CUTOFF", "-aec", NUBIS_AE, "127.0.0.1", str(dimse.port),
         str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        receiving: list[Path] = []
        while time.monotonic() < deadline and not receiving:
            receiving = [p for p in set(spool.iterdir()) - before if p.stat().st_size > 16 << 20]
            time.sleep(0.01)
        assert receiving, "the object never reached the spool"
    finally:
        sender.kill()
        sender.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and set(spool.iterdir()) - before:
        time.sleep(0.1)
    assert not set(spool.iterdir()) - before
    run(["echoscu", "-aet", "CUTOFF", "-aec", NUBIS_AE, "127.0.0.1", str(dimse.port)])


def test_the_same_instance_in_another_encoding_is_a_warning(dimse: Dimse) -> None:
    """Issue 12: a modality re-sending a stored instance compressed (RLE Lossless here) gets
    a warning status, 0xB000 (PS3.4 B.2.3, coercion: what is kept is the stored encoding),
    with an Error Comment naming it, never 0x0111; the stored bytes stay as they were."""
    ds = next(synth.series_datasets("MR", n_instances=1, seed=47, patient=synth.PatientSpec(
        "DIMSE-RESEND-1", "Resend^Rita", "19800101", "F")))  # fmt: skip
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    compressed = copy.deepcopy(ds)
    compressed.compress(RLELossless, generate_instance_uid=False)
    ae = AE(ae_title="PYNET")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    ae.add_requested_context(ds.SOPClassUID, RLELossless)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=NUBIS_AE)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
        before = stored_bytes(dimse, ds.SOPInstanceUID)
        status = assoc.send_c_store(compressed)
        assert status.Status == 0xB000, status
        assert status.ErrorComment.startswith("already stored in another encoding")
    finally:
        assoc.release()
    assert stored_bytes(dimse, ds.SOPInstanceUID) == before


def test_a_usable_but_non_conformant_object_is_a_warning_status(dimse: Dimse) -> None:
    """Issue 12, PS3.4 B.2.3: what real archives hold and nubis keeps is a warning status,
    never a failure: a Study Instance UID with a leading zero in a component (PS3.5 9.1) is
    0xB007 (data set does not match), with an Error Comment naming the attribute; the object
    is stored and found under that UID."""
    ds = next(synth.series_datasets("CT", n_instances=1, seed=48, patient=synth.PatientSpec(
        "DIMSE-LAPSE-1", "Lapse^Lou", "19800101", "M")))  # fmt: skip
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.2.1143.012.48"
    ae = AE(ae_title="PYNET")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=NUBIS_AE)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        assert status.Status == 0xB007, status
        assert status.ErrorComment.startswith("Study Instance UID (0020,000D)")
    finally:
        assoc.release()
    rows = {r.sop_instance_uid: r for r in index_rows(dimse.data_dir)}
    assert rows[ds.SOPInstanceUID].study_uid == ds.StudyInstanceUID


def test_hexadecimal_uids_by_storescu_are_stored_found_and_retrieved(
    dimse: Dimse, tmp_path: Path
) -> None:
    """Issue 12: pydicom's bad_sequence.dcm (64 hexadecimal digits for its Study, Series and
    SOP Instance UIDs) sent by storescu is a warning status, 0xB007 (PS3.4 B.2.3), stored
    as received (dcmtk writes its sequences with explicit lengths: every value as in the
    file), found by C-FIND under those UIDs and retrieved by C-GET (PS3.4 C.4.1, C.4.3)."""
    need_dcmtk("findscu", "getscu")
    sent = Path(pydicom.data.get_testdata_file("bad_sequence.dcm"))
    ds = pydicom.dcmread(sent, stop_before_pixels=True)
    study, series, sop = (str(ds[k].value) for k in
                          ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))  # fmt: skip
    store = run(["storescu", "-xs", "-d", "-aet", "MODALITY", "-aec", NUBIS_AE, "127.0.0.1",
                 str(dimse.port), str(sent)])  # fmt: skip
    assert "Warning: Data Set does not match SOP Class" in store.stdout + store.stderr
    stored = stored_bytes(dimse, sop)
    original = pydicom.dcmread(sent)
    assert pydicom.dcmread(io.BytesIO(stored)) == original
    found = findscu(dimse.port, "SERIES", [f"StudyInstanceUID={study}", "SeriesInstanceUID"],
                    tmp_path / "find")  # fmt: skip
    assert [str(f.SeriesInstanceUID) for f in found] == [series]
    out = tmp_path / "got"
    out.mkdir()
    run(["getscu", "-S", "-aet", "GETTER", "-aec", NUBIS_AE, "-od", str(out), "127.0.0.1",
         str(dimse.port), "-k", "QueryRetrieveLevel=STUDY",
         "-k", f"StudyInstanceUID={study}"])  # fmt: skip
    # getscu takes it decompressed (its default): the same pixels, every other value as sent.
    [got] = [pydicom.dcmread(path) for path in out.iterdir()]
    assert (got.pixel_array == original.pixel_array).all()
    del got.PixelData, original.PixelData
    assert got == original
