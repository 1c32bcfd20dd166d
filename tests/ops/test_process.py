"""The `tt-server` and `tt-worker` processes as an operator meets them: the command line, settings errors, a busy port,
a start-up that fails halfway, and the process's output (JSON lines only, access log, no GPU noise).

Each test runs the real console scripts of this venv. --help, --version and bad settings answer before TensorFlow is
imported, so those run in about a second each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensortrigger.v1 import inference_service_pb2 as ipb
from tensortrigger.v1 import inference_service_pb2_grpc, model_pb2, registry_service_pb2_grpc, tensor_pb2

import tt_worker.main
from tests import models
from tests.api.helpers import upload
from tests.serving import leftover_threads, server_settings
from tt_server.app import Application
from tt_server.cli import env_name
from tt_server.config import Settings
from tt_server.logs import PlainFormatter, RepeatFilter

BIN = Path(sys.executable).parent


def run(
    command: str, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / command), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", ["tt-server", "tt-worker"])
def test_help_lists_every_setting_with_its_variable_default_and_description(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    for name, field in Settings.model_fields.items():
        assert env_name(name) in result.stdout, name
        first_words = " ".join((field.description or "").split()[:3])
        assert first_words in " ".join(result.stdout.split()), (name, first_words)
    assert "[default: 127.0.0.1:50051]" in result.stdout
    assert "--print-config" in result.stdout and "--version" in result.stdout


@pytest.mark.parametrize("command", ["tt-server", "tt-worker"])
def test_version_and_unknown_arguments(command: str) -> None:
    version = run(command, "--version")
    assert version.returncode == 0 and version.stdout.startswith(f"{command} 0.")
    bogus = run(command, "--bogus")
    assert bogus.returncode == 2
    assert "unrecognized arguments: --bogus" in bogus.stderr and "Traceback" not in bogus.stderr


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("TT_PRELOAD_MODELS", "mlp", "expected a JSON list"),
        ("TT_DATABASE_URL", "mysql://db/x", "expected a postgresql:// or postgres:// URL"),
        ("TT_AMQP_URL", "localhost:5672", "expected a amqp:// or amqps:// URL"),
        ("TT_MAX_ARCHIVE_MEMBERS", "-1", "must not be negative"),
        # Zero where it would refuse every call, spin a loop or (AMQP prefetch 0) mean "unlimited"
        ("TT_MAX_UPLOAD_BYTES", "0", "must be >= 1"),
        ("TT_MAX_CONCURRENT_RPCS", "0", "must be >= 1"),
        ("TT_GC_INTERVAL_SECONDS", "0", "must be > 0"),
        ("TT_WORKER_PREFETCH", "0", "must be >= 1"),
        ("TT_S3_UPLOAD_CONCURRENCY", "0", "must be >= 1"),  # said "expected a whole number"
        ("TT_WORKERS", "0", "expected a whole number >= 1, or auto"),  # was two lines, "or unset, or unset"
        ("TT_BATCH_MAX_WAIT_SECONDS", "soon", "expected a number"),
        ("TT_GRPC_ADDRESS", "50051", "expected host:port"),
        ("TT_LOG_LEVEL", "loud", "expected one of DEBUG"),
        ("TT_LOG_JSON", "maybe", "expected true or false"),
    ],
)
def test_an_invalid_setting_is_one_line_and_exit_2(variable: str, value: str, says: str) -> None:
    started = time.monotonic()
    result = run("tt-server", env={variable: value})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"tt-server: invalid setting {variable}") and says in lines[0], lines[0]
    assert time.monotonic() - started < 10  # answered before TensorFlow is imported


@pytest.mark.parametrize("variable", ["TT_TLS_KEY_FILE", "TT_TLS_CERT_FILE", "TT_TLS_CLIENT_CA_FILE"])
def test_half_a_tls_configuration_is_refused_not_served_in_plaintext(tmp_path: Path, variable: str) -> None:
    pem = tmp_path / "file.pem"
    pem.write_text("-----BEGIN-----\n")
    result = run("tt-server", "--print-config", env={variable: str(pem)})
    assert result.returncode == 2, result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("tt-server: invalid settings: TT_TLS_CERT_FILE and TT_TLS_KEY_FILE must be set together")


def test_print_config_reads_back_as_the_same_settings(tmp_path: Path) -> None:
    """--print-config writes an env file; an unset optional setting is written empty and must read back as unset
    (it was a parse error, or for a path the folder ".")."""
    written = run("tt-server", "--print-config", "--data-dir", str(tmp_path))
    assert written.returncode == 0, written.stderr
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TT_")}
    env.update(line.split("=", 1) for line in written.stdout.splitlines())
    assert env["TT_AUTH_TOKENS_FILE"] == "" and env["TT_MAX_CONCURRENT_RPCS"] == ""
    read_back = subprocess.run(
        [str(BIN / "tt-server"), "--print-config"], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert read_back.returncode == 0, read_back.stderr
    assert read_back.stdout == written.stdout


def test_a_flag_overrides_its_variable_and_is_named_when_bad() -> None:
    result = run("tt-server", "--address", "nowhere", env={"TT_GRPC_ADDRESS": "127.0.0.1:1"})
    assert result.returncode == 2 and "invalid setting --address=nowhere" in result.stderr


def test_worker_needs_rabbitmq_and_says_so() -> None:
    result = run("tt-worker", env={"TT_AMQP_URL": ""})
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "TT_AMQP_URL" in result.stderr


def test_print_config_shows_effective_settings_with_secrets_masked(tmp_path: Path) -> None:
    result = run(
        "tt-server",
        "--print-config",
        "--data-dir",
        str(tmp_path),
        env={
            "TT_DATABASE_URL": "postgresql://tt:hunter2@db.example:5432/tt",
            "TT_PAGE_TOKEN_SECRET": "s3cret",
            "TT_BATCH_MAX_ROWS": "64",
        },
    )
    assert result.returncode == 0, result.stderr
    config = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert set(config) == {env_name(name) for name in Settings.model_fields}
    assert config["TT_DATABASE_URL"] == "postgresql://tt:***@db.example:5432/tt"
    assert config["TT_PAGE_TOKEN_SECRET"] == "***"
    assert config["TT_BATCH_MAX_ROWS"] == "64" and config["TT_DATA_DIR"] == str(tmp_path)
    assert "hunter2" not in result.stdout and "s3cret" not in result.stdout


def test_a_busy_port_fails_fast_and_leaves_no_process(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cpu_before = _children_cpu()
        result = run("tt-server", "--address", f"127.0.0.1:{port}", "--data-dir", str(tmp_path), timeout=20)
        cpu = _children_cpu() - cpu_before
    assert result.returncode == 1
    # Within 2 s on an idle machine (~0.5 s measured): CPU time, so a busy CI machine cannot fail it; TensorFlow's
    # import alone would take several seconds of CPU, so this also shows the port is checked before it.
    assert cpu < 2.0, cpu
    (line,) = result.stderr.strip().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and "address is already in use" in entry["message"]


@pytest.mark.parametrize("command", ["tt-server", "tt-worker"])
def test_unknown_tt_variables_are_named_in_a_start_up_warning(tmp_path: Path, command: str) -> None:
    """pydantic-settings ignores a TT_* name that is no setting: a typo would silently leave the default in force.
    The process says so at start-up (here it then stops at once: the gRPC port, or RabbitMQ's, is refused)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "TT_BATCH_MAX_ROW": "64",  # TT_BATCH_MAX_ROWS misspelt
            "tt_no_such_setting": "1",  # names are read case-insensitively
            "TT_ADDRESS": "127.0.0.1:1",  # the tt client's own variable: not the server's business
            "TT_GRPC_ADDRESS": f"127.0.0.1:{port}",
            "TT_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
            "TT_DATA_DIR": str(tmp_path),
        }
        result = run(command, env=env, timeout=120)
    assert result.returncode == 1, result.stderr
    warnings = [e for e in map(json.loads, result.stderr.splitlines()) if e["level"] == "WARNING"]
    (warning,) = [e for e in warnings if e["message"].startswith("unknown TT_* environment variables")]
    assert "TT_BATCH_MAX_ROW (did you mean TT_BATCH_MAX_ROWS?)" in warning["message"]
    assert "tt_no_such_setting" in warning["message"]
    assert "TT_ADDRESS" not in warning["message"] and "TT_GRPC_ADDRESS" not in warning["message"]


