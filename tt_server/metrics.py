"""Prometheus metrics, one module-level set per process (the usual prometheus_client pattern).

Served over HTTP by ``serve()`` when ``TT_METRICS_ADDRESS`` is set. Label values are bounded: RPC method
names, status codes, and ``model:version`` for loaded servables (bounded by the model cache size).
"""

from __future__ import annotations

import contextlib
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)

RPCS = Counter("tt_rpcs_total", "Finished RPCs by method and status code.", ["method", "code"])
RPC_SECONDS = Histogram(
    "tt_rpc_duration_seconds", "RPC duration from handler start to finish.", ["method"], buckets=_LATENCY_BUCKETS
)
BATCH_ROWS = Histogram(
    "tt_batch_rows", "Rows per model call made by the dynamic batcher.", ["servable"], buckets=_ROW_BUCKETS
)
BATCH_REQUESTS = Histogram(
    "tt_batch_requests", "Requests merged into one model call.", ["servable"], buckets=_ROW_BUCKETS
)
QUEUE_ROWS = Gauge("tt_batch_queue_rows", "Rows waiting in a servable's batcher queue.", ["servable"])
MODEL_LOADS = Counter("tt_model_loads_total", "Model version loads by outcome.", ["model", "outcome"])
MODEL_LOAD_SECONDS = Histogram(
    "tt_model_load_seconds", "Time to download, load and warm up a model version.", buckets=_LATENCY_BUCKETS
)
MODEL_UNLOADS = Counter("tt_model_unloads_total", "Model version unloads by reason.", ["reason"])
MODELS_LOADED = Gauge("tt_models_loaded", "Model versions currently loaded.")
JOBS_FINISHED = Counter("tt_jobs_finished_total", "Job attempts that reached a terminal state, by state.", ["state"])
JOB_ROWS = Counter("tt_job_rows_total", "Input rows processed by batch jobs (rate() gives rows/s).")
REPOSITORY_IMPORTS = Counter(
    "tt_repository_imports_total", "Model repository version folders imported or refused.", ["model", "outcome"]
)
TRAINING_STEPS = Counter("tt_training_steps_total", "Online-learning train steps, by model.", ["model"])
TRAINING_EXAMPLES = Counter("tt_training_examples_total", "Examples trained on, by model.", ["model"])
TRAINING_LOSS = Gauge("tt_training_loss", "Loss of the last train step, by model.", ["model"])


def forget_servable(servable: str) -> None:
    """Drop an unloaded servable's series so label cardinality stays bounded by the model cache."""
    for metric in (BATCH_ROWS, BATCH_REQUESTS, QUEUE_ROWS):
        with contextlib.suppress(KeyError):
            metric.remove(servable)


def serve(address: str) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics on ``host:port`` from a daemon thread; returns the server so it can be shut down."""
    host, port = address.rsplit(":", 1)
    return start_http_server(int(port), addr=host)
