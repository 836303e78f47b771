"""De-identification throughput (issue 14): instances per second de-identifying a 0.5 MB CT
slice (512 x 512, 16-bit, from ``nubis.tools.synth``) against just parsing and writing the same
objects, in one process, the variants alternating round by round; thread CPU time (fairer than
wall time on a shared machine).

"parse + write": pydicom reads the Part-10 bytes and writes them back (what plain retrieval of
a stored object would cost in-process were it rewritten at all). "parse + deidentify + write":
the same with ``nubis.deid.engine.deidentify`` under the default profile in between: what an
export job and an on-the-fly de-identified WADO-RS read pay per instance. "JSON view": the
de-identified DICOM JSON of the same object (``deidentify_json``), what a researcher's
metadata and QIDO-RS answers pay per instance.

    .venv/bin/python bench/deid_speed.py [--instances 50] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="nubis source tree")
    parser.add_argument("--instances", type=int, default=50, help="CT slices per round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per variant")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def main() -> None:
    args = _args()
    sys.path.insert(0, str(args.src))
    import pydicom

    from nubis.deid.engine import deidentify
    from nubis.deid.json_view import deidentify_json
    from nubis.deid.profile import load_default_profile
    from nubis.tools import synth

    key = b"bench-project-key-0123456789"
    profile = load_default_profile()
    blobs = [
        synth.dataset_bytes(ds) for ds in synth.series_datasets("CT", n_instances=args.instances)
    ]
    metadata = [pydicom.dcmread(io.BytesIO(b)).to_json_dict() for b in blobs]

    def plain() -> None:
        for blob in blobs:
            ds = pydicom.dcmread(io.BytesIO(blob))
            ds.save_as(io.BytesIO(), enforce_file_format=True)

    def deid() -> None:
        for blob in blobs:
            ds = pydicom.dcmread(io.BytesIO(blob))
            out, _ = deidentify(ds, profile, key)
            out.save_as(io.BytesIO(), enforce_file_format=True)

    def json_view() -> None:
        for meta in metadata:
            deidentify_json(meta, profile, key)

    variants: dict[str, Callable[[], None]] = {
        "parse + write": plain,
        "parse + deidentify + write": deid,
        "JSON view (deidentify_json)": json_view,
    }
    for run in variants.values():
        run()  # warm-up: imports, the table's caches
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            start = time.thread_time()
            run()
            times[name].append(time.thread_time() - start)
    size = len(blobs[0])
    print(f"{args.instances} CT slices of {size / 1e6:.2f} MB, {args.rounds} rounds (median)")
    figures = {}
    for name, samples in times.items():
        rate = args.instances / statistics.median(samples)
        figures[name] = rate
        print(f"  {name:30s} {rate:8.0f} instances/s")
    if args.json:
        args.json.write_text(json.dumps({"object_bytes": size, "instances_per_s": figures}))


if __name__ == "__main__":
    main()
