"""Mutation fuzzing: pydicom's test files with bits flipped, ends cut off and hostile pixel
module values, stored over STOW-RS and read back every way, against a live server of their own.

The charter's rule under test: whatever a client sends, the archive answers with a status the
standard names, never a 5xx (but 503 for a store that is down), never a hang; nothing a refused
request carried is kept. Each mutant is stored (PS3.18 10.5) and, if stored, read back as
metadata (10.4.1.1.2), bulk data (10.4.1.1.5), frame 1 as stored and decoded (10.4.1.1.4),
rendered and thumbnail (10.4.1.1.3), the instance as stored and converted (10.4.1.1.1), WADO-URI
object and JPEG (9), and C-GET as stored and converted (PS3.4 C.4.3). What is served as stored
must read in dcmdump, which trusts the file meta where pydicom guesses (PS3.10 7.1).

The mutants are the same in every run (fixed seed): a failure names the mutant, and a mutant
that found a bug is kept in REGRESSIONS, so it is tried in every run whatever the generator
later makes. Files are generated at test time from pydicom's bundled test files.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pydicom.config
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
)

from integration import AUTH, multipart_parts
from integration.dimse_helpers import AE as NUBIS_AE
from integration.dimse_helpers import Dimse, free_port, need_dcmtk
from integration.server import blob_files, index_rows, spool_files

# A few hundred mutants, the same in every run; to hunt for more, NUBIS_FUZZ_MUTANTS=300 tries
# ten times as many, NUBIS_FUZZ_SEED others.
SEED = int(os.environ.get("NUBIS_FUZZ_SEED", "92024"))
MUTANTS_PER_SOURCE = int(os.environ.get("NUBIS_FUZZ_MUTANTS", "30"))
UID_ROOT = "2.25.992024"
FIRST_RANDOM = 1000  # mutant numbers below are those regressions were found under
REQUEST_TIMEOUT = 20.0  # seconds; a request still running then counts as a hang (typical: 0.02)
DICOM_TIMEOUT = 10

# One file per transfer syntax or layout that matters: (name, what it covers).
SOURCES = {
    "CT_small.dcm": "explicit VR little endian, private bulk value",
    "MR_small_implicit.dcm": "implicit VR",
    "MR_small_bigendian.dcm": "explicit VR big endian",
    "SC_rgb_jpeg_dcmtk.dcm": "JPEG baseline, color",
    "JPEG2000.dcm": "JPEG 2000, nested sequences",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS lossless",
    "MR_small_RLE.dcm": "RLE lossless",
    "SC_rgb_rle_2frame.dcm": "multi-frame RLE with a Basic Offset Table",
    "rtdose.dcm": "multi-frame native, 32-bit",
    "image_dfl.dcm": "deflated data set",
    "SC_ybr_full_422_uncompressed.dcm": "native YBR_FULL_422",
}

# Values of the pixel module and its pipeline a decoder or renderer may choke on, which a
# mutant may be given (as a well-formed element: ingest keeps such objects).
HOSTILE_VALUES: dict[str, list[Any]] = {
    "Rows": [[128, 128], 0, 65535],
    "Columns": [[128, 128], 0, 65535],
    "BitsAllocated": [[16, 16], 0, 1, 13, 64],
    "BitsStored": [[8, 8], 0, 40],
    "HighBit": [99],
    "SamplesPerPixel": [[1, 1], 0, 2, 4],
    "PixelRepresentation": [[0, 0], 2],
    "PhotometricInterpretation": [
        ["MONOCHROME2", "MONOCHROME2"], "", "PALETTE COLOR", "YBR_FULL_422", "RGB", "CMYK",
        "MONOCHROME1",
    ],
    "PlanarConfiguration": [1, 3],
    "NumberOfFrames": [["2", "2"], "0", "-1", "1000000"],
    "WindowWidth": [0, -5, [1, 2, 3]],
    "RescaleSlope": [0, 1e308],
}  # fmt: skip

# Mutants that found a bug, kept whatever the generator makes: (source, number, mutation). A
# mutation is a tuple of ("set", keyword, value), applied to the data set, then ("flip", byte,
# bit) and ("cut", length), applied to its bytes as _template writes them; the number goes into
# the SOP Instance UID, so a deflated mutant is the same bytes as when it was found.
REGRESSIONS: list[tuple[str, int, tuple[tuple[Any, ...], ...]]] = [
    # 500 (TypeError, MultiValue) on decoded frames, rendered, thumbnail:
    ("MR_small_jpeg_ls_lossless.dcm", 155, (("set", "Rows", [128, 128]),)),
    ("MR_small_jpeg_ls_lossless.dcm", 163, (("set", "Columns", [128, 128]),)),
    ("SC_rgb_rle_2frame.dcm", 211, (("set", "BitsAllocated", [16, 16]),)),
    ("SC_rgb_rle_2frame.dcm", 215, (("set", "NumberOfFrames", ["2", "2"]),)),
    ("SC_rgb_rle_2frame.dcm", 236, (("set", "BitsStored", [8, 8]),)),
    ("JPEG2000.dcm", 142, (("set", "BitsStored", [8, 8]), ("set", "SamplesPerPixel", [1, 1]))),
    (
        "MR_small_jpeg_ls_lossless.dcm",
        167,
        (("set", "RescaleSlope", 1e308), ("set", "Columns", [128, 128])),
    ),
    ("MR_small_RLE.dcm", 202, (("set", "NumberOfFrames", ["2", "2"]),)),
    (
        "image_dfl.dcm",
        280,
        (("set", "PhotometricInterpretation", "CMYK"), ("set", "BitsStored", [8, 8])),
    ),
    # 500 on rendered and thumbnail: a flipped VR (DS -> unknown) in the VOI attributes.
    ("MR_small_jpeg_ls_lossless.dcm", 172, (("flip", 1461, 6),)),
    ("MR_small_RLE.dcm", 203, (("flip", 1445, 6),)),
    # 500 on conversion (a deflated data set running on past its end); C-GET 0xC411.
    ("image_dfl.dcm", 279, (("flip", 999, 2),)),
    ("image_dfl.dcm", 276, (("flip", 2223, 4),)),
    # Stored, then served to dcmdump, which could not read it.
    ("JPEG2000.dcm", 130, (("flip", 2677, 0),)),
    ("MR_small_RLE.dcm", 196, (("flip", 1454, 7),)),
    ("image_dfl.dcm", 285, (("flip", 2223, 4),)),
    ("image_dfl.dcm", 296, (("flip", 1572, 3),)),
    ("SC_ybr_full_422_uncompressed.dcm", 302, (("flip", 800, 2),)),
]

DECODED = (
    f'multipart/related; type="application/octet-stream"; transfer-syntax={ExplicitVRLittleEndian}'
)
AS_STORED_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CONVERTED = f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}'
BOUNDARY = "nubis-fuzz"


@dataclass(frozen=True)
class Mutant:
    source: str
    number: int
    mutation: tuple[tuple[Any, ...], ...]
    data: bytes

    def __str__(self) -> str:
        return f"{self.source} #{self.number} {self.mutation}"


def _template(name: str, number: int, mutation: tuple[tuple[Any, ...], ...] = ()) -> bytes:
    """``name`` as pydicom writes it with a SOP Instance UID of its own (mutants must not
    collide as different objects under one UID: 0x0111 would hide what they test), and the
    values the mutation sets."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"pydicom test file {name} is not bundled with this pydicom")
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = f"{UID_ROOT}{sorted(SOURCES).index(name):02d}{number:06d}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    with pydicom.config.disable_value_validation():
        for operation in mutation:
            if operation[0] == "set":
                setattr(ds, operation[1], operation[2])
        out = io.BytesIO()
        ds.save_as(out)
    return out.getvalue()


