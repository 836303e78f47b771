"""OHIF at ``/ohif/``: a prebuilt OHIF viewer (``viewer_ohif_dir``) talking to this archive's
DICOMweb at the same origin, signed in by the browser's session.

The folder is the ``dist/`` of the npm package ``@ohif/app`` (``nubis ohif fetch`` gets it). That
build expects to be served at ``/``; it is served here under ``/ohif/`` by rewriting, as it goes
out, the few places that say where it lives: ``window.PUBLIC_URL`` and the root-relative
``href``/``src`` of ``index.html``, and webpack's public path (``__webpack_require__.p = "/"``)
in the bundles that load chunks, workers and WebAssembly codecs. A build made for ``/ohif/``
passes unchanged.

- ``/ohif/app-config.js`` is generated (:func:`app_config`): one DICOMweb data source, this
  archive at the URL clients reach it by (web/urls.py), with what nubis supports (includefield,
  fuzzy matching, thumbnails, WADO-URI); no other server, no URL-driven configuration.
- Any other path that is not a file of the build is OHIF's own route (the study list, the
  viewer): ``index.html``, for signed-in browsers only; a signed-out one is sent to sign in and
  comes back. The build's own files (code, styles, icons, codecs) hold no patient data and are
  served to anyone, so that requests a browser sends without cookies (the web app manifest)
  still work.
- OHIF only reads (GET) DICOMweb; its requests carry the session cookie, so the services see
  the signed-in principal, authorize and audit exactly as for any other DICOMweb read.

OHIF needs more than the web face's Content-Security-Policy, on its responses only
(:data:`OHIF_CSP_TEMPLATE`, measured with OHIF 3.13): WebAssembly compilation for its codecs
(``'wasm-unsafe-eval'``), workers from its own files, styles its components inject at run time,
and the hashes of ``index.html``'s two inline scripts; no ``'unsafe-eval'`` and no inline script
beyond those two. Its files carry :data:`OHIF_FILE_CSP`, which is what a worker started from
them obeys: the image decoders in workers build functions from strings while they start.
``frame-ancestors 'none'`` stays on both.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from nubis.errors import NotFound
from nubis.web.ui.common import archive_of, signed_in
from nubis.web.urls import site_url

PREFIX = "/ohif/"
_PUBLIC_URL = re.compile(r'window\.PUBLIC_URL\s*=\s*"[^"]*"')
_ROOT_RELATIVE = re.compile(r'\b(href|src)="/(?!/|ohif/)')
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S)
_CHUNK = 1 << 20
# Bundles and codecs are named by their content hash; the rest (icons, index) may change.
_HASHED = re.compile(r"\.[0-9a-f]{16,}\.|^[0-9a-f]{16,}\.wasm$")

OHIF_CSP_TEMPLATE = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'{hashes}; worker-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; "
    "font-src 'self'; media-src 'self' blob:; manifest-src 'self'; form-action 'self'; "
    "base-uri 'self'; frame-ancestors 'none'; object-src 'none'"
)
# The build's files: the policy of a worker is its script's, and OHIF's image decoders (the
# Emscripten builds of OpenJPEG, CharLS...) create functions from strings while they start. The
# document's policy above keeps 'unsafe-eval' out of the page itself.
OHIF_FILE_CSP = (
    "default-src 'none'; script-src 'self' 'wasm-unsafe-eval' 'unsafe-eval'; "
    "worker-src 'self'; connect-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "font-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


@dataclass(frozen=True)
class _Rewrite:
    """How one kind of file of the build names its root: ``needle`` becomes ``replacement``,
    except where ``needle`` is followed by one of ``unless`` (already under /ohif/)."""

    needle: bytes
    replacement: bytes
    unless: tuple[bytes, ...] = ()


_REWRITES_BY_NAME = {
    # the web app manifest's icons
    "manifest.json": _Rewrite(b'"/', b'"/ohif/', unless=(b"/", b"ohif/")),
}
_REWRITES_BY_SUFFIX = {
    # webpack's public path, from which scripts load chunks, workers and codecs
    ".js": _Rewrite(b'__webpack_require__.p = "/";', b'__webpack_require__.p = "/ohif/";'),
    # fonts and images named root-relative in the style sheets
    ".css": _Rewrite(b"url(/", b"url(/ohif/", unless=(b"/", b"ohif/")),
}


@dataclass(frozen=True)
class _Scanned:
    """Where a file of the build names its root (byte offsets of the needle)."""

    stamp: tuple[int, int]
    rewrite: _Rewrite
    offsets: tuple[int, ...]

    def length(self, size: int) -> int:
        growth = len(self.rewrite.replacement) - len(self.rewrite.needle)
        return size + len(self.offsets) * growth


class OhifBuild:
    """A prebuilt OHIF folder as served under /ohif/ (see the module docs)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._lock = threading.Lock()
        self._scanned: dict[Path, _Scanned] = {}
        self._index: tuple[tuple[int, int], bytes, str] | None = None

    def file(self, relative: str) -> Path | None:
        """The build's file at ``relative``, never outside the folder; None when absent."""
        if not relative or "\\" in relative or "\0" in relative:
            return None
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate

    def index(self) -> tuple[bytes, str]:
        """``index.html`` rewritten for /ohif/, and the CSP that allows its inline scripts."""
        path = self.root / "index.html"
        stamp = _stamp(path)
        with self._lock:
            if self._index is not None and self._index[0] == stamp:
                return self._index[1], self._index[2]
        html = path.read_text(encoding="utf-8")
        html = _PUBLIC_URL.sub('window.PUBLIC_URL="/ohif/"', html)
        html = _ROOT_RELATIVE.sub(r'\1="/ohif/', html)
        hashes = "".join(
            f" 'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
            for body in _INLINE_SCRIPT.findall(html)
        )
        entry = (stamp, html.encode("utf-8"), OHIF_CSP_TEMPLATE.format(hashes=hashes))
        with self._lock:
            self._index = entry
        return entry[1], entry[2]

    def scanned(self, path: Path) -> _Scanned | None:
        """Where ``path`` names the root, if it is a kind of file that may; scanned once."""
        rewrite = _REWRITES_BY_NAME.get(path.name) or _REWRITES_BY_SUFFIX.get(path.suffix)
        if rewrite is None:
            return None
        stamp = _stamp(path)
        with self._lock:
            known = self._scanned.get(path)
        if known is not None and known.stamp == stamp:
            return known
        offsets: list[int] = []
        with path.open("rb") as source:
            data = source.read()  # once per file and process; the largest bundle is ~20 MB
        start = 0
        while (found := data.find(rewrite.needle, start)) >= 0:
            start = found + len(rewrite.needle)
            if not (rewrite.unless and data.startswith(rewrite.unless, start)):
                offsets.append(found)
        scanned = _Scanned(stamp, rewrite, tuple(offsets))
        with self._lock:
            self._scanned[path] = scanned
        return scanned


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_mtime_ns, status.st_size


