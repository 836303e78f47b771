"""The reconciliation report of a migration: source and archive, study by study.

Per study: the instance count at the source (as the ledger recorded its last listing) and in
the archive (read now, through the retrieve service); the source's SOP Instance UIDs missing
from the archive, each with the ledger's reason; the archive's instances the source did not
list (extra); those an earlier listing had and the last no longer has (deleted at the
source: the archive keeps what it holds of them); objects refused and why; and, where the
source gave the bytes, whether the archive holds an object with the same SHA-256.
``silent_gaps`` counts source instances that are neither in the archive nor explained: a
finished migration must have none.

A study held in quarantine (its instances disagree on the patient, or one of its series UIDs
is another study's: nubis.services.quarantine) is in the archive, so not a gap, but it is seen
by admins only until released: its row says so, with the reason codes it is held for, and the
totals count such studies. The report reads as an admin of the tenant, who sees them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from typing import Any

from nubis.errors import NotFound
from nubis.migrate.ledger import Ledger, Outcome, StudyState
from nubis.security.policy import Principal
from nubis.services.quarantine import QuarantineService
from nubis.services.retrieve import RetrieveService

__all__ = ["Report", "StudyReport", "reconcile"]


@dataclass
class StudyReport:
    study_uid: str
    study_date: str | None
    state: str
    source_count: int
    nubis_count: int
    missing: list[dict[str, Any]] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    removed_at_source: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    sha256_matched: int = 0
    sha256_differs: list[str] = field(default_factory=list)
    sha256_not_given: int = 0
    silent_gaps: int = 0
    # Held in quarantine (admins only until released), and the reason codes why.
    quarantined: bool = False
    quarantine_reasons: list[str] = field(default_factory=list)


@dataclass
class Report:
    migration: str
    studies: list[StudyReport]
    listing_gaps: list[dict[str, str]] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        s = self.studies
        return {
            "studies": len(s),
            "studies_done": sum(1 for r in s if r.state == StudyState.DONE.value),
            "source_instances": sum(r.source_count for r in s),
            "nubis_instances": sum(r.nubis_count for r in s),
            "missing": sum(len(r.missing) for r in s),
            "extra": sum(len(r.extra) for r in s),
            "removed_at_source": sum(len(r.removed_at_source) for r in s),
            "refused": sum(len(r.refused) for r in s),
            "sha256_matched": sum(r.sha256_matched for r in s),
            "sha256_differs": sum(len(r.sha256_differs) for r in s),
            "sha256_not_given": sum(r.sha256_not_given for r in s),
            "silent_gaps": sum(r.silent_gaps for r in s),
            "listing_gaps": len(self.listing_gaps),
            "studies_quarantined": sum(1 for r in s if r.quarantined),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "migration": self.migration,
            "totals": self.totals,
            "listing_gaps": self.listing_gaps,
            "studies": [asdict(r) for r in self.studies],
        }

    def as_csv(self) -> str:
        """One row per study; UID lists separated by spaces, refusals as ``uid=reason``."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([
            "study_uid", "study_date", "state", "source_count", "nubis_count", "missing",
            "extra", "refused", "sha256_matched", "sha256_differs", "sha256_not_given",
            "silent_gaps", "missing_uids", "extra_uids", "refused_reasons",
            "removed_at_source_uids", "quarantined", "quarantine_reasons",
        ])  # fmt: skip
        for r in self.studies:
            writer.writerow([
                r.study_uid, r.study_date or "", r.state, r.source_count, r.nubis_count,
                len(r.missing), len(r.extra), len(r.refused), r.sha256_matched,
                len(r.sha256_differs), r.sha256_not_given, r.silent_gaps,
                " ".join(m["sop_instance_uid"] for m in r.missing),
                " ".join(r.extra),
                "; ".join(f"{x['sop_instance_uid']}={x['reason']}" for x in r.refused),
                " ".join(x["sop_instance_uid"] for x in r.removed_at_source),
                "yes" if r.quarantined else "no", " ".join(r.quarantine_reasons),
            ])  # fmt: skip
        return buf.getvalue()

    def as_text(self) -> str:
        t = self.totals
        lines = [
            f"migration {self.migration}: {t['studies']} studies "
            f"({t['studies_done']} done), {t['source_instances']} instances at the source, "
            f"{t['nubis_instances']} in nubis",
            f"  missing {t['missing']}, extra {t['extra']}, refused {t['refused']}, "
            f"silent gaps {t['silent_gaps']}, listing gaps {t['listing_gaps']}, "
            f"removed at the source {t['removed_at_source']}",
            f"  SHA-256: {t['sha256_matched']} equal, {t['sha256_differs']} different, "
            f"{t['sha256_not_given']} not given by the source",
        ]
        if t["studies_quarantined"]:
            lines.append(
                f"  held in quarantine {t['studies_quarantined']} studies: in nubis, seen by "
                "admins only until released (nubis storage quarantine, nubis storage release)"
            )
        for gap in self.listing_gaps:
            lines.append(f"  not listed: {gap['what']}: {gap['reason']}")
        for r in self.studies:
            problems = (
                r.missing
                or r.extra
                or r.refused
                or r.sha256_differs
                or r.silent_gaps
                or r.removed_at_source
            )
            if not (problems or r.quarantined):
                continue
            held = f", held in quarantine ({', '.join(r.quarantine_reasons)})"
            lines.append(
                f"study {r.study_uid}: source {r.source_count}, nubis {r.nubis_count}"
                f"{held if r.quarantined else ''}"
                f"{'' if r.state == StudyState.DONE.value else ' (not finished)'}"
            )
            lines.extend(f"  missing {m['sop_instance_uid']}: {m['reason']}" for m in r.missing)
            lines.extend(f"  extra {uid}" for uid in r.extra)
            lines.extend(f"  refused {x['sop_instance_uid']}: {x['reason']}" for x in r.refused)
            lines.extend(f"  SHA-256 differs {uid}" for uid in r.sha256_differs)
            lines.extend(
                f"  removed at the source {x['sop_instance_uid']}"
                f"{' (kept in nubis)' if x['in_nubis'] else ''}"
                for x in r.removed_at_source
            )
        if not any(t[k] for k in ("missing", "refused", "sha256_differs", "listing_gaps")):
            lines.append("every source instance is in nubis")
        return "\n".join(lines) + "\n"