async def test_the_application_refuses_a_busy_port_and_closes_what_it_opened(tmp_path: Path) -> None:
    """Without the command line's early check: the real bind fails (no SO_REUSEPORT), and start() closes the
    SQLite store (whose thread would keep the process alive), the blob store and the rest before raising."""
    before = {t.ident for t in threading.enumerate()}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        app = Application(server_settings(tmp_path, grpc_address=f"127.0.0.1:{taken.getsockname()[1]}"))
        with pytest.raises(RuntimeError, match="cannot listen"):
            await app.start()
    leftover = await leftover_threads(before)
    assert not leftover, leftover


async def test_the_worker_closes_what_it_opened_when_its_job_queue_is_down(tmp_path: Path) -> None:
    """tt-worker opens its stores through the same root as the server: RabbitMQ refusing the connection fails
    the start-up (exit code 1) after the SQLite store and blob store were opened, and those are closed again."""
    before = {t.ident for t in threading.enumerate()}
    settings = server_settings(tmp_path, amqp_url="amqp://guest:guest@127.0.0.1:1/")  # nothing listens on port 1
    assert await tt_worker.main.run(settings) == 1
    assert (tmp_path / "tensortrigger.db").exists()  # it had got as far as opening the database
    leftover = await leftover_threads(before)
    assert not leftover, leftover