def _mutant(source: str, number: int, mutation: tuple[tuple[Any, ...], ...]) -> Mutant:
    mutated = bytearray(_template(source, number, mutation))
    for operation in mutation:
        if operation[0] == "flip":
            mutated[operation[1]] ^= 1 << operation[2]
        elif operation[0] == "cut":
            del mutated[operation[1] :]
    return Mutant(source, number, mutation, bytes(mutated))


def _random_mutation(rng: random.Random, data: bytes) -> tuple[tuple[Any, ...], ...]:
    kind = rng.random()
    if kind < 0.25:
        keywords = rng.sample(sorted(HOSTILE_VALUES), rng.choice((1, 1, 2)))
        return tuple(("set", k, rng.choice(HOSTILE_VALUES[k])) for k in keywords)
    if kind < 0.4:
        return (("cut", rng.randrange(132, len(data))),)
    if kind < 0.8:
        # Before the pixel data, where a flip changes what the object says of itself.
        header_end = data.find(b"\xe0\x7f\x10\x00")
        header_end = header_end + 16 if header_end > 0 else len(data)
        return (("flip", rng.randrange(132, header_end), rng.randrange(8)),)
    flips = rng.randrange(1, 9)
    return tuple(("flip", rng.randrange(132, len(data)), rng.randrange(8)) for _ in range(flips))


