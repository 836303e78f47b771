"""``nubis`` commands run in the test's own process, through typer's CliRunner.

A ``python -m nubis`` subprocess costs 2-3 s of interpreter and import start-up on the CI
machine. A test about what a command does (edit the peer table, shred a patient, list audit
records) runs the same typer app here, with the same arguments, environment and exit code; a
test about a separate process (a signal, its own durability, a server's start) keeps the
subprocess. The answer has a subprocess's shape, so the two are interchangeable.

Commands of long work (import, backup, migrate...) configure logging as a server does, for the
whole process: what they change of the logging, warnings and pydicom's validation settings, and
of the environment, is put back after each command, so later tests see what they would have seen.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from pydicom import config as pydicom_config
from typer.testing import CliRunner

from nubis.cli.main import app
from nubis.dimse.peers import MISS_RELOAD_SECONDS


@contextmanager
def _process_state_kept() -> Iterator[None]:
    """Put back what configure_logging and the commands change of the process."""
    root = logging.getLogger()
    loggers = [root, *(logging.getLogger(name) for name in list(root.manager.loggerDict))]
    levels = [(logger, logger.level, list(logger.filters)) for logger in loggers]
    handlers = list(root.handlers)
    handler_filters = [(handler, list(handler.filters)) for handler in handlers]
    was_capturing = logging._warnings_showwarning is not None  # type: ignore[attr-defined]
    validation = (
        pydicom_config.settings.reading_validation_mode,
        pydicom_config.settings.writing_validation_mode,
    )
    environ = dict(os.environ)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        (
            pydicom_config.settings.reading_validation_mode,
            pydicom_config.settings.writing_validation_mode,
        ) = validation
        if not was_capturing:
            logging.captureWarnings(False)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        for handler, filters in handler_filters:
            handler.filters = filters
        for logger, level, filters in levels:
            logger.setLevel(level)
            logger.filters = filters


def nubis_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``nubis ARGS`` as the command line runs it; ``env`` is added to the environment, and
    ``check`` fails the test on a non-zero exit status, showing what the command printed.

    An exception the command did not handle is exit status 1 with its traceback on stderr, as
    the interpreter would print it.
    """
    runner = CliRunner()
    with _process_state_kept():
        result = runner.invoke(app, list(args), env=dict(env or {}), input=input, prog_name="nubis")
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    if args[:2] == ("dimse", "peers") and args[2:3] in (("add",), ("import",), ("remove",)):
        # A running server re-reads its peer table for an unknown title at most every
        # MISS_RELOAD_SECONDS (the documented "at once"); a subprocess's start-up covered that.
        time.sleep(MISS_RELOAD_SECONDS)
    done = subprocess.CompletedProcess(["nubis", *args], result.exit_code, result.stdout, stderr)
    if check and done.returncode != 0:
        raise AssertionError(
            f"nubis {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
    return done
