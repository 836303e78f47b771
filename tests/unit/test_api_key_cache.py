"""The API-key cache: a revoked key, a removed user or new roles count at the next request.

HIPAA 164.312(d) (person or entity authentication) and 164.312(a)(1) (access control): a
credential that was withdrawn must stop working at once, not after a cache's time to live.
Each process caches the keys it checked; any change to users or keys bumps a counter shared
through a file beside the index. Here two UserStores over one SQLite file stand for a worker
and the CLI (another process); tests/integration/test_api_key_revocation.py does it with a
live two-worker server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubis.errors import Unauthorized
from nubis.index.database import Index
from nubis.security.authn import Authenticator
from nubis.security.users import UserStore


def _index(path: Path) -> Index:
    index = Index(f"sqlite:///{path}", durable=False)
    index.migrate()
    index.open()
    return index


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[UserStore, UserStore]]:
    worker_index, cli_index = _index(tmp_path / "index.sqlite"), _index(tmp_path / "index.sqlite")
    try:
        yield UserStore(worker_index), UserStore(cli_index)
    finally:
        worker_index.close()
        cli_index.close()


def _key(store: UserStore, user: str = "alice", roles: str = "radiologist") -> tuple[str, str]:
    store.add_user(user, roles=roles)
    record, secret = store.create_api_key(user, label="viewer")
    return record.id, secret


def _bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def test_a_checked_key_is_answered_from_the_cache(
    stores: tuple[UserStore, UserStore],
) -> None:
    worker, cli = stores
    _, secret = _key(cli)
    authn = Authenticator(worker)
    assert authn.cached(_bearer(secret)) is None  # not checked yet
    assert authn.authenticate(_bearer(secret)).user_id == "alice"
    hit = authn.cached(_bearer(secret))
    assert hit is not None and hit.user_id == "alice" and hit.auth_method == "apikey"
    assert authn.cached({"x-api-key": secret}) is not None
    # A wrong key with the same prefix is never a hit.
    assert authn.cached(_bearer(secret[:-2] + "xx")) is None


def test_the_admin_token_is_cached_and_revoked_like_any_key(
    stores: tuple[UserStore, UserStore],
) -> None:
    worker, cli = stores
    token = "an-admin-token-without-the-key-prefix-0123456789"
    cli.ensure_admin_token(token)
    authn = Authenticator(worker)
    authn.authenticate(_bearer(token))
    assert authn.cached(_bearer(token)) is not None
    cli.ensure_admin_token("")
    assert authn.cached(_bearer(token)) is None
    with pytest.raises(Unauthorized):
        authn.authenticate(_bearer(token))


def test_a_key_revoked_by_another_process_fails_at_the_next_request(
    stores: tuple[UserStore, UserStore],
) -> None:
    worker, cli = stores
    key_id, secret = _key(cli)
    authn = Authenticator(worker)
    authn.authenticate(_bearer(secret))
    cli.revoke_api_key(key_id)
    assert authn.cached(_bearer(secret)) is None
    with pytest.raises(Unauthorized):
        authn.authenticate(_bearer(secret))


def test_a_removed_user_or_new_roles_count_at_the_next_request(
    stores: tuple[UserStore, UserStore],
) -> None:
    worker, cli = stores
    _, secret = _key(cli)
    authn = Authenticator(worker)
    authn.authenticate(_bearer(secret))
    cli.set_roles("alice", frozenset({"auditor"}))
    assert authn.cached(_bearer(secret)) is None
    assert authn.authenticate(_bearer(secret)).roles == frozenset({"auditor"})
    cli.remove_user("alice")
    assert authn.cached(_bearer(secret)) is None
    with pytest.raises(Unauthorized):
        authn.authenticate(_bearer(secret))


def test_a_replaced_key_id_stops_the_old_secret(stores: tuple[UserStore, UserStore]) -> None:
    worker, cli = stores
    _, secret = _key(cli)
    authn = Authenticator(worker)
    authn.authenticate(_bearer(secret))
    cli.create_api_key("alice", key_id=cli.list_api_keys("alice")[0].id)
    with pytest.raises(Unauthorized):
        authn.authenticate(_bearer(secret))


def test_an_expired_cached_key_is_refused(
    stores: tuple[UserStore, UserStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker, cli = stores
    cli.add_user("alice", roles="radiologist")
    _, secret = cli.create_api_key("alice", expires_in_days=1)
    authn = Authenticator(worker)
    authn.authenticate(_bearer(secret))
    later = time.time() + 2 * 86400
    monkeypatch.setattr("nubis.security.users.time.time", lambda: later)
    assert authn.cached(_bearer(secret)) is None
    with pytest.raises(Unauthorized):
        authn.authenticate(_bearer(secret))


def test_postgresql_or_memory_indexes_have_no_cache(tmp_path: Path) -> None:
    from nubis.security.credential_generation import CredentialGeneration

    assert CredentialGeneration.for_index("postgresql://nubis@db/nubis") is None
    assert CredentialGeneration.for_index("sqlite:///:memory:") is None
    counter = CredentialGeneration.for_index(f"sqlite:///{tmp_path / 'index.sqlite'}")
    assert counter is not None
    other = CredentialGeneration(counter.path)
    before = other.current()
    counter.bump()
    assert other.current() != before


def test_a_process_that_cannot_bump_the_counter_cannot_change_credentials(
    tmp_path: Path,
) -> None:
    from nubis.errors import StorageUnavailable

    path = tmp_path / "index.sqlite"
    server = UserStore(_index(path))
    key_id, secret = _key(server)
    authn = Authenticator(server)
    authn.authenticate(_bearer(secret))
    counter = Path(f"{path}-credentials")
    counter.unlink()
    counter.mkdir()  # no process can open it now (root included)
    assert authn.cached(_bearer(secret)) is None  # nor trust what it cached
    blind = UserStore(_index(path))
    with pytest.raises(StorageUnavailable, match="credential counter"):
        blind.revoke_api_key(key_id)
    assert blind.lookup_api_key(secret) is not None  # reads work, uncached
    assert blind.cached_api_key(secret) is None
    server.index.close()
    blind.index.close()


def test_a_deleted_counter_file_is_followed_to_the_new_one(
    stores: tuple[UserStore, UserStore], tmp_path: Path
) -> None:
    worker, cli = stores
    key_id, secret = _key(cli)
    authn = Authenticator(worker)
    authn.authenticate(_bearer(secret))
    Path(f"{tmp_path / 'index.sqlite'}-credentials").unlink()  # an operator "cleaning up"
    other_cli = UserStore(cli.index)  # a later CLI run makes a new counter file
    other_cli.revoke_api_key(key_id)
    assert authn.cached(_bearer(secret)) is None
    with pytest.raises(Unauthorized):
        authn.authenticate(_bearer(secret))