def _mutants() -> Iterator[Mutant]:
    for source, number, mutation in REGRESSIONS:
        yield _mutant(source, number, mutation)
    rng = random.Random(SEED)
    number = FIRST_RANDOM
    for source in SOURCES:
        for _ in range(MUTANTS_PER_SOURCE):
            yield _mutant(source, number, _random_mutation(rng, _template(source, number)))
            number += 1


# ---------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def fuzzed(server_factory: Any) -> Dimse:
    need_dcmtk("dcmdump")
    port = free_port()
    return Dimse(server_factory("fuzz", "--dimse-port", str(port)), port)


def _stow(client: httpx.Client, server: Dimse, mutant: Mutant) -> str | None:
    """Store one mutant; the URL of the stored instance (200, or 202 with a warning), or None
    if it was refused (409, with its failure reason: PS3.18 10.5.3)."""
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + mutant.data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    response = client.post(
        f"{server.http}/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
        },
    )
    if response.status_code == 409:
        return None
    if response.status_code not in (200, 202):
        raise _Unanswered(f"STOW-RS {response.status_code} {response.text[:200]}")
    [stored] = response.json()["00081199"]["Value"]
    if response.status_code == 202 and not (
        stored.get("00081196", {}).get("Value") and response.headers.get("warning")
    ):
        # Issue 12: stored with a warning (a file meta naming another instance, a UID lapse)
        # is 202 with its Warning Reason and a Warning header; the reads below check that what
        # is served of it is safe (dcmdump reads it as stored).
        raise _Unanswered(f"STOW-RS 202 without a warning: {response.text[:200]}")
    return str(stored["00081190"]["Value"][0])


class _Unanswered(Exception):
    """A request got no answer the standard names."""


def _reads(server: Dimse, url: str) -> Iterator[tuple[str, str, dict[str, str], dict[str, str]]]:
    """Every WADO-RS and WADO-URI read of the instance at ``url``: (what, URL, query, headers)."""
    for what, suffix, accept in (
        ("metadata", "/metadata", "application/dicom+json"),
        ("frame as stored", "/frames/1", AS_STORED_FRAMES),
        ("frame decoded", "/frames/1", DECODED),
        ("rendered", "/rendered", "image/jpeg"),
        ("thumbnail", "/thumbnail", "image/png"),
        ("instance converted", "", CONVERTED),
        ("instance as stored", "", AS_STORED),
    ):
        yield what, url + suffix, {}, {"Accept": accept}
    study, series, sop = url.split("/studies/")[1].split("/")[0::2]
    wado = f"{server.server.url}/wado"  # type: ignore[attr-defined]
    for content_type in ("application/dicom", "image/jpeg"):
        params = {
            "requestType": "WADO",
            "studyUID": study,
            "seriesUID": series,
            "objectUID": sop,
            "contentType": content_type,
        }
        yield f"WADO-URI {content_type}", wado, params, {}


