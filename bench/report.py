"""Write one run's results: ``<name>.json`` (everything), ``<name>.md`` (tables, ratios) and ``<name>.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import cpu


def write(results: dict[str, Any], out_dir: Path, name: str = "latest") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md", out_dir / f"{name}.png"]
    paths[0].write_text(json.dumps(results, indent=1) + "\n")
    paths[1].write_text(markdown(results))
    plot(results, paths[2])
    return paths


def _f(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}"


def _errors(h2: dict[str, Any], counted: dict[str, Any], logged: int) -> str:
    server = str(counted["errors"]) if counted["available"] else "-"
    return f"{server} / {h2['grpc_errors']} / {h2['failed']} / {logged}"


def _pct(span: dict[str, Any]) -> str:
    """Others' share of the machine, and the hypervisor's steal when there was any (a VM's neighbours)."""
    text = f"{span['others_share']:.0%}"
    capacity = span["wall_s"] * cpu.cores()
    stolen = span.get("steal_s", 0.0) / capacity if capacity else 0.0
    return f"{text}, {stolen:.0%} stolen" if stolen >= 0.01 else text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def markdown(r: dict[str, Any]) -> str:
    m, s, p = r["machine"], r["settings"], r["payload"]
    out = [
        "# Tensor Trigger benchmark (`make bench`)",
        "",
        f"Run {r['started_at']} on {m['cpu_model']} ({m['cores']} cores), {m['platform']}; "
        f"load average {m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end. "
        f"CPU-seconds: {m['cpu']['benchmark_cpu_s']:.0f} used by the benchmark (servers, load generators, "
        f"references), {m['cpu']['others_cpu_s']:.0f} by other processes ({m['cpu']['others_share']:.0%} of the "
        "machine), "
        f"{m['cpu']['steal_s']:g} stolen by the hypervisor. {m['cpu']['wall_s']:.0f} s in all. "
        f"Commit {m['git_commit']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        f"Model: TFaaS MLP (Input(42) -> Dense 128, 128, 128, 64, 64 relu -> Dense 1 sigmoid), seeded random "
        f"weights. Request: one row of 42 float32 as raw `content`, {p['request_bytes']} bytes "
        f"({p['request_frame_bytes']} with the gRPC prefix); answer {p['answer_bytes']} bytes, echo answer "
        f"{p['echo_answer_bytes']} bytes. Server: `tt-server`, embedded backends, event loop {s['server_event_loop']}, "
        f"defaults otherwise. Echo: bare `grpc.aio` generic handler, same loop. h2load: {s['h2load_version']}, "
        f"1 thread, {s['h2load_seconds']:g} s per level after a 1 s warm-up run. Python client: grpc.aio stubs, "
        f"{s['client_loop']}, {s['client_seconds']:g} s per level after 1 s warm-up. Waited "
        f"{s['waited_for_quiet_s']:g} s in all for other processes to calm down before measurements.",
        "",
        "## Targets",
        "",
    ]
    out += _table(
        ["target", "measured", "goal", "met"],
        [[t["name"], t["measured"], t["goal"], "yes" if t["met"] else "**no**"] for t in r["targets"]],
    )
    out += ["## Unary Predict, h2load (the same request file for both servers)", ""]
    rows = []
    for level in r["levels"]:
        sv, ec = level["server_h2load"], level["echo_h2load"]
        rows.append(
            [
                str(level["in_flight"]),
                f"{level['connections']}x{level['streams']}",
                _f(sv["req_per_s"]),
                _f(sv["p50_ms"], 2),
                _f(sv["p99_ms"], 2),
                _f(sv["mean_ms"], 2),
                _f(sv["max_ms"], 1),
                _f(level["server_counted"]["requests_per_model_call"], 1),
                _errors(sv, level["server_counted"], level["server_log_errors"]),
                _f(level["check_max_abs_diff"], 8),
                _f(ec["req_per_s"]),
                _f(ec["p50_ms"], 2),
                _f(ec["p99_ms"], 2),
                f"{ec['grpc_errors'] + ec['failed']}",
                _f(sv["req_per_s"] / ec["req_per_s"], 2),
                _f(level["server_counted"].get("server_cpu_us_per_request")),
                _f(ec.get("cpu_us_per_request")),
                f"{_pct(sv['cpu'])} / {_pct(ec['cpu'])}",
            ]
        )
    out += _table(
        [
            "in flight",
            "conns x streams",
            "server req/s",
            "p50 ms",
            "p99 ms",
            "mean ms",
            "max ms",
            "requests per model call",
            "errors: server / grpc / h2 / logged",
            "check diff",
            "echo req/s",
            "echo p50",
            "echo p99",
            "echo errors",
            "server / echo",
            "server CPU us/request",
            "echo CPU us/request",
            "others' CPU (server / echo runs)",
        ],
        rows,
    )
    out += [
        "Errors: *server* = non-OK Predict statuses the server counted (its Prometheus `tt_rpcs_total`) during the "
        "measured run (CANCELLED only beyond the streams h2load resets when its time is up), *grpc* = answers "
        "without a response message (non-OK, trailers-only: h2load counts them as successes; found as requests "
        "done minus DATA bytes / answer frame size), *h2* = h2load's failed + errored + timeout, *logged* = server "
        "ERROR log lines (every INTERNAL error is logged once). *requests per model call* = the batcher's merge "
        "factor (server metrics). *check diff* = max abs diff of a fresh Predict after the level vs in-process "
        "Keras. *others' CPU* = share of the machine used by processes outside the benchmark meanwhile, and the "
        "share the hypervisor gave to other guests (steal) when there was any "
        "(`bench.cpu`).",
        "",
        "## Unary Predict, Python client (grpc.aio, same process layout)",
        "",
    ]
    rows = []
    for level in r["levels"]:
        sv, ec = level["server_client"], level["echo_client"]
        rows.append(
            [
                str(level["in_flight"]),
                str(sv["connections"]),
                _f(sv["req_per_s"]),
                _f(sv["p50_ms"], 2),
                _f(sv["p99_ms"], 2),
                json.dumps(sv["errors"]) if sv["errors"] else "0",
                _f(ec["req_per_s"]),
                _f(ec["p50_ms"], 2),
                _f(ec["p99_ms"], 2),
                _f(sv["req_per_s"] / ec["req_per_s"], 2),
                _pct(level["client_cpu"]),
            ]
        )
    out += _table(
        [
            "in flight",
            "channels",
            "server req/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "echo req/s",
            "echo p50",
            "echo p99",
            "server / echo",
            "others' CPU",
        ],
        rows,
    )
    out += ["## Rows per second: streamed and large requests vs the compiled call", ""]
    out += _table(
        ["what", "rows per message", "in flight", "messages", "seconds", "rows/s", "max abs diff"],
        [
            [
                x["mode"],
                _f(x["rows_per_message"]),
                str(x["in_flight"]),
                str(x["messages"]),
                _f(x["seconds"], 1),
                _f(x["rows_per_s"]),
                _f(x["max_abs_diff"], 8),
            ]
            for x in r["rows"]
        ]
        + [
            [
                f"in-process {c['function']} ({c['when']})",
                _f(c["rows_per_call"]),
                "1",
                str(c["calls"]),
                _f(c["seconds"], 1),
                _f(c["rows_per_s"]),
                _f(c["max_abs_diff"], 8),
            ]
            for c in r["compute"]
        ],
    )
    out += [
        "In-process: `servable.run` is the server's compiled serving function (built by `runtime.loader.Loader`); "
        "`tf.function` is a plain `tf.function(model(x, training=False))` cross-check; measured at the start and "
        "again at the end (servers stopped); the targets use the better one. Others' CPU: "
        + ", ".join(f"{span['what']} {_pct(span)}" for span in r["compute_cpu"] + [r["rows_cpu"]])
        + ". "
        + "; ".join(
            f"{c['function']} @ {c['rows_per_call']} ({c['when']}): {c['us_per_call']:.0f} us/call"
            for c in r["compute"]
        )
        + ".",
        "",
    ]
    if r["variants"]:
        out += ["## Server settings (h2load, 128 in flight, one fresh server each)", ""]
        base = next(level for level in r["levels"] if level["in_flight"] == 128)
        settings = [
            {
                "name": "defaults (the main run above)",
                "h2load": base["server_h2load"],
                "server_counted": base["server_counted"],
                "cpu": base["server_h2load"]["cpu"],
                "check_max_abs_diff": base["check_max_abs_diff"],
                "server_log_errors": base["server_log_errors"],
            },
            *r["variants"],
        ]
        out += _table(
            [
                "setting",
                "req/s",
                "p50 ms",
                "p99 ms",
                "requests per model call",
                "errors: server / grpc / h2 / logged",
                "check diff",
                "others' CPU",
            ],
            [
                [
                    v["name"],
                    _f(v["h2load"]["req_per_s"]),
                    _f(v["h2load"]["p50_ms"], 2),
                    _f(v["h2load"]["p99_ms"], 2),
                    _f(v["server_counted"]["requests_per_model_call"], 1),
                    _errors(v["h2load"], v["server_counted"], v["server_log_errors"]),
                    _f(v["check_max_abs_diff"], 8),
                    _pct(v["cpu"]),
                ]
                for v in settings
            ],
        )
    scaling = r.get("workers") or {}
    if scaling.get("rows"):
        out += [
            f"## TT_WORKERS scaling (h2load, {scaling['in_flight']} in flight; load generator on core(s) "
            f"{scaling['load_generator_cores']}, server on {scaling['server_cores']})",
            "",
        ]
        out += _table(
            ["workers", "req/s", "p50 ms", "p99 ms", "server cores busy", "server CPU us/request", "others' CPU"],
            [
                [
                    str(w["workers"]),
                    _f(w["req_per_s"]),
                    _f(w["p50_ms"], 2),
                    _f(w["p99_ms"], 2),
                    _f(w["server_cores_busy"], 2),
                    _f(w["server_cpu_us_per_request"]),
                    _pct(w["cpu"]),
                ]
                for w in scaling["rows"]
            ],
        )
        for measured, projected in scaling["projected_req_per_s_from_workers"].items():
            text = ", ".join(f"N = {n}: ~{v:,} req/s" for n, v in projected.items())
            out += [f"Projected for N free cores from the CPU per request at {measured} worker(s): {text}.", ""]
        out += ["(An upper bound: N cores / CPU per request; memory bandwidth and connection spreading ignored.)", ""]
    out += _paths_section(r.get("paths") or {})
    out += _train_section(r.get("train") or {})
    if r["notes"]:
        out += ["## Notes", ""] + [f"- {note}" for note in r["notes"]] + [""]
    return "\n".join(out)


def _paths_section(paths: dict[str, Any]) -> list[str]:
    """echo / canned / Predict / ModelInfer at each level, with the server's CPU per request (bench.paths)."""
    if not paths.get("levels"):
        return []
    names = paths["paths"]
    out = [
        f"## Where the CPU goes: four unary paths at the same load (h2load, {paths['seconds']:g} s each, "
        f"{paths['rounds']} round(s) per level, medians)",
        "",
        "*echo*: bare grpc.aio, fixed bytes. *canned*: our middleware and Predict servicer over a fixed result (no "
        "runtime). *Predict*, *ModelInfer*: the real server. CPU = the serving process tree's CPU microseconds per "
        "answered request over the run; ratios are per round (paired), then the median.",
        "",
    ]
    rows = []
    for level in paths["levels"]:
        for name in names:
            x = level[name]
            rows.append(
                [
                    str(level["in_flight"]),
                    name,
                    _f(x["req_per_s"]),
                    _f(x["p50_ms"], 2),
                    _f(x["p99_ms"], 2),
                    _f(x["cpu_us_per_request"]),
                    "1" if name == "echo" else f"{level[f'{name}_vs_echo']:.2f}x",
                    "1" if name == "echo" else f"{level[f'{name}_p99_vs_echo']:.2f}x",
                    str(x["errors"]),
                    f"{x['others_share']:.0%}",
                ]
            )
    out += _table(
        [
            "in flight",
            "path",
            "req/s",
            "p50 ms",
            "p99 ms",
            "server CPU us/request",
            "req/s vs echo",
            "p99 vs echo",
            "errors",
            "others' CPU",
        ],
        rows,
    )
    out += [
        "ModelInfer / Predict req/s: "
        + ", ".join(f"{level['in_flight']} in flight {level['ModelInfer_vs_Predict']:.2f}" for level in paths["levels"])
        + ".",
        "",
    ]
    return out


def _train_section(train: dict[str, Any]) -> list[str]:
    """Training throughput and Predict p99 alone / under a full-speed Train stream, every run (bench.train)."""
    if not train.get("predict_ms"):
        return []
    out = ["## Training: throughput, and Predict p99 alone vs under a full-speed Train stream (every run)", ""]
    out += _table(
        ["micro-batch", "examples/s (256-example messages)", "message RTT p50 ms", "p99 ms"],
        [
            [k, _f(v["examples_per_second"]), _f(v["rtt_ms"]["p50"], 1), _f(v["rtt_ms"]["p99"], 1)]
            for k, v in train["train"].items()
        ],
    )
    out += _table(
        [
            "run",
            "alone p50 / p99 ms",
            "alone server CPU us/call",
            "under training p50 / p99 ms",
            "under training server CPU us/call",
            "p99 ratio",
            "training examples/s meanwhile",
        ],
        [
            [
                str(i + 1),
                f"{run['alone']['p50']:.2f} / {run['alone']['p99']:.2f}",
                _f(run["alone"].get("server_cpu_us_per_call")),
                f"{run['while_training_full_speed']['p50']:.2f} / {run['while_training_full_speed']['p99']:.2f}",
                _f(run["while_training_full_speed"].get("server_cpu_us_per_call")),
                f"{run['p99_ratio']:.2f}",
                _f(run["training_examples_per_second_meanwhile"]),
            ]
            for i, run in enumerate(train["predict_ms"]["runs"])
        ],
    )
    out += [
        "Predict: one closed-loop caller, 1 row, on a second model; each 'alone' starts once the server's processes "
        "are idle (the previous Train stream's tail in the training process had overlapped it).",
        "",
    ]
    return out


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    series = [
        ("tt-server, h2load", "server_h2load", "C0", "-"),
        ("echo, h2load", "echo_h2load", "C1", "-"),
        ("tt-server, Python client", "server_client", "C0", ":"),
        ("echo, Python client", "echo_client", "C1", ":"),
    ]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for label, key, color, style in series:
        points = [(level[key]["req_per_s"], level[key]["p99_ms"], level["in_flight"]) for level in r["levels"]]
        ax.plot([x for x, _, _ in points], [y for _, y, _ in points], style, marker="o", color=color, label=label)
        if key.endswith("h2load"):
            for x, y, n in points:
                ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color=color)
    ax.axhline(50, color="grey", linewidth=0.8, linestyle="--", label="p99 target (50 ms)")
    ax.set_yscale("log")
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("p99 latency (ms, log)")
    ax.set_title(f"Unary Predict, 1 row, by requests in flight ({r['machine']['cores']} cores, shared with the load)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
