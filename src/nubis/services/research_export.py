"""Export of a research project: the ``research-export`` job (docs/research.md).

``nubis research export NAME --to DIR | --zip FILE`` queues this job and runs it in its own
process, as ``nubis backup`` does (servers' runners leave it alone: the destination is that
process's). Every study of the cohort, in Study Instance UID order, is read through
``RetrieveService`` (digest checked, a correction's overlay applied), de-identified under the
project's profile and key (``deid.engine``), and written as
``<study>/<series>/<instance>.dcm``, all three the remapped UIDs, so two exports of one
project name the same objects alike and agree with the researcher's view; or sent by STOW-RS
to a DICOMweb server (``--to-dicomweb URL --manifest DIR``, its API key from the exporting
process's environment, never a job parameter), or put into an S3 bucket laid out as the folder
(``--to-s3 URL --manifest DIR``): nubis.services.research_destinations.

Resumable: the cursor is the number of studies finished; an object already at the
destination (a file, an S3 object) is not written again (files appear whole: written aside,
then renamed). A zip is built in a folder beside it (``FILE.parts``) and assembled once every
study is in, so an interrupted zip export resumes as a folder does. Progress counts studies.

Each study is recorded before its objects are written as a PS3.15 Data Export (A.5.3.6)
naming the real patient and study, in the audit trail only. The manifest
(``manifest.json``) holds the counts, the profile (name, version, text) and the engine's
version, the pseudonyms with the remapped studies of each (no original value), the objects
left out with the reason (the burned-in policy; a crypto-shredded patient), and the studies of
the cohort deleted since the project was made.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom

from nubis import __version__
from nubis.deid.engine import ExcludedObject, deidentify
from nubis.deid.profile import Profile
from nubis.deid.pseudonyms import Pseudonyms
from nubis.errors import KeyErased, NotFound
from nubis.jobs.context import JobContext
from nubis.model.records import StoredInstance
from nubis.security import audit_events
from nubis.security.policy import Principal
from nubis.services.research import ResearchService
from nubis.services.research_destinations import MANIFEST, Sink, destination_of, sink_for
from nubis.services.retrieve import AS_STORED, RetrieveService

__all__ = ["KIND", "ResearchExport"]

KIND = "research-export"
_PARTS = "manifest.parts.jsonl"  # one line per finished study, read back into the manifest


class ResearchExport:
    """The ``research-export`` handler, run for ``who`` (an admin: EXPORT)."""

    def __init__(
        self,
        research: ResearchService,
        retrieve: RetrieveService,
        who: Principal,
        *,
        dicomweb_api_key: str = "",
    ) -> None:
        self.research = research
        self.retrieve = retrieve
        self.who = who
        # The credential of a DICOMweb destination: the exporting process's, never a job's
        # parameter (job rows are listed to operators).
        self.dicomweb_api_key = dicomweb_api_key

    def run(self, ctx: JobContext) -> dict[str, Any]:
        name = str(ctx.params["project"])
        destination = destination_of(ctx.params)
        project = self.research.project(self.who, name)
        key = self.research.key_of(project)
        profile = project.profile
        remap = key.pseudonyms()
        cohort = self.research.cohort(project)
        destination.folder.mkdir(parents=True, exist_ok=True)
        sink = sink_for(destination, self.dicomweb_api_key)
        done = int(ctx.cursor or 0)
        ctx.progress(done, len(cohort), done)
        for position in range(done, len(cohort)):
            study_uid = cohort[position]
            try:
                found = self.research.index.instances_of(project.tenant, study_uid)
            except NotFound:
                # Deleted since the project was made (or held in quarantine): said in the
                # manifest, by its remapped UID.
                summary: dict[str, Any] = {"study": remap.uid(study_uid), "absent": True}
                _note(destination.folder, summary)
                ctx.progress(position + 1, len(cohort), position + 1)
                continue
            self.research.guard.record(
                audit_events.data_export(
                    self.who,
                    patient_id=found[0].patient_id,
                    study_uids=[study_uid],
                    request_id=self.who.request_id,
                    description=f"de-identified export of research project {name} "
                    f"(profile {profile.name} v{profile.version}) to {destination.describe()}",
                )
            )
            summary = self._study(destination.folder, sink, found, remap.uid, profile, key.key)
            _note(destination.folder, summary)
            ctx.progress(position + 1, len(cohort), position + 1)
        manifest = _manifest(destination.folder, project.name, project.profile_toml, profile)
        (destination.folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        sink.finish(destination.folder / MANIFEST)
        if destination.zip_file is not None:
            _zip(destination.folder, destination.zip_file)
            shutil.rmtree(destination.folder)
        else:  # what only a resumed run needed
            (destination.folder / _PARTS).unlink(missing_ok=True)
            for marks in destination.folder.glob("*/.excluded"):
                shutil.rmtree(marks)
        return {
            "project": name,
            "to": destination.describe(),
            **{k: manifest[k] for k in ("studies", "series", "instances", "excluded_count")},
        }

    def _study(
        self,
        folder: Path,
        sink: Sink,
        found: list[StoredInstance],
        remap: Callable[[str], str],
        profile: Profile,
        key: bytes,
    ) -> dict[str, Any]:
        study = remap(found[0].study_uid)
        written = 0
        series: set[str] = set()
        excluded = []
        pseudonym = ""
        for inst in found:
            path = folder / study / remap(inst.series_uid) / f"{remap(inst.sop_instance_uid)}.dcm"
            skipped = folder / study / ".excluded" / path.name
            if skipped.exists():
                excluded.append(json.loads(skipped.read_text()))
                continue
            if not sink.holds(path):
                try:
                    stored = self.retrieve.instance_bytes(inst, AS_STORED)
                    out, report = deidentify(pydicom.dcmread(io.BytesIO(stored)), profile, key)
                except (ExcludedObject, KeyErased) as exc:
                    entry = {
                        "study": study,
                        "series": remap(inst.series_uid),
                        "instance": remap(inst.sop_instance_uid),
                        "reason": exc.report.burned_in
                        if isinstance(exc, ExcludedObject)
                        else "erased: the patient's key was crypto-shredded",
                    }
                    skipped.parent.mkdir(parents=True, exist_ok=True)
                    skipped.write_text(json.dumps(entry))
                    excluded.append(entry)
                    continue
                pseudonym = report.patient_pseudonym
                sink.put(path, out)
            written += 1
            series.add(path.parent.name)
        if not pseudonym:  # every object written by an earlier run, or excluded
            pseudonym = Pseudonyms(key).patient_id(found[0].patient_id or "")
        return {
            "study": study,
            "patient": pseudonym,
            "series": len(series),
            "instances": written,
            "excluded": excluded,
        }


def _note(folder: Path, summary: dict[str, Any]) -> None:
    with (folder / _PARTS).open("a", encoding="utf-8") as parts:
        parts.write(json.dumps(summary) + "\n")


def _manifest(folder: Path, name: str, profile_toml: str, profile: Profile) -> dict[str, Any]:
    studies: dict[str, dict[str, Any]] = {}
    absent: list[str] = []
    parts = folder / _PARTS
    for line in parts.read_text(encoding="utf-8").splitlines() if parts.exists() else ():
        entry = json.loads(line)
        if entry.get("absent"):
            absent.append(entry["study"])
            continue
        studies[entry["study"]] = entry  # a study repeated by a resume: the last line wins
    patients: dict[str, list[str]] = {}
    for entry in studies.values():
        patients.setdefault(entry["patient"], []).append(entry["study"])
    excluded = [x for entry in studies.values() for x in entry["excluded"]]
    return {
        "project": name,
        "profile": {"name": profile.name, "version": profile.version, "toml": profile_toml},
        "engine": f"nubis {__version__}",
        "studies": len(studies),
        "series": sum(e["series"] for e in studies.values()),
        "instances": sum(e["instances"] for e in studies.values()),
        "patients": len(patients),
        "pseudonyms": {p: sorted(s) for p, s in sorted(patients.items())},
        "excluded_count": len(excluded),
        "excluded": excluded,
        # Studies of the cohort deleted since the project was made.
        "absent": sorted(set(absent)),
    }


def _zip(folder: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = target.with_name(target.name + ".part")
    with zipfile.ZipFile(aside, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in _files(folder):
            archive.write(path, path.relative_to(folder).as_posix())
    os.replace(aside, target)


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if path.is_file() and not hidden and path.name != _PARTS:
            yield path
