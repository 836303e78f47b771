"""In-process cost of inspecting one object at ingest, by both readers, in the same run (issue 11,
"parse only what the index needs and find frame offsets without decoding").

Every stored object goes through ``nubis.dicom.inspect.inspect_file``. It reads with
``nubis.dicom.fast_parse`` when it can, else with pydicom; ``fast=False`` forces pydicom. The
objects are those of the STOW-RS benchmarks (bench/speed.py): a 512 x 512 16-bit CT slice from
``nubis.tools.synth`` (0.5 MB) and a 64 x 64 one (about 10 KB); then a JPEG 2000 multi-frame
object and, for contrast, an implicit VR copy of the CT. Each call reads the file from the page
cache, as the store path reads its spool file. The two readers alternate call by call so that
both see the same machine; p50 and p90 per object are printed in microseconds.

    .venv/bin/python bench/inspect_speed.py [--repeats 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="nubis source tree")
    parser.add_argument("--repeats", type=int, default=2000, help="timed calls per reader")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def _objects(tmp: Path) -> dict[str, Path]:
    import pydicom
    from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless

    from nubis.tools import synth

    [ct] = synth.make_ct_series(tmp / "ct", n_instances=1)
    [small] = synth.make_ct_series(tmp / "small", n_instances=1, rows=64, columns=64)
    implicit = tmp / "ct_implicit.dcm"
    ds = pydicom.dcmread(ct)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, implicit_vr=True, little_endian=True)
    multiframe = synth.make_multiframe(
        tmp / "mf_j2k.dcm", frames=50, rows=128, columns=128, transfer_syntax=JPEG2000Lossless
    )
    return {
        "CT 512x512 explicit LE": ct,
        "CT 64x64 explicit LE": small,
        "CT 512x512 implicit LE": implicit,
        "JPEG 2000 50 frames": multiframe,
    }


def _p(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100)[q - 1] * 1e6


def main() -> int:
    args = _args()
    sys.path.insert(0, str(args.src.resolve()))
    from nubis.dicom.inspect import inspect_file

    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="nubis-bench-inspect-") as tmp:
        for name, path in _objects(Path(tmp)).items():
            fast, slow = inspect_file(path), inspect_file(path, fast=False)
            assert fast == slow, f"the readers disagree on {name}"
            readers: dict[str, Callable[[], object]] = {
                "fast": lambda p=path: inspect_file(p),
                "pydicom": lambda p=path: inspect_file(p, fast=False),
            }
            samples: dict[str, list[float]] = {r: [] for r in readers}
            for _ in range(50):  # warm-up
                for call in readers.values():
                    call()
            for _ in range(args.repeats):
                for reader, call in readers.items():
                    start = time.thread_time()
                    call()
                    samples[reader].append(time.thread_time() - start)
            row = {f"{r}_p50_us": _p(s, 50) for r, s in samples.items()}
            row |= {f"{r}_p90_us": _p(s, 90) for r, s in samples.items()}
            row["size_bytes"] = path.stat().st_size
            figures[name] = row
            print(
                f"{name:26s} {row['size_bytes'] / 1024:8.1f} KiB   fast p50 "
                f"{row['fast_p50_us']:7.0f} us (p90 {row['fast_p90_us']:5.0f})   pydicom p50 "
                f"{row['pydicom_p50_us']:7.0f} us (p90 {row['pydicom_p90_us']:5.0f})   "
                f"{row['pydicom_p50_us'] / row['fast_p50_us']:4.1f}x"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
