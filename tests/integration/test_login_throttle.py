"""Login throttling against a live server with two worker processes (issue 9 item 7).

Wrong passwords lock a user name (from any address) or a source address (whatever names it
tries): then every password login is answered 429 with Retry-After (RFC 6585 4) before any
argon2 check, also with the right password, and the start of the lockout is audited (Security
Alert). Counts live in the index, so a lockout holds whichever worker a new connection reaches.
Source addresses are set with X-Forwarded-For, which the server believes from 127.0.0.1 here
(``trusted_proxies``), so one test machine can stand for many clients.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import httpx
import pytest

from integration import AUTH
from integration.cli import nubis_cli
from integration.server import Server, start_server

PASSWORD = "a long enough password"
SECURITY_ALERT = "110113"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "NUBIS_DURABLE": "false",
        "NUBIS_WORKERS": "2",
        "NUBIS_TRUSTED_PROXIES": "127.0.0.1",
        "NUBIS_LOGIN_MAX_FAILURES_PER_USER": "5",
        "NUBIS_LOGIN_MAX_FAILURES_PER_ADDRESS": "8",
        "NUBIS_LOGIN_LOCKOUT_SECONDS": "30",
    }
    server = start_server(tmp_path_factory.mktemp("throttle") / "data", env=env)
    try:
        for name in ("thr-alice", "thr-bob", "thr-carol"):
            nubis_cli("users", "add", name, "--role", "radiologist", "--password-stdin",
                      "--data-dir", str(server.data_dir),
                      input=PASSWORD + "\n", env=env, check=True)  # fmt: skip
        yield server
    finally:
        server.stop()


def attempt(server: Server, user: str, password: str, address: str) -> httpx.Response:
    # A new connection each time: the kernel may hand it to either worker process.
    return httpx.get(
        f"{server.url}/-/whoami",
        auth=httpx.BasicAuth(user, password),
        headers={"X-Forwarded-For": address},
        timeout=30,
    )


def lockout_records(server: Server) -> list[dict]:  # type: ignore[type-arg]
    response = httpx.get(
        f"{server.url}/audit/records", params={"event": SECURITY_ALERT}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    return [r["event"] for r in response.json()["records"] if "logins" in str(r["event"])]


def test_a_user_name_is_locked_after_its_failures_from_any_address(server: Server) -> None:
    wrong = []
    for i in range(5):
        started = time.perf_counter()
        response = attempt(server, "thr-alice", "wrong password", f"198.51.100.{i + 1}")
        wrong.append(time.perf_counter() - started)
        assert response.status_code == 401, response.text
    locked = []
    for i, password in enumerate(["wrong password", PASSWORD, "again wrong"]):
        started = time.perf_counter()
        response = attempt(server, "thr-alice", password, f"198.51.100.{i + 20}")
        locked.append(time.perf_counter() - started)
        assert response.status_code == 429, response.text
        assert 25 <= int(response.headers["retry-after"]) <= 30, response.headers
    # POST /-/login takes the same password check, and is locked the same.
    login = httpx.post(f"{server.url}/-/login", auth=httpx.BasicAuth("thr-alice", PASSWORD))
    assert login.status_code == 429, login.text
    # Another user from one of those addresses is not locked; API keys still work.
    assert attempt(server, "thr-bob", PASSWORD, "198.51.100.1").status_code == 200
    assert httpx.get(f"{server.url}/-/whoami", headers=AUTH).status_code == 200
    # A locked attempt costs no argon2: far less than a checked one.
    assert statistics.median(locked) < statistics.median(wrong) / 2, (locked, wrong)
    [record] = [r for r in lockout_records(server) if "thr-alice" in str(r)]
    assert record["event_types"][0]["code"] == "110137"  # User Security Attributes Changed
    assert "locked for 30 s after 5 failed" in record["outcome_description"], record


def test_an_address_is_locked_whatever_names_it_tries(server: Server) -> None:
    address = "203.0.113.50"
    for i in range(8):
        assert attempt(server, f"thr-guess-{i}", "wrong password", address).status_code == 401
    # A user whose password no worker has verified in the last minute (the argon2 cache lets a
    # recently verified credential through: it is not a guess).
    response = attempt(server, "thr-carol", PASSWORD, address)
    assert response.status_code == 429, response.text
    assert attempt(server, "thr-carol", PASSWORD, "203.0.113.51").status_code == 200
    [record] = [r for r in lockout_records(server) if address in str(r)]
    assert record["event_types"][0]["code"] == "110126"  # Node Authentication
