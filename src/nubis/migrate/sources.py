"""The source a migration names: a DIMSE PACS, a DICOMweb server, or media."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from nubis.migrate.request import MigrationRequest
from nubis.migrate.source import Source
from nubis.services.spool import Spool

__all__ = ["open_source"]


def open_source(request: MigrationRequest, spool: Spool) -> Source:
    """The source ``request`` names; SourceError when it cannot be opened."""
    url = urlparse(request.source)
    if url.scheme == "dicom":
        from nubis.migrate.dimse import DimseSource

        return DimseSource(request, spool)
    if url.scheme in ("http", "https"):
        from nubis.migrate.dicomweb import DicomWebSource

        return DicomWebSource(request, spool)
    from nubis.migrate.media import MediaSource

    path = Path(unquote(url.path)) if url.scheme == "file" else Path(request.source)
    return MediaSource(path, spool)
