"""Every ``nubis`` command and subcommand answers ``--help``, and printing never reads values as
markup.

A newcomer's first step is ``nubis --help`` and then the help of a command: none of them may
crash. ``nubis settings`` once failed with ``rich.errors.MarkupError`` because a setting's help
text held ``[/PREFIX]`` (issue #9, item 9).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from nubis.cli.main import app
from nubis.config import SETTINGS


def _command_paths(command: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    if isinstance(command, TyperGroup):
        for name, sub in sorted(command.commands.items()):
            paths += _command_paths(sub, (*path, name))
    return paths


COMMAND_PATHS = _command_paths(typer.main.get_command(app))


def test_the_tree_is_walked() -> None:
    """The walk reaches nested subcommands, so a new command cannot escape the help test."""
    assert ("settings",) in COMMAND_PATHS and ("dimse", "peers", "add") in COMMAND_PATHS
    assert len(COMMAND_PATHS) > 40


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "nubis")
def test_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_settings_lists_every_setting(tmp_path: Path) -> None:
    """The README offers ``nubis settings`` for listing every setting: it prints each name and
    its help text verbatim, square brackets included."""
    result = CliRunner().invoke(
        app, ["settings", "--set", f"data_dir={tmp_path}"], env={"COLUMNS": "400"}
    )
    assert result.exit_code == 0, result.output
    for setting in SETTINGS:
        assert setting.name in result.output
    assert "[/PREFIX]" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["settings", "--set", "workers=[/x]"],  # a bad value, echoed in the error
        ["settings", "--set", "no[/such]=1"],  # an unknown name, echoed in the error
    ],
)
def test_values_in_messages_are_not_markup(args: list[str]) -> None:
    """A value the user typed comes back in the message as typed, not as a markup crash."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "[/" in result.output
