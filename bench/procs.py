"""Start and stop the processes under test: ``tt-server`` and the echo server, each in its own process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A child process whose stderr goes to a file (read on failure and to count logged errors)."""

    def __init__(self, name: str, command: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log, env=env)

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        # A start-up error can leave the process alive but useless (non-daemon executor threads keep it up).
        if "Traceback (most recent call last)" in self.log_path.read_text(errors="replace"):
            raise RuntimeError(f"{self.name} failed:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def error_lines(self) -> int:
        """Log lines at ERROR or worse: the server logs every unexpected (INTERNAL) error once."""
        text = self.log_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if '"level": "ERROR"' in line or '"level": "CRITICAL"' in line)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass(frozen=True, slots=True)
class Server:
    process: Process
    address: str
    metrics_url: str | None  # None when this server version has no Prometheus endpoint


def start_server(data_dir: Path, log_path: Path, extra_env: dict[str, str] | None = None) -> Server:
    """``tt-server`` in embedded mode (SQLite, local blobs, in-process broker) on a free loopback port."""
    from tt_server.config import Settings

    address = f"127.0.0.1:{free_port()}"
    metrics_address = f"127.0.0.1:{free_port()}" if "metrics_address" in Settings.model_fields else None
    # Default settings whatever the caller's environment says (so embedded backends, no auth): the benchmark
    # measures the hot path as shipped, plus what ``extra_env`` changes.
    env = {key: value for key, value in os.environ.items() if not key.startswith("TT_")}
    env.update(
        TT_GRPC_ADDRESS=address,
        TT_DATA_DIR=str(data_dir),
        TT_LOG_LEVEL="WARNING",
        TT_SHUTDOWN_GRACE_SECONDS="2",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    if metrics_address:
        env["TT_METRICS_ADDRESS"] = metrics_address
    env.update(extra_env or {})
    process = Process("tt-server", [sys.executable, "-m", "tt_server"], log_path, env)
    try:
        _wait_serving(process, address, timeout=120.0)
    except BaseException:
        process.stop()
        raise
    return Server(process, address, f"http://{metrics_address}/metrics" if metrics_address else None)


def counters(metrics_url: str | None, method: str) -> dict[str, float]:
    """``method``'s finished calls by status code and the batcher's totals, from the server's /metrics."""
    if metrics_url is None:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tt_rpcs_total" and sample.labels.get("method") == method:
                values[sample.labels["code"]] = sample.value
            elif sample.name in ("tt_batch_requests_sum", "tt_batch_requests_count", "tt_batch_rows_sum"):
                values[sample.name] = values.get(sample.name, 0.0) + sample.value  # summed over servables
    return values


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}


def _wait_serving(process: Process, address: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            process.check_alive()
            with contextlib.suppress(grpc.RpcError):
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
    raise RuntimeError(f"tt-server not SERVING on {address} after {timeout:g} s:\n{process.log_tail()}")


def start_echo(response_file: Path, log_path: Path, loop: str) -> tuple[Process, str]:
    port = free_port()
    command = [sys.executable, "-m", "bench.echo", str(port), str(response_file), loop]
    process = Process("echo", command, log_path)
    assert process.proc.stdout is not None
    if process.proc.stdout.readline().strip() != b"ready":  # printed once it listens
        process.stop()
        raise RuntimeError(f"echo server did not start:\n{process.log_tail()}")
    return process, f"127.0.0.1:{port}"
