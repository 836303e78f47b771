"""Relational schema of the metadata index (SQLite and PostgreSQL share it).

The index is the source of truth for what the archive holds: a blob exists for a client only once
its instance row is committed here. Patient-level attributes are folded into ``studies`` because
every QIDO-RS and C-FIND query reaches patients through a study; ``*_folded`` columns hold the
upper-cased Person Name used for case-insensitive PN matching (PS3.4 C.2.2.2.1).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from nubis.index.schema_base import UID, metadata

# The tables of later capabilities live in modules of their own, on the same metadata; imported
# here so that this module names every table and `metadata` holds them all (migrations, tests).
from nubis.index.schema_outbound import (
    change_feed,
    change_feed_state,
    edge_copies,
    replication_outbox,
    replication_state,
    webhook_dead_letters,
    webhook_subscriptions,
)
from nubis.index.schema_research import (
    research_members,
    research_projects,
    research_reid,
    research_studies,
)
from nubis.index.schema_retention import (
    erasure_certificates,
    legal_holds,
)
from nubis.index.schema_workflow import (
    analyzer_runs,
    workitem_events,
    workitem_subscriptions,
    workitems,
)

studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("partition", String(64), nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("patient_id", String(64)),
    Column("patient_name", String(324)),
    Column("patient_name_folded", String(324)),
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("study_date", String(8)),
    Column("study_time", String(16)),
    Column("accession_number", String(16)),
    Column("referring_physician_name", String(324)),
    Column("referring_physician_name_folded", String(324)),
    Column("study_description", String(64)),
    Column("study_id", String(16)),
    Column("timezone_offset", String(5)),
    # Backslash-joined, sorted Modality values of the study's series (ModalitiesInStudy).
    Column("modalities", String(256), nullable=False, default=""),
    Column("num_series", Integer, nullable=False, default=0),
    Column("num_instances", Integer, nullable=False, default=0),
    # DICOM JSON (PS3.18 F.2) of the patient and study level attributes, for includefield.
    Column("attrs", Text, nullable=False, default="{}"),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("partition", "study_uid", name="uq_studies_partition_uid"),
)
Index("ix_studies_patient_id", studies.c.partition, studies.c.patient_id)
Index("ix_studies_patient_name", studies.c.partition, studies.c.patient_name_folded)
Index("ix_studies_study_date", studies.c.partition, studies.c.study_date)
Index("ix_studies_accession", studies.c.partition, studies.c.accession_number)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_pk", Integer, ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
    Column("series_uid", UID, nullable=False),
    Column("modality", String(16)),
    Column("series_number", Integer),
    Column("series_description", String(64)),
    Column("performed_date", String(8)),
    Column("performed_time", String(16)),
    Column("timezone_offset", String(5)),
    Column("num_instances", Integer, nullable=False, default=0),
    # DICOM JSON of the series level attributes (RequestAttributesSequence included).
    Column("attrs", Text, nullable=False, default="{}"),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("study_pk", "series_uid", name="uq_series_study_uid"),
)
Index("ix_series_uid", series.c.series_uid)
Index("ix_series_modality", series.c.modality)

# RequestAttributesSequence items, one row each, so a QIDO match on a nested key is a join.
series_requests = Table(
    "series_requests",
    metadata,
    Column("series_pk", Integer, ForeignKey("series.id", ondelete="CASCADE"), nullable=False),
    Column("scheduled_procedure_step_id", String(16)),
    Column("requested_procedure_id", String(16)),
)
Index("ix_series_requests_series", series_requests.c.series_pk)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_pk", Integer, ForeignKey("series.id", ondelete="CASCADE"), nullable=False),
    Column("partition", String(64), nullable=False),
    Column("sop_instance_uid", UID, nullable=False),
    Column("sop_class_uid", UID, nullable=False),
    Column("instance_number", Integer),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("bits_allocated", Integer),
    Column("number_of_frames", Integer),
    # The blob: opaque key owned by the index, with its size and SHA-256 (hex).
    Column("blob_key", String(128), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    # DICOM JSON metadata with BulkDataURIs, serialized once at ingest (WADO-RS metadata).
    Column("metadata_json", Text, nullable=False),
    # JSON: per frame a list of [offset, length] fragments in the blob; NULL when not indexable.
    Column("frame_index", Text),
    # JSON: bulk data element path -> [offset, length] in the blob.
    Column("bulk_index", Text),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("partition", "sop_instance_uid", name="uq_instances_partition_uid"),
)
Index("ix_instances_series", instances.c.series_pk)
Index("ix_instances_blob_key", instances.c.blob_key)

# Blobs whose index rows were deleted; the reaper deletes them and then the row here.
doomed_blobs = Table(
    "doomed_blobs",
    metadata,
    Column("blob_key", String(128), primary_key=True),
    Column("queued_at", BigInteger, nullable=False),
)

# The audit trail (PS3.15 A.5): append-only, hash-chained records. ``record`` is the canonical
# JSON that was hashed, kept byte for byte so verification never depends on re-serializing;
# the other columns are copies for listing and filtering, checked against it by verify().
# Migration 0002 adds triggers that refuse UPDATE and DELETE on both audit tables.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", String(32), nullable=False),
    Column("event_code", String(16), nullable=False),
    Column("outcome", Integer, nullable=False),
    Column("user_id", String(256), nullable=False),
    Column("patient_id", String(64)),
    Column("record", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_log_at", audit_log.c.at)
Index("ix_audit_log_user", audit_log.c.user_id)
Index("ix_audit_log_patient", audit_log.c.patient_id)

# Signed heads of the chain (like an RFC 6962 signed tree head): record count, head hash, time,
# Ed25519 signature. A removed tail shows as a checkpoint beyond the end of the log.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("head_hash", String(64), nullable=False),
    Column("signed_at", BigInteger, nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
)

# Export cursors (e.g. the syslog forwarder): the last record delivered, so a collector outage
# delays records and never loses them.
audit_cursors = Table(
    "audit_cursors",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Identity (nubis.security): local users, API keys and per-patient / per-study grants. A user
# belongs to one tenant (= the ``partition`` of the studies it may see); ``roles`` is a
# comma-separated list of built-in role names (nubis.security.policy). Passwords are argon2id
# hashes; an API key is stored only as the SHA-256 of the key, which is a high-entropy secret,
# so a stolen index does not give working keys.
users = Table(
    "users",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("roles", String(256), nullable=False),
    Column("password_hash", String(256)),
    Column("created_at", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("user_name", String(128), nullable=False),
    Column("label", String(256), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger),
    Column("revoked_at", BigInteger),
)
Index("ix_api_keys_user", api_keys.c.user_name)

# A grant lets ``subject`` (a user name, ``oidc:<sub>``, or ``share:<link id>``) see one
# patient's studies or one study in ``tenant``; exactly one of patient_id / study_uid is set.
# ``series_uid`` (migration 0010, with a study_uid) narrows a study grant to one series: the
# study is found, only that series of it (a share link of some series). Scope-limited roles
# (referrer, share links) see only what is granted; QIDO-RS joins this table, so paging stays
# exact (index/query_sql.granted_to, the one place that reads it for scope).
grants = Table(
    "grants",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("subject", String(256), nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("patient_id", String(64)),
    Column("study_uid", UID),
    Column("created_at", BigInteger, nullable=False),
    Column("series_uid", UID),
    UniqueConstraint("subject", "tenant", "patient_id", "study_uid", name="uq_grants"),
)
Index("ix_grants_subject", grants.c.subject, grants.c.tenant)

# Share links (nubis.services.sharing, migration 0010): one study, or some of its series (then
# one grant row per series), for someone without an account. The link's token is 256 random
# bits shown once; only its SHA-256 is kept, so a stolen index opens nothing. The link's reads
# are scoped by grant rows naming ``share:<id>``, which its revocation deletes with its
# sessions. ``series_uids`` (backslash-joined) repeats the grant rows for listings;
# ``pin_hash`` is argon2id. Times in ms since the epoch. Rows stay after expiry and
# revocation, for the owner's list.
share_links = Table(
    "share_links",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("tenant", String(64), nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("series_uids", Text),
    Column("created_by", String(256), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
    Column("revoked_by", String(256)),
    Column("pin_hash", String(256)),
    Column("can_download", Boolean, nullable=False),
    Column("note", Text, nullable=False),
    Column("last_opened_at", BigInteger),
    Column("open_count", Integer, nullable=False),
    # A de-identified link (issue 14, docs/research.md): its reads go through the research
    # view under a research project's profile and key (deid_project_id), or under a profile
    # of its own and a key of its own, wrapped by the archive's key provider as a project's.
    Column("deid_project_id", Integer),
    Column("deid_profile_toml", Text),
    Column("deid_key_subject", String(64)),
    Column("deid_key_id", String(255)),
    Column("deid_key_wrapped_subject", String(255)),
    Column("deid_key_ciphertext", LargeBinary),
)
Index("ix_share_links_study", share_links.c.tenant, share_links.c.study_uid)
Index("ix_share_links_created_by", share_links.c.tenant, share_links.c.created_by)

# Background jobs (nubis.jobs): reap, verify, tier... A runner claims a queued job (SKIP LOCKED
# on PostgreSQL), holds it under a lease it renews while it runs, and a job whose lease ran out
# (its node died) is claimed again by another runner, resuming from ``cursor_json``.
# ``unique_key`` keeps periodic jobs from being scheduled twice (one row per kind and period).
jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("params", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("unique_key", String(128)),
    Column("progress_done", BigInteger, nullable=False),
    Column("progress_total", BigInteger),
    Column("cursor_json", Text),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", BigInteger),
    Column("cancel_requested", Integer, nullable=False),
    Column("not_before", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("created_by", String(256)),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    Column("last_error", Text),
    Column("result", Text),
    UniqueConstraint("unique_key", name="uq_jobs_unique_key"),
)
Index("ix_jobs_state", jobs.c.state, jobs.c.not_before)

# Storage tiers (nubis.tiers). Tables of their own rather than columns of studies/instances:
# migration 0001 builds those from this module, so a column added to them here would exist
# before the migration that adds it. A study without a study_lifecycle row was never read
# since it was stored (its created_at counts) and is not pinned; an instance without an
# instance_tiers row is in the first tier (where new objects are written).
study_lifecycle = Table(
    "study_lifecycle",
    metadata,
    Column(
        "study_pk",
        Integer,
        ForeignKey("studies.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    # Milliseconds since the epoch; recorded at most once per read_record_seconds per process.
    Column("last_read_at", BigInteger),
    # A tier chosen by an operator (nubis storage tier), kept over the rules until tier_pin_until.
    Column("tier_pin", String(32)),
    Column("tier_pin_until", BigInteger),
)

instance_tiers = Table(
    "instance_tiers",
    metadata,
    Column(
        "instance_pk",
        Integer,
        ForeignKey("instances.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("tier", String(32), nullable=False),
    Column("moved_at", BigInteger, nullable=False),
)

# What an object was when it arrived, for objects a tier's lossless compression re-encoded
# (nubis.tiers.compression, migration 0012): the transfer syntax retrieval gives back on request,
# and the size and SHA-256 of the bytes received (the storage report's "before"; a resent
# original is recognised by them). ``compressed`` false: the object was tried and kept as it
# is, ``note`` saying why, so the job does not try it again. Absent: never tried.
instance_originals = Table(
    "instance_originals",
    metadata,
    Column(
        "instance_pk",
        Integer,
        ForeignKey("instances.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("compressed", Boolean, nullable=False),
    Column("note", String(256)),
    Column("at", BigInteger, nullable=False),
)

# Every instance with its series, its study and its tier row (absent: the first tier): what the
# jobs that walk blobs (verify, tier, rewrap) select from.
INSTANCES_LOCATED = (
    instances.join(series, instances.c.series_pk == series.c.id)
    .join(studies, series.c.study_pk == studies.c.id)
    .outerjoin(instance_tiers, instance_tiers.c.instance_pk == instances.c.id)
)

# Encryption at rest with patient keys in the index (nubis.crypto.index_keys, keyring
# index+file:// or index+env:). One random key per (partition, Patient ID), found by ``ref``, an
# HMAC keyed by the KEK secret (never the Patient ID); ``wrapped`` is AES-GCM under KEK
# ``kek_id``, which lives only in that secret, outside the database. A shred deletes the rows
# and leaves their ids in erased_patient_keys, so a read says "erased" rather than "missing". A
# retired KEK is listed in retired_keks, so a node still given an old secret that names it
# current refuses to wrap under it.
patient_keys = Table(
    "patient_keys",
    metadata,
    Column("subject", String(64), primary_key=True),
    Column("ref", String(64), nullable=False),
    Column("kek_id", String(32), nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("ref", name="uq_patient_keys_ref"),
)
Index("ix_patient_keys_kek", patient_keys.c.kek_id)

erased_patient_keys = Table(
    "erased_patient_keys",
    metadata,
    Column("subject", String(64), primary_key=True),
    Column("erased_at", BigInteger, nullable=False),
)

retired_keks = Table(
    "retired_keks",
    metadata,
    Column("kek_id", String(32), primary_key=True),
    Column("retired_at", BigInteger, nullable=False),
)
# Remote DIMSE AEs (migration 0007): one table for every node, so admission and C-MOVE
# destinations are the same whichever node a caller reaches. An empty tls_subject /
# tls_fingerprint binds no certificate to the AE title.
dimse_peers = Table(
    "dimse_peers",
    metadata,
    Column("ae_title", String(16), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("may_store", Boolean, nullable=False),
    Column("may_query", Boolean, nullable=False),
    Column("may_retrieve", Boolean, nullable=False),
    Column("tls_subject", String(1024), nullable=False),
    Column("tls_fingerprint", String(64), nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# Failed password checks and login lockouts (migration 0008), one row per user name
# ("user:NAME") and per source address ("address:IP"), so a lockout holds on every worker
# process and node (nubis.security.throttle). Times in ms since the epoch; a row idle for longer
# than the window and the longest lockout is pruned.
login_throttle = Table(
    "login_throttle",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("window_start", BigInteger, nullable=False),
    Column("locked_until", BigInteger, nullable=False),
    Column("lockouts", Integer, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)
Index("ix_login_throttle_updated_at", login_throttle.c.updated_at)

# Browser sessions of the web face (nubis.security.sessions), one row per signed-in browser,
# found by the SHA-256 of the cookie's random token (the token itself is never stored).
# ``subject`` is the principal's id (a user name, oidc:<sub>, share:<id>); ``roles`` is empty
# for local users, whose roles and tenant are read from their row at every request, and holds
# the roles a token or a share link gave otherwise. Times in ms since the epoch.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("csrf_token", String(64), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("roles", String(256), nullable=False),
    Column("auth_method", String(16), nullable=False),
    Column("peer", String(64)),
    Column("created_at", BigInteger, nullable=False),
    Column("last_seen_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
)
Index("ix_web_sessions_subject", web_sessions.c.subject)
Index("ix_web_sessions_expires_at", web_sessions.c.expires_at)

# Objects and bytes per storage tier once a day (migration 0011), written by the
# ``storage-snapshot`` job (nubis.tiers.history), so the admin pages can draw what the archive
# held and cost over time. ``day`` is the UTC date YYYY-MM-DD; the day's last snapshot wins.
storage_snapshots = Table(
    "storage_snapshots",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("tier", String(32), primary_key=True),
    Column("objects", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("taken_at", BigInteger, nullable=False),
)

# Migrations from legacy archives (nubis.migrate, migration 0013): what each source listed and
# what became of it, so that a killed migration resumes without moving a study twice and its
# report names every source instance that is not in the archive, with the reason. ``migration``
# is the name an operator gave (``nubis migrate run --name``); ``outcome`` is listed, stored,
# present (already in the archive), refused (``reason``, ``status``: the store's DICOM status)
# or missing (the source did not deliver it; ``reason``). A study row is ``done`` once every
# instance listed for it has an outcome; ``job_id`` is the job that finished it.
migration_studies = Table(
    "migration_studies",
    metadata,
    Column("migration", String(64), primary_key=True),
    Column("study_uid", UID, primary_key=True),
    Column("partition", String(64), nullable=False),
    Column("study_date", String(8)),
    Column("source_count", Integer),
    Column("state", String(16), nullable=False),
    Column("job_id", Integer),
    Column("updated_at", BigInteger, nullable=False),
)

migration_instances = Table(
    "migration_instances",
    metadata,
    Column("migration", String(64), primary_key=True),
    Column("sop_instance_uid", UID, primary_key=True),
    Column("study_uid", UID, nullable=False),
    Column("series_uid", UID),
    Column("source_sha256", String(64)),
    Column("size", BigInteger),
    Column("outcome", String(16), nullable=False),
    Column("status", Integer),
    Column("reason", String(512)),
    Column("updated_at", BigInteger, nullable=False),
)
Index(
    "ix_migration_instances_study",
    migration_instances.c.migration,
    migration_instances.c.study_uid,
)

# What was odd about an object ingested all the same (migration 0014, issue 12), one row per
# reason: the file meta disagreeing with the data set, a non-conformant UID, a wrong group
# length, the instance re-sent in another encoding... (nubis.model.records.IngestWarning).
# Written only when there is something to say, so the store path of a clean object is as it was.
instance_warnings = Table(
    "instance_warnings",
    metadata,
    Column(
        "instance_pk",
        Integer,
        ForeignKey("instances.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("reason", String(48), primary_key=True),
    Column("status", Integer, nullable=False),
    Column("detail", String(256), nullable=False),
    Column("at", BigInteger, nullable=False),
)

# Studies whose instances disagree on the patient, stored during a migration rather than refused
# (setting patient_conflict = quarantine; migration 0014, issue 12). While a study has a row here
# it is visible to admins only (Scope.sees_quarantine); a release removes the row (audited).
quarantined_studies = Table(
    "quarantined_studies",
    metadata,
    Column(
        "study_pk",
        Integer,
        ForeignKey("studies.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("reason", String(256), nullable=False),
    Column("since", BigInteger, nullable=False),
)

# Corrections (nubis.services.corrections, migration 0015). The stored objects are never
# rewritten: a corrected study has a ``study_overlays`` row whose ``attrs`` (DICOM JSON of the
# patient and study attributes that replace the stored ones) is applied where metadata and
# objects are served, while the study's own columns and ``attrs`` hold the corrected values, so
# QIDO-RS, C-FIND and grants follow the correction. ``version`` grows with every correction or
# undo of the study; ``stored_patient_id`` is the Patient ID its objects carry (a late instance
# with it still belongs to the study). ``corrections`` is the history: one row per correction
# or undo, ``changes`` holding each study's state before and after (JSON), so an undo restores
# it exactly.
study_overlays = Table(
    "study_overlays",
    metadata,
    Column(
        "study_pk",
        Integer,
        ForeignKey("studies.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("attrs", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("stored_patient_id", String(64)),
    Column("correction_id", Integer, nullable=False),
)

corrections = Table(
    "corrections",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("partition", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("undoes", Integer),
    Column("undone_by", Integer),
    Column("study_uids", Text, nullable=False),
    Column("changes", Text, nullable=False),
)
Index("ix_corrections_partition", corrections.c.partition, corrections.c.id)

# Studies whose objects may be wrapped under another patient's key than the one they are filed
# under (migration 0016): a correction moved them, or a late object of a moved study arrived
# under the Patient ID it was stored with. The ``rekey`` job (nubis.services.study_rekey)
# re-encrypts their objects under the key of the patient filed now and deletes the row once
# none is left under another; ``patients`` (JSON list) holds every other Patient ID whose key
# may still wrap one of them, which a crypto-shred of either must wait for. ``version`` grows
# with every change, so the job deletes only the row it saw.
study_rekeys = Table(
    "study_rekeys",
    metadata,
    Column(
        "study_pk",
        Integer,
        ForeignKey("studies.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("patients", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("since", BigInteger, nullable=False),
)

__all__ = [
    "analyzer_runs",
    "api_keys",
    "audit_checkpoints",
    "audit_cursors",
    "audit_log",
    "change_feed",
    "change_feed_state",
    "corrections",
    "dimse_peers",
    "doomed_blobs",
    "edge_copies",
    "erased_patient_keys",
    "erasure_certificates",
    "grants",
    "instance_originals",
    "instance_tiers",
    "instance_warnings",
    "instances",
    "jobs",
    "legal_holds",
    "login_throttle",
    "metadata",
    "migration_instances",
    "migration_studies",
    "patient_keys",
    "quarantined_studies",
    "replication_outbox",
    "replication_state",
    "research_members",
    "research_projects",
    "research_reid",
    "research_studies",
    "retired_keks",
    "series",
    "series_requests",
    "share_links",
    "storage_snapshots",
    "studies",
    "study_lifecycle",
    "study_overlays",
    "study_rekeys",
    "users",
    "web_sessions",
    "webhook_dead_letters",
    "webhook_subscriptions",
    "workitem_events",
    "workitem_subscriptions",
    "workitems",
]
