"""In-process cost of one transcoding on retrieval: a JPEG lossless CT instance served in
Explicit VR Little Endian (issue 11, "Transcoding on retrieval: no slower than Orthanc").

The instance is a 512x512 16-bit CT slice from ``nubis.tools.synth`` (the bench corpus's kind),
compressed by dcmtk's ``dcmcjpeg +e1`` into JPEG Lossless SV1 (1.2.840.10008.1.2.4.70), what
modalities send. ``transcode_file`` is timed on a file object over the stored bytes, as the
server hands it the blob store's decrypting file object; one call is what WADO-RS does per
instance between reading the blob and writing the multipart part. Every result is checked
once: the pixels must equal the uncompressed original.

``--src`` picks the source tree nubis is imported from, so two revisions are measured with the
same script and the same interpreter (the GPL decoder of earlier revisions goes on PYTHONPATH):

    .venv/bin/python bench/transcode.py                       # this checkout
    git archive main src | tar -x -C /tmp/nubis-main
    pip install --target /tmp/gpl --no-deps pylibjpeg-libjpeg
    PYTHONPATH=/tmp/gpl .venv/bin/python bench/transcode.py --src /tmp/nubis-main/src
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="nubis source tree")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls (after warm-up)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of the slice")
    parser.add_argument("--target", default="1.2.840.10008.1.2.1", help="transfer syntax asked for")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def main() -> int:
    args = _args()
    sys.path.insert(0, str(args.src.resolve()))
    import numpy as np
    from pydicom import dcmread
    from pydicom.pixels import get_decoder

    from nubis.dicom import transcode
    from nubis.tools import synth

    if shutil.which("dcmcjpeg") is None:
        print("dcmcjpeg (dcmtk) is needed to make the JPEG lossless instance", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="nubis-bench-transcode-") as tmp:
        [native] = synth.make_ct_series(Path(tmp), n_instances=1, rows=args.size, columns=args.size)
        compressed = Path(tmp) / "jpeg-lossless.dcm"
        subprocess.run(["dcmcjpeg", "+e1", str(native), str(compressed)], check=True)
        data = compressed.read_bytes()
        original = dcmread(native).pixel_array

    source_ts = dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
    result = dcmread(io.BytesIO(transcode.transcode_file(io.BytesIO(data), args.target)))
    if str(result.file_meta.TransferSyntaxUID) != args.target or not np.array_equal(
        result.pixel_array, original
    ):
        print("the transcoded instance does not hold the original pixels", file=sys.stderr)
        return 1

    for _ in range(10):
        transcode.transcode_file(io.BytesIO(data), args.target)
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        transcode.transcode_file(io.BytesIO(data), args.target)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    figures = {
        "nubis": str(Path(transcode.__file__).resolve().parents[2]),
        "source_transfer_syntax": str(source_ts),
        "target_transfer_syntax": args.target,
        "decoders": list(get_decoder(source_ts)._available),
        "stored_bytes": len(data),
        "repeats": args.repeats,
        "p50_ms": round(statistics.median(timings), 2),
        "p95_ms": round(timings[int(0.95 * (len(timings) - 1))], 2),
        "min_ms": round(timings[0], 2),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
