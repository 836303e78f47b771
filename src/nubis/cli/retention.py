"""``nubis retention``: what the retention rules let go, the run an admin approves, and the
erasure certificates (docs/retention.md).

``report`` lists the due studies (and those a legal hold keeps); ``run`` queues a
``retention`` job and runs it in this process, its operator being the approver named in each
certificate (``--dry-run``: the same pass, deleting nothing); ``certificates`` lists, shows
and verifies what erasures left. Everything goes through nubis.services.retention, so it is
authorized and recorded as the server's own work.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nubis.cli.common import AsJson, Config, DataDir, Set, configure_logs, load, open_archive
from nubis.cli.output import console, out

if TYPE_CHECKING:
    from nubis.retention.evaluate import Candidate

app = typer.Typer(
    help="Retention: report due studies, run (approved) deletions, erasure certificates.",
    no_args_is_help=True,
)
certificates_app = typer.Typer(
    help="Erasure certificates: list, show, verify.", no_args_is_help=True
)
app.add_typer(certificates_app, name="certificates")

Today = Annotated[
    str | None,
    typer.Option(
        help="Evaluate as of this day (YYYY-MM-DD) instead of today: a later day only to "
        "review (report, --dry-run)."
    ),
]


def _day(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"--today wants YYYY-MM-DD, got {text[:20]!r}") from None


@app.command("report")
def report(
    today: Today = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """List the studies due for deletion by the rules, and those a legal hold keeps."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        found = archive.retention.report(cli_principal(), _day(today))
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "today": found.today.isoformat(),
                    "studies_read": found.studies_read,
                    "due": [_entry(c) for c in found.due],
                    "held": [{**_entry(c), "hold": h} for c, h in found.held],
                }
            )
        )
        return
    table = Table("tenant", "study", "rule", "due since", "held by")
    for c in found.due:
        table.add_row(c.tenant, c.study_uid, c.rule, c.due_since.isoformat(), "")
    for c, hold in found.held:
        table.add_row(c.tenant, c.study_uid, c.rule, c.due_since.isoformat(), f"hold {hold}")
    out.print(table)
    out.print(
        f"{len(found.due)} study(ies) due, {len(found.held)} kept by a legal hold, "
        f"of {found.studies_read} read, as of {found.today.isoformat()}"
    )


def _entry(c: Candidate) -> dict[str, str]:
    return {
        "tenant": c.tenant,
        "study_uid": c.study_uid,
        "rule": c.rule,
        "due_since": c.due_since.isoformat(),
    }


@app.command("run")
def run(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would go; delete nothing.")
    ] = False,
    today: Today = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Delete the due studies (not those under a legal hold), each with a certificate; you
    are named as the approver. Interrupted, the same command resumes the job."""
    from nubis.jobs.runner import JobRunner
    from nubis.jobs.store import JobState
    from nubis.security.authn import cli_principal, os_account
    from nubis.security.policy import Action
    from nubis.services.retention import KIND

    day = _day(today)
    settings = load(config, {"data_dir": data_dir}, set_)
    configure_logs(settings)
    with open_archive(settings=settings) as archive:
        operator = cli_principal()
        # Every tenant's studies may go: the archive's operators only, who may delete.
        archive.guard.authorize(
            operator, Action.OPERATE | Action.DELETE, "run retention (approve deletions)"
        )
        params: dict[str, object] = {"dry_run": dry_run}
        if not dry_run:
            params["approve"] = True  # by this job's creator, the operator of this command
        if day is not None:
            params["today"] = day.isoformat()
        store = archive.jobs
        job_id = store.enqueue(KIND, params, created_by=f"cli:{os_account()}")
        assert job_id is not None
        console.print(f"retention{' (dry run)' if dry_run else ''}: job {job_id}")
        runner = JobRunner(
            store, {KIND: archive.retention.run}, lease_seconds=settings.jobs_lease_seconds
        )
        claimed: list[bool] = []
        work = threading.Thread(
            target=lambda: claimed.append(runner.run_job(job_id, archive.retention.run)),
            name="nubis-retention-job",
        )
        work.start()
        work.join()
        job = store.get(job_id)
    assert job is not None
    if not claimed or not claimed[0] or job.state is not JobState.DONE:
        state = job.state.value if claimed and claimed[0] else "not claimed"
        console.print(f"job {job_id} {state}: {job.last_error or ''}", style="red")
        raise typer.Exit(1)
    out.print_json(json.dumps(job.result))


@certificates_app.command("list")
def list_certificates(
    study: Annotated[str | None, typer.Option(help="Only this study's.")] = None,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """List erasure certificates, newest first."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        found = archive.retention.certificates(cli_principal(), study)
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {
                        "id": c.id,
                        "tenant": c.partition,
                        "study_uid": c.study_uid,
                        "issued_at": c.issued_at,
                        "cause": c.cause,
                        "sha256": c.digest,
                        "audit_seq": c.audit_seq,
                    }
                    for c in found
                ]
            )
        )
        return
    table = Table("id", "issued", "tenant", "study", "instances", "cause")
    for c in found:
        issued = dt.datetime.fromtimestamp(c.issued_at / 1000, dt.UTC)
        table.add_row(
            str(c.id),
            issued.strftime("%Y-%m-%d %H:%M:%S UTC"),
            c.partition,
            c.study_uid,
            str(c.body["counts"]["instances"]),
            c.cause,
        )
    out.print(table)


@certificates_app.command("show")
def show_certificate(
    certificate_id: Annotated[int, typer.Argument(help="The certificate's id.")],
    identified: Annotated[
        bool,
        typer.Option(help="Add the erased patient's ID (recorded as a read of their record)."),
    ] = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Print a certificate: the signed document, its digest, signature and audit record."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        found = archive.retention.certificate(
            cli_principal(), certificate_id, identified=identified
        )
    shown: dict[str, object] = {
        "id": found.id,
        "certificate": found.body,
        "sha256": found.digest,
        "signature": {"ed25519": found.signature, "key_id": found.key_id},
        "audit_seq": found.audit_seq,
    }
    if identified:
        shown["patient_id"] = found.patient_id
    out.print_json(json.dumps(shown))


@certificates_app.command("verify")
def verify_certificates(
    certificate_id: Annotated[
        int | None, typer.Argument(help="The certificate's id; every one when omitted.")
    ] = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Check digest, signature and the audit record naming each certificate; exit 1 if any
    fails. ``nubis audit verify`` proves the chain those records are in."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        checks = archive.retention.verify(cli_principal(), certificate_id)
    bad = [c for c in checks if not c.ok]
    for check in bad:
        console.print(f"certificate {check.id}: {'; '.join(check.problems)}", style="red")
    out.print(f"{len(checks) - len(bad)} of {len(checks)} certificate(s) verified")
    if bad:
        raise typer.Exit(1)
