"""Prometheus metrics, one module-level set per process (the usual prometheus_client pattern).

Served over HTTP by ``serve()`` when ``TT_METRICS_ADDRESS`` is set; docs/operations.md lists every series.

Per-model series carry the labels ``model`` and ``version`` (as TF Serving's ``model_name`` and Triton's
``model``/``version``). Their cardinality is bounded:

* serving series exist for loaded versions only (bounded by the model cache) and are removed on unload
  (``ServingSeries.remove``);
* requests that fail before they reach a loaded version (unknown version, bad input naming a model that is not
  loaded, a load that fails) are counted with ``version=""`` under the model's name only while fewer than
  ``MAX_UNLOADED_MODELS`` such names have series, and never for ``NOT_FOUND`` of a model that has no loaded version:
  a client naming random models lands in the one overflow bucket ``model="_other"`` (model names cannot start
  with ``_``, so it never collides with a real one);
* lifecycle, training and job series name versions that exist in the registry; ``forget_version`` /
  ``forget_model`` remove them when the registry deletes the version or the model.

The hot path's series live in one ``ServingSeries`` per loaded version, made when it loads: a request adds to
its plain fields (no lookup, no lock) and a collector exposes them at scrape time.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_QUEUE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)
MV = ["model", "version"]

OTHER_MODEL = "_other"  # the overflow bucket
MAX_UNLOADED_MODELS = 100  # model names with series but no loaded version (errors before a version ran)

# --- RPCs (every service) ---------------------------------------------------------------------------------
SERVER_READY = Gauge("tt_server_ready", "1 while the server's health is SERVING; 0 while it starts or drains.")
RPCS = Counter("tt_rpcs_total", "Finished RPCs by method and status code.", ["method", "code"])
RPC_SECONDS = Histogram(
    "tt_rpc_duration_seconds", "RPC duration from handler start to finish.", ["method"], buckets=_LATENCY_BUCKETS
)

# --- model lifecycle ----------------------------------------------------------------------------------------
MODEL_LOADS = Counter("tt_model_loads_total", "Successful loads of a model version.", MV)
MODEL_LOAD_FAILURES = Counter("tt_model_load_failures_total", "Failed loads of a model version.", MV)
MODEL_LOAD_BACKOFF_REFUSALS = Counter(
    "tt_model_load_backoff_refusals_total",
    "Calls for a model version refused at once, without loading, because its last load failed and the retry "
    "backoff has not passed.",
    MV,
)
MODEL_LOAD_SECONDS = Histogram(
    "tt_model_load_duration_seconds", "Time to download, load and warm up a model version.", MV, buckets=_LOAD_BUCKETS
)
MODEL_UNLOADS = Counter("tt_model_unloads_total", "Unloads of a model version, by reason.", [*MV, "reason"])
MODELS_LOADED = Gauge("tt_models_loaded", "Model versions currently loaded.")

# --- batch jobs (server's embedded worker and tt-worker) --------------------------------------------------
JOBS_FINISHED = Counter("tt_jobs_finished_total", "Jobs that reached a terminal state, by state.", [*MV, "state"])
JOB_ROWS = Counter("tt_job_rows_total", "Input rows processed by batch jobs (rate() gives rows/s).", MV)
JOB_ATTEMPTS = Counter("tt_job_attempts_total", "Job attempts started (a lease taken).", MV)
JOB_LEASE_EXPIRIES = Counter(
    "tt_job_lease_expiries_total", "Jobs taken over because the attempt holding them let its lease run out.", MV
)
JOBS_RUNNING = Gauge("tt_jobs_running", "Job attempts running in this process.", MV)
BROKER_QUEUE = Gauge(
    "tt_broker_queue_messages", "Messages in the broker's job queues (jobs: waiting; dead_letter: poison).", ["queue"]
)

REPOSITORY_IMPORTS = Counter(
    "tt_repository_imports_total", "Model repository version folders imported or refused.", ["model", "outcome"]
)

# --- online training ----------------------------------------------------------------------------------------
TRAINING_STEPS = Counter("tt_training_steps_total", "Online-learning train steps.", MV)
TRAINING_EXAMPLES = Counter("tt_training_examples_total", "Examples trained on.", MV)
TRAINING_LOSS = Gauge("tt_training_loss", "Loss of the last train step of a running session.", MV)
TRAINING_SESSIONS = Gauge("tt_training_sessions", "Training sessions running in this process.", MV)
TRAINING_SESSIONS_ENDED = Counter(
    "tt_training_sessions_ended_total", "Training sessions that ended, by outcome (ok or error).", [*MV, "outcome"]
)

# The prometheus_client metrics labelled by model: forget_version / forget_model remove their series.
PER_MODEL: tuple[MetricWrapperBase, ...] = (
    MODEL_LOADS,
    MODEL_LOAD_FAILURES,
    MODEL_LOAD_BACKOFF_REFUSALS,
    MODEL_LOAD_SECONDS,
    MODEL_UNLOADS,
    JOBS_FINISHED,
    JOB_ROWS,
    JOB_ATTEMPTS,
    JOB_LEASE_EXPIRIES,
    JOBS_RUNNING,
    TRAINING_STEPS,
    TRAINING_EXAMPLES,
    TRAINING_LOSS,
    TRAINING_SESSIONS,
    TRAINING_SESSIONS_ENDED,
)

# Exemplars (trace ids on the latency histograms) are attached when tracing is on; set by the composition root.
exemplars = False


# --- inference requests, per model and version (native Predict/PredictBatch, TF Serving, OIP) -------------
# The hot path's series are plain numbers in a ServingSeries, exposed by one collector at scrape time:
# prometheus_client's children take a lock per inc/observe (~1.5 us per inc, ~3 us per observe on this
# machine), which for the ten updates of a request cost more than the rest of the metrics work together. All
# updates happen on the event loop thread; the scrape thread only reads (a count may be one request ahead of
# its sum within one scrape, which Prometheus tolerates).


class _Histogram:
    """Bucket counts (not cumulative), sum, and the last exemplar per bucket."""

    __slots__ = ("bounds", "counts", "exemplars", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.exemplars: list[Exemplar | None] | None = None

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # buckets count values <= their bound
        self.sum += value

    def observe_with(self, value: float, labels: dict[str, str] | None) -> None:
        index = bisect_left(self.bounds, value)
        self.counts[index] += 1
        self.sum += value
        if labels:
            if self.exemplars is None:
                self.exemplars = [None] * len(self.counts)
            self.exemplars[index] = Exemplar(labels, value, time.time())

    def buckets(self) -> list[tuple[str, float] | tuple[str, float, Exemplar | None]]:
        counts, exemplars = list(self.counts), self.exemplars
        out: list[tuple[str, float] | tuple[str, float, Exemplar | None]] = []
        total = 0
        for i, bound in enumerate((*self.bounds, math.inf)):
            total += counts[i]
            le = floatToGoString(bound)
            out.append((le, total, exemplars[i]) if exemplars is not None else (le, total))
        return out


class ServingSeries:
    """The per-model series of one loaded version (or, as ``_UnloadedSeries``, of requests that reached none).

    The hot path adds to its fields directly, on the event loop thread; ``remove()`` takes it out of /metrics."""

    __slots__ = (
        "batch_requests",
        "batch_rows",
        "call",
        "calls",
        "decode",
        "encode",
        "latency",
        "loaded",
        "memory_bytes",
        "model",
        "queue",
        "queue_capacity",
        "queue_rows",
        "rows",
        "statuses",
        "version",
    )

    def __init__(self, model: str, version: str, queue_capacity: int = 0, memory_bytes: int = 0) -> None:
        self.model = model
        self.version = version
        self.statuses: dict[str, int] = {}  # requests by status code
        self.latency = _Histogram(_LATENCY_BUCKETS)
        self.rows = 0
        self.decode = 0.0
        self.encode = 0.0
        self.queue = _Histogram(_QUEUE_BUCKETS)
        self.calls = 0
        self.call = _Histogram(_LATENCY_BUCKETS)
        self.batch_rows = _Histogram(_ROW_BUCKETS)
        self.batch_requests = _Histogram(_ROW_BUCKETS)
        self.queue_rows = 0
        self.queue_capacity = queue_capacity
        self.memory_bytes = memory_bytes
        self.loaded = False

    @property
    def labels(self) -> tuple[str, str]:
        return self.model, self.version

    def count(self, code: str) -> None:
        """One more request ended with status ``code`` (a gRPC code name)."""
        statuses = self.statuses
        statuses[code] = statuses.get(code, 0) + 1

    def remove(self) -> None:
        """Take this version's series out of /metrics (it was unloaded). A version loaded again starts from
        zero, which ``rate()`` reads as a counter reset."""
        with _lock:
            key = (self.model, self.version)
            if _serving.get(key) is not self:
                return
            del _serving[key]
            count = _loaded_names.get(self.model, 0) - 1
            if count > 0:
                _loaded_names[self.model] = count
            else:
                _loaded_names.pop(self.model, None)


class _UnloadedSeries(ServingSeries):
    """Requests that failed before reaching a loaded version: only statuses and latency are exposed."""

    __slots__ = ()

    def remove(self) -> None:
        with _lock:
            if _unloaded.get(self.model) is self:
                del _unloaded[self.model]
                _unloaded_names.discard(self.model)


_lock = threading.Lock()  # series are made and removed on the event loop and read by the scrape thread
_serving: dict[tuple[str, str], ServingSeries] = {}
_unloaded: dict[str, _UnloadedSeries] = {}
_loaded_names: dict[str, int] = {}  # model name -> versions with serving series
_unloaded_names: set[str] = set()  # model names with request series but no loaded version
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # the registry's model names


def serving_series(model: str, version: int, queue_capacity: int, memory_bytes: int) -> ServingSeries:
    """Series for a version being loaded (exposed at once; ``loaded`` is set when it is listed as loaded)."""
    series = ServingSeries(model, str(version), queue_capacity, memory_bytes)
    with _lock:
        _serving[(model, series.version)] = series
        _loaded_names[model] = _loaded_names.get(model, 0) + 1
    return series


def unloaded_series(model: str, code: str) -> ServingSeries:
    """Where a request for ``model`` that failed with ``code`` before reaching a loaded version is counted
    (``version=""``), or the overflow bucket (see the module docstring)."""
    with _lock:
        if model not in _unloaded_names:
            full = len(_unloaded_names) >= MAX_UNLOADED_MODELS
            if model not in _loaded_names and (code == "NOT_FOUND" or full or _NAME.match(model) is None):
                model = OTHER_MODEL
            else:
                _unloaded_names.add(model)
        series = _unloaded.get(model)
        if series is None:
            series = _unloaded[model] = _UnloadedSeries(model, "")
    return series


class _ServingCollector(Collector):
    """Exposes every ServingSeries at scrape time (and describes the families when nothing is loaded)."""

    def collect(self) -> Iterator[Metric]:
        with _lock:
            serving = list(_serving.values())
            unloaded = list(_unloaded.values())
        mv = ["model", "version"]
        requests = CounterMetricFamily(
            "tt_model_requests", "Inference requests by model, version and status code.", labels=[*mv, "status"]
        )
        latency = HistogramMetricFamily(
            "tt_model_request_duration_seconds",
            "Inference request time in the server, from the request's decoding to its encoded response.",
            labels=mv,
        )
        rows = CounterMetricFamily("tt_model_rows", "Rows (examples) inferred by successful requests.", labels=mv)
        queue = HistogramMetricFamily(
            "tt_model_queue_duration_seconds",
            "Time a request waited in the dynamic batcher's queue before its model call started.",
            labels=mv,
        )
        decode = CounterMetricFamily(
            "tt_model_decode_seconds", "Time spent validating and decoding request inputs.", labels=mv
        )
        encode = CounterMetricFamily("tt_model_encode_seconds", "Time spent encoding responses.", labels=mv)
        calls = CounterMetricFamily("tt_model_calls", "Model calls (batches) run by the dynamic batcher.", labels=mv)
        call = HistogramMetricFamily(
            "tt_model_call_duration_seconds", "Duration of one model call (a batch).", labels=mv
        )
        batch_rows = HistogramMetricFamily(
            "tt_batch_rows", "Rows per model call made by the dynamic batcher.", labels=mv
        )
        batch_requests = HistogramMetricFamily("tt_batch_requests", "Requests merged into one model call.", labels=mv)
        queue_rows = GaugeMetricFamily(
            "tt_batch_queue_rows", "Rows waiting in a version's batcher queue (sampled at each call).", labels=mv
        )
        capacity = GaugeMetricFamily(
            "tt_batch_queue_capacity_rows", "Rows a version's queue holds before RESOURCE_EXHAUSTED.", labels=mv
        )
        loaded = GaugeMetricFamily("tt_model_loaded", "1 while the model version is loaded and serving.", labels=mv)
        memory = GaugeMetricFamily(
            "tt_model_memory_bytes", "Estimated memory held by a loaded model version.", labels=mv
        )
        for s in (*serving, *unloaded):
            labels = [s.model, s.version]
            for code, count in dict(s.statuses).items():
                requests.add_metric([*labels, code], count)
            latency.add_metric(labels, s.latency.buckets(), s.latency.sum)  # type: ignore[arg-type]
        for s in serving:
            labels = [s.model, s.version]
            rows.add_metric(labels, s.rows)
            queue.add_metric(labels, s.queue.buckets(), s.queue.sum)  # type: ignore[arg-type]
            decode.add_metric(labels, s.decode)
            encode.add_metric(labels, s.encode)
            calls.add_metric(labels, s.calls)
            call.add_metric(labels, s.call.buckets(), s.call.sum)  # type: ignore[arg-type]
            batch_rows.add_metric(labels, s.batch_rows.buckets(), s.batch_rows.sum)  # type: ignore[arg-type]
            batch_requests.add_metric(labels, s.batch_requests.buckets(), s.batch_requests.sum)  # type: ignore[arg-type]
            queue_rows.add_metric(labels, s.queue_rows)
            capacity.add_metric(labels, s.queue_capacity)
            memory.add_metric(labels, s.memory_bytes)
            if s.loaded:
                loaded.add_metric(labels, 1)
        yield from (requests, latency, rows, queue, decode, encode, calls, call, batch_rows, batch_requests)
        yield from (queue_rows, capacity, loaded, memory)


REGISTRY.register(_ServingCollector())


def forget_model(model: str) -> None:
    """Remove every series of ``model`` (it was deleted)."""
    _forget(lambda labels: labels.get("model") == model)
    with _lock:
        _unloaded_names.discard(model)
        _unloaded.pop(model, None)


def forget_version(model: str, version: int) -> None:
    """Remove every series of one version (it was deleted)."""
    v = str(version)
    _forget(lambda labels: labels.get("model") == model and labels.get("version") == v)


def _forget(match: Callable[[dict[str, str]], bool]) -> None:
    for metric in PER_MODEL:
        names = metric._labelnames
        for family in metric.collect():
            seen = set()
            for sample in family.samples:
                if not match(sample.labels):
                    continue
                key = tuple(sample.labels[n] for n in names)
                if key not in seen:
                    seen.add(key)
                    with contextlib.suppress(KeyError):
                        metric.remove(*key)


def serve(address: str, stack: contextlib.AsyncExitStack) -> None:
    """Serve /metrics on ``host:port`` from a daemon thread until ``stack`` closes (it stops the server and
    releases the port)."""
    host, port = address.rsplit(":", 1)
    try:
        server, _ = start_http_server(int(port), addr=host.strip("[]"))
    except OSError as e:  # the bare "[Errno 98] Address already in use" named neither the address nor the server
        raise RuntimeError(f"cannot serve /metrics on {address}: {e.strerror}") from None
    stack.callback(server.server_close)
    stack.callback(server.shutdown)
