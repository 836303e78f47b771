"""What password guessing costs everyone else: QIDO-RS latency with and without a guessing load,
login throttling off and on (issue 9 item 7).

For each mode a fresh ``nubis serve`` (default workers, durable) gets a user with a password and
one small study; then QIDO-RS ``/studies?PatientID=...`` is timed sequentially with an API key,
first alone, then while ``--guessers`` clients send wrong Basic passwords for that user, paced
to ``--rate`` attempts per second in all (each on a keep-alive connection, from its own
forwarded address, so the per-address limit applies as it would to separate machines).

    .venv/bin/python bench/login_guessing.py [--seconds 20] [--guessers 8] [--rate 11.5]
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from nubis.tools import synth  # noqa: E402

ADMIN = "nubis-bench-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
PASSWORD = "the victim's long password"
PATIENT = synth.PatientSpec("BENCH-GUESS-1", "Guess^Bench", "19700101", "O")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(data: Path, port: int, throttle: bool) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NUBIS_ADMIN_TOKEN": ADMIN,
        "NUBIS_DIMSE_PORT": "0",
        "NUBIS_TRUSTED_PROXIES": "127.0.0.1",
    }
    if not throttle:
        env["NUBIS_LOGIN_MAX_FAILURES_PER_USER"] = "0"
        env["NUBIS_LOGIN_MAX_FAILURES_PER_ADDRESS"] = "0"
    args = [sys.executable, "-m", "nubis", "serve", "--data-dir", str(data),
            "--http-port", str(port), "--set", "log_level=warning"]  # fmt: skip
    with (data.parent / "server.log").open("ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=log, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                subprocess.run(
                    [sys.executable, "-m", "nubis", "users", "add", "victim", "--role",
                     "radiologist", "--password-stdin", "--data-dir", str(data)],
                    input=(PASSWORD + "\n").encode(), check=True, capture_output=True, env=env,
                )  # fmt: skip
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("nubis serve did not start")


def _store(url: str, folder: Path) -> None:
    files = synth.make_ct_series(folder, n_instances=3, rows=64, columns=64, patient=PATIENT)
    body = b"".join(
        b"--b\r\nContent-Type: application/dicom\r\n\r\n" + f.read_bytes() + b"\r\n" for f in files
    )
    response = httpx.post(
        f"{url}/dicom-web/studies",
        content=body + b"--b--\r\n",
        headers={**AUTH, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        timeout=60,
    )
    response.raise_for_status()


def _query_latencies(url: str, seconds: float) -> list[float]:
    out = []
    with httpx.Client(headers=AUTH, timeout=30) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            query = {"PatientID": PATIENT.patient_id}
            response = client.get(f"{url}/dicom-web/studies", params=query)
            out.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200 and len(response.json()) == 1, response.text
    return out


def _guess(
    url: str, index: int, every: float, stop: threading.Event, seen: collections.Counter[int]
) -> None:
    headers = {"X-Forwarded-For": f"198.51.100.{index + 1}"}
    with httpx.Client(timeout=30, headers=headers) as client:
        next_at = time.monotonic()
        n = 0
        while not stop.is_set():
            n += 1
            auth = httpx.BasicAuth("victim", f"guess-{index}-{n}")
            seen[client.get(f"{url}/-/whoami", auth=auth).status_code] += 1
            next_at += every
            stop.wait(max(0.0, next_at - time.monotonic()))


def _summary(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[int(len(values) * 0.95)]
    return f"p50 {statistics.median(values):6.1f} ms, p95 {p95:6.1f} ms ({len(values)} queries)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--guessers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=11.5, help="attempts per second, in all")
    args = parser.parse_args()
    for throttle in (False, True):
        with tempfile.TemporaryDirectory(prefix="bench-guess-") as tmp:
            port = _free_port()
            process = _serve(Path(tmp) / "data", port, throttle)
            url = f"http://127.0.0.1:{port}"
            try:
                _store(url, Path(tmp) / "objects")
                _query_latencies(url, 2)  # warm-up
                alone = _query_latencies(url, args.seconds)
                stop, seen = threading.Event(), collections.Counter[int]()
                every = args.guessers / args.rate
                guessers = [
                    threading.Thread(target=_guess, args=(url, i, every, stop, seen))
                    for i in range(args.guessers)
                ]
                for thread in guessers:
                    thread.start()
                loaded = _query_latencies(url, args.seconds)
                stop.set()
                for thread in guessers:
                    thread.join()
            finally:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
            mode = "throttle on " if throttle else "throttle off"
            print(f"{mode}: QIDO alone        {_summary(alone)}")
            print(f"{mode}: QIDO while guessing {_summary(loaded)}; guesses {dict(seen)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
