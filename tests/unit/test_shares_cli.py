"""``nubis shares list|revoke``: operators see and revoke the links people made (issue 10)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from nubis.archive import Archive
from nubis.cli.main import app
from nubis.config import load_settings
from nubis.deid.profile import default_profile_text
from nubis.index.schema import grants
from nubis.security.policy import Principal
from nubis.tools import synth


def test_list_and_revoke(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data"), "--set", "durable=false"]
    folder = tmp_path / "ct"
    files = synth.make_ct_series(folder, n_instances=1, rows=16, columns=16, seed=5)
    assert runner.invoke(app, ["import", str(folder), *data]).exit_code == 0

    settings = load_settings(
        environ={}, overrides={"data_dir": str(tmp_path / "data"), "durable": "false"}
    )
    archive = Archive(settings)
    archive.index.open()
    archive.audit.open()
    try:
        import pydicom

        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        alice = Principal("alice", "default", frozenset({"radiologist"}))
        link, token = archive.sharing.create(alice, study, pin="2468", note="for Dr Who")
        own, _ = archive.sharing.create(alice, study, deid_profile_toml=default_profile_text())
        session = archive.sharing.open(token, pin="2468", peer="10.0.0.9").session_token
    finally:
        archive.audit.close()
        archive.index.close()

    listed = runner.invoke(app, ["shares", "list", *data], env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    assert link.id in listed.output and "active" in listed.output and token not in listed.output
    rows = {line.split()[1]: line for line in listed.output.splitlines() if "│" in line}
    assert rows[own.id].rstrip(" │").endswith("own key") and rows[link.id].rstrip(" │").endswith(
        "no"
    )
    other = runner.invoke(app, ["shares", "list", "--tenant", "other", *data])
    assert link.id not in other.output
    missing = runner.invoke(app, ["shares", "revoke", "0123456789abcdef", *data])
    assert missing.exit_code == 1 and "no share link" in missing.output
    revoked = runner.invoke(app, ["shares", "revoke", link.id, *data])
    assert revoked.exit_code == 0 and "revoked" in revoked.output

    archive = Archive(settings)
    archive.index.open()
    try:
        assert archive.sessions.find(session) is None
        with archive.index.reading() as conn:
            left = conn.execute(grants.select().where(grants.c.subject == f"share:{link.id}"))
            assert left.all() == []
    finally:
        archive.index.close()
    listed = runner.invoke(app, ["shares", "list", *data], env={"COLUMNS": "250"})
    assert "revoked" in listed.output
