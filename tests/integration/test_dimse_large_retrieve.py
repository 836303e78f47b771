"""C-MOVE and C-GET of a large object with bounded memory (PS3.4 C.4.2, C.4.3; PS3.7 9.1.1).

The C-STORE sub-operations send the stored data set as it is read from the (encrypted) blob
store, a few P-DATA fragments queued at a time, so the server's resident memory must not grow
with the object; movescu's storescp and getscu write what they receive as it came (+B), so
the data set they got can be compared byte for byte with the one stored. A corrupted large
object fails its own sub-operation, as a small one does; a stream that fails part-way
aborts the association rather than complete the object.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
)

from integration.cli import nubis_cli
from integration.dimse_helpers import AE as NUBIS_AE
from integration.dimse_helpers import file_data_set_sha256, free_port, need_dcmtk, wait_listening
from integration.server import Server, blob_path, index_rows, start_server
from nubis.dimse.reactor import RaceFreeAE, StreamedDataset
from nubis.tools.synth import make_large_instance

SIZE = 320 << 20
# Reading the object whole would take SIZE several times over (the blob, the parsed data set,
# its encoding for the C-STORE); a streamed send needs a few MB of buffers.
MAX_RSS_GROWTH = SIZE // 5
TIMEOUT = 300
ALL_FAILED = 0xA702  # PS3.4 C.4.3.1.4: Unable to perform sub-operations


@dataclass
class Stored:
    """A running server (one process) holding one large object, stored by storescu."""

    server: Server
    port: int
    path: Path
    study_uid: str
    sop_uid: str


def _run(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout}\n{proc.stderr}"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """The object is in Explicit VR Little Endian, the syntax nubis prefers when a caller
    offers several in one context (getscu offers the uncompressed ones): it goes back as
    stored, streamed, not converted in memory."""
    need_dcmtk("storescu", "movescu", "getscu", "storescp")
    folder = tmp_path_factory.mktemp("large-retrieve")
    free = shutil.disk_usage(folder).free
    if free < 7 * SIZE:
        pytest.skip(reason=f"needs {7 * SIZE >> 20} MB free in {folder}; {free >> 20} MB free")
    path = make_large_instance(folder / "large.dcm", size_bytes=SIZE, seed=5)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    port = free_port()
    server = start_server(
        folder / "data",
        # One process, so the process that retrieves is the one measured.
        env={"NUBIS_DIMSE_PORT": str(port), "NUBIS_WORKERS": "1"},
        log_level="warning",
    )
    try:
        _run(["storescu", "-aet", "BIGMODALITY", "-aec", NUBIS_AE, "127.0.0.1", str(port),
              str(path)])  # fmt: skip
        yield Stored(server, port, path, str(header.StudyInstanceUID), str(header.SOPInstanceUID))
    finally:
        server.stop()


def _retrieval_growth(server: Server, args: list[str]) -> int:
    """How far the server's resident memory rose above its level at the start of ``args``."""
    server.reset_peak_rss()
    baseline = server.peak_rss_bytes()
    _run(args)
    return server.peak_rss_bytes() - baseline


def _received(folder: Path) -> tuple[str, int]:
    (path,) = folder.iterdir()
    return file_data_set_sha256(path)


