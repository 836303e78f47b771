"""Index tables of work handed around: UPS workitems and their subscriptions, analyzer runs."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from nubis.index.schema_base import UID, metadata

__all__ = ["analyzer_runs", "workitem_events", "workitem_subscriptions", "workitems"]

# Worklists (UPS-RS, nubis.services.worklist, migration 0019; docs/worklists.md). A workitem is
# a Unified Procedure Step instance of one tenant: ``attrs`` holds its data set as DICOM JSON
# (what Retrieve Workitem answers), the other columns the values Search matches on, kept in
# step with ``attrs`` by every write. ``transaction_uid`` is the lock its performer got when it
# claimed the workitem (PS3.4 CC.1.1): kept apart from ``attrs`` because it is never returned
# to anyone. ``performer`` is the principal that claimed it. Times in ms since the epoch; the
# Scheduled Procedure Step Start DateTime as YYYYMMDDHHMMSS, for range matching as text.
workitems = Table(
    "workitems",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("partition", String(64), nullable=False),
    Column("workitem_uid", UID, nullable=False),
    Column("state", String(16), nullable=False),
    Column("transaction_uid", UID),
    Column("performer", String(256)),
    Column("priority", String(8)),
    Column("worklist_label", String(64)),
    Column("input_readiness", String(16)),
    Column("scheduled_start", String(14)),
    Column("patient_id", String(64)),
    Column("patient_name_folded", String(324)),
    Column("study_uid", UID),
    Column("workitem_code_value", String(64)),
    Column("workitem_code_scheme", String(64)),
    Column("station_code_value", String(64)),
    Column("station_code_scheme", String(64)),
    Column("attrs", Text, nullable=False),
    Column("created_by", String(256), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("partition", "workitem_uid", name="uq_workitems_uid"),
)
Index(
    "ix_workitems_state_start",
    workitems.c.partition,
    workitems.c.state,
    workitems.c.scheduled_start,
)
Index("ix_workitems_patient", workitems.c.partition, workitems.c.patient_id)

# Subscriptions of AEs to workitem events (PS3.4 CC.2.3, PS3.18 11.10-11.12): one row per
# (tenant, AE, target). The target is a workitem's UID, or the well-known UID of the Worklist
# (1.2.840.10008.5.1.4.34.5: every workitem) or of the Filtered Worklist
# (1.2.840.10008.5.1.4.34.5.1: those matching ``filter``, a query string). A worklist
# subscription also adds a row for each workitem it covers, then and at each creation, so
# suspending it (no new ones) leaves those in place, as CC.2.3.1 wants.
workitem_subscriptions = Table(
    "workitem_subscriptions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("partition", String(64), nullable=False),
    Column("ae_title", String(16), nullable=False),
    Column("target_uid", UID, nullable=False),
    Column("deletion_lock", Boolean, nullable=False),
    Column("filter", Text),
    Column("created_by", String(256), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    UniqueConstraint("partition", "ae_title", "target_uid", name="uq_workitem_subscriptions"),
)
Index(
    "ix_workitem_subscriptions_target",
    workitem_subscriptions.c.partition,
    workitem_subscriptions.c.target_uid,
)

# UPS event reports waiting for their subscriber (PS3.4 CC.2.4; the event channel of PS3.18,
# nubis.web.dicomweb.ups_events; migration 0027). One row per (report, subscribed AE), written
# in the transaction of the change it reports, so a report is never lost nor sent for a change
# rolled back; the channel of the AE, on any worker or node, reads its rows by ``id`` (the
# cursor, oldest first) and deletes those it sent. ``report`` is the event report as DICOM JSON.
workitem_events = Table(
    "workitem_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("partition", String(64), nullable=False),
    Column("ae_title", String(16), nullable=False),
    Column("workitem_uid", UID, nullable=False),
    Column("report", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)
Index(
    "ix_workitem_events_ae",
    workitem_events.c.partition,
    workitem_events.c.ae_title,
    workitem_events.c.id,
)

# One row per (analyzer, its version, study): the study was queued for that analyzer, and
# what became of it (nubis.analyzers.job). A running row holds one of its analyzer's
# concurrency slots until slot_expires_at. Gone with its study, so a study deleted and sent
# again is analyzed again.
analyzer_runs = Table(
    "analyzer_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_pk", Integer, ForeignKey("studies.id", ondelete="CASCADE"), nullable=False),
    Column("analyzer", String(64), nullable=False),
    Column("version", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("job_id", Integer),
    Column("queued_at", BigInteger, nullable=False),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
    Column("slot_expires_at", BigInteger),
    Column("summary", Text),
    Column("last_error", Text),
    UniqueConstraint("analyzer", "version", "study_pk", name="uq_analyzer_runs_study"),
)
Index("ix_analyzer_runs_state", analyzer_runs.c.analyzer, analyzer_runs.c.state)
