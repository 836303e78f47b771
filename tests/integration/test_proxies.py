"""Forwarding headers are believed from ``trusted_proxies`` only (issue 9 item 6).

The caller's address is what audit records carry as ParticipantNetworkAccessPoint (PS3.15
A.5.2.1): a client must not choose it. By default nobody is trusted, also when uvicorn's
FORWARDED_ALLOW_IPS says otherwise; with the setting naming 127.0.0.1, the address that proxy
forwarded is recorded, and its X-Forwarded-Proto sets the scheme of the URLs the archive builds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from integration import AUTH
from integration.server import Server, start_server
from nubis.tools import synth

FORGED = "203.0.113.7"


@pytest.fixture(scope="module")
def untrusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # uvicorn alone would trust every proxy with this; nubis must not.
    env = {"FORWARDED_ALLOW_IPS": "*", "NUBIS_DURABLE": "false"}
    server = start_server(tmp_path_factory.mktemp("proxy-none") / "data", env=env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def trusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"NUBIS_TRUSTED_PROXIES": "127.0.0.1", "NUBIS_DURABLE": "false"}
    server = start_server(tmp_path_factory.mktemp("proxy-local") / "data", env=env)
    try:
        yield server
    finally:
        server.stop()


def recorded_addresses(server: Server, user: str, headers: dict[str, str]) -> list[str]:
    """Fail a login as ``user`` with ``headers``; the addresses its audit record names."""
    response = httpx.get(
        f"{server.url}/-/whoami", auth=httpx.BasicAuth(user, "wrong-password"), headers=headers
    )
    assert response.status_code == 401, response.text
    records = httpx.get(f"{server.url}/audit/records", params={"user": user}, headers=AUTH)
    assert records.status_code == 200, records.text
    [record] = records.json()["records"]
    return re.findall(r'"network_access_point": "([^"]+)"', json.dumps(record["event"]))


def retrieve_url(server: Server, path: Path, headers: dict[str, str]) -> str:
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n--b--\r\n"
    response = httpx.post(
        f"{server.dicomweb}/studies",
        content=body,
        headers={
            **AUTH,
            **headers,
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["00081190"]["Value"][0])


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("proxy-objects")
    return [
        synth.make_multiframe(folder / f"{i}.dcm", frames=1, rows=8, columns=8, seed=70 + i)
        for i in range(2)
    ]


def test_forged_address_is_not_recorded_by_default(untrusting: Server) -> None:
    headers = {"X-Forwarded-For": FORGED}
    assert recorded_addresses(untrusting, "proxy-forger", headers) == ["127.0.0.1"]


def test_forged_scheme_is_not_used_by_default(untrusting: Server, objects: list[Path]) -> None:
    url = retrieve_url(untrusting, objects[0], {"X-Forwarded-Proto": "https"})
    assert url.startswith(f"{untrusting.url}/dicom-web/studies/"), url


@pytest.mark.parametrize(
    ("forwarded_for", "recorded"),
    [
        (FORGED, FORGED),
        # Each hop appends what it saw: the first untrusted one from the right is the caller.
        (f"198.51.100.1, {FORGED}", FORGED),
        (f"{FORGED}, 127.0.0.1", FORGED),
        ("2001:db8::7", "2001:db8::7"),
        # A garbled entry is never recorded: the last hop the archive can vouch for is.
        ("not-an-address", "127.0.0.1"),
    ],
)
def test_trusted_proxy_forwards_the_callers_address(
    trusting: Server, forwarded_for: str, recorded: str
) -> None:
    user = "proxy-" + re.sub(r"[^a-z0-9]", "-", forwarded_for)[:40]
    assert recorded_addresses(trusting, user, {"X-Forwarded-For": forwarded_for}) == [recorded]


def test_trusted_proxy_sets_the_scheme(trusting: Server, objects: list[Path]) -> None:
    url = retrieve_url(trusting, objects[1], {"X-Forwarded-Proto": "https"})
    assert url.startswith(f"https://127.0.0.1:{trusting.port}/dicom-web/studies/"), url
