"""``nubis users`` and ``nubis apikeys``: local users, their grants and their API keys.

These work on the index (the server may be running: it reads users and keys on each request)
through the same service as the admin pages of the web face (nubis.services.accounts).
Whoever runs them can read the data folder, so they act as an administrator of the home
tenant, who manages the users of every tenant; every change is recorded in the audit trail
(Security Alert: Security Roles Changed / User Security Attributes Changed) under the
operating-system user's name.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nubis.cli.common import Config, DataDir, Set, open_archive
from nubis.cli.output import console, out

if TYPE_CHECKING:
    from nubis.archive import Archive
    from nubis.model.audit import Code
    from nubis.security.policy import Principal


users_app = typer.Typer(
    help="Local users: add, list, remove, passwd, grant, revoke, grants.", no_args_is_help=True
)
apikeys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)

Patient = Annotated[str | None, typer.Option("--patient", help="Patient ID (0010,0020).")]
Study = Annotated[str | None, typer.Option("--study", help="Study Instance UID.")]


def _record(archive: Archive, event_type: Code, description: str) -> None:
    from nubis.model.audit import EventOutcome
    from nubis.security import audit_events
    from nubis.security.authn import cli_principal

    archive.guard.record(
        audit_events.security_alert(
            cli_principal(),
            event_type,
            outcome=EventOutcome.SUCCESS,
            description=description,
            front_door="cli",
        )
    )


def _operator() -> Principal:
    from nubis.security.authn import cli_principal

    return cli_principal()


def _roles_changed() -> Code:
    from nubis.model.audit import EventType

    return EventType.SECURITY_ROLES_CHANGED


def _read_password(from_stdin: bool, name: str) -> str:
    from nubis.errors import BadRequest
    from nubis.services.accounts import check_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True)
    try:
        return check_password(password)
    except BadRequest as exc:
        console.print(exc.reason, style="red")
        raise typer.Exit(2) from None


def _when(epoch: int | None) -> str:
    if epoch is None:
        return "never"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------------- users
@users_app.command("add")
def add_user(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, . _ @ -).")],
    role: Annotated[
        list[str],
        typer.Option(
            "--role",
            help="Role (repeatable): admin, radiologist, referrer, uploader, modality, "
            "researcher, auditor, monitor.",
        ),
    ],
    tenant: Annotated[str, typer.Option(help="Tenant (partition) of the user.")] = "default",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    no_password: Annotated[
        bool, typer.Option("--no-password", help="No password: API keys only.")
    ] = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Add a local user (the password is asked for, unless --no-password)."""
    from nubis.security.policy import parse_roles

    try:
        roles = parse_roles(",".join(role))
    except ValueError as exc:
        console.print(str(exc), style="red")
        raise typer.Exit(2) from None
    password = None if no_password else _read_password(password_stdin, name)
    with open_archive(data_dir, config, set_) as archive:
        user = archive.accounts.add_user(
            _operator(), name, tenant=tenant, roles=roles, password=password
        )
    out.print(f"user {user.name} added to tenant {user.tenant}: {', '.join(sorted(user.roles))}")


@users_app.command("list")
def list_users(data_dir: DataDir = None, config: Config = None, set_: Set = None) -> None:
    """Every user with tenant, roles and whether a password is set."""
    with open_archive(data_dir, config, set_) as archive:
        found = archive.accounts.list_users(_operator())
    table = Table("user", "tenant", "roles", "password", "created")
    for user in found:
        table.add_row(
            user.name,
            user.tenant,
            ", ".join(sorted(user.roles)),
            "yes" if user.has_password else "no",
            _when(user.created_at),
        )
    out.print(table)


@users_app.command("remove")
def remove_user(
    name: str, data_dir: DataDir = None, config: Config = None, set_: Set = None
) -> None:
    """Remove a user with its API keys and grants."""
    with open_archive(data_dir, config, set_) as archive:
        archive.accounts.remove_user(_operator(), name)
    out.print(f"user {name} removed (and its API keys and grants)")


