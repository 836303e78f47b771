"""Contract suites: one per port, passed by every backend (docs/architecture.md, rule 9).

Fixtures are in conftest.py; what test modules import lives here (importing from a conftest
module depends on how pytest happened to import it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

# The archive-level contract suites run on these (blob store, index) pairs.
ARCHIVE_BACKENDS = ["folder-sqlite", "folder-postgresql", "ceph-sqlite"]


@dataclass(frozen=True)
class Ceph:
    """A running Ceph RGW: its S3 endpoints, the bucket made for the tests, and its keys."""

    dir: Path
    endpoint: str
    tls_endpoint: str
    ca_bundle: str
    bucket: str
    access_key: str
    secret_key: str
    region: str

    def url(self, prefix: str, *, tls: bool = False, **params: object) -> str:
        """A ``blobs`` setting URL for objects under ``prefix`` in the test bucket."""
        query: dict[str, object] = {"endpoint": self.tls_endpoint if tls else self.endpoint}
        if tls:
            query["ca_bundle"] = self.ca_bundle
        query.update(params)
        return f"s3://{self.bucket}/{prefix}?{urlencode(query)}"

    def client(self):  # type: ignore[no-untyped-def]
        """A plain boto3 client, to look at the bucket behind the store's back."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )


def archive_overrides(
    request: pytest.FixtureRequest, tmp_path: Path, name: str, **settings: str
) -> dict[str, Any]:
    """Settings for an archive on the backends of ``request.param`` (one of ARCHIVE_BACKENDS):
    a fresh PostgreSQL database or Ceph prefix named after ``name`` and the test."""
    store, index = request.param.split("-")
    overrides: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "durable": "false",
        "jobs_schedule": "",
        **settings,
    }
    if index == "postgresql":
        postgres = request.getfixturevalue("postgres")
        overrides["index"] = postgres.database(f"{name}_{abs(hash(request.node.nodeid)):x}")
    if store == "ceph":
        ceph: Ceph = request.getfixturevalue("ceph")
        overrides["blobs"] = ceph.url(f"{name}/{time.time_ns()}")
    return overrides