def reconcile(
    ledger: Ledger,
    retrieve: RetrieveService,
    quarantine: QuarantineService,
    who: Principal,
    *,
    listing_gaps: list[dict[str, str]] | None = None,
) -> Report:
    """The report of ``ledger``'s migration; the archive is read as ``who``, an admin of the
    migration's tenant (held studies are seen by admins only)."""
    held = {s.study_uid: s.reasons for s in quarantine.held(who)}
    studies = []
    for row in ledger.studies():
        try:
            stored = {
                i.sop_instance_uid: i.sha256
                for i in retrieve.instances(who, row.study_uid, transfer=False)
            }
        except NotFound:
            stored = {}
        everything = ledger.entries(row.study_uid)
        entries = [e for e in everything if e.outcome is not Outcome.GONE]
        report = StudyReport(
            row.study_uid, row.study_date, row.state.value, len(entries), len(stored)
        )
        report.removed_at_source = [
            {"sop_instance_uid": e.sop_instance_uid, "in_nubis": e.sop_instance_uid in stored}
            for e in everything
            if e.outcome is Outcome.GONE
        ]
        if row.study_uid in held:
            report.quarantined = True
            report.quarantine_reasons = list(held[row.study_uid])
        for e in entries:
            sop = e.sop_instance_uid
            if e.outcome is Outcome.REFUSED:
                report.refused.append(
                    {"sop_instance_uid": sop, "status": e.status, "reason": e.reason}
                )
            if sop not in stored:
                reason = e.reason
                if e.outcome is Outcome.LISTED:
                    reason = "not moved yet (the migration did not reach it)"
                if not reason:
                    report.silent_gaps += 1
                report.missing.append(
                    {"sop_instance_uid": sop, "outcome": e.outcome.value, "reason": reason}
                )
            elif e.source_sha256 is None:
                report.sha256_not_given += 1
            elif e.source_sha256 == stored[sop]:
                report.sha256_matched += 1
            else:
                report.sha256_differs.append(sop)
        report.extra = sorted(set(stored) - {e.sop_instance_uid for e in everything})
        studies.append(report)
    return Report(ledger.name, studies, listing_gaps or [])
