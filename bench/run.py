"""``python -m bench``: measure the Predict hot path end to end and write ``bench/results/latest.*``.

Order of work, one thing at a time because the machine is small (the load generator, the server and the
references share the same cores):

1. build the TFaaS MLP (seeded) and measure the in-process compiled call (compute ceiling; again at the end,
   and the better of the two counts, since other load on the machine can only make it slower);
2. start ``tt-server`` (embedded backends) and the echo server (framework ceiling), upload, warm up;
3. per concurrency level: h2load against echo, then against the server, then a correctness check;
4. the same levels from the Python client, server then echo;
5. PredictBatch at 1k/8k/64k rows per chunk and unary Predict at 8192 rows;
6. a few server settings at 128 in flight, each on a fresh server;
7. the four unary paths (``bench.paths``: echo, canned Predict, Predict, ModelInfer) at every level with the
   server's CPU microseconds per request, and three paired rounds at 128 in flight;
8. the ``TT_WORKERS`` scaling table (``bench.workers``) and the training benchmark (``bench.train``: examples/s,
   Predict p99 alone vs under a full-speed Train stream, every run);
9. write JSON, Markdown and PNG, with how much CPU other processes took during each step (``bench.cpu``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench import client, cpu, h2load, inprocess, paths, procs, report, workers, workload
from bench import train as train_bench

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# (connections, streams per connection): 1, 8, 64, 128 (4 x 32, as the target says) and 256 in flight.
LEVELS = ((1, 1), (1, 8), (2, 32), (4, 32), (8, 32))
TARGET_IN_FLIGHT = 128
TARGET_REPEATS = 3  # echo/server pairs at the target level; the median pair is reported
BATCH_CHUNKS = (1024, 8192, 65536)
LARGE_ROWS = 8192
TOLERANCE = 1e-5
# Cheap server knobs worth a look on this hardware; each costs one fresh server and one 128-in-flight run.
VARIANTS = (
    ("TT_BATCH_MAX_WAIT_SECONDS=0 (never wait)", {"TT_BATCH_MAX_WAIT_SECONDS": "0"}),
    ("TT_BATCH_MAX_WAIT_SECONDS=0.002", {"TT_BATCH_MAX_WAIT_SECONDS": "0.002"}),
    ("TT_INFERENCE_INTRA_OP_THREADS=1", {"TT_INFERENCE_INTRA_OP_THREADS": "1"}),
    ("TT_EVENT_LOOP=asyncio", {"TT_EVENT_LOOP": "asyncio"}),
    ("TT_GIL_SWITCH_INTERVAL_SECONDS=0.005 (Python's default)", {"TT_GIL_SWITCH_INTERVAL_SECONDS": "0.005"}),
)


@dataclasses.dataclass(frozen=True, slots=True)
class Durations:
    h2load: float
    client: float
    rows: float
    compute: float


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per level, no variants (a smoke test)")
    parser.add_argument("--seconds", type=float, default=10.0, help="h2load seconds per level")
    parser.add_argument("--no-variants", action="store_true", help="skip the server-settings runs")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {RESULTS_DIR})")
    parser.add_argument("--name", default="latest", help="output file stem")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on a shared machine: before each measurement, wait while other processes use >= 10%% of the CPU, "
        "up to this many seconds in all",
    )
    args = parser.parse_args(argv)
    if shutil.which("h2load") is None:
        sys.exit("h2load not found: apt-get install -y nghttp2-client (make bench does this)")
    if args.quick:
        durations = Durations(h2load=2.0, client=2.0, rows=1.0, compute=0.5)
    else:
        durations = Durations(h2load=args.seconds, client=5.0, rows=4.0, compute=2.0)
    out_dir = args.out or (Path(tempfile.gettempdir()) / "tt-bench-quick" if args.quick else RESULTS_DIR)
    variants = () if args.quick or args.no_variants else _known_variants()
    with tempfile.TemporaryDirectory(prefix="tt-bench-") as tmp:
        results = Bench(Path(tmp), durations, args.wait_quiet).run(variants)
    for path in report.write(results, out_dir, args.name):
        print(f"wrote {path}")
    if results.get("train"):  # also on its own, where bench.train alone writes it
        train_path = out_dir / ("train.json" if args.name == "latest" else f"{args.name}-train.json")
        train_path.write_text(json.dumps(results["train"], indent=2) + "\n")
        print(f"wrote {train_path}")


class Bench:
    def __init__(self, tmp: Path, durations: Durations, quiet_budget: float = 0.0) -> None:
        self.tmp = tmp
        self.d = durations
        self.quiet_budget = quiet_budget  # seconds left to spend waiting for other processes to calm down
        self.waited = 0.0
        self.notes: list[str] = []
        self.diffs: list[float] = []  # every server-vs-Keras comparison
        self.echo_pid = 0  # the echo server's, for its CPU per request

    def log(self, message: str) -> None:
        print(f"[bench] {message}", flush=True)

    def run(self, variants: tuple[tuple[str, dict[str, str]], ...]) -> dict[str, Any]:
        results: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(timespec="seconds")}
        loadavg_start, run_start = os.getloadavg(), cpu.mark()
        inprocess.configure_threads()  # before TensorFlow starts, as the server does
        self.model_path = self.tmp / "tfaas.keras"
        self.log("building the model and measuring the in-process compiled call")
        self.model = workload.build_model(self.model_path)
        servable = inprocess.load_servable(self.model_path, self.tmp / "inprocess")
        self.settle()
        mark = cpu.mark()
        compute = inprocess.measure(self.model, servable, (1, LARGE_ROWS), self.d.compute)
        compute_cpu = [self.cpu_span("in-process compiled call (start)", mark)]

        server = self.start_server({})
        try:
            payload = self.prepare_payloads(server.address)
            loop = _server_event_loop()
            echo, echo_address = procs.start_echo(self.tmp / "echo_answer.bin", self.tmp / "echo.log", loop)
            self.echo_pid = echo.proc.pid
            try:
                levels = self.unary_levels(server, echo_address, payload)
                # echo / canned / Predict / ModelInfer back to back: every level once, the target level 3 times.
                self.log("four paths (echo, canned Predict, Predict, ModelInfer) at every level")
                path_seconds = max(self.d.h2load / 2, 2.0)
                four_paths = paths.compare(self, server, echo_address, list(LEVELS), 1, path_seconds)
                target = [level for level in LEVELS if level[0] * level[1] == TARGET_IN_FLIGHT]
                four_paths_target = paths.compare(self, server, echo_address, target, TARGET_REPEATS, path_seconds)
                self.settle()
                mark = cpu.mark()
                rows = self.rows_per_second(server.address)
                rows_cpu = self.cpu_span("PredictBatch and large Predict", mark)
            finally:
                echo.stop()
            self.count_logged_errors(server.process, "main run")
        finally:
            server.process.stop()
        variant_results = []
        for name, env in variants:
            try:
                variant_results.append(self.variant(name, env, payload))
            except Exception as e:  # a variant is extra information: keep the main results
                self.note(f"{name}: failed: {str(e).splitlines()[0]}")
        workers_table: dict[str, Any] = {}
        if variants:  # not in --quick or --no-variants runs
            try:
                target = next(level for level in LEVELS if level[0] * level[1] == TARGET_IN_FLIGHT)
                workers_table = workers.scaling(self, payload, target, self.d.h2load)
            except Exception as e:  # extra information, as the variants: keep the main results
                self.note(f"TT_WORKERS scaling: failed: {str(e).splitlines()[0]}")
        train_results: dict[str, Any] = {}
        if variants:  # not in --quick or --no-variants runs: a server of its own, about a minute
            self.log("training: throughput, and Predict p99 alone vs under a full-speed Train stream")
            self.settle()
            try:
                train_results = train_bench.run_default()
            except Exception as e:  # extra information, as the variants
                self.note(f"training benchmark: failed: {str(e).splitlines()[0]}")
        # Again on a quiet machine (servers stopped): other load on the cores shows up as a gap between the two.
        self.log("measuring the in-process compiled call again")
        self.settle()
        mark = cpu.mark()
        compute_end = inprocess.measure(self.model, servable, (1, LARGE_ROWS), self.d.compute)
        compute_cpu.append(self.cpu_span("in-process compiled call (end)", mark))
        self.diffs += [c.max_abs_diff for c in compute + compute_end]

        results.update(
            machine=_machine(loadavg_start) | {"cpu": self.cpu_span("the whole run", run_start)},
            settings={
                "durations_s": dataclasses.asdict(self.d),
                "h2load_seconds": self.d.h2load,
                "client_seconds": self.d.client,
                "h2load_version": h2load.version(),
                "server_event_loop": loop,
                "client_loop": "uvloop" if _has_uvloop() else "asyncio",
                "levels": [list(level) for level in LEVELS],
                "waited_for_quiet_s": round(self.waited, 1),
            },
            payload=payload,
            compute=[dataclasses.asdict(c) | {"when": "start"} for c in compute]
            + [dataclasses.asdict(c) | {"when": "end"} for c in compute_end],
            compute_cpu=compute_cpu,
            levels=levels,
            rows=[dataclasses.asdict(x) for x in rows],
            rows_cpu=rows_cpu,
            variants=variant_results,
            workers=workers_table,
            paths=four_paths,
            paths_target=four_paths_target,
            train=train_results,
        )
        results["targets"] = _targets(results, self.diffs)
        results["notes"] = self.notes
        return results

    def note(self, text: str) -> None:
        self.log(f"note: {text}")
        self.notes.append(text)

    def settle(self) -> None:
        """Start a measurement on a quiet machine if the budget allows: other processes' load only adds noise."""
        while self.quiet_budget > 0:
            start = cpu.mark()
            time.sleep(1.0)
            span = cpu.since(start)
            if span.others_share < 0.1:
                return
            self.quiet_budget -= span.wall_s
            self.waited += span.wall_s
            if self.waited % 30 < span.wall_s:  # a line every 30 s of waiting
                self.log(f"waiting for a quieter machine (others use {span.others_share:.0%} of the CPU)")

    def cpu_span(self, what: str, start: cpu.Mark) -> dict[str, Any]:
        """Others' CPU use since ``start``, noted when it is enough to move the numbers."""
        span = cpu.since(start)
        if span.others_share > 0.05:
            self.note(
                f"{what}: other processes used {span.others_share:.0%} of the machine "
                f"({span.others_cpu_s:.1f} CPU-s in {span.wall_s:.0f} s): these numbers are low and noisy"
            )
        return {"what": what, **dataclasses.asdict(span)}

    # --- set-up ---------------------------------------------------------------------------------------------
    def start_server(self, env: dict[str, str]) -> procs.Server:
        self.log(f"starting tt-server {env or ''}".rstrip())
        data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=self.tmp))
        server = procs.start_server(data_dir, data_dir.with_suffix(".log"), env)
        try:
            from tensortrigger import Client

            with Client(server.address) as c:
                self.version = c.upload(workload.MODEL_NAME, self.model_path)
            self.input_name = self.version.signature.inputs[0].name
            self.output_name = self.version.signature.outputs[0].name
            # The first call loads the version; a few more let the server settle.
            for i in range(50):
                self.check(server.address, f"warm-up {i}", rows=1 + i % 8)
        except BaseException:
            server.process.stop()
            raise
        return server

    def prepare_payloads(self, address: str) -> dict[str, Any]:
        x = workload.random_rows(1, seed=42)
        request = workload.predict_request(x, self.input_name).SerializeToString()
        (self.tmp / "request.bin").write_bytes(workload.grpc_frame(request))
        answer = client.predict(address, x, self.input_name)
        self.compare("h2load request", client.only_output(answer), workload.keras_output(self.model, x))
        echo_answer = workload.canned_response(self.output_name, self.version.version).SerializeToString()
        (self.tmp / "echo_answer.bin").write_bytes(echo_answer)
        answer_bytes = len(answer.SerializeToString())
        if answer_bytes != len(echo_answer):
            self.note(f"echo answer is {len(echo_answer)} bytes, the server's {answer_bytes}")
        return {
            "request_bytes": len(request),
            "request_frame_bytes": len(request) + 5,
            "answer_bytes": answer_bytes,
            "echo_answer_bytes": len(echo_answer),
            "input_name": self.input_name,
            "output_name": self.output_name,
        }

    # --- checks ---------------------------------------------------------------------------------------------
    def check(self, address: str, what: str, rows: int = 1, seed: int = 0) -> float:
        """One Predict on fresh random rows, compared with the in-process Keras answer."""
        x = workload.random_rows(rows, seed=1000 + seed)
        try:
            answer = client.predict(address, x, self.input_name)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, grpc.Call) else None
            raise RuntimeError(f"{what}: Predict failed: {code} {e}") from None
        return self.compare(what, client.only_output(answer), workload.keras_output(self.model, x))

    def compare(self, what: str, got: np.ndarray, expected: np.ndarray) -> float:
        diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
        self.diffs.append(diff)
        if diff > TOLERANCE:
            self.note(f"{what}: answer differs from Keras by {diff:.3g} (shape {got.shape} vs {expected.shape})")
        return diff

    def count_logged_errors(self, server: procs.Process, what: str) -> int:
        errors = server.error_lines()
        if errors:
            self.note(f"{what}: the server logged {errors} ERROR lines; last lines:\n{server.log_tail(5)}")
        return errors

    # --- measurements ---------------------------------------------------------------------------------------
    def echo_h2load(self, address: str, connections: int, streams: int, answer_frame_bytes: int) -> dict[str, Any]:
        url = f"http://{address}{workload.PREDICT_PATH}"
        request_file = self.tmp / "request.bin"
        self.settle()
        mark = cpu.mark()
        h2load.warm_up(url, request_file, connections, streams)
        before = workers.tree_cpu_seconds(self.echo_pid)
        result = h2load.run(
            url, request_file, answer_frame_bytes, connections, streams, self.d.h2load, self.tmp / "h2load.tsv"
        )
        used = workers.tree_cpu_seconds(self.echo_pid) - before
        span = self.cpu_span(f"echo, h2load at {connections * streams} in flight", mark)
        return {**dataclasses.asdict(result), "cpu": span, "cpu_us_per_request": _us_per(used, result.grpc_ok)}

    def server_h2load(
        self, server: procs.Server, what: str, connections: int, streams: int, answer_frame_bytes: int
    ) -> tuple[h2load.H2loadResult, dict[str, Any], dict[str, Any]]:
        """h2load against the server, with what the server itself counted meanwhile (its /metrics) and how
        much CPU others took."""
        url = f"http://{server.address}{workload.PREDICT_PATH}"
        request_file = self.tmp / "request.bin"
        self.settle()
        mark = cpu.mark()
        h2load.warm_up(url, request_file, connections, streams)
        before = procs.counters(server.metrics_url, workload.PREDICT_PATH)
        cpu_before = workers.tree_cpu_seconds(server.process.proc.pid)
        result = h2load.run(
            url, request_file, answer_frame_bytes, connections, streams, self.d.h2load, self.tmp / "h2load.tsv"
        )
        server_cpu = workers.tree_cpu_seconds(server.process.proc.pid) - cpu_before
        span = self.cpu_span(what, mark)
        counted = procs.delta(before, procs.counters(server.metrics_url, workload.PREDICT_PATH))
        calls = counted.pop("tt_batch_requests_count", 0.0)
        requests, rows = counted.pop("tt_batch_requests_sum", 0.0), counted.pop("tt_batch_rows_sum", 0.0)
        by_code = {code: int(n) for code, n in counted.items()}  # what is left: Predict calls by status code
        cancelled = by_code.get("CANCELLED", 0)
        seen = {
            "available": server.metrics_url is not None,
            "predict_by_code": by_code,
            # h2load resets the streams still in flight when its time is up: up to that many CANCELLED are ours.
            "errors": sum(n for code, n in by_code.items() if code not in ("OK", "CANCELLED"))
            + max(cancelled - connections * streams, 0),
            "model_calls": int(calls),
            "requests_per_model_call": round(requests / calls, 2) if calls else None,
            "rows_per_model_call": round(rows / calls, 2) if calls else None,
            # The server's process tree (supervisor and workers too), over the h2load run only.
            "server_cpu_us_per_request": _us_per(server_cpu, result.grpc_ok),
        }
        if seen["errors"]:
            self.note(f"{what}: the server counted errors {seen['predict_by_code']}")
        return result, seen, span

    def unary_levels(self, server: procs.Server, echo_address: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
        levels: list[dict[str, Any]] = []
        for connections, streams in LEVELS:
            n = connections * streams
            self.log(f"h2load, {n} in flight ({connections} x {streams})")
            # The target level is measured as several echo/server pairs, alternating, and the pair with the
            # median ratio is reported: on a VM whose neighbours take the CPU in bursts (steal), one pair can be
            # off by 2-3x either way.
            pairs = []
            for _ in range(TARGET_REPEATS if n == TARGET_IN_FLIGHT else 1):
                echo = self.echo_h2load(echo_address, connections, streams, payload["echo_answer_bytes"] + 5)
                result, seen, span = self.server_h2load(
                    server, f"tt-server, h2load at {n} in flight", connections, streams, payload["answer_bytes"] + 5
                )
                pairs.append((result.req_per_s / max(echo["req_per_s"], 1e-9), echo, result, seen, span))
            _, echo, result, seen, span = sorted(pairs, key=lambda pair: pair[0])[len(pairs) // 2]
            diff = self.check(server.address, f"after h2load at {n}", seed=n)
            logged = server.process.error_lines()  # since start: this level's are those earlier levels did not see
            levels.append(
                {
                    "in_flight": n,
                    "connections": connections,
                    "streams": streams,
                    "server_h2load": {**dataclasses.asdict(result), "cpu": span},
                    "server_counted": seen,
                    "echo_h2load": echo,
                    "check_max_abs_diff": diff,
                    "server_log_errors": logged - sum(level["server_log_errors"] for level in levels),
                    "pair_ratios": [round(pair[0], 3) for pair in pairs],
                }
            )
            self.log(
                f"  server {result.req_per_s:,.0f} req/s p99 {result.p99_ms:.1f} ms | "
                f"echo {echo['req_per_s']:,.0f} req/s p99 {echo['p99_ms']:.1f} ms"
            )
        request = workload.predict_request(workload.random_rows(1, seed=42), self.input_name)
        for level in levels:
            n, connections = level["in_flight"], level["connections"]
            self.log(f"Python client, {n} in flight over {connections} channels")
            self.settle()
            mark = cpu.mark()
            for key, target in (("server_client", server.address), ("echo_client", echo_address)):
                client_result = client.unary_load(target, request, connections, n, self.d.client)
                level[key] = dataclasses.asdict(client_result)
                if client_result.errors:
                    self.note(f"Python client at {n} in flight against {key}: errors {client_result.errors}")
            level["client_cpu"] = self.cpu_span(f"Python client at {n} in flight", mark)
            self.log(
                f"  server {level['server_client']['req_per_s']:,.0f} req/s | "
                f"echo {level['echo_client']['req_per_s']:,.0f} req/s"
            )
        return levels

    def rows_per_second(self, address: str) -> list[client.RowsResult]:
        results = []
        for rows in BATCH_CHUNKS:
            self.log(f"PredictBatch, {rows} rows per chunk")
            x = workload.random_rows(rows, seed=rows)
            result = client.predict_batch(
                address, x, workload.keras_output(self.model, x), self.input_name, self.d.rows
            )
            self.compare(f"PredictBatch {rows}", np.zeros(1), np.full(1, result.max_abs_diff))
            results.append(result)
        x = workload.random_rows(LARGE_ROWS, seed=7)
        expected = workload.keras_output(self.model, x)
        for in_flight in (1, 2):
            self.log(f"Predict, {LARGE_ROWS} rows per call, {in_flight} in flight")
            result = client.large_predict(address, x, expected, self.input_name, in_flight, self.d.rows)
            self.compare(f"Predict {LARGE_ROWS} rows", np.zeros(1), np.full(1, result.max_abs_diff))
            results.append(result)
        return results

    def variant(self, name: str, env: dict[str, str], payload: dict[str, Any]) -> dict[str, Any]:
        connections, streams = next(level for level in LEVELS if level[0] * level[1] == TARGET_IN_FLIGHT)
        server = self.start_server(env)
        try:
            self.log(f"h2load, {TARGET_IN_FLIGHT} in flight, {name}")
            result, seen, span = self.server_h2load(server, name, connections, streams, payload["answer_bytes"] + 5)
            diff = self.check(server.address, f"after {name}", seed=TARGET_IN_FLIGHT)
            errors = self.count_logged_errors(server.process, name)
        finally:
            server.process.stop()
        self.log(f"  {result.req_per_s:,.0f} req/s p99 {result.p99_ms:.1f} ms")
        return {
            "name": name,
            "env": env,
            "h2load": dataclasses.asdict(result),
            "server_counted": seen,
            "cpu": span,
            "check_max_abs_diff": diff,
            "server_log_errors": errors,
        }


def _us_per(cpu_seconds: float, requests: int) -> float | None:
    return round(cpu_seconds / requests * 1e6, 1) if requests else None


def _targets(r: dict[str, Any], diffs: list[float]) -> list[dict[str, Any]]:
    level = next(level for level in r["levels"] if level["in_flight"] == TARGET_IN_FLIGHT)
    server, echo = level["server_h2load"], level["echo_h2load"]
    ratio = server["req_per_s"] / echo["req_per_s"]
    ratios = level.get("pair_ratios", [])
    pairs = f" (the median of {len(ratios)} pairs: {', '.join(f'{x:.2f}' for x in ratios)})" if len(ratios) > 1 else ""
    compiled = max(
        (c for c in r["compute"] if c["function"] == "servable.run" and c["rows_per_call"] == LARGE_ROWS),
        key=lambda c: float(c["rows_per_s"]),
    )
    stream = next(x for x in r["rows"] if x["mode"].startswith("PredictBatch") and x["rows_per_message"] == LARGE_ROWS)
    large = max((x for x in r["rows"] if x["mode"].startswith("Predict unary")), key=lambda x: float(x["rows_per_s"]))
    worst = max(diffs)
    four = next(iter(r.get("paths_target", {}).get("levels", [])), None)
    issue: list[dict[str, Any]] = []
    if four is not None:
        runs = four["runs"]
        issue += [
            {
                "name": f"Predict vs echo at {TARGET_IN_FLIGHT} in flight (bench.paths, paired rounds)",
                "measured": f"{four['Predict_vs_echo']:.2f}x (rounds: "
                + ", ".join(
                    f"{p['req_per_s'] / e['req_per_s']:.2f}" for p, e in zip(runs["Predict"], runs["echo"], strict=True)
                )
                + f"); server CPU {four['Predict']['cpu_us_per_request']:.0f} vs echo "
                f"{four['echo']['cpu_us_per_request']:.0f} us/request",
                "goal": ">= 0.70x",
                "met": four["Predict_vs_echo"] >= 0.7,
            },
            {
                "name": f"Predict p99 vs echo's p99 at {TARGET_IN_FLIGHT} in flight (bench.paths)",
                "measured": f"{four['Predict']['p99_ms']:.1f} / {four['echo']['p99_ms']:.1f} ms = "
                f"{four['Predict_p99_vs_echo']:.2f}x",
                "goal": "<= 1.5x",
                "met": four["Predict_p99_vs_echo"] <= 1.5,
            },
            {
                "name": "ModelInfer vs Predict req/s (bench.paths)",
                "measured": f"{four['ModelInfer_vs_Predict']:.2f}",
                "goal": ">= 0.90",
                "met": four["ModelInfer_vs_Predict"] >= 0.9,
            },
        ]
    train = r.get("train") or {}
    if train.get("predict_ms"):
        ratios = [run["p99_ratio"] for run in train["predict_ms"]["runs"]]
        rate = train["train"].get("256", next(iter(train["train"].values())))["examples_per_second"]
        issue += [
            {
                "name": "Predict p99 under a full-speed Train stream vs alone, every run",
                "measured": ", ".join(f"{x:.2f}x" for x in ratios),
                "goal": "<= 1.2x in every run",
                "met": max(ratios) <= 1.2,
            },
            {
                "name": "training throughput, 256-example messages",
                "measured": f"{rate:,.0f} examples/s",
                "goal": ">= 60,000",
                "met": rate >= 60_000,
            },
        ]
    return [
        *issue,
        {
            "name": f"unary Predict at {TARGET_IN_FLIGHT} in flight vs echo (h2load)",
            "measured": f"{server['req_per_s']:,.0f} / {echo['req_per_s']:,.0f} req/s = {ratio:.3f}x{pairs}",
            "goal": ">= 0.70x",
            "met": ratio >= 0.7,
        },
        {
            "name": f"unary Predict p99 at {TARGET_IN_FLIGHT} in flight (h2load)",
            "measured": f"{server['p99_ms']:.1f} ms",
            "goal": "< 50 ms",
            "met": server["p99_ms"] < 50,
        },
        {
            "name": f"PredictBatch at {LARGE_ROWS}-row chunks vs in-process compiled call",
            "measured": f"{stream['rows_per_s']:,.0f} / {compiled['rows_per_s']:,.0f} rows/s "
            f"= {stream['rows_per_s'] / compiled['rows_per_s']:.3f}x",
            "goal": ">= 0.80x",
            "met": stream["rows_per_s"] >= 0.8 * compiled["rows_per_s"],
        },
        {
            "name": f"unary Predict at {LARGE_ROWS} rows ({large['in_flight']} in flight) vs in-process compiled call",
            "measured": f"{large['rows_per_s']:,.0f} / {compiled['rows_per_s']:,.0f} rows/s "
            f"= {large['rows_per_s'] / compiled['rows_per_s']:.3f}x",
            "goal": ">= 0.50x",
            "met": large["rows_per_s"] >= 0.5 * compiled["rows_per_s"],
        },
        {
            "name": f"server answers vs in-process Keras ({len(diffs)} comparisons)",
            "measured": f"max abs diff {worst:.2g}",
            "goal": f"<= {TOLERANCE:g}",
            "met": worst <= TOLERANCE,
        },
    ]


def _known_variants() -> tuple[tuple[str, dict[str, str]], ...]:
    """The variants whose settings this server has (an unknown TT_ variable would be silently ignored)."""
    from tt_server.config import Settings

    fields = Settings.model_fields
    return tuple((name, env) for name, env in VARIANTS if all(key[3:].lower() in fields for key in env))


def _server_event_loop() -> str:
    """The loop ``tt-server`` uses by default, so the echo server can use the same one."""
    from tt_server.config import Settings

    field = Settings.model_fields.get("event_loop")
    return str(field.default) if field is not None else "asyncio"


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _machine(loadavg_start: tuple[float, float, float]) -> dict[str, Any]:
    cpu_model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "grpcio", "protobuf", "numpy", "uvloop"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cores": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "versions": versions,
        "git_commit": _git_commit(),
        "loadavg_start": [round(x, 2) for x in loadavg_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" (with uncommitted changes)" if dirty else "")
