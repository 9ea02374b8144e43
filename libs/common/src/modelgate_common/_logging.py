"""JSON-lines logging with the request id of the request being served.

Every record is one JSON object on stderr (supervisord or Docker collects it).
Audit events go to the ``modelgate.audit`` logger and, when an audit file is
configured, to that file as well, apart from the access and error logs.
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import sys
import time
from pathlib import Path
from typing import Any

import orjson

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

AUDIT_LOGGER = "modelgate.audit"
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        # An audit event goes to stderr and to the audit file: one formatting for both.
        done = record.__dict__.get("_mg_line")
        if done is not None and done[0] is self:
            line: str = done[1]
            return line
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "pid": record.process,  # which worker of the service
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        line = orjson.dumps(entry, default=str).decode()
        # JSON lets U+0085, U+2028 and U+2029 stand raw in a string, but many line
        # readers (Python's splitlines among them) end a line there: a client's path
        # must not split one record in two. Escaped, the line is the same JSON.
        line = line.translate(_LINE_BREAKS)
        record._mg_line = (self, line)  # a "_" name: never a field of the line itself
        return line


def configure_logging(service: str, level: str = "INFO", audit_file: Path | None = None) -> None:
    formatter = JsonFormatter(service)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [stderr]
    root.setLevel(level.upper())
    # Our middleware writes the access log; uvicorn's would be a second, unstructured one.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "gunicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    configure_audit(formatter, audit_file)


def configure_audit(formatter: logging.Formatter, audit_file: Path | None) -> None:
    """Send audit events to ``audit_file`` (the CLI calls this alone: no stderr log)."""
    audit = logging.getLogger(AUDIT_LOGGER)
    for old in audit.handlers:  # configured twice (tests, reloads): release the old file
        old.close()
    audit.handlers[:] = []
    audit.setLevel(logging.INFO)
    if audit_file is not None:
        audit_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(audit_file, encoding="utf-8")
        handler.setFormatter(formatter)
        audit.addHandler(handler)


_audit_log = logging.getLogger(AUDIT_LOGGER)


def audit(event: str, **fields: Any) -> None:
    """Write one audit event. Callers pass identifiers, never secrets or payloads."""
    _audit_log.info(event, extra={"audit": event, **fields})
