"""Is there a timing oracle? A study outside the caller's scope must be indistinguishable from one
that does not exist (issue 4): same 404, and no response-time difference worth measuring.

An archive with three studies is built in-process (the same Archive and ASGI app as `nubis
serve`), then a referrer of tenant "default", granted only patient P-OWN, asks for
  - ``absent``: study UIDs that exist nowhere,
  - ``other-tenant``: a study that exists in tenant "other",
  - ``not-granted``: a study of the referrer's own tenant, of a patient not granted to them,
through WADO-RS metadata, WADO-RS retrieve and QIDO-RS by StudyInstanceUID, interleaved at
random so drift in the machine's speed hits all kinds alike. Reported per route: the median of
each kind, the difference of medians against ``absent`` and its 95% bootstrap interval.

    .venv/bin/python bench/scope_timing.py [--requests 1500]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from starlette.testclient import TestClient  # noqa: E402

from nubis.archive import Archive  # noqa: E402
from nubis.config import load_settings  # noqa: E402
from nubis.tools import synth  # noqa: E402
from nubis.web.app import create_app  # noqa: E402
from nubis.web.dicomweb.multipart import iter_multipart, new_boundary  # noqa: E402

ADMIN = "nubis-bench-admin-token-0123456789abcdef"


def _store(client: TestClient, key: str, folder: Path, patient: str, seed: int) -> str:
    spec = synth.PatientSpec(patient, f"Timing^{patient}", "19700101", "O")
    files = synth.make_ct_series(
        folder, n_instances=3, rows=64, columns=64, patient=spec, seed=seed
    )
    boundary = new_boundary()
    parts = [({"Content-Type": "application/dicom"}, [p.read_bytes()]) for p in files]
    body = b"".join(iter_multipart(parts, boundary))
    response = client.post(
        "/dicom-web/studies",
        content=body,
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    response.raise_for_status()
    return str(response.json()["00081190"]["Value"][0]).rsplit("/studies/", 1)[1]


def _interval(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    diffs = [
        np.median(rng.choice(a, a.size)) - np.median(rng.choice(b, b.size)) for _ in range(2000)
    ]
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="per kind and route")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scope-") as tmp:
        settings = load_settings(
            environ={},
            overrides={
                "data_dir": f"{tmp}/data",
                "admin_token": ADMIN,
                "dimse_port": "0",
                "log_level": "warning",
            },
        )
        archive = Archive(settings)
        with TestClient(create_app(archive)) as client:
            users = archive.users
            users.add_user("other-admin", tenant="other", roles="admin")
            other_key = users.create_api_key("other-admin")[1]
            users.add_user("referrer", tenant="default", roles="referrer")
            referrer_key = users.create_api_key("referrer")[1]
            users.grant("referrer", tenant="default", patient_id="P-OWN")
            own = _store(client, ADMIN, Path(tmp, "own"), "P-OWN", seed=1)
            studies = {
                "other-tenant": _store(client, other_key, Path(tmp, "foreign"), "P-OWN", seed=2),
                "not-granted": _store(client, ADMIN, Path(tmp, "other"), "P-OTHER", seed=3),
            }
            assert own not in studies.values()
            routes = {
                "metadata": "/dicom-web/studies/{}/metadata",
                "retrieve": "/dicom-web/studies/{}",
                "qido": "/dicom-web/studies?StudyInstanceUID={}",
            }
            headers = {"Authorization": f"Bearer {referrer_key}", "Accept": "*/*"}
            rng = random.Random(11)
            plan = [
                (route, kind)
                for route in routes
                for kind in ("absent", "other-tenant", "not-granted")
                for _ in range(args.requests)
            ]
            rng.shuffle(plan)
            samples: dict[tuple[str, str], list[float]] = {}
            statuses: dict[tuple[str, str], set[int]] = {}
            for route, kind in plan:
                uid = studies.get(kind) or f"2.25.{rng.getrandbits(100)}"
                url = routes[route].format(uid)
                t0 = time.perf_counter()
                response = client.get(url, headers=headers)
                samples.setdefault((route, kind), []).append(time.perf_counter() - t0)
                statuses.setdefault((route, kind), set()).add(response.status_code)
    np_rng = np.random.default_rng(5)
    report = {}
    print(f"{'route':9} {'kind':13} {'status':8} {'median ms':>10} {'vs absent ms (95% CI)':>28}")
    for route in routes:
        base = np.asarray(samples[(route, "absent")]) * 1000
        for kind in ("absent", "other-tenant", "not-granted"):
            data = np.asarray(samples[(route, kind)]) * 1000
            low, high = _interval(data, base, np_rng) if kind != "absent" else (0.0, 0.0)
            diff = float(np.median(data) - np.median(base))
            report[f"{route}/{kind}"] = {
                "status": sorted(statuses[(route, kind)]),
                "median_ms": float(np.median(data)),
                "diff_ms": diff,
                "ci95_ms": [low, high],
            }
            print(
                f"{route:9} {kind:13} {','.join(map(str, sorted(statuses[(route, kind)]))):8} "
                f"{np.median(data):10.3f} {diff:+9.3f} [{low:+.3f}, {high:+.3f}]"
            )
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"scope-timing-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
        json.dumps(report, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