def _stream(path: Path, scanned: _Scanned | None) -> Iterator[bytes]:
    """``path``'s bytes, its root made /ohif/ where ``scanned`` found it named."""
    offsets = scanned.offsets if scanned is not None else ()
    with path.open("rb") as source:
        position = 0
        for offset in (*offsets, None):
            end = offset if offset is not None else os.fstat(source.fileno()).st_size
            while position < end:
                chunk = source.read(min(_CHUNK, end - position))
                if not chunk:
                    return
                position += len(chunk)
                yield chunk
            if scanned is not None and offset is not None:
                position = offset + len(scanned.rewrite.needle)
                source.seek(position)
                yield scanned.rewrite.replacement


def build_of(request: Request) -> OhifBuild:
    """The configured build (one per process), or 404 when OHIF is not set up."""
    folder = archive_of(request).settings.viewer_ohif_dir
    if not folder:
        raise NotFound("OHIF is not set up on this archive (setting viewer_ohif_dir)")
    state = request.app.state
    build: OhifBuild | None = getattr(state, "ohif_build", None)
    if build is None or build.root != Path(folder).resolve():
        build = OhifBuild(Path(folder))
        state.ohif_build = build
    return build


def app_config(base_url: str) -> str:
    """OHIF's ``window.config`` for this archive at ``base_url`` (see the module docs)."""
    dicomweb = f"{base_url}/dicom-web"
    config = {
        "routerBasename": "/ohif",
        "showStudyList": True,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "defaultDataSourceName": "nubis",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "nubis",
                "configuration": {
                    "friendlyName": "nubis",
                    "name": "nubis",
                    "qidoRoot": dicomweb,
                    "wadoRoot": dicomweb,
                    "wadoUriRoot": f"{base_url}/wado",
                    # QIDO-RS includefield and fuzzymatching (PS3.18 8.3.4) are supported.
                    "qidoSupportsIncludeField": True,
                    "supportsFuzzyMatching": True,
                    "supportsWildcard": True,
                    "supportsReject": False,
                    "imageRendering": "wadors",
                    # Rendered thumbnails of PS3.18 10.4.1.1.4, drawn by the archive.
                    "thumbnailRendering": "thumbnail",
                    "thumbnailRequestStrategy": "fetch",
                    "enableStudyLazyLoad": True,
                    "staticWado": False,
                    "singlepart": "",
                    "bulkDataURI": {"enabled": True},
                    "omitQuotationForMultipartRequest": True,
                    "dicomUploadEnabled": False,
                },
            }
        ],
    }
    return "window.config = " + json.dumps(config, indent=2) + ";\n"


