"""``nubis storage``: what is stored in which tier and what it costs; move a study.

``report`` counts objects and bytes per tier from the index and prices them with the
``storage_prices`` table (AWS list prices by default), with a projection by growth rate, and
what lossless compression saves in the tiers that keep their objects compressed.
``tier STUDY [TIER]`` shows where a study is, or pins it to a tier (``hot`` brings an archived
study back) and queues a ``tier`` job that moves it. ``warnings`` lists the objects ingested
with warnings (what was odd about them, issue 12), per reason. ``quarantine`` lists the studies
held in quarantine (their instances disagree on the patient, or a series UID of theirs is
another study's) and ``release STUDY`` lets one out, through the quarantine service as an admin
of ``--tenant`` (audited).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nubis.cli.common import AsJson, Config, DataDir, Set, open_archive, open_index
from nubis.cli.output import console, out

if TYPE_CHECKING:
    from nubis.tiers.report import StorageReport

app = typer.Typer(
    help="Storage tiers: report (objects, bytes, monthly cost), tier (show or move a study); "
    "warnings (objects ingested with warnings, per reason); quarantine, release (studies whose "
    "instances disagree on the patient or whose series UID another study holds).",
    no_args_is_help=True,
)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _money(value: float | None) -> str:
    if value is None:
        return "-"
    # Cents hide a small archive's cost entirely; show it to a hundredth of a cent.
    return f"{value:,.4f}" if 0 < value < 1 else f"{value:,.2f}"


@app.command()
def report(
    growth: Annotated[
        str, typer.Option(help="Monthly growth of the stored bytes, e.g. 5%/month or 0.05.")
    ] = "0%",
    months: Annotated[int, typer.Option(help="Months to project.")] = 12,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Per tier: objects, bytes, price and monthly cost, with a projection by growth rate;
    and what lossless compression saves (tier_compression)."""
    from nubis.tiers.report import build_report, compression_by_tier, parse_growth, usage_by_tier
    from nubis.tiers.rules import parse_compression, parse_prices, parse_tiers

    try:
        rate = parse_growth(growth)
    except ValueError as exc:
        console.print(str(exc), style="red")
        raise typer.Exit(2) from None
    if months < 0:
        console.print("--months must be >= 0", style="red")
        raise typer.Exit(2)
    with open_index(data_dir, config, set_) as (settings, index):
        tiers = parse_tiers(settings.tiers)
        result = build_report(
            usage_by_tier(index, tiers),
            tiers,
            parse_prices(settings.storage_prices, tiers),
            growth=rate,
            months=months,
            compressed=compression_by_tier(index, tiers),
        )
        codecs = parse_compression(settings.tier_compression, tiers)
    if as_json:
        out.print_json(json.dumps(result.as_json()))
        return
    ahead = f"in {months} mo" if months else "projected"
    table = Table(
        "tier", "target", "objects", "bytes", "GB-month", "monthly", ahead,
        title="Storage by tier", caption=(
            f"growth {rate:.1%}/month compounded; storage only (requests, retrievals and "
            "transfer are extra); GB = 2^30 bytes"
        ),
    )  # fmt: skip
    factor = (1 + rate) ** months
    for row in result.tiers:
        table.add_row(
            row.tier,
            row.target,
            f"{row.objects:,}",
            _size(row.bytes),
            "-" if row.price_per_gb_month is None else f"{row.price_per_gb_month:g}",
            _money(row.monthly_cost),
            _money(None if row.monthly_cost is None else row.monthly_cost * factor),
        )
    table.add_section()
    table.add_row(
        "total", "", f"{result.objects:,}", _size(result.bytes), "",
        _money(result.monthly_cost), _money(result.projected_monthly_cost),
    )  # fmt: skip
    out.print(table)
    if months:
        out.print(
            f"In {months} months: {_size(result.projection[-1][1])} stored, "
            f"{_money(result.projected_monthly_cost)} per month; the {months} months together "
            f"cost {_money(result.cost_over_months)}."
        )
    if result.compression or codecs:
        _print_compression(result, codecs)
    if result.unpriced_tiers:
        out.print(
            f"no price for tier(s) {', '.join(result.unpriced_tiers)}: set "
            "storage_prices (their cost is left out of the totals)",
            style="yellow",
        )


def _print_compression(result: StorageReport, codecs: dict[str, str]) -> None:
    from nubis.tiers.rules import LOSSLESS_CODECS

    names = {uid: name for name, uid in LOSSLESS_CODECS.items()}
    table = Table(
        "tier", "codec", "compressed", "as received", "stored", "ratio", "saved/mo",
        title="Lossless compression by tier", caption=(
            "as received: what the tier's objects took when they arrived; ratio: as received "
            "/ stored (in brackets: of the compressed objects alone)"
        ),
    )  # fmt: skip
    for saving in result.compression:
        codec = codecs.get(saving.tier)
        ratio, alone = saving.ratio, saving.compressed_ratio
        table.add_row(
            saving.tier,
            names.get(codec, codec) if codec else "(none now)",
            f"{saving.compressed:,} of {saving.objects:,}",
            _size(saving.bytes_before),
            _size(saving.bytes_after),
            "-" if ratio is None else f"{ratio:.2f} ({alone or 0:.2f})",
            _money(saving.monthly_saving),
        )
    for tier, codec in codecs.items():
        if all(saving.tier != tier for saving in result.compression):
            table.add_row(tier, names.get(codec, codec), "0", "", "", "-", "")
    out.print(table)
    if result.compression:
        saved = sum(saving.saved for saving in result.compression)
        out.print(f"Compression saves {_size(saved)}, {_money(result.monthly_saving)} per month.")


