"""The supervisor: ``TT_WORKERS`` serving processes on one gRPC port, as one server to its operator.

One Python process uses about one core for requests (the GIL), so ``tt-server`` with ``TT_WORKERS`` = N (or
'auto') runs N worker processes (``tt_server/supervised.py``), each a full server sharing the port through
SO_REUSEPORT: the kernel spreads new connections over them. This process imports no TensorFlow; it

* holds the port for the whole run (bound with SO_REUSEPORT, not listening), so nothing that does not share
  it can take it while a worker restarts, and a port already held by a plain server fails here at once;
* restarts a worker that exits (backoff doubling from ``RESTART_DELAY_SECONDS`` up to
  ``MAX_RESTART_DELAY_SECONDS`` while it keeps dying young); a worker that exits before the first time all
  served fails the whole start, as a single server would;
* says SERVING (every worker's health) only while all workers serve;
* on SIGTERM/SIGINT passes SIGTERM to every worker, each drains as a single server does, and exits 0 when all
  did (1 otherwise, or when one had to be killed after the grace period);
* relays, in embedded mode (no RabbitMQ), registry events between workers and job ids to worker 0, the one
  that runs jobs; the SQLite file is shared in WAL mode;
* serves Prometheus metrics for all (prometheus_client's multiprocess mode) when ``TT_METRICS_ADDRESS`` is
  set, with each worker's resident and model bytes; those also go to the log when a worker's model count
  changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from tt_server.config import Settings
from tt_server.logs import finish_native_output

log = logging.getLogger("tt_server.supervisor")

RESTART_DELAY_SECONDS = 0.5
MAX_RESTART_DELAY_SECONDS = 30.0
HEALTHY_RUN_SECONDS = 30.0  # a worker that lived this long starts over at the shortest restart delay
STOP_MARGIN_SECONDS = 15.0  # beyond the drain: closing stores, unloading models


def run(settings: Settings) -> int:
    """Supervise ``settings.worker_count`` serving workers until SIGTERM/SIGINT; returns the exit status."""
    return asyncio.run(Supervisor(settings).run())


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: bool = False
    started: float = 0.0
    restarts: int = 0
    memory: dict[str, int] = field(default_factory=dict)

    def send(self, message: dict[str, Any]) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(json.dumps(message).encode() + b"\n")


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._workers = [_Worker(i) for i in range(settings.worker_count)]
        self._stopping = asyncio.Event()
        self._all_served = asyncio.Event()
        self._failed: str | None = None
        self._serving = False
        self._metrics_dir: str | None = None
        self._gauges: Any = None

    async def run(self) -> int:
        s = self.settings
        try:
            reserved = _reserve_port(s.grpc_address)
        except OSError as e:
            log.error("cannot listen", extra={"address": s.grpc_address, "error": str(e)})
            return 1
        host = s.grpc_address.rsplit(":", 1)[0]
        address = f"{host}:{reserved.getsockname()[1]}"
        child_settings = s.model_copy(update={"workers": 1, "grpc_port_sharing": True, "grpc_address": address})
        env = dict(os.environ)
        if s.metrics_address:
            self._metrics_dir = tempfile.mkdtemp(prefix="tt-metrics-")
            env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir
            child_settings = child_settings.model_copy(update={"metrics_address": ""})
            self._serve_metrics(s.metrics_address)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        log.info("supervisor starting workers", extra={"workers": len(self._workers), "address": address})
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(
                self._keep_running(w, child_settings.model_dump_json(), env), name=f"tt-worker-{w.index}"
            )
            for w in self._workers
        ]
        try:
            await self._stopping.wait()
            if self._failed is None:
                log.info("supervisor draining workers")
            for w in self._workers:
                if w.process is not None and w.process.returncode is None:
                    w.process.send_signal(signal.SIGTERM)
            limit = s.drain_delay_seconds + s.shutdown_grace_seconds + STOP_MARGIN_SECONDS
            await asyncio.wait(tasks, timeout=limit)
            killed = 0
            for w in self._workers:
                if w.process is not None and w.process.returncode is None:
                    log.error("worker did not stop in time; killing it", extra={"worker": w.index})
                    w.process.kill()
                    killed += 1
            await asyncio.gather(*tasks, return_exceptions=True)
            codes = [w.process.returncode if w.process is not None else None for w in self._workers]
        finally:
            reserved.close()
            if self._metrics_dir is not None:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
        ok = self._failed is None and killed == 0 and all(code == 0 for code in codes)
        # The workers' last lines come through this process's stderr relay: out before the last line of all.
        await asyncio.to_thread(finish_native_output)
        log.info(
            "supervisor stopped",
            extra={"exit_codes": str(codes), "seconds": round(time.perf_counter() - started, 3)},
        )
        return 0 if ok else 1

    def _on_signal(self, signum: int) -> None:
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        self._stopping.set()

    async def _keep_running(self, w: _Worker, settings_json: str, env: dict[str, str]) -> None:
        delay = RESTART_DELAY_SECONDS
        while not self._stopping.is_set():
            await self._run_once(w, settings_json, env)
            if self._stopping.is_set():
                return
            code = w.process.returncode if w.process is not None else None
            lived = time.monotonic() - w.started
            if not self._all_served.is_set():
                self._failed = f"worker {w.index} exited with {code} while starting"
                log.error("worker exited while starting; stopping", extra={"worker": w.index, "exit_code": code})
                self._stopping.set()
                return
            delay = RESTART_DELAY_SECONDS if lived > HEALTHY_RUN_SECONDS else min(delay * 2, MAX_RESTART_DELAY_SECONDS)
            log.error(
                "worker exited; restarting it",
                extra={"worker": w.index, "exit_code": code, "lived_seconds": round(lived, 1), "delay_seconds": delay},
            )
            w.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self, w: _Worker, settings_json: str, env: dict[str, str]) -> None:
        loop = asyncio.get_running_loop()
        child_read, parent_write = os.pipe()
        parent_read, child_write = os.pipe()
        try:
            w.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tt_server.supervised",
                str(w.index),
                str(child_read),
                str(child_write),
                str(int(w.index == 0)),
                pass_fds=(child_read, child_write),
                env=env,
            )
        finally:
            os.close(child_read)
            os.close(child_write)
        w.started = time.monotonic()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(parent_read, "rb", 0))
        transport, protocol = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(parent_write, "wb", 0))
        w.writer = asyncio.StreamWriter(transport, protocol, None, loop)
        w.writer.write(settings_json.encode() + b"\n")
        log.info("worker started", extra={"worker": w.index, "pid": w.process.pid, "restarts": w.restarts})
        try:
            while line := await reader.readline():
                try:
                    self._on_message(w, json.loads(line))
                except (ValueError, KeyError, TypeError):
                    log.warning("bad message from a worker", extra={"worker": w.index})
            await w.process.wait()
        finally:
            w.writer.close()
            w.writer = None
            pid = w.process.pid
            if w.ready:
                w.ready = False
                self._update_health()
            if self._metrics_dir is not None:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(pid, self._metrics_dir)

    def _on_message(self, w: _Worker, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "ready":
            w.ready = True
            log.info("worker serving", extra={"worker": w.index, "pid": w.process.pid if w.process else None})
            self._update_health()
        elif kind == "event":
            for other in self._workers:
                if other is not w:
                    other.send(message)
        elif kind == "job":
            self._workers[0].send(message)  # if it is down, it republishes unfinished jobs when back
        elif kind == "memory":
            before = w.memory.get("models")
            w.memory = {k: int(message[k]) for k in ("rss", "model_bytes", "models")}
            if self._gauges is not None:
                rss, model_bytes = self._gauges
                rss.labels(str(w.index)).set(w.memory["rss"])
                model_bytes.labels(str(w.index)).set(w.memory["model_bytes"])
            if before is not None and before != w.memory["models"]:
                log.info("worker memory", extra={"worker": w.index, **w.memory})

    def _update_health(self) -> None:
        if self._stopping.is_set():
            return  # each worker already says NOT_SERVING while it drains
        serving = all(w.ready for w in self._workers) and not self._stopping.is_set()
        if serving:
            self._all_served.set()
        if serving != self._serving:
            self._serving = serving
            log.info("all workers serving" if serving else "not all workers serving")
            for w in self._workers:
                w.send({"t": "serving", "value": serving})

    def _serve_metrics(self, address: str) -> None:
        from prometheus_client import CollectorRegistry, Gauge, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self._metrics_dir)
        self._gauges = (
            Gauge("tt_worker_resident_bytes", "Resident memory of each serving worker.", ["worker"], registry=registry),
            Gauge(
                "tt_worker_model_bytes",
                "Estimated variable bytes of the model versions each serving worker has loaded.",
                ["worker"],
                registry=registry,
            ),
        )
        host, port = address.rsplit(":", 1)
        start_http_server(int(port), addr=host, registry=registry)


def _reserve_port(address: str) -> socket.socket:
    """Bind (without listening) the serving address with SO_REUSEPORT: picks the port for ':0' and keeps it
    ours; fails if a process that does not share the port holds it."""
    host, port = address.rsplit(":", 1)
    host = host.strip("[]")
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock
