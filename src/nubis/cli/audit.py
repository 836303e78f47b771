"""``nubis audit``: verify, list and export the tamper-evident audit trail.

``verify`` checks the hash chain and the signed checkpoints and names the first bad record
(exit status 1 when the trail was tampered with); ``list`` shows records; ``export`` writes
FHIR AuditEvent (NDJSON) or DICOM audit messages (XML, one per line), or forwards to the syslog
collector of ``audit_syslog``; ``key`` prints the public key to keep away from this machine;
``checkpoint`` signs the current head now. Every command but ``key`` reads the log, and is
itself recorded as Audit Log Used (PS3.15 A.5.3.1) under the operating-system user.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nubis.cli.common import Config, DataDir, Set, load, open_archive
from nubis.cli.output import console, out

if TYPE_CHECKING:
    from nubis.model.audit import ActiveParticipant


app = typer.Typer(
    help="The tamper-evident audit trail: verify, list, export (FHIR, DICOM, syslog).",
    no_args_is_help=True,
)

After = Annotated[int, typer.Option("--after", help="Only records after this sequence number.")]


def _operator() -> ActiveParticipant:
    from nubis.model.audit import ActiveParticipant
    from nubis.security.authn import cli_login, os_account

    return ActiveParticipant(
        user_id=os_account(), user_name=cli_login(), network_access_point=socket.gethostname()
    )


@app.command()
def verify(
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            help="Trust only this public key (a copy of `nubis audit key` kept elsewhere), "
            "not the key in the data folder.",
        ),
    ] = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Check every record and signed checkpoint, and every erasure certificate; name the
    first bad record and each bad certificate (exit 1 if any)."""
    from nubis.security.audit import load_public_keys
    from nubis.security.authn import cli_principal

    keys = load_public_keys(public_key) if public_key else None
    with open_archive(data_dir, config, set_) as archive:
        trail = archive.audit
        report = trail.verify(public_keys=keys, used_by=_operator(), front_door="cli")
        # Erasure certificates: signed with the same key, each named by a record of the chain.
        certificates = archive.retention.verify(
            cli_principal(), public_keys=keys, recorded_by_trail=True
        )
    forged = [c for c in certificates if not c.ok]
    for check in forged:
        out.print(f"ERASURE CERTIFICATE {check.id}: {'; '.join(check.problems)}", style="red")
    if certificates:
        out.print(f"{len(certificates) - len(forged)} of {len(certificates)} erasure "
                  "certificate(s) verified")  # fmt: skip
    if report.ok and forged:
        raise typer.Exit(1)
    if report.ok:
        out.print(
            f"audit trail intact: {report.records} record(s), {report.checkpoints} signed "
            f"checkpoint(s), signed up to record {report.last_signed_seq}"
            + (
                f"; {report.unsigned} newer record(s) chained, not yet signed"
                if report.unsigned
                else ""
            )
        )
        return
    out.print(
        f"AUDIT TRAIL TAMPERED: first bad record {report.first_bad_seq}: {report.problem}",
        style="red",
    )
    raise typer.Exit(1)


@app.command("list")
def list_records(
    after: After = 0,
    limit: Annotated[int, typer.Option(help="At most this many records.")] = 100,
    user: Annotated[str | None, typer.Option(help="Only records of this user id.")] = None,
    patient: Annotated[str | None, typer.Option(help="Only records about this patient ID.")] = None,
    event: Annotated[
        str | None, typer.Option(help="Only this EventID code, e.g. 110103 (Instances Accessed).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="From this UTC time (YYYY-MM-DDTHH:MM:SS).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Before this UTC time.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per line.")] = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Show audit records (the listing is itself recorded as Audit Log Used)."""
    with open_archive(data_dir, config, set_) as archive:
        trail = archive.audit
        records = trail.read(
            _operator(),
            front_door="cli",
            after_seq=after,
            limit=limit,
            user_id=user,
            patient_id=patient,
            event_code=event,
            since=since,
            until=until,
        )
    if as_json:
        for r in records:
            sys.stdout.write(json.dumps({"seq": r.seq, "hash": r.hash, **r.event_dict}) + "\n")
        return
    table = Table(
        "seq", "time (UTC)", "event", "action", "outcome", "user", "from", "via", "objects"
    )
    for r in records:
        e = r.event
        who = e.requestor
        table.add_row(
            str(r.seq),
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            e.event_id.display,
            e.action.value,
            str(int(e.outcome)),
            who.user_id,
            who.network_access_point or "",
            e.front_door,
            ", ".join(o.object_id for o in e.objects),
        )
    out.print(table)


@app.command()
def export(
    fmt: Annotated[
        str,
        typer.Option("--format", help="fhir (AuditEvent NDJSON), dicom (XML per line), syslog."),
    ] = "fhir",
    output: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of standard output.")
    ] = None,
    after: After = 0,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Export the log as FHIR AuditEvent R4 or DICOM audit messages, or forward it to syslog.

    ``--format syslog`` sends everything the collector of ``audit_syslog`` has not yet had
    (from the persistent cursor) and exits; the server does the same continuously.
    """
    from nubis.security import audit_events
    from nubis.security.audit_export import SyslogForwarder, dicom_xml, fhir_audit_event

    if fmt not in {"fhir", "dicom", "syslog"}:
        console.print(f"--format must be fhir, dicom or syslog, got {fmt!r}", style="red")
        raise typer.Exit(2)
    with open_archive(data_dir, config, set_) as archive:
        trail = archive.audit
        if fmt == "syslog":
            settings = archive.settings
            if not settings.audit_syslog:
                console.print(
                    "set audit_syslog (tls://HOST:PORT) to forward to a collector", style="red"
                )
                raise typer.Exit(2)
            forwarder = SyslogForwarder(
                trail,
                settings.audit_syslog,
                ca_file=settings.audit_syslog_ca,
                cert_file=settings.audit_syslog_cert,
                key_file=settings.audit_syslog_key,
            )
            try:
                sent = forwarder.drain()
            except OSError as exc:
                console.print(
                    f"collector unreachable: {exc}; records wait for the next try", style="red"
                )
                raise typer.Exit(1) from None
            finally:
                forwarder.close_connection()
            console.print(f"{sent} record(s) forwarded to {settings.audit_syslog}")
            return
        trail.record(
            audit_events.audit_log_used(_operator(), what=f"export {fmt}", front_door="cli")
        )
        stream = output.open("w", encoding="utf-8") if output else sys.stdout
        try:
            count = 0
            while records := trail.scan(after, 1000):
                for r in records:
                    if fmt == "fhir":
                        stream.write(json.dumps(fhir_audit_event(r), ensure_ascii=False) + "\n")
                    else:
                        stream.write(dicom_xml(r).decode() + "\n")
                count += len(records)
                after = records[-1].seq
        finally:
            if output:
                stream.close()
    console.print(f"{count} record(s) exported as {fmt}")


@app.command()
def key(data_dir: DataDir = None, config: Config = None, set_: Set = None) -> None:
    """Print the public key that verifies the checkpoints: keep a copy away from this machine."""
    from nubis.security.audit import SigningKey, public_key_text

    settings = load(config, {"data_dir": data_dir}, set_)
    sys.stdout.write(public_key_text(SigningKey.load_or_create(settings.audit_key_path).public))


@app.command()
def checkpoint(data_dir: DataDir = None, config: Config = None, set_: Set = None) -> None:
    """Sign the current head of the chain now (e.g. before a backup)."""
    with open_archive(data_dir, config, set_) as archive:
        trail = archive.audit
        cp = trail.checkpoint()
        seq, head = trail.head()
    if cp is None:
        out.print(f"head already signed: {seq} record(s), head {head}")
    else:
        out.print(f"signed checkpoint {cp.id}: {cp.seq} record(s), head {cp.head_hash}")
