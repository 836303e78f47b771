"""The researcher's de-identified view: QIDO-RS, metadata, instances and frames of a project.

A researcher is a principal whose reads pass through a de-identifying view
(../shared/design/next-parts.md). Its requests name the project
(``/projects/{name}/dicom-web/...``); :meth:`ResearchService.membership` authorizes the
request as DEIDENTIFY and finds the project only if the caller is a member, so a project one is
not a member of answers exactly as one that does not exist (404). The project's cohort becomes
part of the index query (``Query.project_id``, ``index.query_sql.in_project``), as a referrer's
grants do: a study outside it is never matched.

What the researcher sees is always the de-identified object: QIDO-RS items and metadata through
``deid.json_view.deidentify_json``, whole instances through ``deid.engine.deidentify``, under
the project's profile and key, so they agree value for value with the project's exports. UIDs in
the researcher's URLs are the remapped ones: the Study Instance UID is found through the
re-identification table (a keyed HMAC of the remapped UID, the original sealed), series and
instances by remapping the study's own UIDs with the project key (an HMAC each). Objects the
burned-in policy excludes are left out of lists and answer 403 when asked for by name; frames
are served only for objects whose pixels the profile leaves as stored (an object whose pixels
it blanks is read whole, blanked).

Nothing identifying reaches the researcher, errors included: matching is offered on attributes
that are not identifying (``QUERYABLE``; a match on a name or a date would tell whether a
patient is in the cohort), UIDs in matches are remapped ones, and every error is re-worded with
the values the researcher sent (:func:`_reworded`). Each read is recorded as the plain read is
(Query, DICOM Instances Accessed or Transferred), naming the real patient and study, in the
audit trail only.

A de-identified share link reads through this same view (``/share/dicom-web``): its requests
name no project (``name`` is None) and the view opens the caller's link instead
(:meth:`ResearchView.open`): the project's profile and key if the link names one, else the
link's own profile and key; the link's grant rows scope the index query as they scope any
link's reads, and the study is found by remapping the link's one study with the key. Whole
objects go only to a link made with download allowed.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from nubis.deid import burned_in
from nubis.deid.engine import ExcludedObject, deidentify
from nubis.deid.json_view import deidentify_json
from nubis.deid.profile import Profile, parse_profile
from nubis.dicom import overlay, render
from nubis.errors import BadRequest, Forbidden, NotFound, NubisError
from nubis.index.database import Index
from nubis.model.query import Level, Match, MatchKind, Query, keyword_tag, parse_qido
from nubis.model.records import StoredInstance
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard
from nubis.services.research import Project, ProjectKey, ResearchService, scoped_to
from nubis.services.retrieve import AS_STORED, RetrieveService
from nubis.services.sharing import ShareLink, SharingService

__all__ = ["QUERYABLE", "DeidentifiedFile", "ResearchSession", "ResearchView"]

# Matching keys a researcher may use: none of them identifies anyone or moves with a date
# shift. UIDs are matched as the remapped values the researcher sees.
_QUERYABLE_KEYWORDS = (
    "Modality",
    "ModalitiesInStudy",
    "SOPClassUID",
    "SOPClassesInStudy",
    "BodyPartExamined",
)
QUERYABLE = frozenset(keyword_tag(k) for k in _QUERYABLE_KEYWORDS)
# What the burned-in decision reads (deid.burned_in).
_BURNED_IN_KEYS = frozenset(
    {"00280301", "00080060", "00080016", "00080070", "00081090", "00280010", "00280011"}
)
_UID_KEYS = {
    keyword_tag("StudyInstanceUID"): "study",
    keyword_tag("SeriesInstanceUID"): "series",
    keyword_tag("SOPInstanceUID"): "instance",
}


@dataclass(frozen=True)
class ResearchSession:
    """One request's source, checked once per request: a research project, or a de-identified
    share link (``link``; with ``project`` too when it reads as that project)."""

    key: ProjectKey
    profile: Profile
    tenant: str
    project: Project | None = None
    link: ShareLink | None = None

    @property
    def label(self) -> str:
        return _label(None if self.link is not None or self.project is None else self.project.name)

    def scoped(self, query: Query) -> Query:
        """``query`` limited to what this source reads: the project's cohort, or the link's
        grant rows (its study, or its series)."""
        if self.link is None:
            assert self.project is not None
            return scoped_to(query, self.project)
        return replace(
            query, partition=self.tenant, grantee=self.link.principal_id, project_id=None
        )


@dataclass(frozen=True)
class DeidentifiedFile:
    """One de-identified Part-10 object, named by its remapped UIDs."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    data: bytes
    patient_pseudonym: str


