"""Index tables of what may not, and what did, go: legal holds and erasure certificates."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
)

from nubis.index.schema_base import UID, metadata

__all__ = ["erasure_certificates", "legal_holds"]

# Legal holds (nubis.services.legal_holds, migration 0023; docs/retention.md). A hold on a
# whole tenant (``patient_id`` and ``study_uid`` null), a patient or a study blocks every
# deletion of what it covers (DELETE, retention, key shredding) until released. Released holds
# stay as the record of what was held, when and by whom; ``reason`` is the admin's text, never
# shown in a refusal (it may name the matter the hold is for).
legal_holds = Table(
    "legal_holds",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("partition", String(64), nullable=False),
    Column("patient_id", String(64)),
    Column("study_uid", UID),
    Column("reason", Text, nullable=False),
    Column("placed_by", String(256), nullable=False),
    Column("placed_at", BigInteger, nullable=False),
    Column("released_by", String(256)),
    Column("released_at", BigInteger),
    Column("release_reason", Text),
)
Index("ix_legal_holds_target", legal_holds.c.partition, legal_holds.c.released_at)

# Erasure certificates (nubis.retention.certificates): one per erasure, the signed JSON
# document as issued (``body``, canonical), its SHA-256 and the Ed25519 signature of the audit
# trail's key over that digest; ``audit_seq`` is the audit record of the erasure itself.
# ``patient_id`` is kept apart from the body, for the audited identified view only.
erasure_certificates = Table(
    "erasure_certificates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("partition", String(64), nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Column("cause", String(256), nullable=False),
    Column("body", Text, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
    Column("audit_seq", Integer, nullable=False),
    Column("patient_id", String(64)),
)
Index(
    "ix_erasure_certificates_study",
    erasure_certificates.c.partition,
    erasure_certificates.c.study_uid,
)