@app.command("tier")
def tier_study(
    study: Annotated[str, typer.Argument(help="Study Instance UID.")],
    tier: Annotated[
        str | None,
        typer.Argument(help="Pin the study to this tier and move it (hot brings it back)."),
    ] = None,
    partition: Annotated[str, typer.Option(help="The study's tenant.")] = "default",
    days: Annotated[
        int | None, typer.Option(help="Keep the pin this many days (default: until --unpin).")
    ] = None,
    unpin: Annotated[bool, typer.Option(help="Let the lifecycle rules decide again.")] = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Show where a study's objects are; with TIER, pin it there and queue the move."""
    from nubis.jobs.store import JobStore
    from nubis.security.authn import os_account
    from nubis.tiers.lifecycle import Lifecycle
    from nubis.tiers.rules import parse_tiers

    with open_index(data_dir, config, set_) as (settings, index):
        tiers = parse_tiers(settings.tiers)
        lifecycle = Lifecycle(index, tiers, (), mover=None)
        if tier is not None or unpin:
            if tier is not None and tier not in tiers:
                console.print(f"no tier {tier!r} (tiers: {', '.join(tiers.names)})", style="red")
                raise typer.Exit(2)
            until = None if days is None else time.time_ns() // 1_000_000 + days * 86_400_000
            if not lifecycle.pin(partition, study, None if unpin else tier, until):
                console.print(f"no study {study} in partition {partition}", style="red")
                raise typer.Exit(1)
            job_id = JobStore(index).enqueue(
                "tier", {"partition": partition, "study": study}, created_by=f"cli:{os_account()}"
            )
            what = "unpinned" if unpin else f"pinned to {tier}"
            out.print(f"study {study} {what}; job {job_id} moves its objects (nubis jobs list)")
            return
        facts = lifecycle.study_tiers(partition, study)
    if facts is None:
        console.print(f"no study {study} in partition {partition}", style="red")
        raise typer.Exit(1)
    out.print_json(json.dumps(facts))


@app.command("warnings")
def ingest_warnings(
    list_: Annotated[
        bool, typer.Option("--list", help="Also list each instance: its UIDs and what was odd.")
    ] = False,
    reason: Annotated[
        str | None, typer.Option(help="Only this reason (e.g. file-meta-mismatch).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Most instances listed.")] = 10_000,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Objects ingested with warnings (PS3.4 B.2.3 / PS3.18 10.5.3 warning statuses), per
    reason: how many instances in how many studies; with --list, the UIDs."""
    from nubis.index.ingest_warnings import warned_instances, warning_counts

    with open_index(data_dir, config, set_) as (_settings, index):
        counts = [c for c in warning_counts(index) if reason is None or c.reason == reason]
        listed = warned_instances(index, reason=reason, limit=limit) if list_ else []
    if as_json:
        body: dict[str, object] = {
            "reasons": [
                {"reason": c.reason, "status": f"0x{c.status:04X}", "instances": c.instances,
                 "studies": c.studies}
                for c in counts
            ],
        }  # fmt: skip
        if list_:
            body["instances"] = [
                {**item.as_json(), "status": f"0x{item.status:04X}"} for item in listed
            ]
        out.print_json(json.dumps(body))
        return
    if not counts:
        out.print("no object was ingested with warnings")
        return
    table = Table("reason", "status", "instances", "studies", title="Ingested with warnings")
    for c in counts:
        table.add_row(c.reason, f"0x{c.status:04X}", f"{c.instances:,}", f"{c.studies:,}")
    out.print(table)
    for item in listed:
        out.print(
            f"{item.reason}\t{item.partition}\t{item.study_uid}\t{item.series_uid}\t"
            f"{item.sop_instance_uid}\t{item.detail}"
        )


@app.command("quarantine")
def quarantine(
    tenant: Annotated[str, typer.Option(help="The tenant whose studies are listed.")] = "default",
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Studies held in quarantine (their instances disagree on the patient, or a series UID
    of theirs is another study's; seen by admins only until released), why (reason codes),
    and the Patient IDs their instances name."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        who = cli_principal(tenant)
        held = archive.quarantine.held(who)
        patients = {s.study_uid: archive.quarantine.patients_of(who, s.study_uid) for s in held}
    rows = [
        {"partition": s.partition, "study_uid": s.study_uid, "since_ms": s.since,
         "instances": s.instances, "patients": patients[s.study_uid],
         "reasons": list(s.reasons)}
        for s in held
    ]  # fmt: skip
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("no study is held in quarantine")
        return
    table = Table("study", "held for", "since (UTC)", "instances", "instances per Patient ID",
                  title="Held in quarantine")  # fmt: skip
    for study in held:
        since = time.strftime("%Y-%m-%d %H:%M", time.gmtime(study.since / 1000))
        per_patient = patients[study.study_uid].items()
        table.add_row(
            study.study_uid, " ".join(study.reasons), since, f"{study.instances:,}",
            ", ".join(f"{patient or '(none)'}: {n}" for patient, n in per_patient),
        )  # fmt: skip
    out.print(table)


@app.command("release")
def release(
    study: Annotated[str, typer.Argument(help="Study Instance UID held in quarantine.")],
    reason: Annotated[str, typer.Option(help="Why it may come out (kept in the audit trail).")],
    tenant: Annotated[str, typer.Option(help="The study's tenant.")] = "default",
    resolved: Annotated[
        bool,
        typer.Option(
            help="Release even though its instances name other patients as stored (a "
            "correction makes them agree as served) or another study holds one of its series "
            "UIDs (a reused UID naming two series)."
        ),
    ] = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Let a study out of quarantine once its instances agree on the patient and no other
    study holds one of its series UIDs."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        archive.quarantine.release(cli_principal(tenant), study, reason=reason, resolved=resolved)
    out.print(f"study {study} released from quarantine")