@pytest.mark.slow
def test_large_object_c_move_and_c_get_stream_with_bounded_memory(
    stored: Stored, tmp_path: Path
) -> None:
    """A 320 MB object is retrieved with movescu (to a storescp of the peer table) and with
    getscu: both receive its data set byte-exact, and the server's peak resident memory
    during each retrieval stays far below the object's size."""
    expected = file_data_set_sha256(stored.path)
    receiver_port = free_port()
    moved, got = tmp_path / "moved", tmp_path / "got"
    moved.mkdir()
    got.mkdir()
    nubis_cli("dimse", "peers", "add", "RECEIVER", "127.0.0.1", str(receiver_port),
              "--data-dir", str(stored.server.data_dir), check=True)  # fmt: skip
    receiver = subprocess.Popen(
        ["storescp", "-aet", "RECEIVER", "+B", "-od", str(moved), str(receiver_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(receiver_port)
        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={stored.study_uid}"]
        started = time.monotonic()
        move_growth = _retrieval_growth(
            stored.server,
            ["movescu", "-S", "-aet", "MOVER", "-aec", NUBIS_AE, "-aem", "RECEIVER",
             "127.0.0.1", str(stored.port), *keys],
        )  # fmt: skip
        move_seconds = time.monotonic() - started
        started = time.monotonic()
        get_growth = _retrieval_growth(
            stored.server,
            ["getscu", "-S", "-aet", "GETTER", "-aec", NUBIS_AE, "+B", "-od", str(got),
             "127.0.0.1", str(stored.port), *keys],
        )  # fmt: skip
        get_seconds = time.monotonic() - started
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    print(
        f"\n{stored.path.stat().st_size >> 20} MB object; server peak RSS growth: C-MOVE "
        f"{move_growth >> 20} MB in {move_seconds:.1f}s, C-GET {get_growth >> 20} MB in "
        f"{get_seconds:.1f}s"
    )
    assert _received(moved) == expected
    assert _received(got) == expected
    assert move_growth < MAX_RSS_GROWTH, f"C-MOVE: peak RSS grew {move_growth >> 20} MB"
    assert get_growth < MAX_RSS_GROWTH, f"C-GET: peak RSS grew {get_growth >> 20} MB"


@pytest.mark.slow
def test_corrupted_large_object_fails_its_sub_operation_only(stored: Stored) -> None:
    """A large object whose blob no longer checks out is found out by the read before sending:
    no C-STORE starts, the sub-operation fails and is listed in the Failed SOP Instance UID
    List (PS3.4 C.4.3.1.3.2), the final status is 0xA702, and the association carries on."""
    rows = {r.sop_instance_uid: r for r in index_rows(stored.server.data_dir)}
    blob = blob_path(stored.server.data_dir, rows[stored.sop_uid].blob_key)
    with blob.open("r+b") as f:
        f.seek(-1, io.SEEK_END)
        last = f.read(1)
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    sop_class = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1", stored.port, ae_title=NUBIS_AE,
        ext_neg=[build_role(sop_class, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = stored.study_uid
    try:
        with blob.open("r+b") as f:
            f.seek(-1, io.SEEK_END)
            f.write(bytes([last[0] ^ 0xFF]))
        responses = list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
        still_established = assoc.is_established
    finally:
        with blob.open("r+b") as f:
            f.seek(-1, io.SEEK_END)
            f.write(last)
        assoc.release()
    final, identifier = responses[-1]
    assert final.Status == ALL_FAILED, hex(final.Status)
    assert int(final.NumberOfFailedSuboperations) == 1
    assert int(final.NumberOfCompletedSuboperations) == 0
    assert identifier is not None
    failed = identifier.FailedSOPInstanceUIDList
    assert ([failed] if isinstance(failed, str) else list(failed)) == [stored.sop_uid]
    assert received == []
    assert still_established


def _data_set_bytes(size: int) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.add_new(0x7FE00010, "OB", bytes(range(256)) * (size // 256))  # Pixel Data
    return cast(bytes, encode(ds, False, True))


@pytest.fixture
def storage_scp() -> Iterator[tuple[int, list[bytes], list[str]]]:
    """A pynetdicom storage SCP with a small maximum PDU: its port, the data sets it
    received, and the association events it saw."""
    received: list[bytes] = []
    events: list[str] = []

    def on_store(event: Any) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    ae = AE(ae_title="SINK")
    ae.maximum_pdu_size = 16384
    ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[
            (evt.EVT_C_STORE, on_store),
            (evt.EVT_ABORTED, lambda event: events.append("aborted")),
        ],
    )
    try:
        yield port, received, events
    finally:
        server.shutdown()


def _send_streamed(port: int, chunks: Iterator[bytes]) -> Any:
    ae = RaceFreeAE(ae_title="STREAMER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="SINK")
    assert assoc.is_established
    streamed = StreamedDataset(
        CTImageStorage, generate_uid(), ExplicitVRLittleEndian, lambda: chunks
    )
    try:
        return assoc, assoc.send_c_store(streamed)
    except Exception as exc:
        return assoc, exc


def test_streamed_c_store_arrives_byte_exact(
    storage_scp: tuple[int, list[bytes], list[str]],
) -> None:
    """A streamed C-STORE (PS3.7 9.1.1) to a peer with a 16 KB maximum PDU: cut into
    fragments that do not line up with the stream's chunks, it arrives as the same bytes."""
    port, received, _ = storage_scp
    data = _data_set_bytes(3 << 20)
    chunks = iter([data[i : i + 100_003] for i in range(0, len(data), 100_003)])
    assoc, status = _send_streamed(port, chunks)
    assoc.release()
    assert status.Status == 0x0000
    assert received == [data]


def test_streamed_c_store_that_fails_part_way_aborts(
    storage_scp: tuple[int, list[bytes], list[str]],
) -> None:
    """A stream that fails after part of the data set was sent (its last chunk withheld by a
    digest check) cannot be withdrawn (PS3.8 9.3.1): the association is aborted (PS3.8 7.3)
    and the peer never gets an object."""
    port, received, events = storage_scp
    data = _data_set_bytes(3 << 20)

    def failing() -> Iterator[bytes]:
        yield data[: 1 << 20]
        yield data[1 << 20 : 2 << 20]
        raise OSError("stored object failed its integrity check")

    assoc, outcome = _send_streamed(port, failing())
    assert isinstance(outcome, OSError)
    assert assoc.is_aborted
    deadline = time.monotonic() + 10
    while not events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events == ["aborted"]
    assert received == []
