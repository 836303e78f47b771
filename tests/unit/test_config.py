"""Settings: declared once, documented, resolved default < file < environment < command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nubis.cli.main import app
from nubis.config import SETTINGS, SettingsError, load_settings


def test_precedence(tmp_path: Path) -> None:
    config = tmp_path / "nubis.toml"
    config.write_text('http_port = 9000\nhost = "127.0.0.2"\n')
    settings = load_settings(
        config_file=config, environ={"NUBIS_HTTP_PORT": "9001"}, overrides={"host": None}
    )
    assert settings.http_port == 9001
    assert settings.sources["http_port"] == "NUBIS_HTTP_PORT"
    assert settings.host == "127.0.0.2"
    assert load_settings(environ={}, overrides={"http_port": 9100}).http_port == 9100


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"NUBIS_HTTP_PORT": "eighty"}, "http_port"),
        ({"NUBIS_HTTP_PORT": "70000"}, "http_port"),
        ({"NUBIS_DURABLE": "maybe"}, "durable"),
        ({"NUBIS_ON_CONFLICT": "ignore"}, "on_conflict"),
        ({"NUBIS_EDGE_KEEP_BYTES": "5%"}, "edge_keep_bytes"),
        ({"NUBIS_EDGE_KEEP_BYTES": "lots"}, "edge_keep_bytes"),
        ({"NUBIS_FORWARD_TO": "https://c/dicom-web", "NUBIS_REPLICA_OF": "https://p"}, "replica"),
        (
            {"NUBIS_FORWARD_TO": "https://c/dicom-web", "NUBIS_REPLICATE_TO": "https://d/x"},
            "forward_to and replicate_to",
        ),
    ],
)
def test_bad_values_name_the_setting(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(environ=environ)


def test_forward_to_is_the_replication_target_with_its_own_key() -> None:
    """An edge node forwards through the replication outbox (docs/edge.md)."""
    settings = load_settings(
        environ={"NUBIS_FORWARD_TO": "https://c/dicom-web", "NUBIS_FORWARD_API_KEY": "k"}
    )
    assert (settings.replicate_to, settings.replicate_api_key) == ("https://c/dicom-web", "k")
    assert settings.sources["replicate_to"] == "forward_to (NUBIS_FORWARD_TO)"
    same = load_settings(
        environ={"NUBIS_FORWARD_TO": "https://c/dicom-web", "NUBIS_REPLICATE_API_KEY": "r"}
    )
    assert same.replicate_api_key == "r"


def test_unknown_key_in_file(tmp_path: Path) -> None:
    config = tmp_path / "nubis.toml"
    config.write_text("htp_port = 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'htp_port'"):
        load_settings(config_file=config, environ={})


def test_every_setting_is_documented_in_help() -> None:
    result = CliRunner().invoke(app, ["--help"], terminal_width=400)
    assert result.exit_code == 0
    for setting in SETTINGS:
        assert setting.help, setting.name
        assert setting.env_var in result.output, setting.name


def test_serve_options_documented() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"], terminal_width=200)
    for option in ("--data-dir", "--host", "--http-port", "--config", "--set"):
        assert option in result.output


def test_secrets_are_not_echoed() -> None:
    """`nubis settings`, logs and errors never show a password or the admin token."""
    from nubis.config import displayed_value
    from nubis.logs import redact_url

    assert (
        redact_url("postgresql://nubis:s3cret@db:5432/pacs")
        == "postgresql://nubis:***@db:5432/pacs"
    )
    assert redact_url("postgresql://nubis@db/pacs") == "postgresql://nubis@db/pacs"
    assert displayed_value("admin_token", "x" * 40) == "(set)"
    assert displayed_value("index", "postgresql://a:b@h/d") == "postgresql://a:***@h/d"
