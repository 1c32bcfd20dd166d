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

The hot path resolves its metric children once per servable (``ServingSeries``), never per request.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

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

# --- inference requests, per model and version (native Predict/PredictBatch, TF Serving, OIP) -------------
REQUESTS = Counter("tt_model_requests_total", "Inference requests by model, version and status code.", [*MV, "status"])
REQUEST_SECONDS = Histogram(
    "tt_model_request_duration_seconds",
    "Inference request time in the server, from the request's decoding to its encoded response.",
    MV,
    buckets=_LATENCY_BUCKETS,
)
ROWS = Counter("tt_model_rows_total", "Rows (examples) inferred by successful requests.", MV)
QUEUE_SECONDS = Histogram(
    "tt_model_queue_duration_seconds",
    "Time a request waited in the dynamic batcher's queue before its model call started.",
    MV,
    buckets=_QUEUE_BUCKETS,
)
DECODE_SECONDS = Counter("tt_model_decode_seconds_total", "Time spent validating and decoding request inputs.", MV)
ENCODE_SECONDS = Counter("tt_model_encode_seconds_total", "Time spent encoding responses.", MV)
# Per model call (a batch of merged requests).
MODEL_CALLS = Counter("tt_model_calls_total", "Model calls (batches) run by the dynamic batcher.", MV)
CALL_SECONDS = Histogram(
    "tt_model_call_duration_seconds", "Duration of one model call (a batch).", MV, buckets=_LATENCY_BUCKETS
)
BATCH_ROWS = Histogram("tt_batch_rows", "Rows per model call made by the dynamic batcher.", MV, buckets=_ROW_BUCKETS)
BATCH_REQUESTS = Histogram("tt_batch_requests", "Requests merged into one model call.", MV, buckets=_ROW_BUCKETS)
QUEUE_ROWS = Gauge("tt_batch_queue_rows", "Rows waiting in a version's batcher queue (sampled at each call).", MV)
QUEUE_CAPACITY = Gauge("tt_batch_queue_capacity_rows", "Rows a version's queue holds before RESOURCE_EXHAUSTED.", MV)

# --- model lifecycle ----------------------------------------------------------------------------------------
MODEL_LOADS = Counter("tt_model_loads_total", "Successful loads of a model version.", MV)
MODEL_LOAD_FAILURES = Counter("tt_model_load_failures_total", "Failed loads of a model version.", MV)
MODEL_LOAD_SECONDS = Histogram(
    "tt_model_load_duration_seconds", "Time to download, load and warm up a model version.", MV, buckets=_LOAD_BUCKETS
)
MODEL_UNLOADS = Counter("tt_model_unloads_total", "Unloads of a model version, by reason.", [*MV, "reason"])
MODEL_LOADED = Gauge("tt_model_loaded", "1 while the model version is loaded and serving.", MV)
MODEL_MEMORY = Gauge("tt_model_memory_bytes", "Estimated memory held by a loaded model version.", MV)
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

# --- online training ----------------------------------------------------------------------------------------
TRAINING_STEPS = Counter("tt_training_steps_total", "Online-learning train steps.", MV)
TRAINING_EXAMPLES = Counter("tt_training_examples_total", "Examples trained on.", MV)
TRAINING_LOSS = Gauge("tt_training_loss", "Loss of the last train step of a running session.", MV)
TRAINING_SESSIONS = Gauge("tt_training_sessions", "Training sessions running in this process.", MV)
TRAINING_SESSIONS_ENDED = Counter(
    "tt_training_sessions_ended_total", "Training sessions that ended, by outcome (ok or error).", [*MV, "outcome"]
)

