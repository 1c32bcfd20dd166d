"""One serving worker under the supervisor (``tt_server/supervisor.py``): the worker's side of the link.

The supervisor starts ``python -m tt_server.supervised <index> <read fd> <write fd> <runs jobs>`` and talks to it
over two pipes in JSON lines. The first line it sends is the settings (so the worker serves exactly what the
supervisor was configured with, however that was: environment, flags); then:

* supervisor -> worker: ``serving`` (whether every worker serves: health follows it), ``event`` (a registry
  change another worker made), ``job`` (a job id another worker queued, sent to the one worker that runs jobs);
* worker -> supervisor: ``ready`` (listening and warm), ``event`` and ``job`` (to pass on), ``memory`` (resident
  bytes and model bytes, every ``MEMORY_REPORT_SECONDS``).

End of file on the read pipe means the supervisor is gone: the worker drains and exits rather than serve on
unsupervised. With RabbitMQ configured, events and jobs go through it as in any replica and not through the link.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

from tt_server.config import Settings
from tt_server.events import LocalEventBus
from tt_server.logs import configure_process_logging, exit_now
from tt_server.storage.local_broker import LocalBroker
from tt_server.types import EventKind, RegistryEvent

log = logging.getLogger("tt_server.supervised")

MEMORY_REPORT_SECONDS = 10.0


def encode_event(event: RegistryEvent) -> dict[str, Any]:
    return {"kind": event.kind.value, "model": event.model_name, "version": event.version, "label": event.label}


def decode_event(data: dict[str, Any]) -> RegistryEvent:
    return RegistryEvent(EventKind(data["kind"]), data["model"], data.get("version"), data.get("label"))


def resident_bytes(pid: int | str = "self") -> int:
    """The process's resident set size (Linux /proc; 0 where that cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class WorkerLink:
    """What the application needs from the supervisor: an event bus and a job queue spanning the workers."""

    def __init__(self, index: int, runs_jobs: bool, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.runs_jobs = runs_jobs
        self._writer = writer
        self.events = _LinkedEventBus(self)
        self.broker: LocalBroker = LocalBroker() if runs_jobs else _ForwardingBroker(self)

    def send(self, kind: str, **fields: Any) -> None:
        if self._writer.is_closing():
            return  # the supervisor is gone; the worker is on its way out
        self._writer.write(json.dumps({"t": kind, **fields}).encode() + b"\n")


class _LinkedEventBus(LocalEventBus):
    """Delivers here first (a client that just changed something sees it at once), then to the other workers."""

    def __init__(self, link: WorkerLink) -> None:
        super().__init__()
        self._link = link

    async def publish(self, event: RegistryEvent) -> None:
        await super().publish(event)
        self._link.send("event", event=encode_event(event))

    async def deliver(self, event: RegistryEvent) -> None:
        await super().publish(event)


class _ForwardingBroker(LocalBroker):
    """A worker that runs no jobs hands the ids it queues to the one that does. Nothing is lost if that one is
    down: it republishes every unfinished job from the store when it (re)starts."""

    def __init__(self, link: WorkerLink) -> None:
        super().__init__()
        self._link = link

    async def publish(self, job_id: str) -> None:
        self._link.send("job", id=job_id)


async def _read_messages(reader: asyncio.StreamReader, link: WorkerLink, app: Any) -> None:
    while line := await reader.readline():
        try:
            message = json.loads(line)
            kind = message["t"]
            if kind == "serving":
                await app.set_serving(bool(message["value"]))
            elif kind == "event":
                await link.events.deliver(decode_event(message["event"]))
            elif kind == "job":
                await link.broker.publish(str(message["id"]))
        except Exception:
            log.exception("bad message from the supervisor", extra={"line": line[:200].decode(errors="replace")})
    log.warning("the supervisor is gone; draining")
    await app.stop()


async def _report_memory(link: WorkerLink, app: Any) -> None:
    while True:
        link.send(
            "memory",
            rss=resident_bytes(),
            model_bytes=app.models.loaded_bytes,
            models=len(app.models.loaded_versions),
        )
        await asyncio.sleep(MEMORY_REPORT_SECONDS)


async def _serve(index: int, read_fd: int, write_fd: int, runs_jobs: bool, settings: Settings) -> None:
    from tt_server.app import Application  # TensorFlow comes with it: after logging is set up
    from tt_server.runtime.memory import settle

    if settings.gc_freeze:
        settle()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0))
    transport, protocol = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(write_fd, "wb", 0))
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    link = WorkerLink(index, runs_jobs, writer)
    app = Application(settings, link=link)
    tasks: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        tasks.append(asyncio.create_task(app.stop()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await app.start()
    tasks.append(asyncio.create_task(_read_messages(reader, link, app), name="tt-supervisor-link"))
    tasks.append(asyncio.create_task(_report_memory(link, app), name="tt-memory-report"))
    link.send("ready", port=app.port)
    await app.wait()
    for task in tasks:
        task.cancel()
    writer.close()


class _WorkerFilter(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self._index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self._index
        return True


def main(argv: list[str] | None = None) -> None:
    index, read_fd, write_fd, runs_jobs = (int(a) for a in (argv or sys.argv[1:]))
    # The settings come first and alone on the pipe; read them before any event loop exists.
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(read_fd, 1)
        if not chunk:
            sys.exit(1)  # the supervisor died before sending them
        line += chunk
    settings = Settings(**json.loads(line))
    configure_process_logging(settings.log_level, settings.log_json, settings.log_repeat_interval_seconds)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerFilter(index))
    sys.setswitchinterval(settings.gil_switch_interval_seconds)
    serving = _serve(index, read_fd, write_fd, bool(runs_jobs), settings)
    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(serving)
    else:
        asyncio.run(serving)
    exit_now(0)


if __name__ == "__main__":
    main()