def test_a_busy_metrics_port_or_an_unreadable_token_file_fails_before_anything_opens(tmp_path: Path) -> None:
    """Both used to be found after TensorFlow's import and the stores' opening: "[Errno 98] Address already in use"
    (which address?), and for a missing token file a traceback after a misleading "keeping the tokens loaded
    before" warning."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        cases = {
            f"cannot listen on {busy}: the address is already in use": {"TT_METRICS_ADDRESS": busy},
            f"cannot read TT_AUTH_TOKENS_FILE={tmp_path / 'missing'}: No such file or directory": {
                "TT_AUTH_TOKENS_FILE": str(tmp_path / "missing")
            },
            f"cannot read TT_TLS_KEY_FILE={tmp_path}: Is a directory": {
                "TT_TLS_CERT_FILE": __file__,  # readable: the key is the one named
                "TT_TLS_KEY_FILE": str(tmp_path),
            },
        }
        cases[f"cannot read TT_AUTH_TOKENS_FILE={tmp_path / 'missing'}: No such file or directory"] |= {
            "TT_WORKERS": "2"  # the supervisor's workers would each fail on it
        }
        for says, env in cases.items():
            result = run("tt-server", env={"TT_GRPC_ADDRESS": f"127.0.0.1:{free_port()}", **env}, timeout=60)
            assert result.returncode == 1, result.stderr
            (line,) = result.stderr.strip().splitlines()
            entry = json.loads(line)
            assert entry["message"] == f"start-up failed: {says}" and "exception" not in entry, entry
    assert not (tmp_path / "tensortrigger.db").exists()


def test_an_unreachable_database_is_one_line_with_its_cause_and_no_password(tmp_path: Path) -> None:
    """ "start-up failed: metadata database is unavailable" said neither why nor, with its traceback, briefly."""
    url = f"postgresql://tt:hunter2@127.0.0.1:{free_port()}/tt"
    result = run("tt-server", env={"TT_DATABASE_URL": url, "TT_DATA_DIR": str(tmp_path)}, timeout=120)
    assert result.returncode == 1, result.stderr
    (failure,) = [e for e in map(json.loads, result.stderr.splitlines()) if e["level"] == "ERROR"]
    assert failure["message"].startswith("start-up failed: metadata database is unavailable (")
    assert "refused" in failure["message"].lower() and "exception" not in failure
    assert "hunter2" not in result.stderr + result.stdout


async def test_a_start_up_failure_after_the_stores_opened_exits_non_zero(tmp_path: Path) -> None:
    """The token file holds no token: the SQLite store is open by then. The process must exit 1, not hang."""
    tokens = tmp_path / "tokens"
    tokens.write_text("# nobody yet\n")
    env = {
        **os.environ,
        "TT_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
        "TT_AUTH_TOKENS_FILE": str(tokens),
        "TT_DATA_DIR": str(tmp_path),
    }
    proc = await asyncio.create_subprocess_exec(
        BIN / "tt-server", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1
    lines = [json.loads(line) for line in (out + err).decode().splitlines()]
    assert any(e["level"] == "ERROR" and e["message"].startswith("start-up failed") for e in lines), lines
    assert (tmp_path / "tensortrigger.db").exists()  # it had got as far as opening the database


async def test_the_start_up_line_says_where_it_listens_and_which_stores_it_uses(
    postgres_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """It said "database": "postgresql" and "blobs": "local", and of the HTTP front only its port."""
    database_url = postgres_dsn.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")  # trust auth
    assert "hunter2" in database_url
    tokens = tmp_path / "tokens"
    tokens.write_text("admin t0ken ops\n")
    metrics_address = f"127.0.0.1:{free_port()}"
    settings = server_settings(
        tmp_path / "data",
        database_url=database_url,
        http_address="127.0.0.1:0",
        metrics_address=metrics_address,
        auth_tokens_file=tokens,
    )
    caplog.set_level(logging.INFO, logger="tt_server.app")
    application = Application(settings)
    await application.start()
    try:
        (started,) = [r for r in caplog.records if r.getMessage() == "server started"]
    finally:
        await application.stop()
    facts = started.__dict__
    assert facts["address"] == "127.0.0.1:0" and facts["port"] == application.port
    assert facts["http_address"] == "127.0.0.1:0" and facts["http_port"] == application.http_port
    assert facts["metrics_address"] == metrics_address
    assert facts["database_url"] == database_url.replace(":hunter2@", ":***@")
    assert facts["blobs_at"] == str(settings.blob_dir) and facts["jobs"] == "in-process"
    assert facts["auth"] == "tokens" and facts["tls"] == "off"
    assert "hunter2" not in caplog.text and not any("hunter2" in str(v) for v in facts.values())


@pytest.mark.parametrize(("address", "warned"), [("0.0.0.0:0", True), ("127.0.0.1:0", False)])
async def test_no_authentication_on_a_reachable_address_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, address: str, warned: bool
) -> None:
    """The image listens on 0.0.0.0 and authentication is off unless a token file is set: `docker run -p` gave
    anyone who reaches the port every right (delete included) without a word in the log."""
    caplog.set_level(logging.WARNING, logger="tt_server.app")
    application = Application(server_settings(tmp_path, grpc_address=address))
    await application.start()
    await application.stop()
    warnings = [r for r in caplog.records if r.getMessage().startswith("authentication is off")]
    assert len(warnings) == int(warned), caplog.text
    if warned:
        assert warnings[0].__dict__["addresses"] == address


async def test_supervised_workers_warn_about_no_authentication_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With TT_WORKERS=N every worker has the same settings, and each one logged the warning: N copies. Worker 0
    alone logs it. Two workers' applications, each with its link to a (real) pipe, as supervised.py builds them."""
    from tt_server.supervised import WorkerLink

    caplog.set_level(logging.WARNING, logger="tt_server.app")
    loop = asyncio.get_running_loop()
    for index in (0, 1):
        read_fd, write_fd = os.pipe()
        transport, protocol = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(write_fd, "wb", 0))
        link = WorkerLink(index, index == 0, asyncio.StreamWriter(transport, protocol, None, loop))
        application = Application(server_settings(tmp_path / str(index), grpc_address="0.0.0.0:0"), link=link)
        try:
            await application.start()
        finally:
            await application.stop()
            transport.close()
            os.close(read_fd)
    warnings = [r for r in caplog.records if r.getMessage().startswith("authentication is off")]
    assert len(warnings) == 1, caplog.text


