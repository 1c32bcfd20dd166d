"""Structured logging: one JSON object per line (or plain text for humans), with ``extra=`` fields kept.

In the ``tt-server`` and ``tt-worker`` processes (``configure_process_logging``) every line the process writes
goes through here, including what native code writes straight to file descriptors 1 and 2 (TensorFlow's C++
logging and absl): those descriptors become pipes read by a thread that logs each line, so with ``TT_LOG_JSON``
the process's output is JSON lines only. Native INFO lines are silenced at their source (TF_CPP_MIN_LOG_LEVEL=1);
WARNING and above are kept, except CUDA's complaint that a host without a GPU has no GPU. A dependency that keeps
failing logs its warning once per interval with a count (``RepeatFilter``), not once per reconnect.

Every record emitted while serving an RPC carries that call's ``request_id`` (``RequestIdFilter`` reads the
``request_id`` context variable, which the serving middleware sets per call; asyncio copies it into tasks the
call starts). The same id goes back to the client as ``x-request-id`` metadata and is the "error id" of an
INTERNAL error, so a user can quote it and an operator can find every line of that call.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import NoReturn

from tt_server.errors import TensorTriggerError

# Attributes every LogRecord has; anything else came from ``extra=`` (or a filter) and is emitted as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName", "throttle"}

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("tt_request_id", default=None)
# The model a call named and the version that served it (None until resolved, so a NOT_FOUND still names the model
# asked for), set where a request is resolved; the access log reads it.
served_model: contextvars.ContextVar[tuple[str, int | None] | None] = contextvars.ContextVar(
    "tt_served_model", default=None
)
# The name of the token a call authenticated with (None with authentication off), for the access log.
caller: contextvars.ContextVar[str | None] = contextvars.ContextVar("tt_caller", default=None)

# Loggers of the dependencies' client libraries and of our storage adapters: their warnings repeat for as long as
# an outage lasts (one per reconnect attempt, per connection), so they are throttled.
THROTTLED_LOGGERS = (
    "aio_pika",
    "aiormq",
    "asyncpg",
    "aiobotocore",
    "botocore",
    "aiosqlite",
    "tt_server.storage",
    "tt_server.events",
)


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


class PlainFormatter(logging.Formatter):
    """For people (``TT_LOG_JSON=false``): time, level, logger, [request id]: message, then the line's own facts as
    ``key=value`` (``model=mlp version=2``), which JSON lines carry as fields."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s", defaults={"request_id": "-"}
        )

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        facts = [
            f"{key}={_plain(value)}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and key != "request_id" and value is not None
        ]
        return " ".join([line, *facts])


def _plain(value: object) -> str:
    text = str(value)
    return text if text and not _NEEDS_QUOTES.search(text) else json.dumps(text, ensure_ascii=False)


_NEEDS_QUOTES = re.compile(r'[\s="]')


