"""``nubis research project|export|reidentify``: research projects, their exports and
re-identification (docs/research.md); registered on ``nubis research`` (nubis.cli.research).

The operator acts as an admin of ``--tenant`` (``cli_principal``) through
``services.research``, so every change and every re-identification is authorized and audited as
it would be from anywhere else. ``nubis research export`` runs a ``research-export`` job in this
process, as ``nubis backup`` does: ``nubis jobs`` lists its progress, and the same command after
an interruption resumes it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nubis.cli.common import Config, DataDir, Set, configure_logs, follow_job, load, open_archive
from nubis.cli.output import console, out

project_app = typer.Typer(
    help="Research projects (cohorts of de-identified studies): make, list, add members.",
    no_args_is_help=True,
)

Tenant = Annotated[str, typer.Option(help="The tenant of the project.")]
DICOMWEB_KEY_VARIABLE = "NUBIS_RESEARCH_EXPORT_API_KEY"
# Each resume after an interruption is an attempt.
_MAX_ATTEMPTS = 100


@project_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The project's name (letters, digits, . _ -).")],
    profile: Annotated[
        Path | None,
        typer.Option(
            "--profile", help="De-identification profile (TOML); the built-in default if omitted."
        ),
    ] = None,
    query: Annotated[
        str | None,
        typer.Option(
            "--query",
            help="The cohort as a QIDO-RS study query, e.g. 'ModalitiesInStudy=CT&StudyDate="
            "20200101-20231231', resolved to its studies now.",
        ),
    ] = None,
    study: Annotated[
        list[str] | None, typer.Option("--study", help="A study of the cohort (repeatable).")
    ] = None,
    member: Annotated[
        list[str] | None, typer.Option("--member", help="A researcher member (repeatable).")
    ] = None,
    tenant: Tenant = "default",
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Make a project: its cohort (a query or studies), profile, members and key."""
    from nubis.deid.profile import default_profile_text
    from nubis.security.authn import cli_principal

    text = profile.read_text(encoding="utf-8") if profile else default_profile_text()
    with open_archive(data_dir, config, set_) as archive:
        made = archive.research.create(
            cli_principal(tenant),
            name,
            text,
            cohort_query=query,
            study_uids=tuple(study or ()),
            members=tuple(member or ()),
        )
    out.print(f"research project {made.name}: {made.study_count} studies")


