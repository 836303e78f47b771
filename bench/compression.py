"""What a tier's lossless compression saves (issue 11, ``tier_compression``), measured.

Each object a tier would re-encode (uncompressed little endian pixel data,
nubis.dicom.recompress.RECOMPRESSIBLE) goes through the very function the ``tier`` job calls,
:func:`nubis.dicom.recompress.compress_verified`: encode, decode and compare every frame,
convert back to the original syntax and compare again. Reported per corpus and codec: objects
compressed and kept (refused, with the reasons), bytes as received and as stored (a kept
object is stored as received), the ratio, and the CPU time per object of re-encode + verify
(``time.process_time``, this process only, one thread).

Corpora:
  - ``bench-ct``: the bench's STOW corpus, CT slices of 512x512 16-bit (12 bits stored) from
    nubis.tools.synth, seeds as bench/run.py makes them (first ``--ct`` instances);
  - ``bench-multiframe``: the bench's Multi-frame Grayscale Word SC object
    (nubis.tools.synth.make_multiframe, seed 7), ``--frames`` frames of 256x256;
  - ``pydicom``: every file bundled with pydicom (``pydicom/data/test_files``, no download)
    with uncompressed little endian pixel data: real modalities' files, colour, palette, 1, 8,
    16 and 32 bits, and some deliberately broken ones.

    .venv/bin/python bench/compression.py [--ct 40] [--frames 200] [--codecs htj2k,jpegls]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import pydicom  # noqa: E402

from nubis.dicom.recompress import (  # noqa: E402
    RECOMPRESSIBLE,
    NotRecompressible,
    compress_verified,
)
from nubis.tiers.rules import LOSSLESS_CODECS  # noqa: E402
from nubis.tools import synth  # noqa: E402

RESULTS = ROOT / "bench" / "results"
STUDY_SIZE = 200  # bench/run.py's instances per study: seeds 1000, 1001, ... per study


@dataclass
class Tally:
    objects: int = 0
    compressed: int = 0
    received: int = 0
    stored: int = 0
    cpu: float = 0.0
    refused: Counter[str] = field(default_factory=Counter)

    def row(self, corpus: str, codec: str) -> dict[str, object]:
        return {
            "corpus": corpus,
            "codec": codec,
            "objects": self.objects,
            "compressed": self.compressed,
            "received_bytes": self.received,
            "stored_bytes": self.stored,
            "ratio": round(self.received / self.stored, 3) if self.stored else None,
            "saved_percent": round(100 * (1 - self.stored / self.received), 1)
            if self.received
            else None,
            "cpu_ms_per_object": round(1000 * self.cpu / self.objects, 1) if self.objects else None,
            "refused": dict(self.refused),
        }


def bench_ct(folder: Path, count: int) -> Iterator[tuple[str, bytes]]:
    for study in range(-(-count // STUDY_SIZE)):
        n = min(STUDY_SIZE, count - study * STUDY_SIZE)
        paths = synth.make_ct_series(
            folder / f"study{study:03d}",
            n_instances=n,
            patient=synth.PatientSpec(
                f"BENCH{study:03d}", f"Bench^Patient{study}", "19650412", "M"
            ),
            accession=f"BENCHACC{study:03d}",
            seed=1000 + study,
        )
        for path in paths:
            yield path.name, path.read_bytes()


def bench_multiframe(folder: Path, frames: int) -> Iterator[tuple[str, bytes]]:
    path = synth.make_multiframe(folder / "mf.dcm", frames=frames, rows=256, columns=256, seed=7)
    yield path.name, path.read_bytes()


def pydicom_files() -> Iterator[tuple[str, bytes]]:
    folder = Path(pydicom.data.__file__).parent / "test_files"
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # not a DICOM file: pydicom keeps others there too
            continue
        if ds.file_meta.get("TransferSyntaxUID") not in RECOMPRESSIBLE or "PixelData" not in ds:
            continue
        yield str(path.relative_to(folder)), path.read_bytes()


def measure(objects: list[tuple[str, bytes]], target: str, tally: Tally) -> None:
    for _name, data in objects:
        tally.objects += 1
        tally.received += len(data)
        start = time.process_time()
        try:
            stored = len(compress_verified(io.BytesIO(data), target))
            tally.compressed += 1
        except NotRecompressible as exc:
            stored = len(data)
            tally.refused[exc.reason.split(":")[-1].strip()[:80]] += 1
        tally.cpu += time.process_time() - start
        tally.stored += stored


def markdown(results: list[tuple[str, str, Tally]]) -> str:
    lines = [
        "| corpus | codec | objects (compressed) | as received | as stored | ratio | saved "
        "| CPU per object |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for corpus, codec, t in results:
        lines.append(
            f"| {corpus} | {codec} | {t.objects} ({t.compressed}) | {t.received / 1e6:.2f} MB "
            f"| {t.stored / 1e6:.2f} MB | {t.received / t.stored:.2f}x "
            f"| {100 * (1 - t.stored / t.received):.1f} % | {1000 * t.cpu / t.objects:.0f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", type=int, default=40, help="bench CT instances (512x512)")
    parser.add_argument("--frames", type=int, default=200, help="frames of the multi-frame object")
    parser.add_argument("--codecs", default="htj2k,jpegls", help="names of LOSSLESS_CODECS")
    args = parser.parse_args()
    results: list[tuple[str, str, Tally]] = []
    with tempfile.TemporaryDirectory(prefix="nubis-compression-") as tmp:
        corpora = {
            "bench-ct": list(bench_ct(Path(tmp) / "ct", args.ct)),
            "bench-multiframe": list(bench_multiframe(Path(tmp) / "mf", args.frames)),
            "pydicom": list(pydicom_files()),
        }
        for corpus, objects in corpora.items():
            for codec in args.codecs.split(","):
                tally = Tally()
                measure(objects, LOSSLESS_CODECS[codec], tally)
                results.append((corpus, codec, tally))
                print(json.dumps(tally.row(corpus, codec)), flush=True)
    print()
    print(markdown(results))
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = [tally.row(corpus, codec) for corpus, codec, tally in results]
    (RESULTS / "compression.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
