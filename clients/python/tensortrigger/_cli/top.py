"""``tt top``: a live view of one server from its Prometheus endpoint (``TT_METRICS_ADDRESS``), per model and
version: request rate, errors, latency percentiles, rows per model call, queue depth and time, loaded state.

Rates and percentiles are computed between two scrapes (as Prometheus' ``rate`` and ``histogram_quantile`` would
over the refresh interval), so the first frame shows only the gauges. The Prometheus text format is parsed here:
the client library does not depend on prometheus_client.
"""

from __future__ import annotations

import math
import re
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, str]  # (model, version)

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, dict[Labels, float]]:
    """Prometheus text format -> {sample name: {sorted labels: value}}."""
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        pairs = tuple(sorted((k, v.replace('\\"', '"').replace("\\\\", "\\")) for k, v in _LABEL.findall(labels or "")))
        try:
            samples[name][pairs] = float(value)
        except ValueError:
            continue
    return samples


@dataclass
class Scrape:
    at: float
    samples: dict[str, dict[Labels, float]]

    def by_version(self, name: str, **where: str) -> dict[Key, float]:
        """Sum of ``name``'s samples per (model, version), over the samples whose labels match ``where``."""
        out: dict[Key, float] = defaultdict(float)
        for labels, value in self.samples.get(name, {}).items():
            d = dict(labels)
            if "model" in d and all(d.get(k) == v for k, v in where.items()):
                out[(d["model"], d.get("version", ""))] += value
        return out

    def buckets(self, name: str) -> dict[Key, dict[float, float]]:
        out: dict[Key, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        for labels, value in self.samples.get(f"{name}_bucket", {}).items():
            d = dict(labels)
            if "model" in d and "le" in d:
                out[(d["model"], d.get("version", ""))][float(d["le"])] += value
        return out

    def total(self, name: str, **where: str) -> float:
        return sum(
            v
            for labels, v in self.samples.get(name, {}).items()
            if all(dict(labels).get(k) == w for k, w in where.items())
        )


def quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """``histogram_quantile`` over cumulative bucket counts by upper bound (linear inside the bucket)."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # in the +Inf bucket: the largest finite bound, as Prometheus answers
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


@dataclass
class Row:
    model: str
    version: str
    loaded: bool
    rps: float | None = None
    errors: float | None = None
    p50: float | None = None
    p99: float | None = None
    rows_per_call: float | None = None
    queue_rows: float | None = None
    queue_time: float | None = None
    call_time: float | None = None


@dataclass
class View:
    """Turns successive scrapes into rows (rates need the previous scrape)."""

    previous: Scrape | None = None
    rows: list[Row] = field(default_factory=list)
    ready: float | None = None
    loaded_versions: float = 0
    rpc_rate: float | None = None

    def update(self, now: Scrape) -> None:
        before = self.previous
        requests = now.by_version("tt_model_requests_total")
        loaded = now.by_version("tt_model_loaded")
        queue = now.by_version("tt_batch_queue_rows")
        keys = set(requests) | set(loaded) | set(queue)
        rows = []
        for key in keys:
            row = Row(key[0], key[1], loaded.get(key, 0) >= 1, queue_rows=queue.get(key))
            if before is not None and now.at > before.at:
                seconds = now.at - before.at
                delta = _Delta(before, now, key)
                done = delta("tt_model_requests_total")
                row.rps = done / seconds
                row.errors = (done - delta("tt_model_requests_total", status="OK")) / seconds
                buckets_now = now.buckets("tt_model_request_duration_seconds").get(key, {})
                buckets_before = before.buckets("tt_model_request_duration_seconds").get(key, {})
                moved = {b: buckets_now[b] - buckets_before.get(b, 0.0) for b in buckets_now}
                row.p50, row.p99 = quantile(0.5, moved), quantile(0.99, moved)
                calls = delta("tt_batch_rows_count")
                if calls:
                    row.rows_per_call = delta("tt_batch_rows_sum") / calls
                    row.call_time = delta("tt_model_call_duration_seconds_sum") / calls
                queued = delta("tt_model_queue_duration_seconds_count")
                if queued:
                    row.queue_time = delta("tt_model_queue_duration_seconds_sum") / queued
            rows.append(row)
        rows.sort(key=lambda r: (-(r.rps or 0.0), r.model, r.version))
        self.rows = rows
        ready = now.samples.get("tt_server_ready", {})
        self.ready = next(iter(ready.values())) if ready else None
        self.loaded_versions = now.total("tt_models_loaded")
        if before is not None and now.at > before.at:
            self.rpc_rate = max(0.0, now.total("tt_rpcs_total") - before.total("tt_rpcs_total")) / (now.at - before.at)
        self.previous = now


@dataclass
class _Delta:
    """How much a counter of one (model, version) grew between two scrapes (0 across a reset)."""

    before: Scrape
    now: Scrape
    key: Key

    def __call__(self, name: str, **where: str) -> float:
        grown = self.now.by_version(name, **where).get(self.key, 0.0) - self.before.by_version(name, **where).get(
            self.key, 0.0
        )
        return max(0.0, grown)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(view: View, source: str, error: str | None) -> Group:
    ready = {None: "?", 1.0: "[green]SERVING[/]"}.get(view.ready, "[red]NOT SERVING[/]")
    header = Text.from_markup(
        f"[bold]tt top[/] {source}  {time.strftime('%H:%M:%S')}  server {ready}  "
        f"versions loaded {view.loaded_versions:.0f}  rpc/s {_num(view.rpc_rate)}"
    )
    table = Table(expand=False, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)  # fits 80 columns
    for column, justify in (
        ("MODEL", "left"),
        ("VER", "right"),
        ("STATE", "left"),
        ("REQ/S", "right"),
        ("ERR/S", "right"),
        ("P50 ms", "right"),
        ("P99 ms", "right"),
        ("ROWS/CALL", "right"),
        ("QUEUE", "right"),
        ("QUEUE ms", "right"),
        ("CALL ms", "right"),
    ):
        # Model names are never cut (up to 40 characters); numbers give way first on a narrow terminal.
        width = min(40, max([5, *(len(r.model) for r in view.rows)])) if column == "MODEL" else len(column)
        table.add_column(column, justify=justify, no_wrap=True, min_width=width)  # type: ignore[arg-type]
    for row in view.rows:
        state = "loaded" if row.loaded else ("-" if row.version else "unresolved")
        errors = _num(row.errors)
        table.add_row(
            row.model,
            row.version or "-",
            state,
            _num(row.rps),
            f"[red]{errors}[/]" if row.errors else errors,
            _ms(row.p50),
            _ms(row.p99),
            _num(row.rows_per_call),
            _num(row.queue_rows, 0),
            _ms(row.queue_time),
            _ms(row.call_time),
        )
    parts: list[Text | Table] = [header, table]
    if not view.rows:
        parts.append(Text("no model has been called or loaded yet"))
    if error:
        parts.append(Text(f"cannot read {source}: {error}", style="red"))
    return Group(*parts)


def fetch(url: str, timeout: float) -> Scrape:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode("utf-8", "replace")
    return Scrape(time.monotonic(), parse_metrics(text))


def run(url: str, interval: float, iterations: int, console: Console | None = None) -> None:
    """Refresh every ``interval`` seconds until interrupted (or ``iterations`` frames, when positive)."""
    view = View()
    console = console or Console()
    frames: Iterable[int] = range(iterations) if iterations > 0 else iter(int, 1)
    with Live(render(view, url, None), console=console, auto_refresh=False, screen=False) as live:
        for frame in frames:
            error = None
            try:
                view.update(fetch(url, timeout=max(1.0, interval)))
            except (urllib.error.URLError, OSError, ValueError) as e:
                error = str(getattr(e, "reason", e))
            live.update(render(view, url, error), refresh=True)
            if iterations <= 0 or frame < iterations - 1:
                time.sleep(interval)
