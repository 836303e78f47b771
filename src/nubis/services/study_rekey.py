"""Re-key: put a corrected study's objects under the key of the patient it is filed under now
(``rekey`` job).

Objects are encrypted under the key of the Patient ID they arrive with (nubis.crypto), and a
correction never rewrites them (docs/corrections.md). So when a correction files a study under
another patient (a move, a merge, an undo of either, a new Patient ID), its objects stay under
the old patient's key: a crypto-shred of the new patient would miss them, and one of the old
patient would erase a study that is no longer theirs. The correction therefore records the
study in ``study_rekeys`` and queues this job in its own transaction (nubis.index.rekey_sql), as
a store does for a late object that arrives under the Patient ID the study was moved away from.

The job takes the recorded studies in primary-key order. For each it finds the patient key the
study's Patient ID (as corrected) names, and re-encrypts every object whose header names
another one under a fresh data key wrapped by that key (nubis.services.reencryption: the same
steps, audit record per object and crash safety as the ``rewrap`` job). Reads go on throughout:
a read finds the keys of the blob its row names in that blob's header. Once a pass leaves no
object under another key, the study's row is deleted, unless something changed it since the
pass began (a later correction, a late object: they queued another job). Objects whose key was
shredded already (unreadable for good) do not hold a study back; objects awaiting a restore
from an archive tier and unreadable ones do, and keep a crypto-shred of either patient refused
(``nubis keys shred-patient`` names the job) until ``nubis jobs run rekey`` does them.

The cursor (saved after each page) names the study in progress and the last instance done, so
a run taken over after its node died resumes there; objects it did already name the new key
and are passed over. Parameters: ``workers`` (objects re-encrypted at once, default 4).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from typing import Any

from sqlalchemy import func, select

from nubis.index import rekey_sql
from nubis.index.columns import json_text
from nubis.index.schema import instances, series, study_rekeys
from nubis.jobs.context import JobContext
from nubis.model.audit import ActiveParticipant, EventOutcome
from nubis.ports.keys import WrappedKey
from nubis.services.reencryption import (
    PROBLEMS,
    Copy,
    Reencryption,
    StoredObject,
    Target,
    Targeting,
)

__all__ = ["StudyRekey"]

# Outcomes that keep a study waiting: an object still under another key that can be read.
_HOLDING = (*(p for p in PROBLEMS if p != "erased"), "changed")
# Passes over one study in a run while objects change under it (a concurrent tier move).
_PASSES = 3


class StudyRekey(Reencryption):
    """The ``rekey`` job: see the module docstring."""

    name = "rekey"
    _done_name = "rekeyed"

    def run(self, ctx: JobContext) -> dict[str, Any]:
        who = replace(self.actor, user_name=ctx.job.created_by)
        what = f"re-key corrected studies' objects under their patient's key (job {ctx.job.id})"
        saved = ctx.cursor or {}
        resumed = f", resumed after {saved['done']} object(s)" if saved else ""
        self._record(who, EventOutcome.SUCCESS, f"{what}: begins{resumed}")
        try:
            counts, problems = self._pass(ctx, who)
        except BaseException as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            self._record_quietly(
                who, EventOutcome.SERIOUS_FAILURE, f"{what}: stopped after {ctx.done}: {reason}"
            )
            raise
        summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()) if name != "bytes")
        self._record(
            who,
            EventOutcome.MINOR_FAILURE if counts["studies_left"] else EventOutcome.SUCCESS,
            f"{what}: done ({summary or 'no study awaited it'})",
        )
        return {"checked": ctx.done, **dict(sorted(counts.items())), "problems": problems}

    def _pass(
        self, ctx: JobContext, who: ActiveParticipant
    ) -> tuple[Counter[str], list[dict[str, str]]]:
        saved = ctx.cursor or {}
        through = int(saved.get("through", 0))  # studies up to this primary key are done
        current, after = saved.get("study"), int(saved.get("after", 0))
        done = int(saved.get("done", 0))
        counts: Counter[str] = Counter(saved.get("counts", {}))
        problems: list[dict[str, str]] = list(saved.get("problems", []))
        total = done + self._left(through)

        def save(study: int | None, last: int) -> None:
            cursor = {"through": through, "study": study, "after": last, "done": done,
                      "counts": dict(counts), "problems": problems}  # fmt: skip
            ctx.progress(done, total, cursor)

        with self._pool(ctx) as pool:
            while (study := self._next(through)) is not None:
                target = self._targeting(study)
                start = after if study.pk == current else 0
                for _ in range(_PASSES):
                    held = Counter({k: counts[k] for k in _HOLDING})
                    for page in self._pages(start, where=[series.c.study_pk == study.pk]):
                        done = self._do_page(ctx, pool, page, target, who, counts, problems,
                                             done, total)  # fmt: skip
                        save(study.pk, page[-1].pk)
                    # Settled only on a whole pass (a resumed one began mid-study) that no
                    # concurrent change (a tier move winning a swap) made to miss objects.
                    whole = start == 0
                    if whole and counts["changed"] == held["changed"]:
                        break
                    start = 0
                if not whole or any(counts[k] > held[k] for k in _HOLDING):
                    counts["studies_left"] += 1
                elif self._settle(study):
                    counts["studies_rekeyed"] += 1
                else:
                    counts["studies_changed"] += 1  # a queued job takes it again
                through = study.pk
                save(None, 0)
        return counts, problems

    def _settle(self, study: rekey_sql.PendingStudy) -> bool:
        return self.index.write(lambda conn: rekey_sql.settle(conn, study.pk, study.version))

    def _next(self, through: int) -> rekey_sql.PendingStudy | None:
        with self.index.reading() as conn:
            return rekey_sql.next_study(conn, through)

    def _left(self, through: int) -> int:
        """Objects of the studies still to do (for progress)."""
        with self.index.reading() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(instances.join(series))
                    .where(
                        series.c.study_pk.in_(
                            select(study_rekeys.c.study_pk).where(study_rekeys.c.study_pk > through)
                        )
                    )
                ).scalar_one()
            )

    def _targeting(self, study: rekey_sql.PendingStudy) -> Targeting:
        """Objects of ``study`` whose header names another patient key than its patient's,
        each under its patient's key."""
        patient_id = json_text(json.loads(study.attrs), "PatientID") or ""
        subject = self.blobs.keys.patient_key_id(study.partition, patient_id)

        def target(obj: StoredObject, named: WrappedKey | None) -> Target | str:
            if named is None:
                return "plaintext"  # no key to change (stored while encryption was off)
            if named.subject == subject:
                return "keyed"
            return Target(patient_id, subject)

        return target

    def _key_change(self, named: WrappedKey, copy: Copy) -> str:
        return (
            f"the key of the patient its study is filed under (patient key {copy.subject}, "
            f"was {named.subject})"
        )
