"""URLs the archive builds (BulkDataURI, Retrieve URL) are the ones clients reach it by (issue
10: cross-origin use; PS3.18 10.4.1.1.2 BulkDataURI, 10.5.3 Retrieve URL).

- directly, for a client that sends ``Host`` without its port (dicomweb-client does);
- through a real reverse proxy (Debian's nginx, on loopback) that the archive trusts, from its
  ``X-Forwarded-Host``/``-Proto`` or RFC 7239 ``Forwarded``;
- with ``public_url`` set, whatever the request says;
- and never from forwarding headers of a peer that is not a trusted proxy.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file

from integration import AUTH
from integration.server import Server, start_server

CT = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
ENV = {"NUBIS_DURABLE": "false", "NUBIS_BULK_THRESHOLD": "16"}
NGINX = "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def trusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**ENV, "NUBIS_TRUSTED_PROXIES": "127.0.0.1"}
    server = start_server(tmp_path_factory.mktemp("urls-trusting") / "data", env=env)
    try:
        _store(server.dicomweb)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def untrusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("urls-untrusting") / "data", env=ENV)
    try:
        _store(server.dicomweb)
        yield server
    finally:
        server.stop()


def _store(dicomweb: str) -> None:
    DICOMwebClient(dicomweb, headers=AUTH).store_instances([CT])


def _nginx(tmp: Path, upstream: int, port: int | None = None) -> Iterator[str]:
    """nginx on a free loopback port, proxying to the archive as deployments do: the Host it
    sends upstream has no port ($host); the Host the client sent goes in X-Forwarded-Host, the
    port it reached the proxy on in X-Forwarded-Port (dicomweb-client's Host has none)."""
    if shutil.which(NGINX) is None:
        pytest.fail("nginx missing (scripts/test.sh installs Debian's nginx-light)")
    port = port or _free_port()
    (tmp / "logs").mkdir(exist_ok=True)
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""daemon off; master_process off; pid {tmp}/nginx.pid; error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location / {{
      proxy_pass http://127.0.0.1:{upstream};
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
"""
    )
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-c", str(conf)], stderr=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"nginx did not start: {process.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def proxy(trusting: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from _nginx(tmp_path_factory.mktemp("nginx"), trusting.port)


def _bulk_uris(client: DICOMwebClient) -> list[str]:
    metadata = client.retrieve_instance_metadata(
        CT.StudyInstanceUID, CT.SeriesInstanceUID, CT.SOPInstanceUID
    )
    uris = [v["BulkDataURI"] for v in metadata.values() if "BulkDataURI" in v]
    assert uris, "no bulk data in the metadata"
    return uris


def _retrieve_url(base: str, headers: dict[str, str] | None = None) -> str:
    """The Retrieve URL a STOW-RS answer names for the test object."""
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n"
    body += Path(get_testdata_file("CT_small.dcm")).read_bytes() + b"\r\n--b--\r\n"  # type: ignore[arg-type]
    response = httpx.post(
        f"{base}/dicom-web/studies",
        content=body,
        headers={
            **AUTH,
            **(headers or {}),
            "content-type": 'multipart/related; type="application/dicom"; boundary=b',
        },
    )
    assert response.status_code in (200, 202, 409), response.text
    return str(response.json()["00081190"]["Value"][0])


def test_a_client_that_sends_host_without_its_port_gets_bulk_data(untrusting: Server) -> None:
    client = DICOMwebClient(untrusting.dicomweb, headers=AUTH)  # sends "Host: 127.0.0.1"
    uris = _bulk_uris(client)
    assert all(u.startswith(f"{untrusting.dicomweb}/studies/") for u in uris), uris[0]
    assert client.retrieve_bulkdata(uris[0])


def test_bulk_data_through_a_trusted_reverse_proxy(proxy: str) -> None:
    client = DICOMwebClient(f"{proxy}/dicom-web", headers=AUTH)
    uris = _bulk_uris(client)
    assert all(u.startswith(f"{proxy}/dicom-web/studies/") for u in uris), uris[0]
    assert client.retrieve_bulkdata(uris[0])
    assert _retrieve_url(proxy).startswith(f"{proxy}/dicom-web/studies/")


def test_rfc7239_forwarded_from_a_trusted_proxy(trusting: Server) -> None:
    forwarded = 'for=198.51.100.4;proto=https;host="pacs.example.org:8443"'
    url = _retrieve_url(trusting.url, {"Forwarded": forwarded})
    assert url.startswith("https://pacs.example.org:8443/dicom-web/studies/"), url


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"},
        {"Forwarded": "for=198.51.100.4;proto=https;host=evil.example"},
    ],
    ids=["x-forwarded", "forwarded"],
)
def test_forwarding_headers_of_an_untrusted_peer_are_ignored(
    untrusting: Server, headers: dict[str, str]
) -> None:
    url = _retrieve_url(untrusting.url, headers)
    assert url.startswith(f"{untrusting.url}/dicom-web/studies/"), url


def test_a_forged_host_from_a_trusted_proxy_must_still_be_a_host(trusting: Server) -> None:
    url = _retrieve_url(trusting.url, {"X-Forwarded-Host": "evil.example/path?x=<b>"})
    assert url.startswith(f"{trusting.url}/dicom-web/studies/"), url


def test_public_url_wins(tmp_path_factory: pytest.TempPathFactory) -> None:
    public = "https://pacs.example.org/archive"
    env = {**ENV, "NUBIS_PUBLIC_URL": public + "/"}
    server = start_server(tmp_path_factory.mktemp("urls-public") / "data", env=env)
    try:
        _store(server.dicomweb)
        client = DICOMwebClient(server.dicomweb, headers=AUTH)
        assert all(u.startswith(f"{public}/dicom-web/studies/") for u in _bulk_uris(client))
        url = _retrieve_url(server.url, {"Host": "other.example:81"})
        assert url.startswith(f"{public}/dicom-web/studies/"), url
    finally:
        server.stop()


def test_public_url_through_a_proxy_that_forwards_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """With public_url naming the proxy, dicomweb-client's bulk data goes through it."""
    proxy_port = _free_port()
    public = f"http://127.0.0.1:{proxy_port}"
    server = start_server(
        tmp_path_factory.mktemp("urls-public-proxy") / "data",
        env={**ENV, "NUBIS_PUBLIC_URL": public},
    )
    try:
        _store(server.dicomweb)
        proxies = _nginx(tmp_path_factory.mktemp("nginx-plain"), server.port, proxy_port)
        assert next(proxies) == public
        client = DICOMwebClient(f"{public}/dicom-web", headers=AUTH)
        uris = _bulk_uris(client)
        assert all(u.startswith(f"{public}/dicom-web/") for u in uris)
        assert client.retrieve_bulkdata(uris[0])
        proxies.close()
    finally:
        server.stop()


def test_public_url_must_be_a_root_url() -> None:
    from nubis.config import SettingsError, load_settings

    for bad in ("pacs.example.org", "ftp://x", "https://x/?a=1", "https://user:pw@x"):
        with pytest.raises(SettingsError, match="public_url"):
            load_settings(environ={}, overrides={"public_url": bad})
