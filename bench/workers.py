"""The ``TT_WORKERS`` scaling table: req/s and server CPU per request with 1 and 2 serving processes.

The load generator (h2load, and this process) is pinned to core 0 and the server (supervisor and workers) to
the other cores, so the server's CPU is its own and is measured exactly: the CPU-seconds of its whole process
tree (``/proc/<pid>/stat`` of every descendant) over the run, divided by the answers. From the per-process
efficiency measured here (CPU microseconds per request at N processes) the table extrapolates what N = 8 and
16 would give on a host with that many free cores: N cores / (CPU seconds per request), an upper bound that
ignores memory bandwidth and the kernel's connection spreading.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import cpu, h2load, workload

if TYPE_CHECKING:
    from bench.run import Bench

tree_cpu_seconds = cpu.tree_cpu_seconds
WORKER_COUNTS = (1, 2)
PROJECTED = (8, 16)


@contextlib.contextmanager
def pinned(cores: set[int]) -> Iterator[None]:
    """This process (and what it starts meanwhile) on ``cores`` only."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def scaling(bench: Bench, payload: dict[str, Any], in_flight: tuple[int, int], seconds: float) -> dict[str, Any]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return {"skipped": "needs 2 cores: one for the load generator, the rest for the server"}
    load_core, server_cores = {cores[0]}, set(cores[1:])
    connections, streams = in_flight
    rows = []
    for workers in WORKER_COUNTS:
        with pinned(server_cores):
            server = bench.start_server({"TT_WORKERS": str(workers), "TT_METRICS_ADDRESS": ""})
        try:
            url = f"http://{server.address}{workload.PREDICT_PATH}"
            request_file = bench.tmp / "request.bin"
            answer_frame_bytes = payload["answer_bytes"] + 5
            bench.log(f"h2load, {connections * streams} in flight, TT_WORKERS={workers}")
            with pinned(load_core):
                bench.settle()
                # Long enough for every worker to load the model (the bench's own check reached only one).
                h2load.warm_up(url, request_file, connections, streams, seconds=5.0)
                mark, before = cpu.mark(), tree_cpu_seconds(server.process.proc.pid)
                result = h2load.run(
                    url, request_file, answer_frame_bytes, connections, streams, seconds, bench.tmp / "h2load.tsv"
                )
                used = tree_cpu_seconds(server.process.proc.pid) - before
                span = bench.cpu_span(f"TT_WORKERS={workers}", mark)
            errors = bench.count_logged_errors(server.process, f"TT_WORKERS={workers}")
        finally:
            server.process.stop()
        us_per_request = used / result.grpc_ok * 1e6 if result.grpc_ok else None
        rows.append(
            {
                "workers": workers,
                "req_per_s": round(result.req_per_s),
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "grpc_errors": result.grpc_errors,
                "server_cpu_s": round(used, 2),
                "server_cores_busy": round(used / result.seconds, 2) if result.seconds else None,
                "server_cpu_us_per_request": round(us_per_request) if us_per_request else None,
                "server_log_errors": errors,
                "cpu": span,
            }
        )
        bench.log(f"  {result.req_per_s:,.0f} req/s, {us_per_request or 0:.0f} server CPU us/request")
    # N cores / (CPU per request), from each measured row: the 1-worker row is a process with a core of its
    # own (as each of N workers on N free cores would have); the others add what sharing the cores costs.
    projected = {
        str(r["workers"]): {str(n): round(n * 1e6 / r["server_cpu_us_per_request"]) for n in PROJECTED}
        for r in rows
        if r["server_cpu_us_per_request"]
    }
    return {
        "load_generator_cores": sorted(load_core),
        "server_cores": sorted(server_cores),
        "in_flight": connections * streams,
        "rows": rows,
        "projected_req_per_s_from_workers": projected,
    }


if __name__ == "__main__":
    # Just this table: python -m bench.workers [h2load seconds]
    import json
    import sys
    import tempfile

    from bench.run import Bench, Durations

    with tempfile.TemporaryDirectory(prefix="tt-bench-workers-") as tmp:
        b = Bench(
            Path(tmp), Durations(h2load=float(sys.argv[1]) if len(sys.argv) > 1 else 10.0, client=2, rows=2, compute=1)
        )
        b.model_path = b.tmp / "tfaas.keras"
        b.model = workload.build_model(b.model_path)
        first = b.start_server({})
        try:
            payload = b.prepare_payloads(first.address)
        finally:
            first.process.stop()
        print(json.dumps(scaling(b, payload, (4, 32), b.d.h2load), indent=2))