async def test_the_access_log_names_the_model_a_failed_predict_asked_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Predict that failed before a version was resolved (no such model or version: the NOT_FOUND an operator
    chases) was logged with "model": null, although the metrics count it under the model's name."""
    application = Application(server_settings(tmp_path, access_log="all"))
    await application.start()
    try:
        caplog.set_level(logging.INFO, logger="tt_server.access")
        async with grpc.aio.insecure_channel(application.address) as channel:
            features = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[1, 4], float_val=[1, 2, 3, 4])
            request = ipb.PredictRequest(model=model_pb2.ModelRef(name="ghost", version=7), inputs={"x": features})
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await inference_service_pb2_grpc.InferenceServiceStub(channel).Predict(request, timeout=30)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await application.stop()
    (line,) = [r for r in caplog.records if r.name == "tt_server.access" and r.__dict__["method"].endswith("Predict")]
    assert (line.__dict__["model"], line.__dict__["version"], line.__dict__["status"]) == ("ghost", None, "NOT_FOUND")


async def test_the_access_log_names_the_model_and_version_of_registry_jobs_and_train_calls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Registry, jobs and Train calls were logged with "model": null and no caller, so the log could not say
    who deleted mlp:1 or who moved "stable". Each names its model, the version it concerned or produced, and the
    token's name."""
    import tensortrigger as tt

    tokens = tmp_path / "tokens"
    tokens.write_text("admin admin-token-0123456789 alice\n")
    application = Application(server_settings(tmp_path / "data", access_log="all", auth_tokens_file=tokens))
    await application.start()
    model = models.build_mlp()
    model.compile(loss="binary_crossentropy", optimizer="adam")
    path = tmp_path / "mlp.keras"
    model.save(path)
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b,c,d\n1,2,3,4\n")
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    y = (x.sum(axis=1, keepdims=True) > 0).astype(np.float32)

    def work() -> None:
        with tt.Client(application.address, token="admin-token-0123456789") as client:
            client.upload("audited", path)  # version 1
            client.upload("audited", path)  # version 2
            client.set_label("audited", "stable", 2)
            client.submit_job("audited@stable", rows)
            client.train("audited:1", [(x, y)], micro_batch_size=8)  # publishes version 3
            client.delete_version("audited", 1)
            client.delete_label("audited", "stable")
            client.delete_model("audited")

    try:
        caplog.set_level(logging.INFO, logger="tt_server.access")
        await asyncio.to_thread(work)
    finally:
        await application.stop(grace=1.0)
    lines = [r.__dict__ for r in caplog.records if r.name == "tt_server.access"]
    logged = [(line["method"].rsplit("/", 1)[1], line["model"], line["version"], line["status"]) for line in lines]
    for expected in [
        ("UploadModelVersion", "audited", 1, "OK"),
        ("UploadModelVersion", "audited", 2, "OK"),
        ("SetLabel", "audited", 2, "OK"),
        ("CreateJob", "audited", 2, "OK"),
        ("Train", "audited", 1, "OK"),
        ("DeleteModelVersion", "audited", 1, "OK"),
        ("DeleteLabel", "audited", 2, "OK"),
        ("DeleteModel", "audited", None, "OK"),
    ]:
        assert expected in logged, logged
    assert {line["caller"] for line in lines} == {"alice"}


