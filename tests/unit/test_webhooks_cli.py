"""``nubis webhooks add|list|deliveries|replay|remove`` (issue 15; docs/events.md): the same
service as the /webhooks API, so the same checks, and the secret shown once, never listed."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from nubis.cli.main import app
from nubis.config import load_settings
from nubis.crypto.webhook_secrets import SecretBox
from nubis.index.database import Index
from nubis.index.schema import webhook_dead_letters, webhook_subscriptions


def test_add_list_replay_remove(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data"), "--set", "durable=false"]
    added = runner.invoke(
        app,
        ["webhooks", "add", "pacs-ai", "https://ai.example.org/hook", "--event", "create",
         "--modality", "ct", "--match", "StudyDescription=*CHEST*", *data],
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    secret = added.output.strip().splitlines()[-1]
    assert secret.startswith("whsec_")

    listed = runner.invoke(app, ["webhooks", "list", "--json", *data])
    assert listed.exit_code == 0, listed.output
    (sub,) = json.loads(listed.output)
    assert sub["events"] == ["create"] and sub["modalities"] == ["CT"]
    assert secret not in listed.output
    # Kept encrypted: the index alone does not give the secret away; the key file does.
    settings = load_settings(environ={}, overrides={"data_dir": str(tmp_path / "data")})
    index = Index(settings.index_url)
    with index.reading() as conn:
        sealed = conn.execute(select(webhook_subscriptions.c.secret)).scalar_one()
        sub_id = conn.execute(select(webhook_subscriptions.c.id)).scalar_one()
    assert secret not in sealed
    assert SecretBox(settings.webhook_key_path).open("pacs-ai", sealed) == secret

    with index.write_engine.begin() as conn:
        conn.execute(
            webhook_dead_letters.insert().values(
                subscription_id=sub_id, seq=7, attempts=8, last_error="HTTP 503", failed_at=1,
                replay=0,
            )
        )  # fmt: skip
    index.read_engine.dispose()
    index.write_engine.dispose()
    shown = runner.invoke(app, ["webhooks", "deliveries", "--json", *data])
    assert json.loads(shown.output)[0]["sequence"] == 7
    again = runner.invoke(app, ["webhooks", "replay", "pacs-ai", "--sequence", "7", *data])
    assert again.exit_code == 0 and "1 dead letter(s)" in again.output, again.output
    missing = runner.invoke(app, ["webhooks", "replay", "pacs-ai", "--sequence", "8", *data])
    assert missing.exit_code == 1 and "no dead letter of entry 8" in missing.output

    removed = runner.invoke(app, ["webhooks", "remove", "pacs-ai", *data])
    assert removed.exit_code == 0, removed.output
    with index.reading() as conn:
        assert conn.execute(select(webhook_subscriptions.c.id)).all() == []
