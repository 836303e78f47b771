"""Users and API keys: ``/ui/admin/users`` (list, create), ``/ui/admin/users/{name}`` (roles,
password, API keys, removal).

Everything goes through nubis.services.accounts, as ``nubis users`` and ``nubis apikeys`` do:
ADMIN of the principal's tenant (users of other tenants: admins of the home tenant only), each
change recorded as a Security Alert naming the user. A new API key is shown once, on the page
that answers its creation, and never again: only its hash is kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nubis.errors import BadRequest
from nubis.security.policy import ROLES, Principal
from nubis.security.users import ApiKey, User
from nubis.web.ui.admin.common import admin_page, call, checked, chosen, redirect
from nubis.web.ui.common import archive_of, field, signed_in, ui_form

_NOTICES = {
    "added": "User {name} added.",
    "roles": "Roles of {name} changed.",
    "password": "Password of {name} set; the user's open sessions were ended.",
    "revoked": "API key {key} revoked: it stops working at once.",
    "removed": "User {name} removed, with its API keys and grants.",
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_KEY_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


def _notice(request: Request) -> str | None:
    """What the last change did, from the redirect that followed it."""
    params = request.query_params
    text = _NOTICES.get(params.get("done", ""))
    name, key = params.get("name", ""), params.get("key", "")
    if text is None or (name and not _NAME.fullmatch(name)) or (key and not _KEY_ID.fullmatch(key)):
        return None
    return text.format(name=name, key=key)


def _roles_table() -> list[tuple[str, str]]:
    return [(name, spec.summary) for name, spec in ROLES.items()]


def _key_counts(keys: list[ApiKey]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        if key.state == "active":
            counts[key.user_name] = counts.get(key.user_name, 0) + 1
    return counts


async def _users_page(
    request: Request,
    principal: Principal,
    *,
    error: str | None = None,
    entered: Mapping[str, object] | None = None,
    status_code: int = 200,
) -> Response:
    accounts = archive_of(request).accounts
    users = await call(accounts.list_users, principal)
    keys = await call(accounts.list_api_keys, principal)
    return admin_page(
        request,
        "admin/users.html",
        {
            "users": users,
            "active_keys": _key_counts(keys),
            "roles": _roles_table(),
            "every_tenant": accounts.every_tenant(principal),
            "entered": entered or {"name": "", "tenant": principal.tenant, "roles": []},
            "notice": _notice(request),
            "error": error,
        },
        section="users",
        status_code=status_code,
    )


async def list_users(request: Request) -> Response:
    return await _users_page(request, signed_in(request))


async def add_user(request: Request) -> Response:
    principal = signed_in(request)
    form = await ui_form(request)
    await call(archive_of(request).accounts.authorize, principal, "add a user")
    roles = chosen(form, "roles")
    tenant = field(form, "tenant", max_length=64, required=False) or principal.tenant
    entered = {
        "name": field(form, "name", max_length=128, required=False),
        "tenant": tenant,
        "roles": roles,
    }
    try:
        name = field(form, "name", max_length=128)
        password = field(form, "password", max_length=1024, required=False)
        again = field(form, "password_again", max_length=1024, required=False)
        if password != again:
            raise BadRequest("the two passwords differ")
        await call(
            archive_of(request).accounts.add_user,
            principal,
            name,
            roles=frozenset(roles),
            tenant=tenant,
            password=password or None,
        )
    except BadRequest as exc:
        # The form again, with what was typed (never the password) and why it was refused.
        return await _users_page(
            request, principal, error=exc.reason, entered=entered, status_code=400
        )
    return redirect(f"/ui/admin/users/{quote(name)}?done=added&name={quote(name)}")


async def _user_page(
    request: Request, principal: Principal, name: str, *, new_key: tuple[ApiKey, str] | None = None
) -> Response:
    accounts = archive_of(request).accounts
    user: User = await call(accounts.get_user, principal, name)
    keys = await call(accounts.list_api_keys, principal, name)
    return admin_page(
        request,
        "admin/user.html",
        {
            "user": user,
            "keys": sorted(keys, key=lambda k: k.created_at, reverse=True),
            "roles": _roles_table(),
            "notice": _notice(request),
            "new_key": new_key,
            "default_days": archive_of(request).settings.api_key_days,
            "is_self": user.name == principal.id,
        },
        section="users",
    )


async def show_user(request: Request) -> Response:
    return await _user_page(request, signed_in(request), request.path_params["name"])


async def set_roles(request: Request) -> Response:
    principal = signed_in(request)
    form = await ui_form(request)
    name = request.path_params["name"]
    await call(archive_of(request).accounts.get_user, principal, name)  # 403, 404 first
    await call(
        archive_of(request).accounts.set_roles, principal, name, frozenset(chosen(form, "roles"))
    )
    return redirect(f"/ui/admin/users/{quote(name)}?done=roles&name={quote(name)}")


async def set_password(request: Request) -> Response:
    principal = signed_in(request)
    form = await ui_form(request)
    name = request.path_params["name"]
    await call(archive_of(request).accounts.get_user, principal, name)  # 403, 404 first
    password = field(form, "password", max_length=1024)
    if password != field(form, "password_again", max_length=1024, required=False):
        raise BadRequest("the two passwords differ")
    await call(archive_of(request).accounts.set_password, principal, name, password)
    return redirect(f"/ui/admin/users/{quote(name)}?done=password&name={quote(name)}")


async def remove_user(request: Request) -> Response:
    principal = signed_in(request)
    form = await ui_form(request)
    name = request.path_params["name"]
    await call(archive_of(request).accounts.get_user, principal, name)  # 403, 404 first
    if not checked(form, "confirm"):
        raise BadRequest("tick the box to confirm the removal")
    await call(archive_of(request).accounts.remove_user, principal, name)
    return redirect(f"/ui/admin/users?done=removed&name={quote(name)}")


async def create_key(request: Request) -> Response:
    """The new key is shown on this answer only (not a redirect: nothing keeps it to show
    again); Cache-Control: no-store keeps it out of caches."""
    principal = signed_in(request)
    form = await ui_form(request)
    name = request.path_params["name"]
    await call(archive_of(request).accounts.get_user, principal, name)  # 403, 404 first
    label = field(form, "label", max_length=200, required=False)
    days_text = field(form, "days", max_length=6, required=False)
    if days_text and not days_text.isdigit():
        raise BadRequest("days is a whole number of days (0: never expires)")
    new_key = await call(
        archive_of(request).accounts.create_api_key,
        principal,
        name,
        label=label,
        days=int(days_text) if days_text else None,
    )
    return await _user_page(request, principal, name, new_key=new_key)


async def revoke_key(request: Request) -> Response:
    principal = signed_in(request)
    await ui_form(request)
    key_id = request.path_params["key_id"]
    key = await call(archive_of(request).accounts.revoke_api_key, principal, key_id)
    return redirect(f"/ui/admin/users/{quote(key.user_name)}?done=revoked&key={quote(key.id)}")


def routes() -> list[Route]:
    return [
        Route("/ui/admin/users", list_users, methods=["GET"]),
        Route("/ui/admin/users", add_user, methods=["POST"]),
        Route("/ui/admin/users/{name}", show_user, methods=["GET"]),
        Route("/ui/admin/users/{name}/roles", set_roles, methods=["POST"]),
        Route("/ui/admin/users/{name}/password", set_password, methods=["POST"]),
        Route("/ui/admin/users/{name}/remove", remove_user, methods=["POST"]),
        Route("/ui/admin/users/{name}/keys", create_key, methods=["POST"]),
        Route("/ui/admin/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
    ]


__all__ = ["routes"]
