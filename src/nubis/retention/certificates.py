"""Erasure certificates: a signed record of what an erasure removed, bound to the audit chain.

A certificate is a canonical JSON document (sorted keys, compact) naming the tenant, the
target, each erased instance's UIDs, size and SHA-256 as the index recorded them at ingest,
the blob store, the cause (the retention rule and who approved the run, or the actor of a
DELETE), the time, and what is known of other copies (replica, backups). Its SHA-256 is signed
with the audit trail's Ed25519 key (``audit_key``, the key that signs the chain's checkpoints:
one key whose public half admins keep already), and the audit record of the erasure itself,
DICOM Study Deleted, names that digest in its description. So a certificate is checked by
three things: its digest, its signature, and the record at its ``audit_seq`` (whose place in
the hash chain ``nubis audit verify`` proves) naming the same digest. Changing one byte of the
body breaks the first; re-signing a changed body needs the private key; a certificate made
afterwards has no audit record naming it.

No patient name or ID is in the body: UIDs only. The Patient ID is kept beside it in the
table for the identified view an admin may ask for (``show --identified``), which is audited.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, insert, select

from nubis.errors import NotFound
from nubis.index.database import Index
from nubis.index.schema import audit_log, erasure_certificates
from nubis.model.records import StoredInstance
from nubis.security.audit import SigningKey, record_hash

__all__ = [
    "FORMAT",
    "Certificate",
    "CertificateCheck",
    "Draft",
    "certificate_digest_phrase",
    "draft",
    "fetch",
    "listing",
    "save",
    "verify",
]

FORMAT = "nubis-erasure-certificate/1"
_SIGNING_DOMAIN = b"nubis erasure certificate v1\n"


@dataclass(frozen=True)
class Draft:
    """A certificate signed but not yet stored (its audit record is written in between)."""

    body: dict[str, Any]
    text: str
    digest: str
    key_id: str
    signature: str


@dataclass(frozen=True)
class Certificate:
    id: int
    partition: str
    study_uid: str
    issued_at: int
    cause: str
    text: str
    digest: str
    key_id: str
    signature: str
    audit_seq: int
    patient_id: str | None

    @property
    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.text))


@dataclass(frozen=True)
class CertificateCheck:
    id: int
    ok: bool
    problems: tuple[str, ...]


def canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def certificate_digest_phrase(digest: str) -> str:
    """How the erasure's audit record names its certificate (verify looks for this)."""
    return f"erasure certificate sha256:{digest}"


def draft(
    *,
    partition: str,
    target: dict[str, str],
    erased: Sequence[StoredInstance],
    cause: dict[str, Any],
    blob_store: str,
    copies: dict[str, str],
    key: SigningKey,
    now_ms: int | None = None,
    blobs: str = "queued for deletion in the erasure's own transaction; the reaper deletes "
    "them from the blob store",
) -> Draft:
    """The signed certificate of an erasure of ``erased`` (rows as the index held them)."""
    issued_at = int(time.time() * 1000) if now_ms is None else now_ms
    series_uids = {row.series_uid for row in erased}
    body: dict[str, Any] = {
        "format": FORMAT,
        "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(issued_at / 1000)),
        "issued_at_ms": issued_at,
        "tenant": partition,
        "target": target,
        "cause": cause,
        "counts": {
            "series": len(series_uids),
            "instances": len(erased),
            "bytes": sum(row.size for row in erased),
        },
        "instances": [
            {
                "series_uid": row.series_uid,
                "sop_instance_uid": row.sop_instance_uid,
                "sop_class_uid": row.sop_class_uid,
                "size": row.size,
                "sha256": row.sha256,
            }
            for row in erased
        ],
        "blob_store": blob_store,
        "blobs": blobs,
        "copies": copies,
        "signing_key_id": key.key_id,
    }
    text = canonical(body)
    digest = hashlib.sha256(text.encode()).hexdigest()
    signature = key.private.sign(_SIGNING_DOMAIN + digest.encode()).hex()
    return Draft(body, text, digest, key.key_id, signature)


def save(
    index: Index, made: Draft, *, audit_seq: int, study_uid: str, patient_id: str | None
) -> int:
    def job(conn: Connection) -> int:
        result = conn.execute(
            insert(erasure_certificates).values(
                partition=made.body["tenant"],
                study_uid=study_uid,
                issued_at=made.body["issued_at_ms"],
                cause=_cause_text(made.body["cause"])[:256],
                body=made.text,
                digest=made.digest,
                key_id=made.key_id,
                signature=made.signature,
                audit_seq=audit_seq,
                patient_id=patient_id,
            )
        )
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])

    return index.write(job)


def _cause_text(cause: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(cause.items()) if v not in (None, ""))


def listing(
    index: Index, partition: str | None, study_uid: str | None = None, limit: int = 100
) -> list[Certificate]:
    stmt = select(erasure_certificates).order_by(erasure_certificates.c.id.desc()).limit(limit)
    if partition is not None:
        stmt = stmt.where(erasure_certificates.c.partition == partition)
    if study_uid is not None:
        stmt = stmt.where(erasure_certificates.c.study_uid == study_uid)
    with index.reading() as conn:
        return [_certificate(row) for row in conn.execute(stmt)]


def fetch(index: Index, certificate_id: int, partition: str | None) -> Certificate:
    stmt = select(erasure_certificates).where(erasure_certificates.c.id == certificate_id)
    if partition is not None:
        stmt = stmt.where(erasure_certificates.c.partition == partition)
    with index.reading() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        raise NotFound(f"no erasure certificate {certificate_id}")
    return _certificate(row)


def _certificate(row: Any) -> Certificate:
    return Certificate(
        row.id,
        row.partition,
        row.study_uid,
        row.issued_at,
        row.cause,
        row.body,
        row.digest,
        row.key_id,
        row.signature,
        row.audit_seq,
        row.patient_id,
    )


def verify(
    index: Index, certificate: Certificate, public_keys: dict[str, Ed25519PublicKey]
) -> CertificateCheck:
    """Digest, signature, and the audit record that names it (its stored hash recomputed;
    that the chain holds from there on is ``nubis audit verify``'s to prove)."""
    problems: list[str] = []
    digest = hashlib.sha256(certificate.text.encode()).hexdigest()
    if digest != certificate.digest:
        problems.append("the document does not match its digest (altered since issued)")
    public = public_keys.get(certificate.key_id)
    if public is None:
        problems.append(f"signing key {certificate.key_id} is not among the keys given")
    else:
        try:
            public.verify(bytes.fromhex(certificate.signature), _SIGNING_DOMAIN + digest.encode())
        except (InvalidSignature, ValueError):
            problems.append("the signature does not verify")
    with index.reading() as conn:
        record = conn.execute(
            select(audit_log.c.record, audit_log.c.hash).where(
                audit_log.c.seq == certificate.audit_seq
            )
        ).first()
    if record is None:
        problems.append(f"audit record {certificate.audit_seq} is missing")
    else:
        if record_hash(record.record) != record.hash:
            problems.append(f"audit record {certificate.audit_seq} was altered")
        if certificate_digest_phrase(digest) not in record.record:
            problems.append(f"audit record {certificate.audit_seq} does not name this certificate")
    return CertificateCheck(certificate.id, not problems, tuple(problems))
