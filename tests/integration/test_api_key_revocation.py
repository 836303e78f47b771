"""A key revoked with the CLI while a two-worker server serves is refused at the next request.

PS3.15 and HIPAA 164.312(d): a withdrawn credential stops working at once. Each worker process
answers keys it has checked from a cache of its own; the CLI (a third process) revokes through
the index and bumps the counter every worker reads before trusting its cache. Every request
opens its own connection, so both workers answer some of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from integration.cli import nubis_cli

if TYPE_CHECKING:
    from conftest import LiveServer, ServerFactory

REQUESTS = 24  # per phase, each on a new connection: both workers answer some


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory) -> Iterator[LiveServer]:
    yield server_factory("revocation", "--set", "workers=2")


def _cli(server: LiveServer, *args: str) -> str:
    data = ("--data-dir", str(server.data_dir), "--set", "durable=false")
    return nubis_cli(*args, *data, check=True).stdout


def _statuses(server: LiveServer, secret: str) -> list[int]:
    statuses = []
    for _ in range(REQUESTS):
        with httpx.Client(headers={"authorization": f"Bearer {secret}"}) as client:
            statuses.append(client.get(f"{server.dicomweb}/studies").status_code)
    return statuses


def test_revoked_key_is_refused_by_every_worker_at_once(server: LiveServer) -> None:
    _cli(server, "users", "add", "viewer", "--role", "radiologist", "--no-password")
    secret = _cli(server, "apikeys", "create", "viewer").strip().splitlines()[-1]
    key_id = secret.removeprefix("nbk_").split("_", 1)[0]
    assert set(_statuses(server, secret)) <= {200, 204}  # now cached in both workers
    _cli(server, "apikeys", "revoke", key_id)
    assert _statuses(server, secret) == [401] * REQUESTS


def test_a_user_removed_while_serving_is_refused_at_once(server: LiveServer) -> None:
    _cli(server, "users", "add", "leaver", "--role", "radiologist", "--no-password")
    secret = _cli(server, "apikeys", "create", "leaver").strip().splitlines()[-1]
    assert set(_statuses(server, secret)) <= {200, 204}
    _cli(server, "users", "remove", "leaver")
    assert _statuses(server, secret) == [401] * REQUESTS
