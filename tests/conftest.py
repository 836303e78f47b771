"""Shared fixtures: a live ``nubis serve`` process for end-to-end tests.

The server runs as a real subprocess (``python -m nubis serve``) so the tests see exactly what a
client sees: the CLI, settings, uvicorn, the lifespan and the HTTP stack, not an in-process app.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import pytest

# Every test server would otherwise listen for DIMSE on the default port 11112, and the second
# one to start would fail to bind it. Servers inherit this environment; the DIMSE tests pass
# --dimse-port with a free port of their own.
os.environ.setdefault("NUBIS_DIMSE_PORT", "0")
# Authentication is on by default, also on loopback: test servers get a bootstrap admin key
# (the same value as integration.ADMIN_TOKEN, which clients send) instead of printing one.
os.environ.setdefault("NUBIS_ADMIN_TOKEN", "nubis-test-admin-token-0123456789abcdef")


def _share_the_default_ssl_context() -> None:
    """One SSL context for every httpx client that verifies against the default CA bundle.

    httpx.get and its siblings make a client per call, and each client an SSL context that
    parses certifi's bundle again, even for an http:// URL: 20-45 ms of CPU idle, 0.3 s under
    load, about 40 per test module. Such a context is the same every time, so the test process
    makes it once; a client given its own ``verify`` (a CA of the test's, False) is untouched.
    """
    import httpx._transports.default as transports

    make = transports.create_ssl_context
    made: dict[tuple[bool, str | None, str | None], ssl.SSLContext] = {}

    def shared(
        verify: ssl.SSLContext | str | bool = True, cert: object = None, trust_env: bool = True
    ) -> ssl.SSLContext:
        if verify is not True or cert is not None:
            return make(verify=verify, cert=cert, trust_env=trust_env)  # type: ignore[arg-type]
        env = os.environ
        key = (trust_env, env.get("SSL_CERT_FILE"), env.get("SSL_CERT_DIR"))
        if key not in made:
            made[key] = make(verify=True, trust_env=trust_env)
        return made[key]

    transports.create_ssl_context = shared  # type: ignore[assignment]


_share_the_default_ssl_context()

_READY_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A running ``nubis serve``; ``url`` is the HTTP root (DICOMweb is under /dicom-web)."""

    url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down gracefully), then SIGKILL if it does not exit in time."""
        if self.process.poll() is not None:
            return
        self.terminate()
        try:
            self.process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=_STOP_TIMEOUT)

    def terminate(self) -> None:
        """SIGTERM without waiting: ``stop`` later waits for the shutdown to end."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


class ServerFactory(Protocol):
    def __call__(self, name: str = ..., *extra_args: str) -> LiveServer: ...


def start_server(data_dir: Path, *extra_args: str) -> LiveServer:
    """Start ``nubis serve`` on a free 127.0.0.1 port and wait until /-/ready answers 200."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-server.log"
    # A port picked now may be taken before the server binds it; retry with another one.
    for _ in range(3):
        port = _free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # Test data is throwaway: skipping fsync keeps the suite fast on slow disks.
        args = [
            sys.executable, "-m", "nubis", "serve",
            "--data-dir", str(data_dir),
            "--host", "127.0.0.1",
            "--http-port", str(port),
            "--set", "durable=false",
            "--set", "log_level=warning",
            *extra_args,
        ]  # fmt: skip
        with log_path.open("ab") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        server = LiveServer(f"http://127.0.0.1:{port}", data_dir, log_path, process)
        if _wait_ready(server):
            return server
        server.stop()
        if "address already in use" not in server.log().lower():
            break
    raise RuntimeError(f"nubis serve did not become ready; its log:\n{server.log()}")


def _wait_ready(server: LiveServer) -> bool:
    deadline = time.monotonic() + _READY_TIMEOUT
    # One client for every poll: each top-level httpx.get builds an SSL context (the CA
    # bundle parsed again), 0.05-0.3 s of CPU taken from the server that is starting.
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False
            try:
                if client.get(f"{server.url}/-/ready").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def _stopping_servers() -> Iterator[list[LiveServer]]:
    """Servers told to stop: each shuts down while later tests run, and the session's end
    waits for all of them (a second or so each, not spent between modules)."""
    stopping: list[LiveServer] = []
    try:
        yield stopping
    finally:
        for server in stopping:
            server.stop()


@pytest.fixture(scope="module")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory, _stopping_servers: list[LiveServer]
) -> Iterator[ServerFactory]:
    """Start more servers (e.g. one per test module); they are stopped when the module's tests
    are done, so idle servers of earlier modules do not share the CPU with later ones."""
    started: list[LiveServer] = []

    def factory(name: str = "archive", *extra_args: str) -> LiveServer:
        server = start_server(tmp_path_factory.mktemp(name) / "data", *extra_args)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        for server in started:
            server.terminate()
        _stopping_servers.extend(started)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One archive for the whole session; tests must use their own UIDs / patient IDs."""
    server = start_server(tmp_path_factory.mktemp("live") / "data")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def base_url(live_server: LiveServer) -> str:
    return live_server.url


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[LiveServer]:
    """An empty archive of its own, for tests that count or delete everything."""
    server = start_server(tmp_path / "data")
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- PostgreSQL
_PG_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "postgres"
# The first start on a clean machine installs Debian's postgresql package.
_PG_START_TIMEOUT = 1200


@dataclass
class Postgres:
    """A PostgreSQL server started for the session (scripts/postgres/pg-start.sh)."""

    url: str
    dir: Path

    def database(self, name: str) -> str:
        """A new, empty database; its ``index`` URL. Tests keep apart by database."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL server (Debian's package) for the whole session, stopped at its end.

    A start that fails is a test failure carrying the script's output, never a skip: a
    PostgreSQL index that was not tested must not look like one that passed.
    """
    import tempfile

    # Not under pytest's tmp folder: the server runs as the postgres user, who cannot enter it.
    pg_dir = Path(tempfile.mkdtemp(prefix="nubis-pg-"))
    # fsync off (the data is thrown away at the end; no test crashes the machine under it):
    # commits and the shutdown checkpoint cost no disk flushes, which on a busy disk made
    # commits several times slower and the final stop take 15-25 s.
    env = {**os.environ, "PG_DIR": str(pg_dir), "PG_FSYNC": "off"}
    output = ""
    for _ in range(3):
        env["PG_PORT"] = str(_free_port())
        result = subprocess.run(
            ["bash", str(_PG_SCRIPTS / "pg-start.sh")],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_PG_START_TIMEOUT,
            check=False,
        )
        output += result.stdout + result.stderr
        if result.returncode == 0 or "already in use" not in output:
            break
    try:
        if result.returncode != 0:
            pytest.fail(f"PostgreSQL did not start:\n{output}")
        settings = dict(line.split("=", 1) for line in (pg_dir / "pg.env").read_text().splitlines())
        yield Postgres(url=settings["PG_URL"], dir=pg_dir)
    finally:
        # Stops the server and removes its folder.
        subprocess.run(["bash", str(_PG_SCRIPTS / "pg-stop.sh")], env=env, timeout=120, check=False)