@project_app.command("add-member")
def add_member(
    name: Annotated[str, typer.Argument(help="The project.")],
    user: Annotated[str, typer.Argument(help="A user of the tenant (role researcher).")],
    tenant: Tenant = "default",
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Make a user a member: it reads the project's de-identified view."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        archive.research.add_member(cli_principal(tenant), name, user)
    out.print(f"{user} is a member of research project {name}")


@project_app.command("list")
def list_projects(
    tenant: Tenant = "default",
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """The tenant's projects."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        projects = archive.research.projects(cli_principal(tenant))
    table = Table("name", "profile", "studies", "members", "made by", "made")
    for p in projects:
        summary = p.summary()
        table.add_row(
            p.name,
            f"{summary['profile']} v{summary['profile_version']}",
            str(p.study_count),
            ", ".join(p.members),
            p.created_by,
            dt.datetime.fromtimestamp(p.created_at / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@project_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="The project.")],
    tenant: Tenant = "default",
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """A project as JSON (never its key)."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        project = archive.research.show(cli_principal(tenant), name)
    out.print_json(json.dumps(project.summary()))


def reidentify(
    name: Annotated[str, typer.Argument(help="The project.")],
    value: Annotated[str, typer.Argument(help="A pseudonym or remapped Study Instance UID.")],
    tenant: Tenant = "default",
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """The patient (and studies) behind a pseudonym of the project; audited."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        found = archive.research.reidentify(cli_principal(tenant), name, value)
    out.print_json(
        json.dumps(
            {"kind": found.kind, "patient_id": found.patient_id, "studies": found.study_uids}
        )
    )


def export(
    name: Annotated[str, typer.Argument(help="The project.")],
    to: Annotated[Path | None, typer.Option("--to", help="A folder (made if missing).")] = None,
    zip_file: Annotated[Path | None, typer.Option("--zip", help="A zip file.")] = None,
    to_dicomweb: Annotated[
        str | None,
        typer.Option(
            "--to-dicomweb",
            help="A DICOMweb server's root (STOW-RS); its API key from the environment "
            f"variable {DICOMWEB_KEY_VARIABLE}. Needs --manifest.",
        ),
    ] = None,
    to_s3: Annotated[
        str | None,
        typer.Option(
            "--to-s3",
            help="An S3 bucket, s3://BUCKET/PREFIX?endpoint=... as the blobs setting takes it; "
            "credentials from the AWS chain. Needs --manifest.",
        ),
    ] = None,
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            help="With --to-dicomweb or --to-s3: the folder of the manifest (and of what a "
            "resumed run needs).",
        ),
    ] = None,
    tenant: Tenant = "default",
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Write the project's de-identified objects and a manifest; resumable."""
    if sum(x is not None for x in (to, zip_file, to_dicomweb, to_s3)) != 1:
        console.print(
            "give one of --to DIR, --zip FILE, --to-dicomweb URL or --to-s3 URL", style="red"
        )
        raise typer.Exit(2)
    if (to_dicomweb is None and to_s3 is None) != (manifest is None):
        console.print("--manifest DIR goes with --to-dicomweb or --to-s3", style="red")
        raise typer.Exit(2)
    from nubis.errors import BadRequest
    from nubis.jobs.runner import JobRunner
    from nubis.jobs.store import JobState
    from nubis.security.authn import cli_principal, os_account
    from nubis.services.research_destinations import destination_of
    from nubis.services.research_export import KIND, ResearchExport

    settings = load(config, {"data_dir": data_dir}, set_)
    configure_logs(settings)
    params: dict[str, str] = {"project": name, "tenant": tenant}
    if to is not None:
        params["to"] = str(to.resolve())
    elif zip_file is not None:
        params["zip"] = str(zip_file.resolve())
    else:
        assert manifest is not None
        if to_dicomweb is not None:
            params["dicomweb"] = to_dicomweb
        else:
            assert to_s3 is not None
            params["s3"] = to_s3
        params["manifest"] = str(manifest.resolve())
    try:
        destination_of(params)  # refused here, before a job is queued, if malformed
    except BadRequest as exc:
        console.print(exc.reason, style="red")
        raise typer.Exit(2) from None
    with open_archive(settings=settings) as archive:
        operator = cli_principal(tenant)
        archive.research.project(operator, name)  # authorized (EXPORT) before anything is queued
        store = archive.jobs
        job_id = next(
            (
                job.id
                for job in store.list(
                    limit=1000, states=[JobState.QUEUED, JobState.RUNNING], kind=KIND
                )
                if job.params == params
            ),
            None,
        )
        if job_id is None:
            job_id = store.enqueue(
                KIND, params, max_attempts=_MAX_ATTEMPTS, created_by=f"cli:{os_account()}"
            )
            assert job_id is not None
            console.print(f"export of {name}: job {job_id}")
        else:
            console.print(f"export of {name}: resuming job {job_id}")
        handler = ResearchExport(
            archive.research,
            archive.retrieve,
            operator,
            dicomweb_api_key=os.environ.get(DICOMWEB_KEY_VARIABLE, ""),
        ).run
        runner = JobRunner(store, {KIND: handler}, lease_seconds=settings.jobs_lease_seconds)
        claimed: list[bool] = []
        work = threading.Thread(
            target=lambda: claimed.append(runner.run_job(job_id, handler)),
            name="nubis-research-export",
        )
        # Ctrl-C or SIGTERM: the job goes back to the queue; the same command resumes it.
        previous = {
            sig: signal.signal(sig, lambda *_: runner.stop(timeout=0))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            work.start()
            follow_job(store, job_id, running=work.is_alive)
            work.join()
        finally:
            for sig, before in previous.items():
                signal.signal(sig, before)
        job = store.get(job_id)
    assert job is not None
    if not claimed or not claimed[0] or job.state is not JobState.DONE:
        state = job.state.value if claimed and claimed[0] else "held by another runner"
        console.print(
            f"job {job_id} {state}: {job.last_error or 'interrupted'}; run the same command "
            "again to resume",
            style="red",
        )
        raise typer.Exit(1)
    out.print_json(json.dumps(job.result))
