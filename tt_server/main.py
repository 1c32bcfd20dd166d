"""``tt-server`` / ``python -m tt_server``: run the server until SIGTERM or SIGINT, then drain."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from tt_server.config import Settings
from tt_server.logs import configure_logging
from tt_server.runtime.memory import settle

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    from tt_server.app import Application  # TensorFlow with it; a supervisor (TT_WORKERS) does without

    if settings.gc_freeze:
        settle()  # TensorFlow, Keras and our modules, imported by now; the model manager settles after loads
    app = Application(settings)
    await app.start()
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        if not stopping:
            stopping.append(asyncio.create_task(app.stop()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await app.wait()


def main() -> None:
    settings = Settings()
    if settings.worker_count != 1:
        from tt_server import supervisor

        sys.exit(supervisor.run(settings))
    configure_logging(settings.log_level, settings.log_json)
    sys.setswitchinterval(settings.gil_switch_interval_seconds)
    if settings.event_loop == "uvloop":
        import uvloop

        uvloop.run(serve(settings))
    else:
        asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
