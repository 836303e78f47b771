"""Where a research export goes (nubis.services.research_export): a folder, a zip built from
a folder beside it, a DICOMweb server (STOW-RS) or an S3 bucket; for the last two a local
folder keeps the manifest and what a resumed run needs."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from pydicom.dataset import Dataset

from nubis.errors import BadRequest
from nubis.jobs.context import JobFailed
from nubis.logs import redact_url
from nubis.replication.target import DicomWebReplica, ReplicaRefused, ReplicaUnreachable

__all__ = ["MANIFEST", "Destination", "Sink", "destination_of", "sink_for"]

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Destination:
    """Where the objects go: a folder; a zip built from a folder beside it; or a DICOMweb
    server (STOW-RS), the folder then keeping only the manifest and what a resume needs."""

    folder: Path
    zip_file: Path | None = None
    dicomweb: str | None = None
    s3: str | None = None

    def describe(self) -> str:
        if self.dicomweb:
            return f"DICOMweb {redact_url(self.dicomweb)}"
        if self.s3:
            return f"bucket {redact_url(self.s3)}"
        return f"zip {self.zip_file}" if self.zip_file else f"folder {self.folder}"


def destination_of(params: dict[str, Any]) -> Destination:
    """The job's destination from its parameters: ``to`` a folder, ``zip`` a file, or
    ``dicomweb`` a server's root with ``manifest`` the folder of the manifest."""
    if params.get("s3"):
        if not params.get("manifest"):
            raise BadRequest("a research export to S3 needs a folder for its manifest")
        if "@" in urlparse(str(params["s3"])).netloc:
            raise BadRequest("S3 credentials go in AWS_ACCESS_KEY_ID/... or ~/.aws, not the URL")
        return Destination(Path(str(params["manifest"])), s3=str(params["s3"]))
    if params.get("dicomweb"):
        if not params.get("manifest"):
            raise BadRequest("a research export to DICOMweb needs a folder for its manifest")
        if "@" in urlparse(str(params["dicomweb"])).netloc:
            # Job parameters are listed to operators: the credential is an environment's.
            raise BadRequest(
                "a DICOMweb destination's credential goes in NUBIS_RESEARCH_EXPORT_API_KEY, "
                "not in its URL"
            )
        return Destination(Path(str(params["manifest"])), dicomweb=str(params["dicomweb"]))
    if params.get("zip"):
        target = Path(str(params["zip"]))
        return Destination(target.with_name(target.name + ".parts"), target)
    if params.get("to"):
        return Destination(Path(str(params["to"])))
    raise BadRequest("a research export goes to a folder (to), a zip file (zip) or DICOMweb")


class Sink(Protocol):
    """Where de-identified objects are delivered, named as in a folder."""

    def holds(self, path: Path) -> bool:
        """Whether an earlier run delivered the object named ``path`` (folder/study/series/
        instance.dcm, the remapped UIDs)."""

    def put(self, path: Path, dataset: Dataset) -> None: ...

    def finish(self, manifest: Path) -> None:
        """Deliver the manifest too, where the objects are not beside it."""


class _FolderSink:
    def finish(self, manifest: Path) -> None:
        return None

    def holds(self, path: Path) -> bool:
        return path.exists()

    def put(self, path: Path, dataset: Dataset) -> None:
        """The file appears whole or not at all (a resumed export trusts what it finds)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(path.name + ".part")
        dataset.save_as(aside, enforce_file_format=True)
        os.replace(aside, path)


class _DicomWebSink:
    """STOW-RS, one object a request with its Content-Digest (replication/target.py): a
    resumed study is sent again, which the receiver answers as already stored."""

    def __init__(self, target: DicomWebReplica) -> None:
        self.target = target

    def finish(self, manifest: Path) -> None:
        return None  # a DICOMweb server keeps objects only: the manifest stays in its folder

    def holds(self, path: Path) -> bool:
        return False

    def put(self, path: Path, dataset: Dataset) -> None:
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        try:
            self.target.store(
                str(dataset.StudyInstanceUID),
                str(dataset.SOPInstanceUID),
                len(data),
                hashlib.sha256(data).hexdigest(),
                iter((data,)),
            )
        except (ReplicaRefused, ReplicaUnreachable) as exc:
            raise JobFailed(str(exc), retry_in=60) from exc


class _BucketSink:
    """Objects in an S3 bucket under the URL's prefix, as the folder lays them out
    (``<study>/<series>/<instance>.dcm`` and ``manifest.json``), with the blob store's client
    (nubis.blobs.s3: endpoint, CA bundle, retries; credentials from boto3's chain, never the
    URL). A PUT is create-only and carries Content-MD5; an object an earlier run delivered is
    found by a HEAD, so a resumed export sends each object once."""

    def __init__(self, url: str, folder: Path) -> None:
        from nubis.blobs.s3 import from_url

        self.store = from_url(url)
        self.folder = folder

    def _key(self, path: Path) -> str:
        return self.store.prefix + path.relative_to(self.folder).as_posix()

    def holds(self, path: Path) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.store.client.head_object(Bucket=self.store.bucket, Key=self._key(path))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            code = exc.response.get("Error", {}).get("Code")
            raise JobFailed(f"{self.store!r}: {code}", retry_in=60) from exc
        return True

    def put(self, path: Path, dataset: Dataset) -> None:
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        self._put(self._key(path), buffer.getvalue())

    def finish(self, manifest: Path) -> None:
        self._put(self._key(manifest), manifest.read_bytes())

    def _put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        try:
            self.store.client.put_object(
                Bucket=self.store.bucket, Key=key, Body=data, ContentMD5=md5
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "PreconditionFailed" and not key.endswith(MANIFEST):
                return  # delivered by a run that stopped before it knew: same key, same bytes
            if code == "PreconditionFailed":  # a manifest of an earlier export of the project
                self.store.client.delete_object(Bucket=self.store.bucket, Key=key)
                self._put(key, data)
                return
            raise JobFailed(f"{self.store!r} refused {key}: {code}", retry_in=60) from exc
        except BotoCoreError as exc:
            raise JobFailed(f"{self.store!r} cannot be reached: {exc}", retry_in=60) from exc


def sink_for(destination: Destination, dicomweb_api_key: str) -> Sink:
    if destination.dicomweb:
        return _DicomWebSink(DicomWebReplica(destination.dicomweb, dicomweb_api_key))
    if destination.s3:
        return _BucketSink(destination.s3, destination.folder)
    return _FolderSink()