class ResearchView:
    def __init__(
        self,
        research: ResearchService,
        sharing: SharingService,
        retrieve: RetrieveService,
        index: Index,
        guard: Guard,
    ) -> None:
        self.research = research
        self.sharing = sharing
        self.retrieve = retrieve
        self.index = index
        self.guard = guard

    def open(self, who: Principal, name: str | None) -> ResearchSession:
        """The project ``who`` is a member of (NotFound otherwise), its key and profile; with
        no name, the de-identified share link of ``who``'s session."""
        if name is None:
            return self._open_link(who)
        project = self.research.membership(who, name)
        return ResearchSession(
            self.research.key_of(project), project.profile, project.tenant, project=project
        )

    def _open_link(self, who: Principal) -> ResearchSession:
        self.guard.authorize(who, Action.DEIDENTIFY, "read a de-identified share link")
        link = self.sharing.link_of(who)
        if link.deid_project_id is not None:
            project = self.research.project_by_id(link.tenant, link.deid_project_id)
            key, profile = self.research.key_of(project), project.profile
        elif link.deid_key is not None and link.deid_profile_toml is not None:
            key = self.research.unwrap_key(*link.deid_key)
            profile = parse_profile(link.deid_profile_toml)
        else:
            raise NotFound("this share link is not de-identified: open it at /share/")
        return ResearchSession(key, profile, link.tenant, link=link)

    # ------------------------------------------------------------------ QIDO-RS
    def search(
        self,
        who: Principal,
        name: str | None,
        level: Level,
        params: Sequence[tuple[str, str]],
        *,
        study_uid: str | None = None,
        series_uid: str | None = None,
        max_limit: int,
        default_limit: int | None = None,
        text: str = "",
    ) -> tuple[list[dict[str, Any]], bool, tuple[str, ...]]:
        """De-identified matches (DICOM JSON), whether more exist, and the query's warnings.

        A query naming a study or series the project does not have (by its remapped UID) finds
        nothing; objects the burned-in policy excludes are left out of the page.
        """
        # Parsed first: its errors name only what the researcher sent.
        query = parse_qido(level, params, max_limit=max_limit, default_limit=default_limit)
        for match in query.matches:
            if match.path[0] not in QUERYABLE and match.path[0] not in _UID_KEYS:
                raise BadRequest(
                    f"matching on {match.name} is not offered to researchers (only "
                    "Modality, ModalitiesInStudy, SOPClassUID, SOPClassesInStudy, "
                    "BodyPartExamined and the remapped UIDs)"
                )
        with _reworded(f"query of {_label(name)}"):
            session = self.open(who, name)
            # Recorded whatever it finds (PS3.15 A.5.3.10: what was asked), the empty answers
            # below included.
            self.guard.record(
                audit_events.query(
                    who,
                    text or f"{level.name} query of {_label(name)}",
                    request_id=who.request_id,
                )
            )
            original_study = None if study_uid is None else self._original_study(session, study_uid)
            if study_uid is not None and original_study is None:
                return [], False, query.warnings
            uid_matches: list[Match] = []
            others: list[Match] = []
            for match in query.matches:
                (uid_matches if match.path[0] in _UID_KEYS else others).append(match)
            remapped = self._uid_matches(session, uid_matches, original_study, series_uid)
            if remapped is None:
                return [], False, query.warnings
            query = replace(
                query,
                matches=tuple(others) + remapped,
                study_uid=original_study,
                series_uid=None,
            )
            page = self.index.search(session.scoped(query))
            items = []
            for item in page.items:
                if level is Level.INSTANCE and _excluded(item, session.profile):
                    continue
                try:
                    view, _ = deidentify_json(item, session.profile, session.key.key)
                except ExcludedObject:
                    continue
                items.append(view)
            return items, page.more, query.warnings

    def _uid_matches(
        self,
        session: ResearchSession,
        matches: list[Match],
        study_uid: str | None,
        series_uid: str | None,
    ) -> tuple[Match, ...] | None:
        """UID matches (and the series of the path) turned into the stored UIDs; None when
        one of them names nothing of the project."""
        wanted: dict[str, list[str]] = {}
        if series_uid is not None:
            wanted["series"] = [series_uid]
        for match in matches:
            if match.kind is MatchKind.UNIVERSAL:
                continue
            wanted.setdefault(_UID_KEYS[match.path[0]], []).extend(str(v) for v in match.values)
        out: list[Match] = []
        studies = wanted.pop("study", None)
        if studies is not None:
            found = [s for s in (self._original_study(session, u) for u in studies) if s]
            if not found:
                return None
            study_key = (keyword_tag("StudyInstanceUID"),)
            out.append(Match(study_key, "UI", MatchKind.LIST, tuple(found)))
            study_uid = study_uid or (found[0] if len(found) == 1 else None)
        if not wanted:
            return tuple(out)
        if study_uid is None:
            raise BadRequest(
                "a researcher matches series and instances by UID within one study: name the "
                "study in the path (/studies/{study}/series?SeriesInstanceUID=...)"
            )
        remap = session.key.pseudonyms()
        stored = self._study_instances(session, study_uid)
        by_series = {remap.uid(i.series_uid): i.series_uid for i in stored}
        by_sop = {remap.uid(i.sop_instance_uid): i.sop_instance_uid for i in stored}
        for kind, table, tag in (
            ("series", by_series, "SeriesInstanceUID"),
            ("instance", by_sop, "SOPInstanceUID"),
        ):
            if kind not in wanted:
                continue
            found = [table[u] for u in wanted[kind] if u in table]
            if not found:
                return None
            out.append(Match((keyword_tag(tag),), "UI", MatchKind.LIST, tuple(found)))
        return tuple(out)

    # ------------------------------------------------------------------ metadata
    def metadata(
        self,
        who: Principal,
        name: str | None,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[dict[str, Any]]:
        """The de-identified metadata of a study, series or instance (PS3.18 10.4.1.1.2);
        elements held as bulk data are left out (pixels are read as frames or instances)."""
        what = _what(name, study_uid, series_uid, sop_instance_uid)
        with _reworded(what):
            session = self.open(who, name)
            found = self._locate(who, session, study_uid, series_uid, sop_instance_uid, False)
            rows = self.index.metadata_of(
                session.tenant,
                found[0].study_uid,
                None if series_uid is None else found[0].series_uid,
                None if sop_instance_uid is None else found[0].sop_instance_uid,
            )
            corrections = overlay.parse(rows[0][3])
            shown = {inst.sop_instance_uid for inst in found}
            out = []
            for _series, sop, stored, _ in rows:
                if sop not in shown:  # a series a share link leaves out
                    continue
                metadata = json.loads(overlay.apply_to_metadata(stored, corrections))
                try:
                    view, _ = deidentify_json(metadata, session.profile, session.key.key)
                except ExcludedObject:
                    if sop_instance_uid is not None:
                        raise
                    continue
                out.append(_drop_bulk(view))
            return out

    # ------------------------------------------------------------------ instances and frames
    def instances(
        self,
        who: Principal,
        name: str | None,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        *,
        native: bool = True,
        export: str | None = None,
    ) -> Iterator[DeidentifiedFile]:
        """The de-identified Part-10 objects (excluded ones left out; 403 for one asked for
        by name), the first made before this returns; ``native``: in Explicit VR Little
        Endian, else in the syntax the profile leaves them in. ``export`` (what carries them
        away, a ZIP download) adds a Data Export record (PS3.15 A.5.3.6)."""
        what = _what(name, study_uid, series_uid, sop_instance_uid)
        with _reworded(what):
            session = self.open(who, name)
            if session.link is not None and not session.link.can_download:
                raise Forbidden("this share link is for viewing only: whole objects are not sent")
            found = self._locate(who, session, study_uid, series_uid, sop_instance_uid, True)
            if export is not None:
                self.guard.record(
                    audit_events.data_export(
                        who,
                        patient_id=found[0].patient_id,
                        study_uids=[found[0].study_uid],
                        request_id=who.request_id,
                        description=f"{export} of {len(found)} object(s), de-identified for "
                        f"{session.label}",
                    )
                )
            files = (
                deidentified_file(self.retrieve, session.profile, session.key, inst, native)
                for inst in found
            )
            first = self._first_kept(files, named=sop_instance_uid is not None)
        return _chain(first, files, what)

    def _first_kept(
        self, files: Iterator[DeidentifiedFile | None], *, named: bool
    ) -> DeidentifiedFile | None:
        for made in files:
            if made is not None:
                return made
            if named:
                raise Forbidden("the de-identification profile leaves this object out")
        return None

    def frames(
        self,
        who: Principal,
        name: str | None,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        numbers: list[int],
    ) -> Iterator[Iterator[bytes]]:
        """Frames of an object whose pixels the profile leaves as stored, decoded (PS3.18
        10.4.1.1.4, application/octet-stream); 403 for an object excluded or blanked."""
        what = _what(name, study_uid, series_uid, sop_instance_uid)
        with _reworded(what):
            inst = self._pixels(who, name, study_uid, series_uid, sop_instance_uid)
            frames = self.retrieve.decoded_frames(inst, numbers)
        return _checked_frames(frames, what)

    def rendered(
        self,
        who: Principal,
        name: str | None,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        frame_number: int | None,
        options: render.RenderOptions,
    ) -> bytes:
        """A rendered frame (PS3.18 10.4.1.1.3; pixels only: nubis draws no annotation) of an
        object whose pixels the profile leaves as stored; 403 otherwise."""
        with _reworded(_what(name, study_uid, series_uid, sop_instance_uid)):
            inst = self._pixels(who, name, study_uid, series_uid, sop_instance_uid)
            return self.retrieve.rendered(inst, frame_number, options)

    def thumbnail(
        self,
        who: Principal,
        name: str | None,
        study_uid: str,
        series_uid: str | None,
        sop_instance_uid: str | None,
        frame_number: int | None,
        options: render.RenderOptions,
    ) -> bytes:
        """A thumbnail of a study, series, instance or frame: its middle instance's, as the
        identified API does, if the profile leaves that object's pixels as stored."""
        with _reworded(_what(name, study_uid, series_uid, sop_instance_uid)):
            session = self.open(who, name)
            found = self._locate(who, session, study_uid, series_uid, sop_instance_uid, False)
            inst = found[len(found) // 2]
            self._check_pixels(session, inst)
            if frame_number is not None:
                return self.retrieve.rendered(inst, frame_number, options)
            return self.retrieve.thumbnail(inst, options)

    def _pixels(
        self,
        who: Principal,
        name: str | None,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
    ) -> StoredInstance:
        """The stored instance whose pixels the researcher may see as stored (see
        :meth:`_check_pixels`)."""
        session = self.open(who, name)
        inst = self._locate(who, session, study_uid, series_uid, sop_instance_uid, False)[0]
        self._check_pixels(session, inst)
        return inst

    def _check_pixels(self, session: ResearchSession, inst: StoredInstance) -> None:
        """Forbidden unless the profile neither excludes the object nor blanks regions of it
        (those are read whole, blanked)."""
        rows = self.index.metadata_of(
            inst.partition, inst.study_uid, inst.series_uid, inst.sop_instance_uid
        )
        dataset = Dataset.from_json(json.loads(rows[0][2]), bulk_data_uri_handler=lambda *_: b"")
        decision = burned_in.decide(dataset, session.profile.burned_in)
        if decision.excluded:
            raise Forbidden("the de-identification profile leaves this object out")
        if decision.suspect:
            raise Forbidden(
                "the de-identification profile blanks regions of this object's pixels: "
                "retrieve the whole instance"
            )

    # ------------------------------------------------------------------ inside
    def _original_study(self, session: ResearchSession, remapped: str) -> str | None:
        if session.link is not None:
            # A link has one study: the remapped UID names it or nothing.
            study = session.link.study_uid
            return study if session.key.pseudonyms().uid(study) == remapped else None
        assert session.project is not None
        return self.research.original_study(session.project, session.key, remapped)

    def _study_instances(self, session: ResearchSession, study_uid: str) -> list[StoredInstance]:
        found = self.index.instances_of(session.tenant, study_uid)
        if session.link is not None and session.link.series_uids:
            return [i for i in found if i.series_uid in session.link.series_uids]
        return found

    def _locate(
        self,
        who: Principal,
        session: ResearchSession,
        study_uid: str,
        series_uid: str | None,
        sop_instance_uid: str | None,
        transfer: bool,
    ) -> list[StoredInstance]:
        """The stored instances the remapped UIDs name in the project; recorded as the plain
        read is (DICOM Instances Transferred or Accessed); NotFound (re-worded) otherwise."""
        original = self._original_study(session, study_uid)
        found: list[StoredInstance] = []
        if original is not None:
            remap = session.key.pseudonyms()
            found = [
                inst
                for inst in self._study_instances(session, original)
                if series_uid in (None, remap.uid(inst.series_uid))
                and sop_instance_uid in (None, remap.uid(inst.sop_instance_uid))
            ]
        build = audit_events.instances_transferred if transfer else audit_events.instances_accessed
        self.guard.record(
            build(
                who,
                patient_id=found[0].patient_id if found else None,
                study_uids=[original] if original else [],
                request_id=who.request_id,
                description=f"de-identified for {session.label}" + ("" if found else ": not found"),
            )
        )
        if not found:
            raise NotFound("not found")
        return found


def deidentified_file(
    retrieve: RetrieveService,
    profile: Profile,
    key: ProjectKey,
    inst: StoredInstance,
    native: bool = False,
) -> DeidentifiedFile | None:
    """The de-identified Part-10 object of ``inst`` (None when the profile excludes it): read
    as served (a correction's overlay applied, digest checked), then de-identified; with
    ``native``, its pixels decoded into Explicit VR Little Endian."""
    stored = retrieve.instance_bytes(inst, AS_STORED)
    dataset = pydicom.dcmread(io.BytesIO(stored))
    try:
        out, report = deidentify(dataset, profile, key.key)
    except ExcludedObject:
        return None
    if native and out.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
        if out.file_meta.TransferSyntaxUID.is_compressed and "PixelData" in out:
            out.decompress()
        out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    out.save_as(buffer, enforce_file_format=True)
    return DeidentifiedFile(
        str(out.StudyInstanceUID),
        str(out.SeriesInstanceUID),
        str(out.SOPInstanceUID),
        buffer.getvalue(),
        report.patient_pseudonym,
    )


def _chain(
    first: DeidentifiedFile | None, rest: Iterator[DeidentifiedFile | None], what: str
) -> Iterator[DeidentifiedFile]:
    if first is not None:
        yield first
    with _reworded(what):
        for made in rest:
            if made is not None:
                yield made


def _checked_frames(frames: Iterator[Iterator[bytes]], what: str) -> Iterator[Iterator[bytes]]:
    with _reworded(what):
        yield from frames


def _label(name: str | None) -> str:
    return "the shared study" if name is None else f"research project {name}"


def _what(name: str | None, study: str, series: str | None, sop: str | None) -> str:
    if sop is not None:
        return f"instance {sop} of {_label(name)}"
    if series is not None:
        return f"series {series} of {_label(name)}"
    return f"study {study} of {_label(name)}"


def _excluded(item: dict[str, Any], profile: Profile) -> bool:
    """Whether the burned-in policy leaves out the object of an instance-level QIDO item
    (which carries no Pixel Data: the decision is taken as if it did, as for the object)."""
    probe = Dataset.from_json({k: v for k, v in item.items() if k in _BURNED_IN_KEYS})
    probe.PixelData = b""
    return burned_in.decide(probe, profile.burned_in).excluded


def _drop_bulk(node: dict[str, Any]) -> dict[str, Any]:
    """The metadata without the elements held as bulk data: their values are read as
    frames or whole objects, through the view."""
    out = {}
    for tag, element in node.items():
        if "BulkDataURI" in element:
            continue
        if element.get("vr") == "SQ" and element.get("Value"):
            element = {**element, "Value": [_drop_bulk(item) for item in element["Value"]]}
        out[tag] = element
    return out


@contextmanager
def _reworded(what: str) -> Iterator[None]:
    """Errors said with the researcher's own words: a stored UID, a patient's value or a
    path never reaches the researcher, only the class of failure and ``what``."""
    try:
        yield
    except ExcludedObject as exc:
        raise Forbidden(f"{what}: the de-identification profile leaves it out") from exc
    except NubisError as exc:
        if isinstance(exc, BadRequest) and "researcher" in exc.reason:
            raise  # our own words, naming attributes only
        reworded = type(exc).__new__(type(exc))
        NubisError.__init__(reworded, _reason(exc, what))
        reworded.__dict__.update(
            {k: v for k, v in exc.__dict__.items() if k not in ("reason", "args")}
        )
        reworded.reason = _reason(exc, what)
        raise reworded from exc


def _reason(exc: NubisError, what: str) -> str:
    if isinstance(exc, NotFound):
        return f"no {what}"
    if isinstance(exc, Forbidden):
        return f"{what}: refused ({_first_clause(exc.reason)})"
    if isinstance(exc, BadRequest):
        return f"{what}: bad request"
    return f"{what}: {type(exc).__name__} (status {exc.http_status})"


def _first_clause(reason: str) -> str:
    """A policy refusal's reason names the role and the action only, never data."""
    return reason.split(":")[0][:200]