async def test_every_line_the_process_writes_is_json(tmp_path: Path) -> None:
    """Start-up (TensorFlow's import and its native logging), an upload, a model load and a Predict, SIGTERM:
    stdout and stderr hold JSON objects only; the access log names the model and version; a host without a GPU
    logs no GPU error."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},
        "TT_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "TT_DATA_DIR": str(tmp_path / "data"),
        "TT_LOG_JSON": "true",
        "TT_ACCESS_LOG": "all",
        "TT_SHUTDOWN_GRACE_SECONDS": "5",
    }
    artifact = models.mlp_keras(tmp_path)
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(BIN / "tt-server", env=env, stdout=out, stderr=err)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=90
            )
            registry = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
            await upload(registry, "logged", artifact)
            x = np.ones((2, 4), np.float32)
            features = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[2, 4], content=x.tobytes())
            request = ipb.PredictRequest(model=model_pb2.ModelRef(name="logged"), inputs={"features": features})
            await inference_service_pb2_grpc.InferenceServiceStub(channel).Predict(request, timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    entries = []
    for path in (out_path, err_path):
        for line in path.read_text().splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"not a JSON line in {path.name}: {line!r}")
    messages = [e["message"] for e in entries]
    assert "server started" in messages and "server stopped" in messages
    access = [e for e in entries if e["logger"] == "tt_server.access" and e["method"].endswith("/Predict")]
    assert access and access[0]["model"] == "logged" and access[0]["version"] == 1 and access[0]["status"] == "OK"
    assert "request_id" in access[0] and access[0]["duration_ms"] > 0
    assert not [e for e in entries if e["level"] in ("ERROR", "CRITICAL")], entries
    assert not [e for e in entries if "cuInit" in e["message"]]


def test_plain_text_logs_show_each_line_s_facts() -> None:
    """TT_LOG_JSON=false ("plain text for humans") showed only the message: "model load failed" without the model
    or the error, "server started" without the address."""
    record = logging.makeLogRecord(
        {"name": "tt_server.runtime.manager", "msg": "model load failed", "levelname": "WARNING", "model": "mlp"}
        | {"version": 2, "error": 'no "artifact"', "unset": None}
    )
    line = PlainFormatter().format(record)
    assert line.endswith('[-]: model load failed model=mlp version=2 error="no \\"artifact\\""'), line


def test_repeated_dependency_warnings_are_throttled_with_a_count() -> None:
    now = [0.0]
    repeat = RepeatFilter(30.0, clock=lambda: now[0])

    def record(name: str, msg: str, level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
        return logging.makeLogRecord({"name": name, "msg": msg, "levelno": level, **extra})

    broker = "aio_pika.robust_connection"
    assert repeat.filter(record(broker, "Connection attempt failed"))
    for _ in range(53):  # one per second per connection during an outage
        now[0] += 0.25
        assert not repeat.filter(record(broker, "Connection attempt failed"))
    assert repeat.filter(record(broker, "another message"))  # another template is not a repeat
    assert repeat.filter(record(broker, "Connection attempt failed", logging.INFO))  # below WARNING: untouched
    assert repeat.filter(record("tt_server.api", "Connection attempt failed"))  # not a dependency's logger
    now[0] += 30
    again = record(broker, "Connection attempt failed")
    assert repeat.filter(again) and again.repeated == 53
    loop = record("tt_server.app", "gc failed; will retry", throttle=True)
    assert repeat.filter(loop) and not repeat.filter(record("tt_server.app", "gc failed; will retry", throttle=True))


# A process with the servers' logging whose child (as a TT_WORKERS worker does) writes JSON log lines to the
# inherited stderr and exits; the parent then logs its last line, as the supervisor does when it stops.
_CHILD_SCRIPT = """
import fcntl, json, sys
fcntl.fcntl(2, fcntl.F_SETPIPE_SZ, 1 << 20)  # room for every line: the child is gone before the relay reads them
lines = [json.dumps({"level": "INFO", "message": f"child {i}"}) + "\\n" for i in range(int(sys.argv[1]))]
sys.stderr.write("".join(lines))
"""
_RELAY_SCRIPT = """
import logging, subprocess, sys
from tt_server.logs import configure_process_logging, finish_native_output
configure_process_logging("INFO", True, 0.0)
subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], check=True)
finish_native_output()
logging.getLogger("parent").info("last")
"""


def test_a_childs_log_lines_are_relayed_before_the_parents_last_line() -> None:
    lines = 5000
    result = subprocess.run(
        [sys.executable, "-c", _RELAY_SCRIPT, _CHILD_SCRIPT, str(lines)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line)["message"] for line in result.stderr.splitlines()]
    assert messages == [f"child {i}" for i in range(lines)] + ["last"]
