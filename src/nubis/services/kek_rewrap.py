"""Re-wrap: make every stored object that names an old KEK name the current one (``rewrap`` job).

A blob's header names the KEK that wraps its data key (DEK). Each object whose header names
``kek_id`` is written anew under a fresh DEK wrapped by the current KEK and the same patient
key, and swapped into its index row (nubis.services.reencryption: the steps, why a fresh DEK,
crash safety).

The job works from the index, in instance id order, and saves its cursor after each page: a run
taken over after its node died starts at the last saved page and finds the objects it already
did naming the current KEK. Objects in an archive tier that are not restored are counted as
``awaiting_restore``, and a later run does them. Objects whose patient key was shredded can
never be read again; they are counted as ``erased`` and keep naming the KEK until they are
deleted.

Parameters: ``kek_id`` (required), ``workers`` (objects re-wrapped at once, default 4).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from sqlalchemy import func, select

from nubis.index.columns import json_text
from nubis.index.schema import instances, series, studies
from nubis.jobs.context import JobContext, JobFailed
from nubis.model.audit import ActiveParticipant, EventOutcome
from nubis.ports.blobs import BlobNotFound
from nubis.ports.keys import WrappedKey
from nubis.services.reencryption import (
    PROBLEMS,
    Copy,
    KeyMismatch,
    Reencryption,
    StoredObject,
    Target,
    Targeting,
)

__all__ = ["KekRewrap"]


class KekRewrap(Reencryption):
    """The ``rewrap`` job: see the module docstring."""

    name = "rewrap"
    _done_name = "rewrapped"

    # ------------------------------------------------------------------ the job
    def run(self, ctx: JobContext) -> dict[str, Any]:
        kek_id = str(ctx.params.get("kek_id") or "")
        keys = self.blobs.keys
        if kek_id not in keys.key_ids() or kek_id == keys.current_key_id:
            # No later attempt can do better: fail the job now rather than after the retries.
            raise JobFailed(
                f"rewrap: kek_id {kek_id!r} is not an older key-encryption key "
                f"(KEKs: {', '.join(keys.key_ids())}; the last is current)",
                retry_in=None,
            )
        who = replace(self.actor, user_name=ctx.job.created_by)
        what = f"re-wrap stored objects named by key-encryption key {kek_id} (job {ctx.job.id})"
        saved = ctx.cursor or {}
        resumed = f", resumed after {saved['done']} object(s)" if saved else ""
        self._record(who, EventOutcome.SUCCESS, f"{what}: begins{resumed}")
        rewrapped_before = int(saved.get("counts", {}).get("rewrapped", 0))
        started = time.monotonic()
        try:
            counts, problems = self._pass(ctx, kek_id, who)
        except BaseException as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            self._record_quietly(
                who, EventOutcome.SERIOUS_FAILURE, f"{what}: stopped after {ctx.done}: {reason}"
            )
            raise
        rate = (counts["rewrapped"] - rewrapped_before) / (time.monotonic() - started)
        left = sum(counts[p] for p in PROBLEMS)
        summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()) if name != "bytes")
        self._record(
            who,
            EventOutcome.MINOR_FAILURE if left else EventOutcome.SUCCESS,
            f"{what}: done ({summary or 'nothing indexed'})",
        )
        return {
            "kek_id": kek_id,
            "checked": ctx.done,
            **dict(sorted(counts.items())),
            "objects_per_s": round(rate, 1),  # of this run, not of the runs it resumed
            "problems": problems,
        }

    def _pass(
        self, ctx: JobContext, kek_id: str, who: ActiveParticipant
    ) -> tuple[Counter[str], list[dict[str, str]]]:
        saved = ctx.cursor or {}
        after = int(saved.get("after", 0))
        # From the cursor, not ctx.done: progress saved in the middle of a page counts
        # objects that a resumed run does again.
        done = int(saved.get("done", 0))
        counts: Counter[str] = Counter(saved.get("counts", {}))
        problems: list[dict[str, str]] = list(saved.get("problems", []))
        with self.index.reading() as conn:
            total = conn.execute(select(func.count()).select_from(instances)).scalar_one()
        target = self._targeting(kek_id)
        with self._pool(ctx) as pool:
            for page in self._pages(after):
                done = self._do_page(ctx, pool, page, target, who, counts, problems, done, total)
                after = page[-1].pk
                cursor = {"after": after, "done": done, "counts": dict(counts),
                          "problems": problems}  # fmt: skip
                ctx.progress(done, total, cursor)
        return counts, problems

    def _rewrap(
        self, obj: StoredObject, kek_id: str, who: ActiveParticipant, job_id: int,
        deleted: list[str],
    ) -> str:  # fmt: skip
        """Re-wrap one object if its header names ``kek_id``; what happened, as a count name."""
        return self._reencrypt(obj, self._targeting(kek_id), who, job_id, deleted)

    def _targeting(self, kek_id: str) -> Targeting:
        """Objects whose header names ``kek_id``, each under the patient key it names now."""

        def target(obj: StoredObject, named: WrappedKey | None) -> Target | str:
            if named is None or named.key_id != kek_id:
                return "not_named"
            return Target(self._patient_of(obj, named), named.subject, not_kek=kek_id)

        return target

    def _patient_of(self, obj: StoredObject, named: WrappedKey) -> str:
        """The Patient ID whose key the header names, spelt exactly as the wrap that chose it
        had it: the study's (as a re-key after a correction wraps, nubis.services.study_rekey)
        or the object's own (as its store did). KeyMismatch when neither names it."""
        keys = self.blobs.keys
        for patient_id in self._patient_candidates(obj.pk):
            if keys.patient_key_id(obj.context.partition, patient_id) == named.subject:
                return patient_id
        raise KeyMismatch("no Patient ID of the object or its study names its patient key")

    def _patient_candidates(self, pk: int) -> list[str]:
        """The study's Patient ID, then the object's own (from their JSON: the study row's
        column is cut to its length). The study's comes first so that no key is made for the
        object's own patient when it is not needed."""
        with self.index.reading() as conn:
            row = conn.execute(
                select(studies.c.attrs, instances.c.metadata_json)
                .select_from(instances.join(series).join(studies))
                .where(instances.c.id == pk)
            ).first()
        if row is None:
            raise BlobNotFound(pk)
        found = [json_text(json.loads(text), "PatientID") or "" for text in row]
        return list(dict.fromkeys(found))

    # ------------------------------------------------------------------ audit
    def _key_change(self, named: WrappedKey, copy: Copy) -> str:
        return f"key-encryption key {copy.kek_id} (was {named.key_id})"
