"""Four unary paths at the same load, in one run: where the server's CPU per request goes.

    echo       bare grpc.aio, fixed bytes (bench.echo): the framework's floor
    canned     our middleware + Predict servicer over a fixed result (bench.canned): our per-call gRPC layers
    Predict    tt-server's real Predict: + model manager, validation, batcher, model call
    ModelInfer the Open Inference Protocol's ModelInfer on the same server and model

For each in-flight level the four run one after the other (``rounds`` times, alternating), each with h2load for
``seconds``; every row has req/s, p50/p99 and the **server's CPU microseconds per answered request** (its process
tree's CPU-seconds over the run / OK answers): a ratio of work, steadier on a shared machine than req/s.

    python -m bench.paths [--seconds 5] [--rounds 2] [--levels 128] [--perf]

``--perf`` also samples the real server's native stacks at the last level with ``perf record`` (software clock;
hardware counters are not available on this VM) and reports the share of samples per shared object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from bench import cpu, h2load, procs, workload

if TYPE_CHECKING:
    from bench.run import Bench

MODEL_INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
PATHS = ("echo", "canned", "Predict", "ModelInfer")


def model_infer_request(rows: np.ndarray, input_name: str) -> bytes:
    from tritonclient.grpc import service_pb2 as oip

    request = oip.ModelInferRequest(model_name=workload.MODEL_NAME)
    tensor = request.inputs.add(name=input_name, datatype="FP32", shape=list(rows.shape))
    assert tensor is not None
    request.raw_input_contents.append(np.ascontiguousarray(rows, dtype="<f4").tobytes())
    return request.SerializeToString()


def _answer_bytes(address: str, path: str, request: bytes) -> int:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        return len(call(request, timeout=30))


def compare(
    bench: Bench,
    server: procs.Server,
    echo_address: str,
    levels: list[tuple[int, int]],
    rounds: int,
    seconds: float,
    variants: dict[str, procs.Server] | None = None,
) -> dict[str, Any]:
    """The four paths at each of ``levels`` ((connections, streams)); the medians over ``rounds``.
    ``variants``: more servers (other settings) whose Predict runs in the same rounds, as "Predict <name>"."""
    x = workload.random_rows(1, seed=42)
    files = {
        "echo": (echo_address, workload.PREDICT_PATH, bench.tmp / "request.bin"),
        "Predict": (server.address, workload.PREDICT_PATH, bench.tmp / "request.bin"),
        "ModelInfer": (server.address, MODEL_INFER_PATH, bench.tmp / "infer.bin"),
    }
    infer = model_infer_request(x, bench.input_name)
    files["ModelInfer"][2].write_bytes(workload.grpc_frame(infer))
    canned, canned_address = _start_canned(bench)
    try:
        files["canned"] = (canned_address, workload.PREDICT_PATH, bench.tmp / "request.bin")
        pids = {"echo": bench.echo_pid, "canned": canned.proc.pid}
        pids["Predict"] = pids["ModelInfer"] = server.process.proc.pid
        for name, other in (variants or {}).items():
            files[f"Predict {name}"] = (other.address, workload.PREDICT_PATH, bench.tmp / "request.bin")
            pids[f"Predict {name}"] = other.process.proc.pid
        paths = (*PATHS, *(f"Predict {name}" for name in variants or {}))
        request = files["Predict"][2].read_bytes()[5:]
        answers = {
            name: _answer_bytes(address, path, infer if name == "ModelInfer" else request) + 5
            for name, (address, path, _) in files.items()
        }
        table = []
        for connections, streams in levels:
            n = connections * streams
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
            for r in range(rounds):
                bench.log(f"paths at {n} in flight, round {r + 1}/{rounds}")
                # Alternate the order, so that neither end of a round is always the same path's.
                for name in paths if r % 2 == 0 else reversed(paths):
                    address, path, request_file = files[name]
                    url = f"http://{address}{path}"
                    bench.settle()
                    h2load.warm_up(url, request_file, connections, streams)
                    mark, before = cpu.mark(), cpu.tree_cpu_seconds(pids[name])
                    result = h2load.run(
                        url, request_file, answers[name], connections, streams, seconds, bench.tmp / "paths.tsv"
                    )
                    used = cpu.tree_cpu_seconds(pids[name]) - before
                    span = cpu.since(mark)
                    runs[name].append(
                        {
                            "req_per_s": result.req_per_s,
                            "p50_ms": result.p50_ms,
                            "p99_ms": result.p99_ms,
                            "errors": result.grpc_errors + result.failed,
                            "cpu_us_per_request": round(used / max(result.grpc_ok, 1) * 1e6, 1),
                            "others_share": span.others_share,
                        }
                    )
            row: dict[str, Any] = {"in_flight": n, "connections": connections, "streams": streams, "runs": runs}
            for name in paths:
                row[name] = {
                    key: statistics.median(run[key] for run in runs[name])
                    for key in ("req_per_s", "p50_ms", "p99_ms", "cpu_us_per_request", "others_share")
                } | {"errors": sum(run["errors"] for run in runs[name])}
            # Ratios per round (paired: the four ran back to back), then their median.
            for name in paths[1:]:
                row[f"{name}_vs_echo"] = statistics.median(
                    a["req_per_s"] / max(e["req_per_s"], 1e-9) for a, e in zip(runs[name], runs["echo"], strict=True)
                )
                row[f"{name}_p99_vs_echo"] = statistics.median(
                    a["p99_ms"] / max(e["p99_ms"], 1e-9) for a, e in zip(runs[name], runs["echo"], strict=True)
                )
            row["ModelInfer_vs_Predict"] = statistics.median(
                a["req_per_s"] / max(p["req_per_s"], 1e-9)
                for a, p in zip(runs["ModelInfer"], runs["Predict"], strict=True)
            )
            bench.log(
                "  "
                + " | ".join(
                    f"{name} {row[name]['req_per_s']:,.0f} req/s p99 {row[name]['p99_ms']:.1f} ms "
                    f"{row[name]['cpu_us_per_request']:.0f} us"
                    for name in paths
                )
            )
            table.append(row)
    finally:
        canned.stop()
    return {"seconds": seconds, "rounds": rounds, "paths": paths, "levels": table, "answer_frame_bytes": answers}


def _start_canned(bench: Bench) -> tuple[procs.Process, str]:
    port = procs.free_port()
    loop = "uvloop" if _has_uvloop() else "asyncio"
    command = [sys.executable, "-m", "bench.canned", str(port), loop, bench.output_name, str(bench.version.version)]
    process = procs.Process("canned", command, bench.tmp / "canned.log")
    assert process.proc.stdout is not None
    if process.proc.stdout.readline().strip() != b"ready":
        process.stop()
        raise RuntimeError(f"canned server did not start:\n{process.log_tail()}")
    return process, f"127.0.0.1:{port}"


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def perf_profile(
    bench: Bench, pid: int, url: str, request_file: Path, in_flight: tuple[int, int], seconds: float
) -> dict[str, Any]:
    """Share of ``pid``'s CPU samples per shared object, and its top symbols (perf record, software clock),
    while h2load drives ``url``; with the process tree's CPU microseconds per request over the same run."""
    if shutil.which("perf") is None:
        return {}
    connections, streams = in_flight
    data = bench.tmp / "perf.data"
    recorder = subprocess.Popen(
        ["perf", "record", "-e", "cpu-clock", "-F", "2000", "-p", str(pid), "-o", str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        before = cpu.tree_cpu_seconds(pid)
        result = h2load.run(url, request_file, 10**9, connections, streams, seconds, bench.tmp / "perf.tsv")
        used = cpu.tree_cpu_seconds(pid) - before
    finally:
        recorder.send_signal(2)
        recorder.wait(30)
    shares: dict[str, Any] = {
        "requests": result.requests,
        "cpu_us_per_request": round(used / max(result.requests, 1) * 1e6, 1),
    }
    for key, sort in (("dso", "dso"), ("symbols", "dso,sym")):
        out = subprocess.run(
            ["perf", "report", "-i", str(data), "--no-children", "--sort", sort, "--stdio", "-q"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        table: dict[str, float] = {}
        for line in out.splitlines():
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0].endswith("%") and len(table) < 25:
                table[" ".join(parts[1].split())] = float(parts[0][:-1])
        shares[key] = table
    return shares


def main(argv: list[str] | None = None) -> None:
    from bench.run import Bench, Durations, _server_event_loop

    parser = argparse.ArgumentParser(prog="python -m bench.paths", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--levels", default="128", help="comma-separated in-flight counts out of 1,8,64,128,256")
    parser.add_argument("--perf", action="store_true")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for tt-server (repeatable)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:KEY=VALUE[,KEY=VALUE]: one more tt-server with these settings, its Predict in the same rounds",
    )
    args = parser.parse_args(argv)
    from bench.run import LEVELS

    wanted = {int(n) for n in args.levels.split(",")}
    levels = [level for level in LEVELS if level[0] * level[1] in wanted]
    with tempfile.TemporaryDirectory(prefix="tt-paths-") as tmp:
        bench = Bench(Path(tmp), Durations(args.seconds, 2.0, 2.0, 1.0))
        bench.model_path = bench.tmp / "tfaas.keras"
        bench.model = workload.build_model(bench.model_path)
        server = bench.start_server(dict(kv.split("=", 1) for kv in args.env))
        variants: dict[str, procs.Server] = {}
        try:
            for spec in args.variant:
                name, settings = spec.split(":", 1)
                variants[name] = bench.start_server(dict(kv.split("=", 1) for kv in settings.split(",")))
            bench.prepare_payloads(server.address)
            echo, echo_address = procs.start_echo(
                bench.tmp / "echo_answer.bin", bench.tmp / "echo.log", _server_event_loop()
            )
            bench.echo_pid = echo.proc.pid
            try:
                result = compare(bench, server, echo_address, levels, args.rounds, args.seconds, variants)
                if args.perf:  # each path's server process, one after the other, at the last level
                    canned, canned_address = _start_canned(bench)
                    try:
                        targets = {
                            "echo": (echo.proc.pid, f"http://{echo_address}{workload.PREDICT_PATH}", "request.bin"),
                            "canned": (
                                canned.proc.pid,
                                f"http://{canned_address}{workload.PREDICT_PATH}",
                                "request.bin",
                            ),
                            "Predict": (
                                server.process.proc.pid,
                                f"http://{server.address}{workload.PREDICT_PATH}",
                                "request.bin",
                            ),
                            "ModelInfer": (
                                server.process.proc.pid,
                                f"http://{server.address}{MODEL_INFER_PATH}",
                                "infer.bin",
                            ),
                        }
                        result["perf"] = {
                            name: perf_profile(bench, pid, url, bench.tmp / file, levels[-1], args.seconds)
                            for name, (pid, url, file) in targets.items()
                        }
                    finally:
                        canned.stop()
            finally:
                echo.stop()
        finally:
            for other in variants.values():
                other.process.stop()
            server.process.stop()
    for row in result["levels"]:
        print(f"in flight {row['in_flight']}:")
        for name in result["paths"]:
            runs = ", ".join(
                f"{r['req_per_s']:,.0f}/{r['p99_ms']:.1f}/{r['cpu_us_per_request']:.0f}" for r in row["runs"][name]
            )
            print(f"  {name:16s} req/s / p99 ms / CPU us per request: {runs}")
        print(
            f"  ratios: canned {row['canned_vs_echo']:.2f}x, Predict {row['Predict_vs_echo']:.2f}x "
            f"(p99 {row['Predict_p99_vs_echo']:.2f}x), ModelInfer {row['ModelInfer_vs_echo']:.2f}x; "
            f"ModelInfer/Predict {row['ModelInfer_vs_Predict']:.2f}"
        )
    if result.get("perf"):
        print(json.dumps(result["perf"], indent=1))


if __name__ == "__main__":
    main()
