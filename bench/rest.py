"""``python -m bench.rest``: HTTP/JSON inference next to gRPC Predict on one ``tt-server``, in one run.

One server (embedded backends, HTTP front on), the TFaaS MLP, one row of 42 float32 per request, 128 requests in
flight. h2load drives both: gRPC Predict over HTTP/2 (4 connections x 32 streams, raw ``content``, as
``python -m bench`` does) and the REST routes over HTTP/1.1 (128 connections, one request each at a time, the way
HTTP/1.1 clients keep 128 requests in flight): the Open Inference Protocol's ``/v2/models/tfaas/infer`` with JSON
``data`` and TF Serving's ``/v1/models/tfaas:predict`` with ``instances``. The three run in turn, ``--repeats``
times; the median of each REST/gRPC ratio is reported (other tenants' load on a small VM moves single runs).
Every answer is checked against in-process Keras before the runs. Writes ``bench/results/rest.json`` and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench import h2load, procs, workload

RESULTS = Path(__file__).resolve().parent / "results" / "rest.json"
IN_FLIGHT = 128
TOLERANCE = 1e-5


def _post(url: str, body: bytes) -> Any:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _http1(url: str, body_file: Path | None, seconds: float, log_file: Path, warm_up: bool = False) -> dict[str, Any]:
    """h2load over HTTP/1.1: ``IN_FLIGHT`` connections, one request in flight on each."""
    log_file.unlink(missing_ok=True)
    command = [
        "h2load", "--h1", f"--duration={seconds:g}", f"--clients={IN_FLIGHT}", "--max-concurrent-streams=1",
        "--threads=1", "--header=content-type: application/json", *([f"--data={body_file}"] if body_file else []),
        *([] if warm_up else [f"--log-file={log_file}"]), url,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed ({out.returncode}): {out.stderr or out.stdout}")
    if warm_up:
        return {}
    finished = h2load._search(r"finished in ([\d.]+\w+), ([\d.]+) req/s", out.stdout)
    table = np.loadtxt(log_file, dtype=np.int64, usecols=(1, 2), ndmin=2)
    ok = table[table[:, 0] == 200]
    p50, p99 = np.percentile(ok[:, 1] / 1e3, [50, 99]) if ok.size else (float("nan"), float("nan"))
    return {
        "req_per_s": float(finished[1]),
        "requests": int(table.shape[0]),
        "errors": int(table.shape[0] - ok.shape[0]),
        "p50_ms": round(float(p50), 2),
        "p99_ms": round(float(p99), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rest", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="h2load seconds per run")
    parser.add_argument("--repeats", type=int, default=3, help="gRPC/OIP/TF Serving rounds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tt-bench-rest-") as tmp_name:
        tmp = Path(tmp_name)
        results = run(tmp, args.seconds, args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"wrote {args.out}")


def run(tmp: Path, seconds: float, repeats: int) -> dict[str, Any]:
    model = workload.build_model(tmp / "tfaas.keras")
    http_port = procs.free_port()
    server = procs.start_server(tmp / "data", tmp / "server.log", {"TT_HTTP_ADDRESS": f"127.0.0.1:{http_port}"})
    try:
        from tensortrigger import Client

        with Client(server.address) as c:
            version = c.upload(workload.MODEL_NAME, tmp / "tfaas.keras")
        input_name = version.signature.inputs[0].name
        base = f"http://127.0.0.1:{http_port}"
        x = workload.random_rows(1, seed=42)
        expected = workload.keras_output(model, x)

        grpc_file = tmp / "request.bin"
        grpc_file.write_bytes(workload.grpc_frame(workload.predict_request(x, input_name).SerializeToString()))
        answer_bytes = len(_grpc_answer(server.address, x, input_name))
        grpc_url = f"http://{server.address}{workload.PREDICT_PATH}"

        oip = json.dumps(
            {"inputs": [{"name": input_name, "datatype": "FP32", "shape": [1, 42], "data": x.ravel().tolist()}]}
        ).encode()
        tfs = json.dumps({"instances": x.tolist()}).encode()
        (tmp / "oip.json").write_bytes(oip)
        (tmp / "tfs.json").write_bytes(tfs)
        oip_url = f"{base}/v2/models/{workload.MODEL_NAME}/infer"
        tfs_url = f"{base}/v1/models/{workload.MODEL_NAME}:predict"
        diffs = {
            "oip": float(np.max(np.abs(np.array(_post(oip_url, oip)["outputs"][0]["data"]) - expected.ravel()))),
            "tfs": float(np.max(np.abs(np.array(_post(tfs_url, tfs)["predictions"]) - expected))),
        }
        for what, diff in diffs.items():
            if diff > TOLERANCE:
                raise RuntimeError(f"{what}: answer differs from Keras by {diff}")

        rounds: list[dict[str, Any]] = []
        for i in range(repeats):
            print(f"[bench.rest] round {i + 1}/{repeats}", flush=True)
            h2load.warm_up(grpc_url, grpc_file, 4, 32)
            g = h2load.run(grpc_url, grpc_file, answer_bytes + 5, 4, 32, seconds, tmp / "grpc.log")
            grpc = {
                "req_per_s": g.req_per_s,
                "requests": g.requests,
                "errors": g.grpc_errors + g.failed,
                "p50_ms": round(g.p50_ms, 2),
                "p99_ms": round(g.p99_ms, 2),
            }
            _http1(oip_url, tmp / "oip.json", 1.0, tmp / "w.log", warm_up=True)
            oip_run = _http1(oip_url, tmp / "oip.json", seconds, tmp / "oip.log")
            _http1(tfs_url, tmp / "tfs.json", 1.0, tmp / "w.log", warm_up=True)
            tfs_run = _http1(tfs_url, tmp / "tfs.json", seconds, tmp / "tfs.log")
            rounds.append({"grpc": grpc, "oip": oip_run, "tfs": tfs_run})
        # The HTTP layer's own cost: a route that does nothing but the front's checks (request id, metrics).
        print("[bench.rest] the HTTP layer alone: GET /v2/health/live", flush=True)
        live = _http1(f"{base}/v2/health/live", None, seconds, tmp / "live.log")
        server.process.check_alive()
        logged_errors = server.process.error_lines()
    finally:
        server.process.stop()
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "in_flight": IN_FLIGHT,
        "seconds_per_run": seconds,
        "h2load_version": h2load.version(),
        "request_bytes": {"grpc": grpc_file.stat().st_size, "oip_json": len(oip), "tfs_json": len(tfs)},
        "max_abs_diff_vs_keras": diffs,
        "server_logged_errors": logged_errors,
        "rounds": rounds,
        "http_layer_only": live,
        "median_ratio_vs_grpc": {
            key: round(statistics.median(r[key]["req_per_s"] / r["grpc"]["req_per_s"] for r in rounds), 3)
            for key in ("oip", "tfs")
        },
        "target": ">= 0.5x gRPC Predict req/s at 128 in flight",
    }


def _grpc_answer(address: str, x: np.ndarray, input_name: str) -> bytes:
    from bench import client

    return client.predict(address, x, input_name).SerializeToString()


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"REST vs gRPC Predict on one tt-server, {results['in_flight']} in flight, "
        f"{results['seconds_per_run']:g} s per run ({results['h2load_version']})",
        "",
        "| round | gRPC req/s | p99 ms | OIP JSON req/s | p99 ms | ratio | TF Serving req/s | p99 ms | ratio "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results["rounds"], 1):
        g, o, t = r["grpc"], r["oip"], r["tfs"]
        lines.append(
            f"| {i} | {g['req_per_s']:,.0f} | {g['p99_ms']} | {o['req_per_s']:,.0f} | {o['p99_ms']} | "
            f"{o['req_per_s'] / g['req_per_s']:.2f} | {t['req_per_s']:,.0f} | {t['p99_ms']} | "
            f"{t['req_per_s'] / g['req_per_s']:.2f} | {g['errors']} / {o['errors']} / {t['errors']} |"
        )
    m = results["median_ratio_vs_grpc"]
    live = results["http_layer_only"]
    lines += [
        "",
        f"Median ratio vs gRPC: OIP JSON {m['oip']}x, TF Serving {m['tfs']}x (target >= 0.5x).",
        f"The HTTP layer alone (GET /v2/health/live, same 128 connections): {live['req_per_s']:,.0f} req/s, "
        f"p99 {live['p99_ms']} ms.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
