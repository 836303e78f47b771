"""The Basic-auth cache: a removed user, a new password or new roles count at the next request.

HIPAA 164.312(d) (person or entity authentication) and 164.312(a)(1) (access control): a
credential that was withdrawn must stop working, not up to a minute later. The cache saves
the argon2 verification only; the user's row is read on every request. Changes are made
through a second index connection, as the CLI (another process) makes them.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubis.errors import Unauthorized
from nubis.index.database import Index
from nubis.security.authn import Authenticator
from nubis.security.users import UserStore

PASSWORD = "a long enough password"


def _index(path: Path) -> Index:
    index = Index(f"sqlite:///{path}", durable=False)
    index.migrate()
    index.open()
    return index


class Spy(UserStore):
    """Counts the argon2 verifications (the work the cache exists to save)."""

    checks = 0

    def check_password(self, name: str, password: str):  # type: ignore[no-untyped-def]
        self.checks += 1
        return super().check_password(name, password)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[Spy, UserStore]]:
    """The server's store and another one over the same database (the CLI's)."""
    server, cli = _index(tmp_path / "index.sqlite"), _index(tmp_path / "index.sqlite")
    yield Spy(server), UserStore(cli)
    server.close()
    cli.close()


def basic(name: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


def test_repeated_basic_requests_verify_the_password_once(stores: tuple[Spy, UserStore]) -> None:
    server, cli = stores
    cli.add_user("alice", roles="radiologist", password=PASSWORD)
    authn = Authenticator(server)
    for _ in range(5):
        assert authn.authenticate(basic("alice", PASSWORD)).id == "alice"
    assert server.checks == 1


def test_a_removed_user_is_refused_at_once(stores: tuple[Spy, UserStore]) -> None:
    server, cli = stores
    cli.add_user("alice", roles="radiologist", password=PASSWORD)
    authn = Authenticator(server)
    authn.authenticate(basic("alice", PASSWORD))
    cli.remove_user("alice")
    with pytest.raises(Unauthorized):
        authn.authenticate(basic("alice", PASSWORD))
    # Re-added under the same name and password: a new hash (new salt), checked afresh.
    cli.add_user("alice", roles="referrer", password=PASSWORD)
    assert authn.authenticate(basic("alice", PASSWORD)).roles == {"referrer"}
    assert server.checks == 3


def test_a_changed_password_is_refused_at_once(stores: tuple[Spy, UserStore]) -> None:
    server, cli = stores
    cli.add_user("alice", roles="radiologist", password=PASSWORD)
    authn = Authenticator(server)
    authn.authenticate(basic("alice", PASSWORD))
    cli.set_password("alice", "another long password")
    with pytest.raises(Unauthorized):
        authn.authenticate(basic("alice", PASSWORD))
    assert authn.authenticate(basic("alice", "another long password")).id == "alice"


def test_changed_roles_count_at_once(stores: tuple[Spy, UserStore]) -> None:
    server, cli = stores
    cli.add_user("alice", roles="radiologist", password=PASSWORD)
    authn = Authenticator(server)
    authn.authenticate(basic("alice", PASSWORD))
    cli.set_roles("alice", frozenset({"referrer"}))
    assert authn.authenticate(basic("alice", PASSWORD)).roles == {"referrer"}
    assert server.checks == 1


def test_a_revoked_key_is_refused_at_once_also_through_basic(
    stores: tuple[Spy, UserStore],
) -> None:
    server, cli = stores
    cli.add_user("alice", roles="radiologist")
    key, secret = cli.create_api_key("alice")
    authn = Authenticator(server)
    assert authn.authenticate({"authorization": f"Bearer {secret}"}).id == "alice"
    assert authn.authenticate(basic("anyone", secret)).id == "alice"
    cli.revoke_api_key(key.id)
    for headers in ({"authorization": f"Bearer {secret}"}, basic("anyone", secret)):
        with pytest.raises(Unauthorized):
            authn.authenticate(headers)