@users_app.command("passwd")
def passwd(
    name: str,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Set a user's password."""
    password = _read_password(password_stdin, name)
    with open_archive(data_dir, config, set_) as archive:
        archive.accounts.set_password(_operator(), name, password)
    out.print(f"password of {name} set")


def _grant_target(patient: str | None, study: str | None) -> tuple[str | None, str | None]:
    if (patient is None) == (study is None):
        console.print("give exactly one of --patient or --study", style="red")
        raise typer.Exit(2)
    return patient, study


def _subject_tenant(archive: Archive, subject: str, tenant: str | None) -> str:
    user = archive.users.get_user(subject)
    if user is not None:
        return tenant or user.tenant
    if subject.startswith(("oidc:", "webhook:")) and tenant:
        return tenant
    console.print(
        f"no local user {subject}; for an OIDC user give oidc:<sub> and --tenant, for a "
        "webhook subscription webhook:<name> and --tenant",
        style="red",
    )
    raise typer.Exit(2)


@users_app.command("grant")
def grant(
    subject: Annotated[
        str,
        typer.Argument(
            help="User name, oidc:<sub> for an OIDC user, webhook:<name> for a subscription."
        ),
    ],
    patient: Patient = None,
    study: Study = None,
    tenant: Annotated[
        str | None, typer.Option(help="Tenant of the grant. Default: the user's.")
    ] = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Let a user see one patient's studies or one study (what referrers can read)."""
    patient_id, study_uid = _grant_target(patient, study)
    with open_archive(data_dir, config, set_) as archive:
        where = _subject_tenant(archive, subject, tenant)
        archive.users.grant(subject, tenant=where, patient_id=patient_id, study_uid=study_uid)
        what = f"patient {patient_id}" if patient_id else f"study {study_uid}"
        _record(archive, _roles_changed(), f"{subject} granted {what} in {where}")
    out.print(f"{subject} may now see {what} (tenant {where})")


@users_app.command("revoke")
def revoke(
    subject: str,
    patient: Patient = None,
    study: Study = None,
    tenant: Annotated[str | None, typer.Option(help="Tenant of the grant.")] = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Withdraw a grant."""
    patient_id, study_uid = _grant_target(patient, study)
    with open_archive(data_dir, config, set_) as archive:
        where = _subject_tenant(archive, subject, tenant)
        archive.users.revoke_grant(
            subject, tenant=where, patient_id=patient_id, study_uid=study_uid
        )
        _record(archive, _roles_changed(), f"grant of {subject} withdrawn")
    out.print("grant withdrawn")


@users_app.command("grants")
def list_grants(
    subject: Annotated[str | None, typer.Argument()] = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Grants, of one subject or all."""
    with open_archive(data_dir, config, set_) as archive:
        rows = archive.users.list_grants(subject)
    table = Table("subject", "tenant", "kind", "id")
    for row in rows:
        table.add_row(*row)
    out.print(table)


# ---------------------------------------------------------------------- API keys
@apikeys_app.command("create")
def create_key(
    user: str,
    days: Annotated[
        int | None,
        typer.Option(min=0, help="Days until it expires (0: never). Default: api_key_days."),
    ] = None,
    label: Annotated[str, typer.Option(help="What the key is for.")] = "",
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Make an API key for a user; the key is printed once and only its hash is kept."""
    with open_archive(data_dir, config, set_) as archive:
        key, secret = archive.accounts.create_api_key(
            _operator(), user, label=label or "nubis apikeys create", days=days
        )
    console.print(f"API key {key.id} for {user}, expires {_when(key.expires_at)}; shown once:")
    out.print(secret)


@apikeys_app.command("list")
def list_keys(
    user: Annotated[str | None, typer.Argument()] = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """API keys (ids, not secrets), with their state."""
    with open_archive(data_dir, config, set_) as archive:
        keys = archive.accounts.list_api_keys(_operator(), user)
    table = Table("id", "user", "label", "created", "expires", "state")
    for key in keys:
        table.add_row(
            key.id,
            key.user_name,
            key.label,
            _when(key.created_at),
            _when(key.expires_at),
            key.state,
        )
    out.print(table)


@apikeys_app.command("revoke")
def revoke_key(
    key_id: str, data_dir: DataDir = None, config: Config = None, set_: Set = None
) -> None:
    """Revoke an API key at once (running servers check keys on every request)."""
    with open_archive(data_dir, config, set_) as archive:
        archive.accounts.revoke_api_key(_operator(), key_id)
    out.print(f"API key {key_id} revoked")