def _bulk_data_uris(node: Any) -> list[str]:
    """Every BulkDataURI in DICOM JSON metadata (PS3.18 F.2.6), in document order."""
    if isinstance(node, dict):
        found = [node["BulkDataURI"]] if isinstance(node.get("BulkDataURI"), str) else []
        return found + [uri for value in node.values() for uri in _bulk_data_uris(value)]
    if isinstance(node, list):
        return [uri for value in node for uri in _bulk_data_uris(value)]
    return []


def _dcmdump_errors(*paths: Path) -> list[str]:
    proc = subprocess.run(
        ["dcmdump", *map(str, paths)], capture_output=True, text=True, errors="replace", timeout=60
    )
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("E:")]
    return errors + ([f"exit status {proc.returncode}"] if proc.returncode else [])


def _dcmdump_failures(served: dict[Path, Mutant]) -> list[str]:
    """What dcmdump cannot read of what was served as stored, named by mutant. One dcmdump
    reads them all (a process per file cost 30 ms each); only when it finds something is each
    file read on its own, to name the mutant."""
    if not served or not _dcmdump_errors(*served):
        return []
    return [
        f"{mutant}: served as stored, dcmdump: {errors[:2]}"
        for path, mutant in served.items()
        if (errors := _dcmdump_errors(path))
    ]


