"""``nubis users`` and ``nubis apikeys``: users, grants and keys from the command line."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from nubis.archive import Archive
from nubis.cli.main import app
from nubis.config import load_settings
from nubis.security.users import UserStore


def test_users_and_keys(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data"), "--set", "durable=false"]

    def run(*args: str, stdin: str | None = None) -> str:
        result = runner.invoke(app, [*args, *data], input=stdin)
        assert result.exit_code == 0, result.output
        return result.output

    run("users", "add", "alice", "--role", "referrer", "--tenant", "clinic-b",
        "--password-stdin", stdin="a long enough password\n")  # fmt: skip
    assert "alice" in run("users", "list") and "clinic-b" in run("users", "list")
    run("users", "grant", "alice", "--patient", "PAT-1")
    assert "PAT-1" in run("users", "grants", "alice")
    out = run("apikeys", "create", "alice", "--days", "1")
    key = next(word for word in out.split() if word.startswith("nbk_"))
    bad = runner.invoke(app, ["users", "add", "bob", "--role", "wizard", "--no-password", *data])
    assert bad.exit_code == 2 and "unknown role" in bad.output

    archive = Archive(load_settings(environ={}, overrides={"data_dir": str(tmp_path / "data")}))
    archive.index.open()
    try:
        users = UserStore(archive.index)
        found = users.lookup_api_key(key)
        assert found is not None and found[1].tenant == "clinic-b"
        assert users.verify_password("alice", "a long enough password") is not None
        assert users.verify_password("alice", "wrong") is None
        key_id = found[0].id
    finally:
        archive.index.close()
    run("apikeys", "revoke", key_id)
    assert "revoked" in run("apikeys", "list", "alice")
    run("users", "remove", "alice")
    assert "alice" not in run("users", "list")


def test_apikeys_create_refuses_a_negative_lifetime(tmp_path: Path) -> None:
    """``--days -1`` would make a key that expired before it was printed: refused (exit 2,
    naming --days), and no key is made; 0 still means a key that never expires."""
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data"), "--set", "durable=false"]
    added = runner.invoke(
        app, ["users", "add", "bob", "--role", "referrer", "--no-password", *data]
    )
    assert added.exit_code == 0, added.output
    refused = runner.invoke(app, ["apikeys", "create", "bob", "--days", "-1", *data])
    assert refused.exit_code == 2, refused.output
    assert "--days" in refused.output
    listed = runner.invoke(app, ["apikeys", "list", "bob", *data])
    assert listed.exit_code == 0 and "bob" not in listed.output, listed.output
    never = runner.invoke(app, ["apikeys", "create", "bob", "--days", "0", *data])
    assert never.exit_code == 0 and "expires never" in never.output, never.output
