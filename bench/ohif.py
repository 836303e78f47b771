"""OHIF from nubis against OHIF from Orthanc: the same 300-slice CT series, the same OHIF build
and configuration, in one run (issue 10: figures to report).

- nubis serves OHIF itself at /ohif/ (``viewer_ohif_dir``), signed in with a browser session.
- Orthanc (bench/orthanc.py: Debian's orthanc and orthanc-dicomweb) has no OHIF of its own and
  no CORS: the same OHIF build is served by Debian's nginx at / with an app-config of the same
  content, and nginx passes /dicom-web/ to Orthanc (same origin, as OHIF's docs deploy it).

Headless Chromium (Debian's, via Playwright) opens the series in OHIF's default viewer, once
to warm the browser's cache of OHIF's code, then three times measured from the navigation
(medians reported):
- time to first image: until the viewport's canvas shows an image (OHIF's own start, about
  2-3 s of it with software WebGL, included; OHIF's ``studyToFirstImage`` timing, from the
  study query on, is reported too);
- time until all images loaded: until the last slice's frame has been received (OHIF's stack
  prefetch fetches the series in the background; the number of slices it fetched is reported:
  it abandons the prefetches it cancels while they are in flight).

    .venv/bin/python bench/ohif.py [--slices 300]

Results JSON and logs go to bench/results/ (ignored by git). Everything runs on 127.0.0.1 and
is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(ROOT / "src"))

from nubis.cli.ohif import OHIF_VERSION, fetch_ohif  # noqa: E402
from nubis.tools import synth  # noqa: E402
from nubis.web.ui.ohif import app_config  # noqa: E402
from orthanc import OrthancServer, free_port  # noqa: E402
from run import (  # noqa: E402
    CORPUS_DIR,
    RESULTS_DIR,
    NubisServer,
    multipart_body,
    new_client,
    stow,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STUDY_UID = "1.2.826.0.1.3680043.8.498.300300"
USER, PASSWORD = "bench-viewer", "bench-viewer-password-42"
MEASURED_RUNS = 3
NGINX = "/usr/sbin/nginx"
_CANVAS_LIT = """() => {
    const canvas = document.querySelector('canvas.cornerstone-canvas');
    if (!canvas || !canvas.width) return false;
    const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let lit = 0;
    for (let i = 0; i < px.length; i += 4 * 11) if (px[i] + px[i + 1] + px[i + 2] > 30) lit++;
    return lit > px.length / (4 * 11) / 50;
}"""


def ohif_dist() -> Path:
    cache = ROOT / ".venv" / "ohif" / OHIF_VERSION
    if not (cache / "index.html").is_file():
        fetch_ohif(OHIF_VERSION, cache)
    return cache


def series(slices: int) -> list[Path]:
    folder = CORPUS_DIR / f"ohif-ct{slices}"
    paths = sorted(folder.glob("*.dcm"))
    if len(paths) != slices:
        shutil.rmtree(folder, ignore_errors=True)
        paths = synth.make_ct_series(
            folder,
            n_instances=slices,
            study_uid=STUDY_UID,
            patient=synth.PatientSpec(patient_id="BENCH-OHIF", patient_name="Bench^Ohif"),
        )
    return paths


def load(dicomweb: str, paths: list[Path]) -> None:
    with new_client(dicomweb) as client:
        for start in range(0, len(paths), 50):
            body, content_type = multipart_body([p.read_bytes() for p in paths[start : start + 50]])
            stored, failed = stow(client, body, content_type)
            if failed or stored != len(paths[start : start + 50]):
                raise RuntimeError(f"STOW stored {stored}, failed {failed}")


def measure(viewer_url: str, slices: int, login_url: str | None) -> dict[str, Any]:
    """Open the series once to warm up, then MEASURED_RUNS times, in one browser profile, each
    in a new tab once the previous one has been closed and the server has gone quiet; the
    medians of the measured runs."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            if login_url is not None:
                page = context.new_page()
                page.goto(f"{login_url}?next=/ui/")
                page.get_by_label("User name").fill(USER)
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url("**/ui/")
                page.close()
            runs = []
            for _ in range(1 + MEASURED_RUNS):
                page = context.new_page()
                runs.append(_open(page, viewer_url, slices))
                page.close()
                time.sleep(3)
        finally:
            browser.close()
    measured = runs[1:]
    summary: dict[str, Any] = {"warm_up": runs[0], "runs": measured}
    for key in ("first_image_s", "all_images_s", "frames_received", "ohif_study_to_first_image_s"):
        values = [r[key] for r in measured if r[key] is not None]
        summary[key] = statistics.median(values) if values else None
    return summary