class RepeatFilter(logging.Filter):
    """Lets a repeating warning through once per ``interval`` seconds, with ``repeated``: how many like it were
    held back since. Applies to WARNING and above from ``THROTTLED_LOGGERS`` and to records logged with
    ``extra={"throttle": True}`` (our retry loops); a repeat is the same logger and message template."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._seen: dict[tuple[str, object], list[float]] = {}  # key -> [last emitted, held back since]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if self._interval <= 0 or record.levelno < logging.WARNING:
            return True
        if not (getattr(record, "throttle", False) or record.name.startswith(THROTTLED_LOGGERS)):
            return True
        key = (record.name, record.msg)
        now = self._clock()
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self._interval:
                seen[1] += 1
                return False
            held = 0 if seen is None else int(seen[1])
            self._seen[key] = [now, 0]
            if len(self._seen) > 1000:  # bounded: forget the oldest keys
                for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:500]:
                    del self._seen[old]
        if held:
            record.repeated = held
        return True


def configure_logging(
    level: str, json_lines: bool, repeat_interval: float = 0.0, stream: io.TextIOBase | None = None
) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    if repeat_interval > 0:
        handler.addFilter(RepeatFilter(repeat_interval))
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings.warn (Keras, TensorFlow) as log records of "py.warnings"


def configure_process_logging(level: str, json_lines: bool, repeat_interval: float) -> None:
    """Logging for a server or worker process: everything written to fd 1 and 2 becomes log records."""
    # Before TensorFlow is imported: its C++ INFO lines (CPU features, oneDNN, "no CUDA drivers") are noise.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # Our handler writes to a copy of the real stderr; fd 1 and 2 become pipes into NativeOutput.
    out = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    configure_logging(level, json_lines, repeat_interval, stream=out)
    # A handler error would print its traceback to stderr, which is now the pipe this process reads itself.
    logging.raiseExceptions = False
    for fd, name in ((1, "stdout"), (2, "stderr")):
        relay = NativeOutput(fd, logging.getLogger(f"native.{name}"), out)
        relay.start()
        _relays.append(relay)
    sys.stdout = os.fdopen(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.excepthook = _log_uncaught
    threading.excepthook = lambda args: _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)


# glog/absl line: severity letter, MMDD, time, thread id, file:line] message
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]]+)\] (.*)$")
_NATIVE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
# Native lines that only say "this host has no GPU": expected on CPU hosts, so not the ERROR they claim to be.
_NO_GPU = re.compile(r"failed call to cuInit|Could not find cuda drivers|cuda_diagnostics|kernel driver does not")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


_relays: list[NativeOutput] = []


def finish_native_output(timeout: float = 5.0) -> None:
    """Log what is still on its way through fd 1 and 2 (the last lines of child processes that have exited: the
    TT_WORKERS supervisor's workers write theirs there), then write whatever comes later there straight to
    the log stream. A no-op unless ``configure_process_logging`` ran."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    while _relays:
        _relays.pop().finish(timeout)


class NativeOutput(threading.Thread):
    """Reads what is written to file descriptor ``fd`` (which it replaces with a pipe) and logs it line by line."""

    def __init__(self, fd: int, logger: logging.Logger, passthrough: io.TextIOBase) -> None:
        super().__init__(name=f"tt-native-{fd}", daemon=True)
        read, write = os.pipe()
        os.dup2(write, fd)
        os.close(write)
        self._fd = fd
        self._read = read
        self._logger = logger
        # Child processes that inherit fd 2 (the TT_WORKERS supervisor's workers) log JSON lines of their own:
        # those are passed on as they are, not wrapped again.
        self._passthrough = passthrough

    def run(self) -> None:
        with os.fdopen(self._read, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "backslashreplace").rstrip()
                if line:
                    # This thread must outlive any bad line: if it stopped reading, the pipe would fill and
                    # every write to the descriptor (TensorFlow's included) would block the process.
                    with contextlib.suppress(Exception):
                        self._log(line)

    def finish(self, timeout: float) -> None:
        """Point the descriptor at the log stream itself, which closes this process's end of the pipe, and
        relay what is left in it: the reader sees the end once no child holds the pipe either."""
        os.dup2(self._passthrough.fileno(), self._fd)
        self.join(timeout)
        with contextlib.suppress(Exception):
            self._passthrough.flush()

    def _log(self, line: str) -> None:
        if line.startswith("{") and line.endswith("}") and _is_log_record(line):
            self._passthrough.write(line + "\n")
            return
        match = _NATIVE_LINE.match(line)
        if match is None:
            level = logging.DEBUG if line == _ABSL_PREAMBLE else logging.INFO
            self._logger.log(level, line)
            return
        level = _NATIVE_LEVELS[match[1]]
        if _NO_GPU.search(match[3]):
            level = logging.DEBUG
        self._logger.log(level, match[3], extra={"source": match[2]})


def exit_now(code: int) -> NoReturn:
    """End a server or worker process that has shut down: flush the logs, then exit without the interpreter's
    teardown. Everything that matters (calls drained, jobs handed back, stores, models and the training process
    closed) is done by then; what is left is garbage-collecting TensorFlow's objects and joining its threads,
    1.8 s for an idle tt-server here and 6-10 s for a supervised worker with models on a loaded host,
    time the drain's deadline (Kubernetes' termination grace period) would otherwise pay for nothing."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def log_startup_failure(log: logging.Logger, error: Exception) -> None:
    """The one line a failed start-up leaves (tt-server, tt-worker): the reason with its cause ("metadata database
    is unavailable (Connect call failed ...)"), and a traceback only for the unexpected (an address in use, a
    refused connection or a dependency's domain error is explained by its message)."""
    reason = str(error) or type(error).__name__
    cause = str(error.__cause__ or "")
    if cause and cause not in reason:
        reason = f"{reason} ({cause})"
    expected = isinstance(error, OSError | RuntimeError | TensorTriggerError)
    log.error("start-up failed: %s", reason, exc_info=not expected)


def _is_log_record(line: str) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and "level" in entry and "message" in entry


def _log_uncaught(exc_type: type[BaseException], exc: BaseException | None, tb: TracebackType | None) -> None:
    if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
        return
    logging.getLogger("tt_server").critical("uncaught exception", exc_info=(exc_type, exc, tb))  # type: ignore[arg-type]
