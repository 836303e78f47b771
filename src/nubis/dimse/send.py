"""Send a study (or a series) to a DIMSE peer on a person's request: the web face's "Send".

It is a C-MOVE without the C-MOVE request: the same destinations (AE titles of the peer table
with a host and port, PS3.4 C.4.2.1.4.1), the same authorization, scope and record
(``RetrieveService.instances``: Forbidden for roles that may not read, not found outside the
caller's tenant or grants, DICOM Instances Transferred), and the same C-STORE sub-operations
(nubis.dimse.outgoing: checked objects, converted only when the peer needs it, counted as
completed, warning or failed).

Sending takes as long as the study is large, so each request is a ``dimse-send`` job: the
process that queued it runs it at once in a thread of its own, and the job table keeps its
progress and result, which any node can show. The job carries the requester's principal as it
was when the request was authorized; the services authorize it again when the job runs. A job
is tried once: a send that failed (destination unreachable, the node died) is reported, not
repeated behind the requester's back.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nubis.dimse.outgoing import Outgoing, SendRefused, send
from nubis.errors import BadRequest, Forbidden, NubisError
from nubis.jobs.context import JobContext, JobFailed
from nubis.jobs.runner import JobRunner
from nubis.security.policy import Action, Principal

if TYPE_CHECKING:
    from nubis.dimse.peers import Peer, PeerTable
    from nubis.jobs.store import Job, JobStore
    from nubis.services.guard import Guard
    from nubis.services.retrieve import RetrieveService

__all__ = ["KIND", "SendRequest", "StudySender"]

log = logging.getLogger("nubis.dimse")

KIND = "dimse-send"
# A share link's session reads one study in a viewer; it never sends it anywhere.
_SHARE_SESSION = "session-share"
_MAX_FAILED_UIDS = 100  # listed in the job's result; the counts hold them all


@dataclass(frozen=True)
class SendRequest:
    """What a ``dimse-send`` job keeps (its ``params``): who asked, what, to which AE."""

    who: Principal
    study_uid: str
    series_uid: str | None
    destination: str

    def params(self) -> dict[str, Any]:
        who = self.who
        return {
            "who": {
                "id": who.id,
                "tenant": who.tenant,
                "roles": sorted(who.roles),
                "via": who.via,
                "peer": who.peer,
                "auth_method": who.auth_method,
                "break_glass": who.break_glass,
            },
            "study": self.study_uid,
            "series": self.series_uid,
            "destination": self.destination,
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SendRequest:
        w = params["who"]
        who = Principal(
            w["id"],
            w["tenant"],
            frozenset(w["roles"]),
            via=w["via"],
            peer=w["peer"],
            auth_method=w["auth_method"],
            break_glass=w["break_glass"],
        )
        return cls(who, params["study"], params["series"], params["destination"])


class StudySender:
    """Queues sends as jobs and runs them (the ``dimse-send`` handler, :meth:`run`)."""

    def __init__(
        self,
        *,
        jobs: JobStore,
        retrieve: RetrieveService,
        guard: Guard,
        peers: PeerTable,
        ae_title: str,
        lease_seconds: float,
    ) -> None:
        self._jobs = jobs
        self._retrieve = retrieve
        self._guard = guard
        self._peers = peers
        self._ae_title = ae_title
        self._outgoing = Outgoing(retrieve)
        # Runs this process's own requests at once; it never looks for other work.
        self._here = JobRunner(jobs, {KIND: self.run}, lease_seconds=lease_seconds)

    def destinations(self) -> list[Peer]:
        """The peers a study can be sent to: those with an address, as C-MOVE requires."""
        return [p for p in self._peers.all() if p.host and p.port]

    def queue(
        self, who: Principal, study_uid: str, destination: str, series_uid: str | None = None
    ) -> int:
        """Authorize the request, make it a job and start it in this process; the job's id.

        Forbidden (recorded) for roles that may not read, and for a share link's session;
        BadRequest for a destination that is not in the peer table with an address. Whether
        the study exists for ``who`` is decided when the job runs, by the same statement as
        any retrieval (a study outside the scope fails the job as "not found").
        """
        what = f"send study {study_uid} to {destination}"
        self._guard.authorize(who, Action.READ, what, study_uids=(study_uid,))
        if who.auth_method == _SHARE_SESSION:
            raise Forbidden("a shared link may view its study, not send it to another system")
        if destination not in {p.ae_title for p in self.destinations()}:
            raise BadRequest(f"{destination!r} is not a DIMSE peer with an address")
        request = SendRequest(who, study_uid, series_uid, destination)
        job_id = self._jobs.enqueue(KIND, request.params(), max_attempts=1, created_by=who.id)
        assert job_id is not None  # None only for a unique key, which these jobs have not
        threading.Thread(
            target=self._run_here, args=(job_id,), name=f"nubis-send-{job_id}", daemon=True
        ).start()
        return job_id

    def _run_here(self, job_id: int) -> None:
        if not self._here.run_job(job_id, self.run):
            log.info("send job %d is being run by another runner", job_id)

    def status(self, who: Principal, job_id: int) -> Job | None:
        """The send job ``job_id`` if ``who`` asked for it; None otherwise (whether it
        exists or not: nobody learns of another's sends)."""
        job = self._jobs.get(job_id)
        if job is None or job.kind != KIND or job.created_by != who.id:
            return None
        return job if job.params.get("who", {}).get("tenant") == who.tenant else None

    def run(self, ctx: JobContext) -> dict[str, Any]:
        """One send (the job handler): the objects, authorized and recorded again for the
        requester, C-STORE'd to the destination; the counts as the job's result."""
        request = SendRequest.from_params(ctx.params)
        peer = self._peers.get(request.destination)
        if peer is None or not peer.host or not peer.port:
            raise JobFailed(f"{request.destination} is no longer a DIMSE peer", retry_in=None)
        try:
            instances = self._retrieve.instances(request.who, request.study_uid, request.series_uid)
            ctx.progress(0, len(instances))
            result = send(
                self._outgoing,
                instances,
                host=peer.host,
                port=peer.port,
                ae_title=peer.ae_title,
                calling_ae_title=self._ae_title,
                progress=lambda done: ctx.progress(done),
            )
        except (SendRefused, NubisError) as exc:
            raise JobFailed(exc.reason, retry_in=None) from exc
        return {
            "destination": peer.ae_title,
            "status": f"0x{result.status:04X}",
            "completed": result.completed,
            "warning": result.warning,
            "failed": result.failed,
            "failed_uids": list(result.failed_uids[:_MAX_FAILED_UIDS]),
        }
