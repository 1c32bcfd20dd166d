"""``tt-server`` / ``python -m tt_server``: run the server until SIGTERM or SIGINT, then drain.

Start-up fails fast and cleanly: the command line and every setting are checked before anything is opened (exit 2),
the listening ports and the token and TLS files are checked before TensorFlow is even imported (a busy port or a
missing file exits 1 within a second or two), and a
failure later in start-up closes what was opened and exits 1 with one log line.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import sys

from tt_server.cli import SERVER_FLAGS, env_name, parse_settings, warn_unknown_variables
from tt_server.config import Settings
from tt_server.logs import configure_process_logging, exit_now, log_startup_failure

log = logging.getLogger("tt_server.main")

DESCRIPTION = (
    "Tensor Trigger server: stores, versions, serves and trains TensorFlow/Keras models over gRPC "
    "(with the embedded defaults when nothing is configured). SIGTERM drains and stops it."
)


class StartupError(Exception):
    """Start-up cannot go on; the message says why, for one log line (no traceback)."""


def check_port_free(address: str) -> None:
    """Fail fast on a port another process listens on. gRPC's port sharing is off (app.py), so the real bind would
    fail too, but only after seconds of TensorFlow import; this answers before. A port freed in between is fine."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if int(port) == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise StartupError(f"cannot listen on {address}: {e.strerror}") from None
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is not "in use"
        try:
            probe.bind(sockaddr)
        except OSError as e:
            reason = "the address is already in use" if e.errno == errno.EADDRINUSE else e.strerror
            raise StartupError(f"cannot listen on {address}: {reason}") from None


def check_files_readable(settings: Settings) -> None:
    """Fail fast on a token or TLS file that cannot be read (missing, a folder, no permission): the server would
    find out only after TensorFlow's import and the stores' opening, and say less."""
    for field in ("auth_tokens_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(settings, field)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise StartupError(f"cannot read {env_name(field)}={path}: {e.strerror}") from None


async def serve(settings: Settings) -> int:
    # Imported here, after the settings and the port were checked: this is where TensorFlow is loaded.
    from tt_server.app import Application
    from tt_server.runtime.memory import settle

    if settings.gc_freeze:
        settle()  # TensorFlow, Keras and our modules, imported by now; the model manager settles after loads
    app = Application(settings)
    try:
        await app.start()  # closes what it opened if it fails
    except Exception as e:
        log_startup_failure(log, e)
        return 1
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        if not stopping:
            stopping.append(asyncio.create_task(app.stop()))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await app.wait()
    return 0


def main(argv: list[str] | None = None) -> None:
    settings, _ = parse_settings("tt-server", DESCRIPTION, SERVER_FLAGS, argv)
    configure_process_logging(settings.log_level, settings.log_json, settings.log_repeat_interval_seconds)
    warn_unknown_variables(log)
    try:
        check_files_readable(settings)
        if settings.worker_count != 1:
            from tt_server import supervisor  # holds the shared port itself, and refuses one a plain server holds

            sys.exit(supervisor.run(settings))
        for address in (settings.grpc_address, settings.http_address, settings.metrics_address):
            if address:
                check_port_free(address)
    except StartupError as e:
        log.error("start-up failed: %s", e)
        sys.exit(1)
    sys.setswitchinterval(settings.gil_switch_interval_seconds)
    if settings.event_loop == "uvloop":
        import uvloop

        code = uvloop.run(serve(settings))
    else:
        code = asyncio.run(serve(settings))
    exit_now(code)


if __name__ == "__main__":
    main()