def _open(page: Any, url: str, slices: int) -> dict[str, Any]:
    """Seconds from navigation to the first image drawn, and to the last slice's frame
    received (all slices, or as many as OHIF fetched before 5 s passed without one)."""
    frames: dict[str, float] = {}
    failures: list[str] = []
    started = time.perf_counter()

    def finished(request: Any) -> None:
        if "/frames/" not in request.url:
            return
        response = request.response()
        if response is not None and response.status < 400:
            sop = request.url.split("/instances/")[1].split("/")[0]
            frames.setdefault(sop, time.perf_counter() - started)
        elif response is not None:
            failures.append(f"{response.status} {request.url}")

    def failed(request: Any) -> None:
        if "/dicom-web/" in request.url:
            failures.append(f"{request.failure} {request.url}")

    ohif_timings: dict[str, float] = {}

    def console(message: Any) -> None:
        # OHIF times its own steps (console.timeEnd): from the study's query to the first
        # image drawn, which leaves out the app's own start.
        name, _, value = message.text.partition(": ")
        if message.type == "timeEnd" and value.endswith(" ms"):
            ohif_timings.setdefault(name, float(value[:-3]) / 1000)

    page.on("requestfinished", finished)
    page.on("requestfailed", failed)
    page.on("console", console)
    page.goto(url)
    page.wait_for_function(_CANVAS_LIT, polling="raf", timeout=120_000)
    first = time.perf_counter() - started
    deadline = started + 180
    quiet_since = time.perf_counter()
    seen = 0
    while len(frames) < slices and time.perf_counter() < deadline:
        page.wait_for_timeout(50)
        if len(frames) != seen:
            seen, quiet_since = len(frames), time.perf_counter()
        elif time.perf_counter() - quiet_since > 5:
            break
    return {
        "first_image_s": round(first, 3),
        "all_images_s": round(max(frames.values()), 3) if frames else None,
        "frames_received": len(frames),
        "ohif_study_to_first_image_s": ohif_timings.get("studyToFirstImage"),
        "aborted_or_failed_requests": len(failures),
        "failures": failures[:3],
    }


def _add_user(data_dir: Path) -> None:
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "nubis"), "users", "add", USER, "--role", "radiologist",
         "--password-stdin", "--data-dir", str(data_dir)],
        input=PASSWORD + "\n", text=True, check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def bench_nubis(dist: Path, paths: list[Path], log_dir: Path) -> dict[str, Any]:
    server = NubisServer(
        str(ROOT / ".venv" / "bin" / "nubis"), ["--set", f"viewer_ohif_dir={dist}"], log_dir
    )
    server.start()
    try:
        load(server.dicomweb_url, paths)
        _add_user(server.workdir / "data")
        base = f"http://127.0.0.1:{server.http_port}"
        viewer = f"/ohif/viewer?StudyInstanceUIDs={STUDY_UID}"
        return measure(base + viewer, len(paths), f"{base}/ui/login")
    finally:
        server.stop()


@contextlib.contextmanager
def nginx_for_orthanc(dist: Path, orthanc_port: int, log_dir: Path) -> Iterator[str]:
    """OHIF's build at / and Orthanc's DICOMweb at /dicom-web/ on one origin."""
    work = Path(tempfile.mkdtemp(prefix="bench-ohif-nginx-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config_js = app_config(base).replace('"routerBasename": "/ohif"', '"routerBasename": "/"')
    (work / "app-config.js").write_text(config_js)
    conf = work / "nginx.conf"
    conf.write_text(
        f"""daemon off; master_process off; pid {work}/nginx.pid; error_log {log_dir}/nginx.log;
events {{ worker_connections 256; }}
http {{
  include /etc/nginx/mime.types;
  access_log off; sendfile on;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fastcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location /dicom-web/ {{ proxy_pass http://127.0.0.1:{orthanc_port}; }}
    location = /app-config.js {{ alias {work}/app-config.js; }}
    location / {{ root {dist}; try_files $uri /index.html; }}
  }}
}}
"""
    )
    process = subprocess.Popen([NGINX, "-p", str(work), "-c", str(conf)])
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start") from None
                time.sleep(0.05)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def bench_orthanc(dist: Path, paths: list[Path], log_dir: Path) -> dict[str, Any]:
    with OrthancServer(log_dir=log_dir) as orthanc:
        load(orthanc.dicomweb_url, paths)
        with nginx_for_orthanc(dist, orthanc.http_port, log_dir) as base:
            figures = measure(f"{base}/viewer?StudyInstanceUIDs={STUDY_UID}", len(paths), None)
        figures["version"] = orthanc.version
        return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    args = parser.parse_args(argv)
    if shutil.which(NGINX) is None:
        print("nginx missing: apt-get install nginx-light", file=sys.stderr)
        return 2
    log_dir = RESULTS_DIR / "ohif"
    log_dir.mkdir(parents=True, exist_ok=True)
    dist = ohif_dist()
    paths = series(args.slices)
    results: dict[str, Any] = {"ohif": OHIF_VERSION, "slices": args.slices}
    for name, run in (("nubis", bench_nubis), ("orthanc", bench_orthanc)):
        try:
            results[name] = run(dist, paths, log_dir)
        except Exception as exc:  # a target that fails is reported; the other still runs
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(name, json.dumps(results[name])[:2000], flush=True)
    (log_dir / "ohif-results.json").write_text(json.dumps(results, indent=2))
    print(f"{'':28}{'nubis':>10}{'Orthanc':>10}")
    for key, label in (
        ("first_image_s", "time to first image, s"),
        ("all_images_s", "all images loaded, s"),
        ("frames_received", "slices OHIF fetched"),
        ("ohif_study_to_first_image_s", "OHIF studyToFirstImage, s"),
    ):
        row = [results[t].get(key) for t in ("nubis", "orthanc")]
        print(f"{label:28}" + "".join(f"{'-' if v is None else round(v, 3):>10}" for v in row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