async def ohif_root(request: Request) -> Response:
    return RedirectResponse(PREFIX, 303)


async def ohif(request: Request) -> Response:
    build = build_of(request)
    relative = str(request.path_params.get("path", ""))
    headers = {"content-security-policy": OHIF_FILE_CSP}
    if relative == "app-config.js":
        signed_in(request)
        body = app_config(site_url(request))
        return Response(body, media_type="text/javascript", headers=headers)
    path = build.file(relative)
    if path is None:
        if "." in relative.rsplit("/", 1)[-1]:  # a missing file, not a route of the viewer
            raise NotFound(f"no file {relative!r} in the OHIF build")
        signed_in(request)
        html, csp = build.index()
        return Response(html, media_type="text/html", headers={"content-security-policy": csp})
    if path.name == "index.html":
        signed_in(request)
        html, csp = build.index()
        return Response(html, media_type="text/html", headers={"content-security-policy": csp})
    media_type = _media_type(path)
    headers["cache-control"] = (
        "public, max-age=31536000, immutable"
        if _HASHED.search(path.name)
        else "public, max-age=3600"
    )
    scanned = await run_in_threadpool(build.scanned, path)  # reads a bundle once per process
    size = path.stat().st_size
    headers["content-length"] = str(scanned.length(size) if scanned is not None else size)
    if request.method == "HEAD":
        return Response(b"", media_type=media_type, headers=headers)
    return StreamingResponse(_stream(path, scanned), media_type=media_type, headers=headers)


def _media_type(path: Path) -> str:
    if path.suffix in (".js", ".mjs"):
        return "text/javascript"
    if path.suffix == ".wasm":
        return "application/wasm"  # WebAssembly.instantiateStreaming requires it
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def routes() -> list[Route]:
    return [
        Route("/ohif", ohif_root, methods=["GET"]),
        Route("/ohif/{path:path}", ohif, methods=["GET", "HEAD"]),
    ]


__all__ = ["OHIF_CSP_TEMPLATE", "OHIF_FILE_CSP", "OhifBuild", "app_config", "routes"]
