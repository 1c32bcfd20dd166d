"""The one settings object. Every field reads from a ``TT_``-prefixed environment variable.

With nothing set the server runs on the embedded defaults: SQLite and a blob folder under ``TT_DATA_DIR``,
an in-process broker and worker. Set ``TT_DATABASE_URL``, ``TT_S3_BUCKET`` (+ ``TT_S3_ENDPOINT_URL``) and
``TT_AMQP_URL`` for production backends.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1 << 20


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TT_", extra="ignore")

    # --- network -------------------------------------------------------------------------------------------
    grpc_address: str = Field("127.0.0.1:50051", description="host:port the gRPC server listens on.")
    http_address: str = Field(
        "",
        description="host:port of the HTTP/JSON front (Open Inference Protocol REST, TF Serving REST, TFaaS routes, "
        "registry and jobs JSON, /openapi.json, /docs), served on the gRPC server's event loop with the same auth, "
        "limits and errors; empty = off (`make run` serves it on 127.0.0.1:8501).",
    )
    max_message_bytes: int = Field(
        64 * MiB,
        ge=1,
        description="Largest gRPC message accepted or sent; also the largest HTTP body read whole (JSON).",
    )
    max_concurrent_rpcs: int | None = Field(
        None,
        ge=1,
        description="Calls in progress at once; more get RESOURCE_EXHAUSTED. Health checks are neither counted "
        "nor refused (a busy pod must not fail its probes). None = unbounded.",
    )
    max_connection_age_seconds: float = Field(
        0.0,
        description="Ask clients to reconnect after this long (0 = never), so client-side load balancing "
        "over a headless Service spreads onto replicas added later.",
    )
    shutdown_grace_seconds: float = Field(
        20.0, description="On SIGTERM: how long in-flight calls may run after health goes NOT_SERVING."
    )
    drain_delay_seconds: float = Field(
        0.0,
        description="On SIGTERM: keep accepting new calls this long after NOT_SERVING, so a mesh can drain.",
    )

    # --- serving processes (tt_server/supervisor.py) ----------------------------------------------------
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        1,
        description="Serving processes sharing the gRPC port, under a supervisor that restarts a crashed one and "
        "drains them all on SIGTERM; 'auto' = the CPUs this process may run on. 1 = one process, no supervisor.",
    )
    grpc_port_sharing: bool = Field(
        False,
        description="Let other processes listen on the same gRPC port (SO_REUSEPORT). Off, a second server on a "
        "port in use fails to start instead of silently taking half the connections. The supervisor switches it "
        "on for its workers only; there is rarely a reason to set it by hand.",
    )

    # --- storage ---------------------------------------------------------------------------------------
    data_dir: Path = Field(Path("./var"), description="Embedded SQLite file, blob folder and scratch space.")
    database_url: str = Field(
        "", description="postgresql://user@host/db for PostgreSQL; empty = SQLite file in data_dir."
    )
    database_pool_size: int = Field(10, ge=1, description="PostgreSQL connection pool size.")
    s3_bucket: str = Field("", description="S3 bucket for blobs; empty = local folder in data_dir.")
    s3_endpoint_url: str = Field("", description="S3 endpoint (MinIO, moto, ...); empty = AWS.")
    s3_region: str = Field("us-east-1", description="S3 region.")
    s3_prefix: str = Field("", description="Key prefix inside the bucket, for sharing one bucket.")
    s3_part_size_bytes: int = Field(
        8 * MiB, ge=5 * MiB, description="Multipart upload part size (S3 minimum is 5 MiB)."
    )
    s3_upload_concurrency: int = Field(
        4, ge=1, description="Parts of one multipart upload in flight at once (memory: this many parts per upload)."
    )
    page_token_secret: str = Field(
        "", description="Key that signs list page tokens; set the same value on every replica."
    )
    gc_interval_seconds: float = Field(60.0, gt=0, description="How often orphaned blobs are swept.")
    stale_write_seconds: float = Field(
        86_400.0,
        gt=0,
        description="Blob writes begun longer ago than this and never finished (S3 multipart uploads, local "
        "temporary files, left by a killed process) are aborted by the periodic sweep. Longer than any one "
        "upload or job result write can take.",
    )
    scratch_max_age_seconds: float = Field(
        3600.0,
        gt=0,
        description="Scratch folders (data_dir/tmp/upload-*, train-*, http-upload-*) are removed at start-up "
        "and by the periodic sweep as soon as the process that owned them is gone (its lock on the folder is "
        "free); a folder without an owner lock (left by a process killed while creating it, or by an older "
        "release) is removed once it is older than this.",
    )
    amqp_url: str = Field("", description="amqp://... for RabbitMQ; empty = in-process broker and worker.")

    # --- uploads and model safety -----------------------------------------------------------------------
    max_upload_bytes: int = Field(2048 * MiB, ge=1, description="Largest model artifact accepted.")
    max_archive_members: int = Field(10_000, description="Most files a SavedModel archive may hold.")
    max_unpacked_bytes: int = Field(8192 * MiB, description="Largest total unpacked size of an archive.")
    max_compression_ratio: float = Field(
        200.0, description="Largest unpacked/packed size ratio of an archive (zip-bomb guard)."
    )
    allowed_custom_objects: list[str] = Field(
        default_factory=list,
        description="Fully qualified Keras classes (module.Class) allowed besides Keras's own layers.",
    )
    allow_non_finite_weights: bool = Field(
        False,
        description="Accept uploaded or imported versions whose weights hold NaN or infinite values (refused by "
        "default: such a model answers NaN to every request).",
    )

    event_loop: Literal["uvloop", "asyncio"] = Field(
        "uvloop", description="Event loop implementation; uvloop measured ~25-50% faster on the Predict path."
    )
    gc_freeze: bool = Field(
        True,
        description="Keep long-lived objects (TensorFlow, Keras, loaded models) out of the garbage collector's "
        "full walks: collect once and gc.freeze() at start-up and a moment after each model load or unload. "
        "Those walks showed as 100-300 ms stalls in the Predict p99 under load (runtime/memory.py).",
    )
    gil_switch_interval_seconds: float = Field(
        0.0005,
        gt=0,
        description="Python's thread switch interval (sys.setswitchinterval; Python's default is 0.005): how long a "
        "thread waiting for the GIL waits before the running one is asked to hand it over. The inference thread "
        "needs the GIL briefly before and after each model call while the event loop is busy; 0.5 ms measured "
        "~20% more Predict throughput at 128 in flight than 5 ms (tt-server only; set at start-up).",
    )

    # --- security -------------------------------------------------------------------------------------------
    auth_tokens_file: Path | None = Field(
        None, description="File of '<reader|writer|admin> <token> [name]' lines; unset = no authentication."
    )
    auth_public_health: bool = Field(True, description="Health checks need no token (probes, mesh sidecars).")
    auth_public_reflection: bool = Field(False, description="Server reflection needs no token.")
    tls_cert_file: Path | None = Field(None, description="PEM server certificate (chain); set with the key for TLS.")
    tls_key_file: Path | None = Field(None, description="PEM private key of the server certificate.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle; when set, clients must present a certificate it signed (mTLS)."
    )
    rate_limit_per_second: float = Field(
        0.0, description="Calls per second allowed per client (token name, else peer address); 0 = no limit."
    )
    rate_limit_burst: float = Field(100.0, description="Calls a client may make at once above its rate.")

    metrics_address: str = Field(
        "", description="host:port serving Prometheus metrics at /metrics (e.g. 0.0.0.0:9090); empty = off."
    )

    # --- logging -----------------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Root log level: DEBUG, INFO, WARNING, ERROR or CRITICAL."
    )
    log_json: bool = Field(
        True,
        description="One JSON object per log line, for every line the process writes (TensorFlow's native "
        "logging included); else plain text.",
    )
    access_log: Literal["off", "sampled", "all"] = Field(
        "off",
        description="A log line per call (method, model, version, status, duration, request id): off, all, or "
        "sampled (every failed call, and access_log_sample_ratio of the others).",
    )
    access_log_sample_ratio: float = Field(
        0.01, ge=0, le=1, description="With access_log=sampled: the share of successful calls logged."
    )
    log_repeat_interval_seconds: float = Field(
        30.0,
        description="A dependency that keeps failing (RabbitMQ reconnects, PostgreSQL, S3) logs the same warning "
        "at most once per interval, with the count of repeats left out.",
    )

    # --- inference ---------------------------------------------------------------------------------------
    inference_intra_op_threads: int = Field(
        0, description="TensorFlow threads inside one op (matmul ...); 0 = TensorFlow's default (all cores)."
    )
    inference_inter_op_threads: int = Field(
        1,
        description="TensorFlow threads running independent ops at once; 0 = TensorFlow's default. 1 halves "
        "the per-call overhead of small models (measured: ~85 -> ~50 us at batch 1) and costs nothing on "
        "sequential ones; raise it for models with wide parallel branches.",
    )
    inference_thread_per_model: bool = Field(
        False,
        description="Give each loaded version its own inference thread instead of one shared thread, so "
        "different models' calls can overlap (helps on many cores; on 2 cores the shared thread wins).",
    )
    max_request_rows: int = Field(65_536, ge=1, description="Most rows (batch dim) one Predict request may carry.")
    max_request_elements: int = Field(
        16 * MiB, ge=1, description="Most elements one input tensor of a request may hold (16 Mi = 64 MiB float32)."
    )
    max_image_pixels: int = Field(
        32 * 1024 * 1024,
        ge=1,
        description="Most pixels an encoded PNG/JPEG input may declare in its header (decompression-bomb guard; "
        "checked before any pixel is decoded).",
    )
    batch_max_rows: int = Field(
        1024,
        ge=1,
        description="Most rows the dynamic batcher merges into one model call; a bigger request runs alone.",
    )
    batch_max_wait_seconds: float = Field(
        0.004,
        description="Under concurrent load (the previous model call merged several requests), how long the "
        "oldest queued request may wait for others before a call: the call starts as soon as as many requests "
        "are queued as the previous call merged, or at this limit; a lone caller never waits. Measured on the "
        "TFaaS MLP (paired runs, bench.paths): 4 ms with that early start gave 1.1x (8 in flight) and 1.4x "
        "(128 in flight) the req/s of a fixed 1 ms wait, with ~20% less server CPU per request and the same "
        "p99; a fixed 4 ms wait cost 35% at 8 in flight. 0 = never wait.",
    )
    batch_max_queue_rows: int = Field(
        65_536,
        ge=1,
        description="Rows that may wait per model version; beyond this requests get RESOURCE_EXHAUSTED.",
    )
    model_cache_max_versions: int = Field(
        16, ge=1, description="Most model versions kept loaded; the least recently used is unloaded first."
    )
    model_cache_max_bytes: int = Field(
        4096 * MiB,
        description="Most estimated variable bytes kept loaded; least recently used unloaded first.",
    )
    model_resolution_ttl_seconds: float = Field(
        5.0,
        description="How long a label or 'newest' resolution is reused; registry events invalidate it "
        "sooner, this bounds staleness if an event is lost.",
    )
    model_load_retry_max_seconds: float = Field(
        60.0,
        ge=0,
        le=900,
        description="After a version fails to load, calls for it fail at once with the load's error (no download, "
        "no load) until a backoff passes: 1 s after the first failure, doubling per consecutive failure up to "
        "this. A successful load, or any registry event for the model (a new version, a deletion, a label or "
        "policy change), ends it. 0 = try again on every call. At most 900: the TensorTriggerModelLoadFailures "
        "alert looks for a failed attempt in the last 15 minutes.",
    )
    model_repository: str = Field(
        "",
        description="A folder or s3://bucket/prefix laid out as TF Serving's model base paths "
        "(<model>/<version>/saved_model.pb + variables/, or model.keras, model.h5, a frozen graph .pb with "
        "params.json) imported as versions at start-up and every model_repository_poll_seconds; empty = none. "
        "See docs/lifecycle.md.",
    )
    model_repository_poll_seconds: float = Field(
        30.0, description="How often the model repository is scanned for new versions; 0 = only at start-up."
    )
    registry_poll_seconds: float = Field(
        30.0,
        gt=0,
        description="How often loaded versions are checked against the metadata store: the fallback when a "
        "registry event from another replica is lost.",
    )
    preload_models: list[str] = Field(
        default_factory=list,
        description='Models loaded at start-up: "name" (newest), "name:3" (version) or "name@label".',
    )

    # --- batch jobs --------------------------------------------------------------------------------------
    amqp_heartbeat_seconds: int = Field(
        10,
        ge=0,
        description="AMQP heartbeat asked of RabbitMQ (0 = off): a hung or paused worker's connection is dropped "
        "after about two missed heartbeats, and its job message is then redelivered to another worker.",
    )
    amqp_jobs_queue: str = Field(
        "tt.jobs", description="Durable RabbitMQ queue of job ids; its dead letters go to '<name>.dead'."
    )
    job_s3_allowed_prefixes: list[str] = Field(
        default_factory=list,
        description="Object storage job callers may name as input or result location, as s3://bucket/ or "
        "s3://bucket/prefix/ (JSON list; read and written with the S3 settings above). A URI outside them is "
        "PERMISSION_DENIED; empty = jobs use streamed inputs and the blob store only. Set on the workers too.",
    )
    job_max_input_bytes: int = Field(8192 * MiB, ge=1, description="Largest job input file accepted.")
    job_batch_rows: int = Field(
        16_384,
        ge=1,
        description="Rows per model call in a job. Large batches amortise the per-call cost; 16k rows of the "
        "TFaaS MLP are ~3 MiB of inputs (measured: 8k-32k rows all within noise of the best throughput).",
    )
    job_parse_block_bytes: int = Field(
        1 * MiB,
        ge=1,
        description="CSV text parsed per step. 1 MiB parsed fastest on one thread (measured 1/4/16 MiB); "
        "memory per job is a few blocks plus one batch whatever the file size.",
    )
    job_parse_threads: int = Field(
        2,
        ge=1,
        description="CSV blocks parsed at once per job. Parsing is the costliest stage for wide CSVs (42 float "
        "columns parse ~2x slower than the TFaaS MLP infers), so two parser threads run beside the inference "
        "thread (bench/jobs.py, 1M rows, 2 cores: 236k rows/s with one, 346k rows/s with two).",
    )
    job_lease_seconds: float = Field(
        3.0,
        gt=0,
        description="How long a worker's claim on a job lasts without renewal; a killed worker's job is taken "
        "over by another after at most this long (RabbitMQ redelivers its message at once, the new worker waits "
        "out the lease). Keep several progress intervals long, so a briefly stalled worker keeps its job.",
    )
    job_progress_interval_seconds: float = Field(
        0.5, gt=0, description="How often a running job's progress is written (which also renews its lease)."
    )
    job_max_attempts: int = Field(
        3, ge=1, description="Attempts per job before it fails and its message is dead-lettered (poison guard)."
    )
    job_retry_delay_seconds: float = Field(
        2.0, description="Pause before a failed attempt's job is handed back to the queue (times attempt)."
    )
    job_requeue_after_seconds: float = Field(
        600.0,
        gt=0,
        description="A QUEUED job untouched this long, or a RUNNING one whose lease expired this long ago, is "
        "published again (covers a crash between storing a job and publishing it).",
    )
    job_sweep_interval_seconds: float = Field(60.0, gt=0, description="How often workers look for such stale jobs.")
    job_watch_poll_seconds: float = Field(
        0.5, gt=0, description="How often WatchJob re-reads a job that another process runs."
    )
    embedded_job_workers: int = Field(
        1, description="Jobs run at once inside the server when TT_AMQP_URL is unset (embedded mode)."
    )
    worker_prefetch: int = Field(
        1, ge=1, description="Jobs one tt-worker process runs at once (AMQP prefetch); scale with more processes."
    )

    # --- training ------------------------------------------------------------------------------------------
    training_max_sessions: int = Field(
        4,
        description="Train streams open at once on this server (each holds a model copy and a thread); more "
        "get RESOURCE_EXHAUSTED.",
    )
    training_max_micro_batch: int = Field(
        8192, ge=1, description="Largest micro_batch_size a Train stream may ask for."
    )
    training_process: bool = Field(
        True,
        description="Run Train sessions' steps in a separate training process (started with the first session, "
        "its own GIL and TensorFlow threads; tt_server/training/process.py) rather than on a "
        "thread of the serving process, so that training at full speed does not slow Predict down.",
    )
    training_thread_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness of training threads on Linux (0 = same priority as serving): under CPU contention "
        "the inference thread and the event loop run first, so Predict keeps its latency and training takes "
        "what is left. Measured (TFaaS MLP, 2 cores, a closed-loop Predict beside a full-speed Train): Predict "
        "p50 stays at its idle ~0.19 ms with 10 versus ~0.6-0.9 ms with 0. TensorFlow's intra-op pool cannot "
        "be sized per thread (one pool per process), so this is the knob that separates the two.",
    )

    # --- observability -------------------------------------------------------------------------------------
    otel_enabled: bool = Field(
        False,
        description="Trace every RPC with OpenTelemetry (needs the 'otel' extra). The exporter is set by the "
        "standard OTEL_* variables (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, "
        "OTEL_TRACES_SAMPLER, ...). Off: nothing of OpenTelemetry is imported.",
    )
    # Dependency timeouts: they decide how fast an outage becomes UNAVAILABLE instead of a hung call. A client's
    # deadline ends its call sooner anyway; these bound calls without one and the background loops.
    database_connect_timeout_seconds: float = Field(
        5.0, description="PostgreSQL: longest wait for a new connection (refused connections fail at once)."
    )
    database_command_timeout_seconds: float = Field(
        30.0, description="PostgreSQL: longest wait for one statement's answer (a partitioned network); 0 = none."
    )
    s3_connect_timeout_seconds: float = Field(5.0, description="S3: longest wait for a new connection.")
    s3_read_timeout_seconds: float = Field(30.0, description="S3: longest wait for the next bytes of an answer.")
    s3_max_attempts: int = Field(
        3, ge=1, description="S3: attempts per request (connection errors, throttling, 5xx) before UNAVAILABLE."
    )
    amqp_publish_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="RabbitMQ: how long CreateJob waits for the job message to be confirmed, including waiting "
        "for a reconnect, before UNAVAILABLE.",
    )

    # --- validation: a bad value stops start-up with one line naming its variable (tt_server/cli.py) ----------
    @field_validator("*", mode="after")
    @classmethod
    def _not_negative(cls, value: Any, info: ValidationInfo) -> Any:
        # Sizes, counts and durations: a negative one is always a typo, never "unbounded".
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator(
        "max_concurrent_rpcs", "auth_tokens_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty variable (as --print-config writes an unset one) is unset: not the path "." nor a parse error.
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("grpc_address", "metrics_address", "http_address")
    @classmethod
    def _host_port(cls, value: str, info: ValidationInfo) -> str:
        if not value and info.field_name != "grpc_address":  # empty: that server is off
            return value
        match = _HOST_PORT.fullmatch(value)
        if match is None or int(match["port"]) > 65535:
            raise ValueError("expected host:port, e.g. 127.0.0.1:50051, 0.0.0.0:50051 or [::]:50051")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return _url(value, ("postgresql", "postgres"), "postgresql://user:password@host:5432/database")

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        return _url(value, ("amqp", "amqps"), "amqp://user:password@host:5672/")

    @field_validator("s3_endpoint_url")
    @classmethod
    def _s3_endpoint_url(cls, value: str) -> str:
        return _url(value, ("http", "https"), "http://127.0.0.1:9000")

    @field_validator("preload_models")
    @classmethod
    def _preload_models(cls, value: list[str]) -> list[str]:
        for ref in value:
            if not _MODEL_REF.fullmatch(ref):
                raise ValueError(f'{ref!r} is not "name", "name:3" or "name@label"')
        return value

    @model_validator(mode="after")
    def _tls_files_together(self) -> Settings:
        # Half a TLS configuration is a typo, not "TLS off": without this the server would listen in plaintext.
        if (self.tls_cert_file is None) != (self.tls_key_file is None) or (
            self.tls_client_ca_file is not None and self.tls_cert_file is None
        ):
            raise ValueError(
                "TT_TLS_CERT_FILE and TT_TLS_KEY_FILE must be set together, and TT_TLS_CLIENT_CA_FILE only with them"
            )
        return self

    @property
    def worker_count(self) -> int:
        """``workers`` with 'auto' resolved to the CPUs this process may run on (its affinity mask)."""
        if self.workers == "auto":
            return len(os.sched_getaffinity(0))
        return self.workers

    @property
    def embedded_database(self) -> bool:
        return not self.database_url

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "tensortrigger.db"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def scratch_dir(self) -> Path:
        return self.data_dir / "tmp"


_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(?P<port>\d{1,5})")
_MODEL_REF = re.compile(r"[^\s:@]+(:\d+|@[^\s:@]+)?")


def _url(value: str, schemes: tuple[str, ...], example: str) -> str:
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"expected a {' or '.join(s + '://' for s in schemes)} URL, e.g. {example}")
    try:
        parts.port  # noqa: B018 - raises on a port out of range or not a number
    except ValueError as e:
        raise ValueError(f"bad port in URL: {e}") from None
    return value