# Every per-model metric: forget_version / forget_model remove their series.
PER_MODEL: tuple[MetricWrapperBase, ...] = (
    REQUESTS,
    REQUEST_SECONDS,
    ROWS,
    QUEUE_SECONDS,
    DECODE_SECONDS,
    ENCODE_SECONDS,
    MODEL_CALLS,
    CALL_SECONDS,
    BATCH_ROWS,
    BATCH_REQUESTS,
    QUEUE_ROWS,
    QUEUE_CAPACITY,
    MODEL_LOADS,
    MODEL_LOAD_FAILURES,
    MODEL_LOAD_SECONDS,
    MODEL_UNLOADS,
    MODEL_LOADED,
    MODEL_MEMORY,
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
# What a loaded version serves with: removed when the version is unloaded.
_SERVING: tuple[MetricWrapperBase, ...] = (
    REQUEST_SECONDS,
    ROWS,
    QUEUE_SECONDS,
    DECODE_SECONDS,
    ENCODE_SECONDS,
    MODEL_CALLS,
    CALL_SECONDS,
    BATCH_ROWS,
    BATCH_REQUESTS,
    QUEUE_ROWS,
    QUEUE_CAPACITY,
    MODEL_LOADED,
    MODEL_MEMORY,
)

# Exemplars (trace ids on the latency histograms) are attached when tracing is on; set by the composition root.
exemplars = False

_lock = threading.Lock()  # the worker's threads and the event loop both create and remove series
_loaded_names: dict[str, int] = {}  # model name -> loaded versions with serving series
_unloaded_names: set[str] = set()  # model names with request series but no loaded version


class ServingSeries:
    """The metric children of one loaded version, resolved once when it is loaded (the hot path only calls
    ``inc``/``observe`` on them)."""

    __slots__ = (
        "_removed",
        "_statuses",
        "batch_requests",
        "batch_rows",
        "call",
        "calls",
        "decode",
        "encode",
        "latency",
        "model",
        "ok",
        "queue",
        "queue_rows",
        "rows",
        "version",
    )

    def __init__(self, model: str, version: str) -> None:
        self.model = model
        self.version = version
        labels = (model, version)
        self.ok = REQUESTS.labels(model, version, "OK")
        self.latency = REQUEST_SECONDS.labels(*labels)
        self.rows = ROWS.labels(*labels)
        self.queue = QUEUE_SECONDS.labels(*labels)
        self.decode = DECODE_SECONDS.labels(*labels)
        self.encode = ENCODE_SECONDS.labels(*labels)
        self.calls = MODEL_CALLS.labels(*labels)
        self.call = CALL_SECONDS.labels(*labels)
        self.batch_rows = BATCH_ROWS.labels(*labels)
        self.batch_requests = BATCH_REQUESTS.labels(*labels)
        self.queue_rows = QUEUE_ROWS.labels(*labels)
        self._statuses: dict[str, Counter] = {"OK": self.ok}
        self._removed = False

    @property
    def labels(self) -> tuple[str, str]:
        return self.model, self.version

    def status(self, code: str) -> Counter:
        """The requests counter for status ``code`` (a gRPC code name)."""
        child = self._statuses.get(code)
        if child is None:
            child = self._statuses[code] = REQUESTS.labels(self.model, self.version, code)
        return child

    def remove(self) -> None:
        """Drop this version's serving series (it was unloaded). Its request counts by status go too: a
        version that is loaded again starts them from zero, which ``rate()`` reads as a counter reset."""
        with _lock:
            if self._removed:
                return
            self._removed = True
            count = _loaded_names.get(self.model, 0) - 1
            if count > 0:
                _loaded_names[self.model] = count
            else:
                _loaded_names.pop(self.model, None)
        for metric in _SERVING:
            with contextlib.suppress(KeyError):
                metric.remove(self.model, self.version)
        for code in self._statuses:
            with contextlib.suppress(KeyError):
                REQUESTS.remove(self.model, self.version, code)


def serving_series(model: str, version: int, queue_capacity: int, memory_bytes: int) -> ServingSeries:
    """Series for a version that is being loaded; ``loaded()`` marks it serving."""
    with _lock:
        _loaded_names[model] = _loaded_names.get(model, 0) + 1
    series = ServingSeries(model, str(version))
    QUEUE_CAPACITY.labels(model, str(version)).set(queue_capacity)
    MODEL_MEMORY.labels(model, str(version)).set(memory_bytes)
    return series


def unloaded_series(model: str, code: str) -> ServingSeries:
    """Where a request for ``model`` that failed with ``code`` before reaching a loaded version is counted
    (``version=""``), or the overflow bucket (see the module docstring)."""
    with _lock:
        if model not in _unloaded_names:
            full = len(_unloaded_names) >= MAX_UNLOADED_MODELS
            if model not in _loaded_names and (code == "NOT_FOUND" or full or not _nameish(model)):
                model = OTHER_MODEL
            else:
                _unloaded_names.add(model)
        series = _unloaded.get(model)
        if series is None:
            series = _unloaded[model] = _UnloadedSeries(model)
    return series


class _UnloadedSeries(ServingSeries):
    __slots__ = ()

    def __init__(self, model: str) -> None:  # only the request counters and the latency histogram
        self.model = model
        self.version = ""
        self.latency = REQUEST_SECONDS.labels(model, "")
        self._statuses = {}  # failures only: no OK child (it would show as a zero series)
        self._removed = False

    def remove(self) -> None:
        with contextlib.suppress(KeyError):
            REQUEST_SECONDS.remove(self.model, "")
        for code in self._statuses:
            with contextlib.suppress(KeyError):
                REQUESTS.remove(self.model, "", code)


_unloaded: dict[str, _UnloadedSeries] = {}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # the registry's model names


def _nameish(model: str) -> bool:
    return _NAME.match(model) is not None


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


def serve(address: str) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics on ``host:port`` from a daemon thread; returns the server so it can be shut down."""
    host, port = address.rsplit(":", 1)
    return start_http_server(int(port), addr=host)
