"""``nubis export metadata``: the index's metadata as Parquet tables for analytics.

Runs as the operator (an admin of ``--tenant``, ``cli_principal``) through
nubis.services.metadata_export, so the export is authorized and recorded as a PS3.15 Data
Export like any other. Identified by default; de-identified for a research project with
``--project NAME`` (its profile, key and cohort, nubis.services.research: the same pseudonyms,
UIDs and date shifts as the project's views and exports), or with ``--deid-profile`` and
``--project-key-file`` (a profile and key given by hand).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nubis.cli.common import Config, DataDir, Set, open_archive
from nubis.cli.output import out
from nubis.cli.research import parse_filters

app = typer.Typer(help="Exports for analytics.", no_args_is_help=True)


@app.command("metadata")
def metadata(
    to: Annotated[Path, typer.Option("--to", help="Folder to write the tables into.")],
    filters: Annotated[
        list[str] | None,
        typer.Argument(help="QIDO-RS matching keys KEY=VALUE: only the instances they match."),
    ] = None,
    format_: Annotated[str, typer.Option("--format", help="Output format: parquet.")] = "parquet",
    deid_profile: Annotated[
        str | None,
        typer.Option(help="De-identify with this profile: a TOML file, or 'default'."),
    ] = None,
    project_key_file: Annotated[
        Path | None, typer.Option(help="The research project's key (at least 16 bytes).")
    ] = None,
    project: Annotated[
        str,
        typer.Option(
            help="A research project: de-identify with its profile and key, its cohort only "
            "(with --project-key-file: the name for the record only)."
        ),
    ] = "",
    tenant: Annotated[str, typer.Option(help="Tenant to export.")] = "default",
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Write studies.parquet, series.parquet, instances.parquet and manifest.json."""
    from nubis.deid.profile import load_default_profile, parse_profile
    from nubis.security.authn import cli_principal
    from nubis.services.metadata_export import DeidTarget

    if format_ != "parquet":
        raise typer.BadParameter("the only format is parquet", param_hint="--format")
    target = None
    if (deid_profile is None) != (project_key_file is None):
        raise typer.BadParameter("--deid-profile and --project-key-file go together")
    if deid_profile is not None and project_key_file is not None:
        profile = (
            load_default_profile()
            if deid_profile == "default"
            else parse_profile(Path(deid_profile).read_text("utf-8"))
        )
        target = DeidTarget(profile, project_key_file.read_bytes().strip(), project)
    with open_archive(data_dir, config, set_) as archive:
        if project and target is None:
            research = archive.research
            found = research.project(cli_principal(tenant), project)
            target = DeidTarget(
                found.profile,
                research.key_of(found).key,
                project,
                frozenset(research.cohort(found)),
            )
        summary = archive.metadata_export.parquet(
            cli_principal(tenant),
            to,
            params=parse_filters(filters or []),
            deid=target,
        )
    rows = ", ".join(f"{n} {name}" for name, n in summary.rows.items())
    out.print(f"{summary.variant} metadata written to {summary.folder}: {rows}; "
              f"{summary.bytes} bytes")  # fmt: skip
    if summary.excluded_instances:
        out.print(f"{summary.excluded_instances} instance(s) left out by the profile (burned-in)")
