"""Contract suites: one per port, passed by every backend (docs/architecture.md, rule 9).

Fixtures are in conftest.py; what test modules import lives here (importing from a conftest
module depends on how pytest happened to import it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode


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
