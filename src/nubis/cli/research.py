"""``nubis research``: research projects (``project``, ``export``, ``reidentify``:
nubis.cli.research_projects) and ``aggregate``, one federated question asked of several nubis
sites, pooled.

Each site answers ``GET /research/aggregate`` (nubis.web.research_routes) with counts whose
small cells it suppressed itself; this pools the numbers they reported and suppresses the
pooled cells under k again (nubis.model.aggregates.pool). Nothing but those counts moves: no
image, no UID, no patient value leaves a site. Each site authenticates the caller by its own
API key (a researcher's or an admin's of that site) and records the question in its own trail.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from nubis.cli import research_projects
from nubis.cli.output import console, out

app = typer.Typer(
    help="Research: projects of de-identified studies (make, export, re-identify) and federated "
    "statistics across sites.",
    no_args_is_help=True,
)
app.add_typer(research_projects.project_app, name="project")
app.command("export")(research_projects.export)
app.command("reidentify")(research_projects.reidentify)

# (url, api key) -> the site's JSON answer; raises SiteError.
Fetch = Callable[[str, str], dict[str, Any]]
_TIMEOUT = 60.0


class SiteError(Exception):
    """A site that did not answer the question (its reason, never a key)."""


def parse_filters(items: Sequence[str]) -> list[tuple[str, str]]:
    """``KEY=VALUE`` arguments as QIDO-RS parameters (``Modality=CT``, ``StudyDate=2020-``)."""
    filters = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"a filter is KEY=VALUE, got {item!r}")
        filters.append((name, value))
    return filters


def question_url(site: str, kind: str, filters: Sequence[tuple[str, str]]) -> str:
    query = urllib.parse.urlencode([("kind", kind), *filters])
    return f"{site.rstrip('/')}/research/aggregate?{query}"


def ask_sites(
    sites: Sequence[str],
    keys: dict[str, str],
    kind: str,
    filters: Sequence[tuple[str, str]],
    k: int,
    fetch: Fetch,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The pooled answer of ``sites`` and each site's own (``site`` added); SiteError names
    the first site that could not answer: a pool missing a site would pass for the whole."""
    from nubis.model.aggregates import pool

    answers = []
    for site in sites:
        key = keys.get(site.rstrip("/"))
        if not key:
            raise SiteError(f"{site}: no API key (give it in --keys or NUBIS_RESEARCH_KEY)")
        answer = fetch(question_url(site, kind, filters), key)
        answers.append({**answer, "site": site})
    return pool(answers, k), answers


def read_keys(path: Path | None, sites: Sequence[str]) -> dict[str, str]:
    """Each site's API key: lines ``URL KEY`` of ``path``, else NUBIS_RESEARCH_KEY for all."""
    keys: dict[str, str] = {}
    if path is not None:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.split()
            if len(parts) != 2:
                raise typer.BadParameter(f"{path} line {number}: expected 'URL KEY'")
            keys[parts[0].rstrip("/")] = parts[1]
    shared = os.environ.get("NUBIS_RESEARCH_KEY", "")
    for site in sites:
        if shared:
            keys.setdefault(site.rstrip("/"), shared)
    return keys


def urllib_fetch(ca_bundle: Path | None) -> Fetch:
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)

    def fetch(url: str, key: str) -> dict[str, Any]:
        request = urllib.request.Request(
            url, headers={"Authorization": f"Bearer {key}", "Accept": "application/json"}
        )
        site = url.split("/research/", 1)[0]
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT, context=context) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:
            raise SiteError(f"{site}: HTTP {exc.code} {_reason(exc)}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SiteError(f"{site}: {exc}") from None

    return fetch


def _reason(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        return ""
    return str(body.get("reason") or body.get("error") or "") if isinstance(body, dict) else ""


@app.command("aggregate")
def aggregate(
    kind: Annotated[str, typer.Argument(help="The aggregate kind (see docs/analytics.md).")],
    filters: Annotated[
        list[str] | None,
        typer.Argument(help="QIDO-RS matching keys KEY=VALUE, e.g. Modality=CT."),
    ] = None,
    site: Annotated[
        list[str], typer.Option("--site", help="A nubis site's root URL; repeat per site.")
    ] = [],  # noqa: B006 (typer reads the default)
    keys: Annotated[
        Path | None,
        typer.Option(
            help="File of lines 'URL KEY': each site's API key (else NUBIS_RESEARCH_KEY)."
        ),
    ] = None,
    k: Annotated[
        int, typer.Option(help="Smallest pooled cell reported; each site's own k still holds.")
    ] = 10,
    ca_bundle: Annotated[
        Path | None, typer.Option(help="CA certificates (PEM) of the sites.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answers as JSON.")] = False,
) -> None:
    """Ask every --site the same aggregate question and pool the answers (counts only)."""
    if not site:
        raise typer.BadParameter("give at least one --site")
    if k < 1:
        raise typer.BadParameter("k is at least 1", param_hint="--k")
    try:
        pooled, answers = ask_sites(
            site, read_keys(keys, site), kind, parse_filters(filters or []), k,
            urllib_fetch(ca_bundle),
        )  # fmt: skip
    except (SiteError, ValueError) as exc:
        console.print(str(exc), style="red")
        raise typer.Exit(1) from None
    if as_json:
        out.print_json(json.dumps({"pooled": pooled, "sites": answers}))
        return
    table = Table(*pooled["dimensions"], f"{pooled['unit']} ({len(answers)} sites)")
    for cell in pooled["cells"]:
        table.add_row(*map(str, cell["key"]), str(cell["count"]))
    out.print(table)
    out.print(
        f"total {pooled['total']} ({pooled['total_rule']}); {pooled['suppressed_cells']} "
        f"cell(s) under {pooled['k']} suppressed"
    )