class _Getter:
    """A C-GET SCU on one association, taking whatever the server sends back (PS3.4 C.4.3),
    as storage SCP for each (SOP class, transfer syntax) context given."""

    def __init__(self, server: Dimse, contexts: set[tuple[str, str]]) -> None:
        self.received = 0
        ae = AE(ae_title="FUZZGET")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = DICOM_TIMEOUT
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for sop_class, syntax in sorted(contexts):
            ae.add_requested_context(sop_class, syntax)
        self.assoc = ae.associate(
            "127.0.0.1",
            server.port,
            ae_title=NUBIS_AE,
            ext_neg=[build_role(c, scp_role=True) for c in sorted({c for c, _ in contexts})],
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        assert self.assoc.is_established

    def _on_store(self, event: Any) -> int:
        self.received += 1
        return 0x0000

    def get(self, study: str, series: str | None = None, sop: str | None = None) -> int | None:
        """The final status of a C-GET of a study, or of one instance; None if none came or
        the association did not outlive it."""
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE" if sop else "STUDY"
        query.StudyInstanceUID = study
        if sop:
            query.SeriesInstanceUID, query.SOPInstanceUID = series, sop
        final = None
        for status, _ in self.assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
            if "Status" in status and status.Status not in (0xFF00, 0xFF01):
                final = int(status.Status)
        return final if self.assoc.is_established else None


def test_mutants_get_no_5xx_and_no_hang(fuzzed: Dimse) -> None:
    """Zero 5xx, zero hangs, every C-GET answered, nothing kept of refused mutants, and what is
    served as stored reads in dcmdump."""
    mutants = list(_mutants())
    started = time.monotonic()
    failures: list[str] = []
    stored: dict[str, tuple[Mutant, str]] = {}
    served = tempfile.TemporaryDirectory()
    served_as_stored: dict[Path, Mutant] = {}
    with httpx.Client(headers=AUTH, timeout=REQUEST_TIMEOUT) as client:
        for mutant in mutants:
            what = "STOW-RS"
            try:
                url = _stow(client, fuzzed, mutant)
                if url is None:
                    continue
                stored[url.rsplit("/", 1)[1]] = (mutant, url)
                reads = list(_reads(fuzzed, url))
                for what, target, params, headers in reads:  # bulk data reads join as found
                    response = client.get(target, params=params, headers=headers)
                    if what == "metadata" and response.status_code == 200:
                        reads += [
                            ("bulk data", uri, {}, {"Accept": "application/octet-stream"})
                            for uri in _bulk_data_uris(response.json())[:3]
                        ]
                    if response.status_code >= 500:
                        failures.append(
                            f"{mutant}: {what} {response.status_code} {response.text[:200]}"
                        )
                    elif what == "instance as stored" and response.status_code == 200:
                        [(_, data)] = multipart_parts(
                            response.headers["content-type"], response.content
                        )
                        path = Path(served.name) / f"{len(served_as_stored)}.dcm"
                        path.write_bytes(data)
                        served_as_stored[path] = mutant
            except httpx.TimeoutException:
                failures.append(f"{mutant}: {what}: no answer within {REQUEST_TIMEOUT}s")
            except httpx.TransportError as exc:
                failures.append(f"{mutant}: {what}: {exc!r}")
            except _Unanswered as exc:
                failures.append(f"{mutant}: {exc}")
    with served:
        failures += _dcmdump_failures(served_as_stored)
    http_seconds = time.monotonic() - started

    rows = {r.sop_instance_uid: r for r in index_rows(fuzzed.data_dir)}
    failures += [
        f"{m}: acknowledged but not in the index" for s, (m, _) in stored.items() if s not in rows
    ]
    studies: dict[str, list[str]] = {}
    for sop in stored:
        if sop in rows:
            studies.setdefault(rows[sop].study_uid, []).append(sop)
    headers = [pydicom.dcmread(get_testdata_file(s), stop_before_pixels=True) for s in SOURCES]
    classes = {str(h.SOPClassUID) for h in headers}
    syntaxes = {str(h.file_meta.TransferSyntaxUID) for h in headers}
    received = 0
    # Each object goes as stored to a peer that takes every syntax, and converted to one that
    # takes only uncompressed ones (PS3.4 C.4.3.1: the SCP sends in one the peer accepted). A
    # study at a time; a study whose C-GET fails is retried an instance at a time, to name the
    # mutant. A failed sub-operation is an answer (0xB000, 0xA702); no answer, or another one
    # (0xC411: the SCP failed), is not.
    answers = (0x0000, 0xB000, 0xA702)
    for how, peer_syntaxes in (
        ("as stored", syntaxes),
        ("converted", {ExplicitVRLittleEndian, ImplicitVRLittleEndian}),
    ):
        contexts = {(c, t) for c in classes for t in peer_syntaxes}
        getter = _Getter(fuzzed, contexts)
        try:
            for study, sops in studies.items():
                if getter.get(study) in answers:
                    continue
                for sop in sops:
                    if not getter.assoc.is_established:
                        received += getter.received
                        getter = _Getter(fuzzed, contexts)
                    status = getter.get(study, rows[sop].series_uid, sop)
                    if status not in answers:
                        shown = "no final response" if status is None else f"0x{status:04X}"
                        failures.append(f"{stored[sop][0]}: C-GET {how}: {shown}")
        finally:
            getter.assoc.release()
        received += getter.received

    total = time.monotonic() - started
    print(
        f"\n{len(mutants)} mutants, {len(stored)} stored; HTTP {http_seconds:.1f}s, "
        f"with C-GET {total:.1f}s; {received} objects received by C-GET"
    )
    assert not failures, f"{len(failures)} failure(s):\n" + "\n".join(failures[:40])
    kept_unasked = set(rows) - set(stored)
    assert not kept_unasked, f"objects stored though refused: {sorted(kept_unasked)[:5]}"
    assert len(list(blob_files(fuzzed.data_dir))) == len(rows), "blobs without an index row"
    assert not spool_files(fuzzed.data_dir), "spool files left behind"
    log = fuzzed.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
