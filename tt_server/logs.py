"""Structured logging: one JSON object per line (or plain text for humans), with ``extra=`` fields kept.

Every record emitted while serving an RPC carries that call's ``request_id`` (``RequestIdFilter`` reads the
``request_id`` context variable, which the serving middleware sets per call; asyncio copies it into tasks the
call starts). The same id goes back to the client as ``x-request-id`` metadata and is the "error id" of an
INTERNAL error, so a user can quote it and an operator can find every line of that call.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else came from ``extra=`` (or a filter) and is emitted as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tt_request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records logged while serving a call. A filter rather than formatter logic so
    that it runs in the emitting task (where the context variable is set) whatever the handler's formatter."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = request_id.get()
        if current is not None and not hasattr(record, "request_id"):
            record.request_id = current
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                entry[key] = value if isinstance(value, str | int | float | bool | None) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, json_lines: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s", defaults={"request_id": "-"}
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
