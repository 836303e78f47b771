"""The built-in viewer's figures (issue 10): time from opening a 300-slice 512x512 CT series to
its first image drawn, time until the whole series is loaded, and the scrolling rate once it is.

A fresh `nubis serve` (default settings, loopback) is given the series over STOW-RS and a user
made with the CLI; Debian's Chromium, headless and driven by Playwright, signs in and opens
`/ui/studies/{study}/view` several times in one browser profile (the first opening fetches
the viewer's static files, later ones find them in the browser's cache: both are reported).

- First image: the viewer's `nubis:drawn` event of image 1, in ms since navigation start
  (`performance.now()` in the page), caught by a listener installed before any page script.
- All loaded: until the viewport reports every slice in its frame cache (`data-loaded`).
- Scrolling: in the page, the next slice is asked for (an ArrowDown key event) as soon as
  the previous one was drawn, through the whole series; images/s = steps / elapsed time. Each
  draw happens in a requestAnimationFrame callback, so the rate cannot exceed the display's
  frame rate (60 Hz in headless Chromium).

    .venv/bin/python bench/viewer.py [--slices 300] [--runs 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pydicom

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from nubis.tools import synth  # noqa: E402

ADMIN = "nubis-bench-admin-token-0123456789abcdef"
PASSWORD = "bench-viewer-password-42"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
RESULTS = Path(__file__).resolve().parent / "results"
# Installed before the page's own scripts; a capture listener on the document sees the
# viewport's (non-bubbling) draw events.
LISTEN = """
performance.setResourceTimingBufferSize(100000);
window.__drawn = [];
document.addEventListener("nubis:drawn", (e) => window.__drawn.push(e.detail), true);
"""
SCROLL = """async (steps) => {
    const viewport = document.querySelector(".viewport");
    const drawn = () => new Promise((resolve) => viewport.addEventListener(
        "nubis:drawn", (e) => resolve(e.detail.time), { once: true }));
    const start = performance.now();
    const times = [];
    for (let i = 0; i < steps; i++) {
        const next = drawn();
        document.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowDown", bubbles: true }));
        times.push(await next);
    }
    return { start, times };
}"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(data_dir: Path, port: int, log: Path, settings: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NUBIS_ADMIN_TOKEN": ADMIN, "NUBIS_DIMSE_PORT": "0"}
    args = [
        sys.executable, "-m", "nubis", "serve", "--data-dir", str(data_dir),
        "--host", "127.0.0.1", "--http-port", str(port), "--set", "log_level=warning",
    ]  # fmt: skip
    for setting in settings:
        args += ["--set", setting]
    with log.open("ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError(f"nubis serve did not start; see {log}")


def _store(url: str, paths: list[Path]) -> None:
    with httpx.Client(headers={"Authorization": f"Bearer {ADMIN}"}, timeout=300) as client:
        for start in range(0, len(paths), 50):
            body = b"".join(
                b"--b\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes() + b"\r\n"
                for p in paths[start : start + 50]
            )
            response = client.post(
                f"{url}/dicom-web/studies",
                content=body + b"--b--\r\n",
                headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
            )
            response.raise_for_status()


def _add_user(data_dir: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "nubis", "users", "add", "bench", "--role", "radiologist",
         "--password-stdin", "--data-dir", str(data_dir)],
        input=PASSWORD + "\n", text=True, check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def _open(page: Page, url: str, slices: int) -> dict[str, float]:
    started = time.monotonic()
    page.goto(url)
    page.wait_for_function("() => window.__drawn.length > 0", timeout=30000)
    first = page.evaluate("() => window.__drawn[0].time")
    page.wait_for_function(
        f"() => document.querySelector('.viewport').dataset.loaded === '{slices}'",
        timeout=120000,
        polling=20,
    )
    loaded = (time.monotonic() - started) * 1000
    resources = page.evaluate(
        """() => performance.getEntriesByType("resource").map((r) => ({
            name: r.name, start: r.startTime, sent: r.requestStart, first: r.responseStart,
            end: r.responseEnd }))"""
    )
    page_done = page.evaluate("() => performance.getEntriesByType('navigation')[0].responseEnd")
    marks = page.evaluate(
        """() => Object.fromEntries(
            performance.getEntriesByType("mark").map((m) => [m.name, m.startTime]))"""
    )
    frames = [r for r in resources if "/frames/" in r["name"]]
    waits = sorted(r["first"] - r["sent"] for r in frames)
    metadata = next(r for r in resources if r["name"].endswith("/metadata"))
    frame = frames[0]
    return {
        "first_image_ms": first,
        "all_loaded_ms": loaded,
        "page_done_ms": page_done,
        "viewer_start_ms": marks["viewer-start"],
        "metadata_start_ms": metadata["start"],
        "metadata_request_ms": metadata["end"] - metadata["start"],
        "metadata_done_ms": metadata["end"],
        "series_ready_ms": marks["series-ready"],
        "first_frame_start_ms": frame["start"],
        "first_frame_done_ms": frame["end"],
        "metadata_requests": sum(r["name"].endswith("/metadata") for r in resources),
        "frame_requests": len(frames),
        "frame_server_wait_p50_ms": statistics.median(waits),
        "last_frame_done_ms": max(r["end"] for r in frames),
    }


def _scroll(page: Page, slices: int) -> dict[str, float]:
    page.keyboard.press("Home")
    page.wait_for_function("() => document.querySelector('.viewport').dataset.drawn === '0'")
    result: dict[str, Any] = page.evaluate(SCROLL, slices - 1)
    times = [result["start"], *result["times"]]
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    elapsed = (times[-1] - times[0]) / 1000
    return {
        "scroll_images_per_s": (slices - 1) / elapsed,
        "scroll_step_p50_ms": statistics.median(gaps),
        "scroll_step_p95_ms": gaps[int(len(gaps) * 0.95) - 1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5, help="openings of the viewer")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a nubis setting"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-viewer-") as tmp:
        folder = Path(tmp)
        print(f"making {args.slices} CT slices of 512x512 ...", flush=True)
        paths = synth.make_ct_series(folder / "ct", n_instances=args.slices)
        header = pydicom.dcmread(paths[0], stop_before_pixels=True)
        port = _free_port()
        server = _serve(folder / "data", port, folder / "server.log", args.set)
        try:
            url = f"http://127.0.0.1:{port}"
            _store(url, paths)
            _add_user(folder / "data")
            viewer = f"{url}/ui/studies/{header.StudyInstanceUID}/view"
            runs = []
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
                )
                context = browser.new_context(viewport={"width": 1280, "height": 860})
                context.add_init_script(LISTEN)
                page = context.new_page()
                page.goto(f"{url}/ui/login")
                page.get_by_label("User name").fill("bench")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(f"{url}/ui/**")
                for run in range(args.runs):
                    page = context.new_page()
                    figures = _open(page, viewer, args.slices)
                    if run == args.runs - 1:
                        figures.update(_scroll(page, args.slices))
                    runs.append(figures)
                    shown = ", ".join(f"{k} {v:.1f}" for k, v in figures.items())
                    print(f"run {run + 1}: {shown}", flush=True)
                    page.close()
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    warm = runs[1:] or runs
    summary = {
        "slices": args.slices,
        "first_image_ms_cold": runs[0]["first_image_ms"],
        "first_image_ms_warm_median": statistics.median(r["first_image_ms"] for r in warm),
        "all_loaded_ms_median": statistics.median(r["all_loaded_ms"] for r in runs),
        **{k: v for k, v in runs[-1].items() if k.startswith("scroll_")},
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"viewer-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
