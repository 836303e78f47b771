"""``nubis research aggregate`` end to end over HTTP: two stand-in sites (a thread each, on
127.0.0.1) answer as nubis does (tests/integration/test_analytics.py asks real archives); the
command sends each its own key, pools, suppresses, and fails naming a site that refuses."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nubis.cli.main import app
from nubis.model.aggregates import KINDS, suppress

BODY = KINDS["instances_by_body_part"]


def _site(answer: dict[str, Any], key: str, seen: list[tuple[str, str]]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization", "")))
            if self.headers.get("Authorization") != f"Bearer {key}":
                status, body = 401, {"reason": "authentication required"}
            else:
                status, body = 200, answer
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def sites() -> Iterator[tuple[list[str], list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    servers = [
        _site(suppress(BODY, {("CHEST",): 12, ("HEAD",): 3}, 10), "key-a", seen),
        _site(suppress(BODY, {("CHEST",): 11, ("HEAD",): 8}, 10), "key-b", seen),
    ]
    try:
        yield [f"http://127.0.0.1:{s.server_address[1]}" for s in servers], seen
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_the_command_pools_two_sites(
    sites: tuple[list[str], list[tuple[str, str]]], tmp_path: Path
) -> None:
    urls, seen = sites
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# site key\n{urls[0]} key-a\n{urls[1]}/ key-b\n")
    args = ["research", "aggregate", "instances_by_body_part", "Modality=CT"]
    args += ["--site", urls[0], "--site", urls[1], "--keys", str(keys), "--json"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    pooled = json.loads(done.output)["pooled"]
    assert {tuple(c["key"]): c["count"] for c in pooled["cells"]} == {
        ("CHEST",): 23,
        ("HEAD",): "<10",
    }
    assert sorted(seen) == sorted(
        [
            ("/research/aggregate?kind=instances_by_body_part&Modality=CT", "Bearer key-a"),
            ("/research/aggregate?kind=instances_by_body_part&Modality=CT", "Bearer key-b"),
        ]
    )


def test_a_site_that_refuses_fails_the_question(
    sites: tuple[list[str], list[tuple[str, str]]],
) -> None:
    urls, _seen = sites
    args = ["research", "aggregate", "kvp_histogram", "--site", urls[0], "--site", urls[1]]
    done = CliRunner().invoke(app, args, env={"NUBIS_RESEARCH_KEY": "key-a"})
    assert done.exit_code == 1
    assert f"{urls[1]}: HTTP 401 authentication required" in done.output
    assert "key-a" not in done.output
