"""Logging of every nubis process, and what keeps patient data out of it.

No log line, at any level, carries a value of an attribute that may identify a patient
(nubis.dicom.identifying): nubis's own messages name attributes and reasons. Libraries below it
would log values at some levels, so :func:`configure_logging` holds them back:

* SQLAlchemy logs every statement with its parameters (a patient's name in an INSERT, a
  QIDO-RS match value in a SELECT) once its logger is at INFO: capped at WARNING.
* pynetdicom dumps C-FIND, C-MOVE and C-GET identifiers at INFO, and every message at DEBUG:
  capped at WARNING, or INFO when ``log_level`` is debug (association and PDU events, no
  data sets: nubis.dimse.server also turns pynetdicom's identifier logging off). Its
  warnings about a non-conformant UID quote what the peer sent there, which may be anything:
  :class:`UnquoteValues` leaves the value out.
* botocore, boto3, s3transfer and urllib3 log whole requests and responses at DEBUG: capped at
  INFO.
* uvicorn's access log (on when ``log_level`` is debug) has each request line, whose query
  string is a QIDO-RS query (``?PatientName=...``): :class:`DropQueryString` cuts it off, and
  the token of a share link's path (``/share/<token>``), a secret, with it.
* pydicom's value validation warns, and logs, quoting the value it finds invalid ("Invalid
  value for VR UI: '...'"): off (nubis.dicom.inspect checks what the archive relies on, and
  says what is wrong without quoting). pydicom logs each of its warnings too, so the warnings
  themselves are dropped; a decoder's failure on a corrupt frame is logged without its
  traceback (the client gets a 406 naming what failed; a traceback in the log marks a bug of
  nubis). Other Python warnings go through the ``py.warnings`` logger instead of stderr.

Secrets stay out of logs and messages too: :func:`redact_url` hides a password written into a
URL (an index or blob store URL) wherever one is logged, quoted in an error or listed.

``nubis serve`` calls this in the parent process and uvicorn's worker processes call it again
(nubis.web.app.app_from_environment): a worker starts with no logging of its own.

Each line logged while an HTTP request is served names the request's id (:data:`request_id`,
set by nubis.web.request_ids; the ``X-Request-ID`` of the response and the ``request_id`` of
its audit records). With ``log_format = json`` every line is one JSON object
(:class:`JsonFormatter`) with the same fields, for a log shipper to index.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from contextvars import ContextVar
from datetime import UTC, datetime
from urllib.parse import urlsplit

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")

# The id of the HTTP request being served in this context (asyncio task, or the thread pool
# call Starlette copied the context into); None outside requests.
request_id: ContextVar[str | None] = ContextVar("nubis_request_id", default=None)


class TextFormatter(logging.Formatter):
    """:data:`FORMAT`, with ``[request ID]`` after the logger's name during a request."""

    def __init__(self) -> None:
        super().__init__(FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        current = request_id.get()
        if current is None:
            return text
        head, sep, tail = text.partition(": ")
        return f"{head} [request {current}]{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the request id
    during a request, and the traceback of an exception (nubis's own errors log none)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        current = request_id.get()
        if current is not None:
            line["request_id"] = current
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["traceback"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of a ``log_format`` setting's value."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


# Loggers of libraries that log data values, and the most they may log.
_CAPS = {
    "sqlalchemy": logging.WARNING,
    "botocore": logging.INFO,
    "boto3": logging.INFO,
    "s3transfer": logging.INFO,
    "urllib3": logging.INFO,
}


class DropQueryString(logging.Filter):
    """Cuts the query string off uvicorn's access log lines (``"GET /path?query HTTP/1.1"``),
    and a share link's token off its path."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access record: (client address, method, path with query, HTTP version, status)
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, sep, _ = args[2].partition("?")
            shown = path
            if path.startswith(_SHARE_PATH) and len(path) > len(_SHARE_PATH):
                shown = _SHARE_PATH + "<token>"
            if sep:
                shown += "?..."
            if shown != args[2]:
                record.args = (*args[:2], shown, *args[3:])
        return True


_SHARE_PATH = "/share/"


class UnquoteValues(logging.Filter):
    """Leaves the quoted value out of pynetdicom's "Non-conformant 'NAME' value 'VALUE'" and
    "Invalid 'NAME' value 'VALUE' - reason" messages."""

    _QUOTED = re.compile(r"\bvalue '.*?'(?= - |$)", re.DOTALL)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.args:
            record.msg = self._QUOTED.sub("value (not shown)", record.msg)
        return True


class StripTraceback(logging.Filter):
    """Keeps pydicom's error messages and drops the tracebacks it attaches. On the handlers:
    a logger's own filters do not see what its child loggers (pydicom.pixels...) log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "pydicom" or record.name.startswith("pydicom."):
            record.exc_info = None
            record.exc_text = None
        return True


def _add_filter(logger: logging.Logger, kind: type[logging.Filter]) -> None:
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


def configure_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr at ``level`` (a ``log_level`` setting) as ``log_format`` says (text or
    json), holding back what would log data values (see the module docs)."""
    numeric = logging.getLevelName(level.upper())
    logging.basicConfig(level=numeric, format=FORMAT, stream=sys.stderr)
    logging.getLogger().setLevel(numeric)
    for handler in logging.getLogger().handlers:
        # basicConfig's own handler (an earlier call's, or a test runner's, is left alone).
        if handler.formatter is not None and handler.formatter._fmt == FORMAT:
            handler.setFormatter(formatter(log_format))
    if log_format == "json":
        # uvicorn's loggers have handlers of their own (its error and access lines).
        for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
            for handler in logging.getLogger(name).handlers:
                handler.setFormatter(JsonFormatter())
    for name, most in _CAPS.items():
        logging.getLogger(name).setLevel(max(numeric, most))
    dimse = logging.INFO if numeric <= logging.DEBUG else logging.WARNING
    logging.getLogger("pynetdicom").setLevel(max(numeric, dimse))
    _add_filter(logging.getLogger("pynetdicom.utils"), UnquoteValues)
    _add_filter(logging.getLogger("uvicorn.access"), DropQueryString)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, StripTraceback) for f in handler.filters):
            handler.addFilter(StripTraceback())
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    from pydicom import config as pydicom_config

    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE


__all__ = [
    "FORMAT",
    "LOG_FORMATS",
    "DropQueryString",
    "JsonFormatter",
    "StripTraceback",
    "TextFormatter",
    "UnquoteValues",
    "configure_logging",
    "formatter",
    "request_id",
]


def redact_url(url: str) -> str:
    """``url`` with any password in it replaced by ``***``, for messages, logs and listings.

    Credentials belong in the environment or in files (AWS variables, ~/.pgpass), but an
    operator may still write one into a URL; it must not be echoed back.
    """
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username}:***@{host}").geturl()
