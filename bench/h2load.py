"""Drive a gRPC unary method with ``h2load`` (nghttp2) and read its numbers.

h2load speaks HTTP/2, not gRPC: it posts a pre-encoded, length-prefixed request file and counts any HTTP 200 as
a success, whatever the ``grpc-status``. Two things make up for that here:

* latency percentiles come from ``--log-file`` (one line per request: start, HTTP status, microseconds), since
  this h2load prints only min/max/mean/sd;
* an OK answer carries exactly one DATA message of known size, while an error is a trailers-only response
  with no DATA. So ``data bytes / answer frame size`` counts the OK answers, and the rest are errors.

``--warm-up-time`` is not used: h2load leaves warm-up requests out of its counts but not out of the traffic
bytes, which would spoil that check. A separate short run warms up instead.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass(frozen=True, slots=True)
class H2loadResult:
    connections: int
    streams: int  # per connection
    seconds: float
    requests: int  # done
    succeeded: int  # HTTP-level, as h2load counts them
    failed: int  # failed + errored + timeout, as h2load counts them
    grpc_ok: int  # answers with a response message (data bytes / answer frame size)
    grpc_errors: int  # done - grpc_ok: trailers-only (non-OK) answers
    req_per_s: float
    mean_ms: float
    sd_ms: float
    max_ms: float
    p50_ms: float
    p99_ms: float

    @property
    def in_flight(self) -> int:
        return self.connections * self.streams


def run(
    url: str,
    request_file: Path,
    answer_frame_bytes: int,
    connections: int,
    streams: int,
    seconds: float,
    log_file: Path,
) -> H2loadResult:
    """Run h2load for ``seconds`` with ``connections`` x ``streams`` requests in flight."""
    log_file.unlink(missing_ok=True)  # h2load appends
    command = [
        "h2load",
        f"--duration={seconds:g}",
        f"--clients={connections}",
        f"--max-concurrent-streams={streams}",
        "--threads=1",  # one core for the load generator, the other for the server under test
        f"--log-file={log_file}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"--data={request_file}",
        url,
    ]
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed ({out.returncode}): {out.stderr or out.stdout}")
    return parse(out.stdout, log_file, answer_frame_bytes, connections, streams)


def warm_up(url: str, request_file: Path, connections: int, streams: int, seconds: float = 1.0) -> None:
    command = [
        "h2load",
        f"--duration={seconds:g}",
        f"--clients={connections}",
        f"--max-concurrent-streams={streams}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        f"--data={request_file}",
        url,
    ]
    subprocess.run(command, capture_output=True, timeout=seconds + 60, check=True)


def parse(stdout: str, log_file: Path, answer_frame_bytes: int, connections: int, streams: int) -> H2loadResult:
    finished = _search(r"finished in ([\d.]+\w+), ([\d.]+) req/s", stdout)
    requests = _search(
        r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
        stdout,
    )
    data_bytes = int(_search(r"traffic: .*?, .*? headers .*?, [\d.]+\w*B \((\d+)\) data", stdout)[0])
    timing = _search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", stdout)
    done, succeeded = int(requests[0]), int(requests[1])
    grpc_ok = data_bytes // answer_frame_bytes
    latencies_ms = _log_latencies_ms(log_file)
    p50, p99 = np.percentile(latencies_ms, [50, 99]) if latencies_ms.size else (float("nan"), float("nan"))
    return H2loadResult(
        connections=connections,
        streams=streams,
        seconds=_ms(finished[0]) / 1e3,
        requests=done,
        succeeded=succeeded,
        failed=sum(int(n) for n in requests[2:]),
        grpc_ok=grpc_ok,
        grpc_errors=max(done - grpc_ok, 0),
        req_per_s=float(finished[1]),
        mean_ms=_ms(timing[2]),
        sd_ms=_ms(timing[3]),
        max_ms=_ms(timing[1]),
        p50_ms=float(p50),
        p99_ms=float(p99),
    )


def version() -> str:
    out = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def _log_latencies_ms(log_file: Path) -> np.ndarray:
    """Third column of h2load's log: microseconds from request start to the end of the response."""
    if not log_file.exists() or log_file.stat().st_size == 0:
        return np.empty(0)
    table = np.loadtxt(log_file, dtype=np.int64, usecols=(1, 2), ndmin=2)
    completed = table[table[:, 0] == 200]  # -1 marks streams that failed
    return completed[:, 1] / 1e3


def _search(pattern: str, text: str) -> tuple[str, ...]:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"unexpected h2load output (no match for {pattern!r}):\n{text}")
    return match.groups()


def _ms(value: str) -> float:
    number = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    if number is None:
        raise RuntimeError(f"unexpected h2load time {value!r}")
    return float(number[1]) * _UNITS[number[2]]
