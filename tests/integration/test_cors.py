"""Cross-origin use (issue 10): the ``cors_origins`` setting lets listed sites' scripts call the
archive (Fetch standard, CORS protocol).

Preflights are answered without credentials and never reach authentication; the requests
themselves still need credentials; an origin not listed gets no Access-Control-Allow-Origin;
the headers a DICOMweb client reads are exposed.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from integration import AUTH
from integration.server import Server, start_server

VIEWER = "https://viewer.example.org"
OTHER = "https://evil.example"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"NUBIS_DURABLE": "false", "NUBIS_CORS_ORIGINS": f"{VIEWER}, http://localhost:3000"}
    live = start_server(tmp_path_factory.mktemp("cors") / "data", env=env)
    try:
        yield live
    finally:
        live.stop()


def _preflight(server: Server, origin: str, method: str = "GET") -> httpx.Response:
    return httpx.options(
        f"{server.dicomweb}/studies",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, accept",
        },
    )


def test_a_preflight_is_answered_without_credentials(server: Server) -> None:
    response = _preflight(server, VIEWER)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == VIEWER
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "accept" in allowed
    methods = response.headers["access-control-allow-methods"]
    # PUT: Change Workitem State of UPS-RS (PS3.18 11.7), from a browser worklist client.
    assert "POST" in methods and "PUT" in methods
    assert "access-control-allow-credentials" not in response.headers
    assert "www-authenticate" not in response.headers


def test_the_request_itself_still_needs_credentials(server: Server) -> None:
    anonymous = httpx.get(f"{server.dicomweb}/studies", headers={"Origin": VIEWER})
    assert anonymous.status_code == 401
    # The browser may show the refusal to the script: it is the archive's answer.
    assert anonymous.headers["access-control-allow-origin"] == VIEWER
    signed = httpx.get(f"{server.dicomweb}/studies", headers={"Origin": VIEWER, **AUTH})
    assert signed.status_code in (200, 204)
    assert signed.headers["access-control-allow-origin"] == VIEWER
    exposed = signed.headers["access-control-expose-headers"].lower()
    for header in ("content-type", "warning", "location", "content-location"):
        assert header in exposed


def test_an_origin_not_listed_gets_no_allow_origin(server: Server) -> None:
    preflight = _preflight(server, OTHER)
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    request = httpx.get(f"{server.dicomweb}/studies", headers={"Origin": OTHER, **AUTH})
    assert request.status_code in (200, 204)
    assert "access-control-allow-origin" not in request.headers


def test_no_origin_is_allowed_by_default(tmp_path_factory: pytest.TempPathFactory) -> None:
    live = start_server(tmp_path_factory.mktemp("cors-off") / "data", env={"NUBIS_DURABLE": "0"})
    try:
        preflight = _preflight(live, VIEWER)
        assert "access-control-allow-origin" not in preflight.headers
        assert preflight.status_code == 401  # an OPTIONS like any other request
    finally:
        live.stop()


@pytest.mark.parametrize("bad", ["*", "viewer.example.org", "https://x.example/path", "ftp://x"])
def test_cors_origins_must_be_origins(bad: str) -> None:
    from nubis.config import SettingsError, load_settings

    with pytest.raises(SettingsError, match="cors_origins"):
        load_settings(environ={}, overrides={"cors_origins": bad})
