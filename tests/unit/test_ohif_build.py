"""Serving a prebuilt OHIF under /ohif/ (nubis.web.ui.ohif) and fetching one (nubis.cli.ohif).

A build made for / names its root in index.html, in webpack's public path and in its style
sheets; served under /ohif/, each must say /ohif/, byte-exact otherwise, with the right length.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from nubis.cli.ohif import FetchError, fetch_ohif
from nubis.web.ui.ohif import OhifBuild, _stream, app_config

INDEX = (
    '<html><head><link rel="manifest" href="/manifest.json"><link href="//cdn.example/x.css">'
    '<script>window.PUBLIC_URL="/"</script><script src="/app-config.js"></script>'
    '<script defer src="/app.bundle.js"></script></head><body></body></html>'
)


@pytest.fixture
def build(tmp_path: Path) -> OhifBuild:
    (tmp_path / "index.html").write_text(INDEX)
    filler = b"x" * (3 << 20)  # the public path lies past the first read chunk
    (tmp_path / "app.bundle.js").write_bytes(
        b'__webpack_require__.p = "/";' + filler + b'__webpack_require__.p = "/";end'
    )
    (tmp_path / "app.css").write_bytes(b"a{src:url(/f.woff2)}b{src:url(//x/y)}c{url(/ohif/z)}")
    (tmp_path / "manifest.json").write_bytes(b'{"icons":[{"src":"/assets/i.png"}]}')
    (tmp_path / "codec.wasm").write_bytes(b"\0asm" + b'__webpack_require__.p = "/";')
    return OhifBuild(tmp_path)


def _served(build: OhifBuild, name: str) -> bytes:
    path = build.file(name)
    assert path is not None
    scanned = build.scanned(path)
    body = b"".join(_stream(path, scanned))
    size = path.stat().st_size
    assert len(body) == (scanned.length(size) if scanned else size)
    return body


def test_index_names_ohif_and_the_csp_hashes_its_inline_scripts(build: OhifBuild) -> None:
    html, csp = build.index()
    text = html.decode()
    assert 'window.PUBLIC_URL="/ohif/"' in text
    assert 'href="/ohif/manifest.json"' in text and 'src="/ohif/app.bundle.js"' in text
    assert 'href="//cdn.example/x.css"' in text  # another host's URL is left alone
    digest = hashlib.sha256(b'window.PUBLIC_URL="/ohif/"').digest()
    assert f"'sha256-{base64.b64encode(digest).decode()}'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert "frame-ancestors 'none'" in csp


def test_scripts_styles_and_manifest_say_ohif(build: OhifBuild) -> None:
    script = _served(build, "app.bundle.js")
    assert script.startswith(b'__webpack_require__.p = "/ohif/";')
    assert script.endswith(b'__webpack_require__.p = "/ohif/";end')
    assert _served(build, "app.css") == b"a{src:url(/ohif/f.woff2)}b{src:url(//x/y)}c{url(/ohif/z)}"
    assert _served(build, "manifest.json") == b'{"icons":[{"src":"/ohif/assets/i.png"}]}'
    assert _served(build, "codec.wasm") == b"\0asm" + b'__webpack_require__.p = "/";'


@pytest.mark.parametrize("name", ["../secret", "a/../../secret", "", "/etc/passwd", "x\\y"])
def test_nothing_outside_the_build_is_served(build: OhifBuild, name: str) -> None:
    (build.root.parent / "secret").write_text("no")
    assert build.file(name) is None


def test_the_configuration_names_only_this_archive() -> None:
    config = app_config("https://pacs.example.org")
    assert '"qidoRoot": "https://pacs.example.org/dicom-web"' in config
    assert '"routerBasename": "/ohif"' in config
    assert config.count("https://") == 3  # qidoRoot, wadoRoot, wadoUriRoot


@pytest.mark.parametrize("version", ["4.0.0", "latest", "3.13.2 --registry=http://x", "3.x"])
def test_fetch_takes_an_ohif_3_version_only(tmp_path: Path, version: str) -> None:
    with pytest.raises(FetchError, match="OHIF 3"):
        fetch_ohif(version, tmp_path / "ohif")
    assert not (tmp_path / "ohif").exists()
