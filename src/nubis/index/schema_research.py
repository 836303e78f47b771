"""Index tables of research projects: cohorts, members, wrapped keys, the re-identification
table.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from nubis.index.schema_base import UID, metadata

__all__ = ["research_members", "research_projects", "research_reid", "research_studies"]

# Research projects (issue 14, nubis.services.research): a cohort of studies resolved when the
# project is made, its members (researchers), its de-identification profile (TOML) and its
# key, wrapped by the archive's key provider (``key_subject`` names the provider's key for it;
# never the key in the clear).
research_projects = Table(
    "research_projects",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("profile_toml", Text, nullable=False),
    Column("cohort_query", Text),  # the QIDO-RS query it was made from, or None (a study list)
    Column("key_subject", String(64), nullable=False),
    Column("key_id", String(255), nullable=False),
    Column("key_wrapped_subject", String(255), nullable=False),
    Column("key_ciphertext", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("created_by", String(256), nullable=False),
    UniqueConstraint("tenant", "name", name="uq_research_projects_name"),
)

research_members = Table(
    "research_members",
    metadata,
    Column("project_id", Integer, ForeignKey("research_projects.id"), primary_key=True),
    Column("user_id", String(256), primary_key=True),
)

# The cohort: which studies (by their own UIDs, so the scope is a SQL filter like grants).
research_studies = Table(
    "research_studies",
    metadata,
    Column("project_id", Integer, ForeignKey("research_projects.id"), primary_key=True),
    Column("study_uid", UID, primary_key=True),
)

# The re-identification table: per project, a pseudonym or remapped study UID found by a keyed
# HMAC of it (``lookup``), the original sealed with AES-GCM under a key drawn from the
# project's key. Without the archive's keys neither column says who anyone is.
research_reid = Table(
    "research_reid",
    metadata,
    Column("project_id", Integer, ForeignKey("research_projects.id"), primary_key=True),
    Column("lookup", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # patient, study
    Column("sealed", LargeBinary, nullable=False),
)
