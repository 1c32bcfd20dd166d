"""The Python client, sync and asyncio, against a real server on each backend: registry, numpy predictions equal
to in-process Keras, PredictBatch streaming, typed errors with field violations, deadlines, health.

``client`` (tests/clients/conftest.py) is each of the two clients in turn; ``call`` and ``collect`` drive either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensortrigger as tt

from tests import models
from tests.clients.helpers import AnyClient, call, collect, collect_until_error, keras_reference
from tests.serving import unique_name
from tt_server.app import Application


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("client-models")
    return {
        "keras": models.mlp_keras(out),
        "two_io": models.two_io_keras(out),
        "saved_model_dir": models.mlp_export_dir(out),
    }


@pytest.fixture(scope="module")
async def mlp(app: Application, model_files: dict[str, Path]) -> str:
    name = unique_name("mlp")
    async with tt.AsyncClient(app.address) as client:
        await client.upload(name, model_files["keras"], labels=["stable"])
    return name


# --- registry --------------------------------------------------------------------------------------------


def _registry_round_trip(address: str, files: dict[str, Path], name: str, download_to: Path) -> None:
    progress: list[tuple[int, int]] = []
    with tt.Client(address) as client:
        v1 = client.upload(
            name,
            files["keras"],
            labels=["stable"],
            feature_names=["a", "b", "c", "d"],
            metadata={"owner": "tests"},
            progress=lambda sent, total: progress.append((sent, total)),
        )
        assert v1.version == 1 and list(v1.labels) == ["stable"] and dict(v1.metadata) == {"owner": "tests"}
        assert progress and progress[-1][0] == progress[-1][1] == files["keras"].stat().st_size
        v2 = client.upload(name, files["saved_model_dir"])  # a folder is packed as .tar.gz for us
        assert v2.version == 2
        assert [i.name for i in v2.signature.inputs] == ["features"]

        listed = {m.name: m for m in client.list_models(page_size=1)}  # pages are followed
        assert listed[name].latest_version == 2
        assert dict(listed[name].labels) == {"stable": 1}
        assert client.get_model(name).version_count == 2
        assert client.get_version(f"{name}@stable").version == 1
        assert client.get_version(f"{name}:2").version == 2
        assert client.get_version(name).version == 2
        assert [v.version for v in client.list_versions(name, page_size=1)] == [2, 1]

        assert client.set_label(name, "canary", 2) == 0
        assert client.set_label(name, "canary", 1) == 2
        assert client.delete_label(name, "canary") == 1

        downloaded: list[tuple[int, int]] = []
        record = client.download(f"{name}:1", download_to, progress=lambda *done_total: downloaded.append(done_total))
        assert record.sha256 == v1.sha256
        assert download_to.read_bytes() == files["keras"].read_bytes()
        assert downloaded[-1] == (v1.size_bytes, v1.size_bytes)
        assert not download_to.with_name(download_to.name + ".part").exists()

        with pytest.raises(tt.NotFoundError):
            client.get_version(f"{name}:9")
        with pytest.raises(tt.FailedPreconditionError):
            client.delete_version(name, 1)  # "stable" points at it
        assert client.delete_version(name, 1, force=True) == ["stable"]
        assert client.delete_model(name) == 1
        with pytest.raises(tt.NotFoundError):
            client.get_model(name)


async def test_sync_registry_round_trip(app: Application, model_files: dict[str, Path], tmp_path: Path) -> None:
    await asyncio.to_thread(_registry_round_trip, app.address, model_files, unique_name(), tmp_path / "v1.keras")


async def test_async_registry_round_trip(app: Application, model_files: dict[str, Path], tmp_path: Path) -> None:
    name = unique_name()
    async with tt.AsyncClient(app.address) as client:
        progress: list[tuple[int, int]] = []
        v1 = await client.upload(
            name, model_files["keras"], labels=["stable"], progress=lambda s, t: progress.append((s, t))
        )
        assert progress[-1] == (v1.size_bytes, v1.size_bytes)
        v2 = await client.upload(name, model_files["saved_model_dir"], description="exported")
        assert (v1.version, v2.version, v2.description) == (1, 2, "exported")
        assert name in [m.name async for m in client.list_models(page_size=1)]
        assert [v.version async for v in client.list_versions(name)] == [2, 1]
        assert (await client.get_version(f"{name}@stable")).version == 1
        assert await client.set_label(name, "stable", 2) == 1
        record = await client.download(f"{name}@stable", tmp_path / "v2.tar.gz")
        assert record.version == 2 and (tmp_path / "v2.tar.gz").stat().st_size == record.size_bytes
        with pytest.raises(tt.NotFoundError):
            await client.download(f"{name}:7", tmp_path / "missing")
        assert not (tmp_path / "missing").exists() and not (tmp_path / "missing.part").exists()
        assert await client.delete_model(name) == 2


# --- predict ---------------------------------------------------------------------------------------------


async def test_predict_equals_keras(client: AnyClient, mlp: str, model_files: dict[str, Path]) -> None:
    expected_fn = keras_reference(model_files["keras"])
    x64 = np.random.default_rng(0).normal(size=(17, 4))  # float64: cast to the model's float32
    expected = np.asarray(expected_fn(x64.astype(np.float32)))

    bare = await call(client, "predict", mlp, x64)
    assert list(bare) == ["score"]
    assert bare["score"].dtype == np.float32 and bare["score"].shape == (17, 1)
    assert not bare["score"].flags.writeable  # wraps the received bytes without a copy
    np.testing.assert_allclose(bare["score"], expected, atol=1e-5)

    for selector in (f"{mlp}@stable", f"{mlp}:1", tt.model_ref(mlp, version=1)):
        named = await call(client, "predict", selector, {"features": x64.astype(np.float32)}, ["score"])
        np.testing.assert_allclose(named["score"], expected, atol=1e-5)

    listed = await call(client, "predict", mlp, x64.tolist())  # anything np.asarray takes
    np.testing.assert_allclose(listed["score"], expected, atol=1e-5)
    assert listed.timing is None  # not asked for


async def test_predict_with_server_timing(client: AnyClient, mlp: str) -> None:
    x = np.ones((5, 4), np.float32)
    timed = await call(client, "predict", mlp, x, timing=True)
    assert isinstance(timed, tt.Prediction) and timed["score"].shape == (5, 1)
    t = timed.timing
    assert isinstance(t, tt.ServerTiming)
    assert t.compute > 0 and t.queue >= 0 and t.decode > 0 and t.encode > 0
    assert t.total >= t.queue + t.compute + t.decode + t.encode
    assert t.total < 5  # seconds: the units are right


async def test_predict_several_inputs(client: AnyClient, model_files: dict[str, Path]) -> None:
    name = unique_name("two")
    await call(client, "upload", name, model_files["two_io"])
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 3)).astype(np.float32)
    b = rng.integers(0, 5, size=(5, 2))  # int64: cast to the declared int32
    expected = keras_reference(model_files["two_io"])(a, b.astype(np.int32))
    outputs = await call(client, "predict", name, {"a": a, "b": b})
    assert set(outputs) == {"probs", "value"}
    np.testing.assert_allclose(outputs["probs"], np.asarray(expected["probs"]), atol=1e-5)
    only = await call(client, "predict", name, {"a": a, "b": b}, ["value"])
    assert set(only) == {"value"}
    with pytest.raises(ValueError, match="pass a dict"):
        await call(client, "predict", name, a)


async def test_predict_batch_streams_in_order(client: AnyClient, mlp: str, model_files: dict[str, Path]) -> None:
    reference = keras_reference(model_files["keras"])
    rng = np.random.default_rng(2)
    batches = [rng.normal(size=(n, 4)).astype(np.float32) for n in (1, 5, 2, 9, 3, 4, 7)]

    def produce() -> Iterator[dict[str, np.ndarray]]:
        for batch in batches:
            yield {"features": batch}

    results = await collect(client, "predict_batch", f"{mlp}@stable", produce(), max_in_flight=2)
    assert len(results) == len(batches)
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_allclose(result["score"], np.asarray(reference(batch)), atol=1e-5)
    assert await collect(client, "predict_batch", mlp, iter(())) == []


async def test_predict_batch_stops_at_a_bad_batch(client: AnyClient, mlp: str) -> None:
    good = np.zeros((2, 4), np.float32)
    answered, error = await collect_until_error(client, "predict_batch", mlp, [good, good, np.zeros((2, 5))])
    assert len(answered) == 2  # the batches before the bad one are answered first
    assert isinstance(error, tt.InvalidArgumentError)
    assert 'inputs["features"].shape[1]' in [v.field for v in error.violations]

    answered, error = await collect_until_error(client, "predict_batch", mlp, [good, np.zeros((2, 4), np.complex64)])
    assert len(answered) == 1 and isinstance(error, TypeError)  # cannot even be encoded: raised as is


async def test_errors_are_typed_and_carry_violations(client: AnyClient, mlp: str, model_files: dict[str, Path]) -> None:
    with pytest.raises(tt.InvalidArgumentError) as bad_shape:
        await call(client, "predict", mlp, np.zeros((3, 5), np.float32))
    assert bad_shape.value.code.name == "INVALID_ARGUMENT"
    assert 'inputs["features"].shape[1]' in {v.field for v in bad_shape.value.violations}
    assert all(isinstance(v, tt.FieldViolation) and v.description for v in bad_shape.value.violations)

    with pytest.raises(tt.InvalidArgumentError) as bad_name:
        await call(client, "upload", "Bad Name", model_files["keras"])
    assert [v.field for v in bad_name.value.violations] == ["header.model_name"]

    with pytest.raises(tt.NotFoundError):
        await call(client, "predict", "no-such-model", np.zeros((1, 4), np.float32))
    with pytest.raises(tt.NotFoundError):
        await call(client, "predict", f"{mlp}@no-such-label", np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="must be a number"):
        await call(client, "predict", f"{mlp}:latest", np.zeros((1, 4), np.float32))
    # A deadline too short for the upload (inspecting a SavedModel takes far longer than 1 ms; at 50 ms, about one
    # upload in three succeeded on an idle machine): wherever it cuts the stream (before the server admits the
    # call, mid-write, while the server inspects), the caller gets a DeadlineExceededError.
    with pytest.raises(tt.DeadlineExceededError):
        await call(client, "upload", unique_name(), model_files["saved_model_dir"], timeout=0.001)


async def test_health(client: AnyClient) -> None:
    assert await call(client, "health") == "SERVING"
    assert await call(client, "health", "tensortrigger.v1.InferenceService") == "SERVING"
    with pytest.raises(tt.NotFoundError):
        await call(client, "health", "no.such.Service")
