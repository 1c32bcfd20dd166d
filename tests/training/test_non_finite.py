"""Never publish or serve a poisoned model, on both backends: NaN/Inf examples are refused (or dropped when
asked), a diverging session publishes nothing whatever ``on_abort`` says, and uploads with NaN weights are
refused unless the server allows them."""

from __future__ import annotations

from pathlib import Path

import grpc
import keras
import numpy as np
import pytest
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import model_pb2, registry_service_pb2_grpc, tensor_pb2

from tests import models
from tests.api.helpers import upload, violations
from tests.serving import server_settings, unique_name
from tests.training.helpers import (
    FEATURES,
    Teacher,
    accuracy,
    config,
    examples,
    of,
    run,
    run_until_error,
    save,
    student,
    tensor,
    versions,
)
from tt_server.app import Application

TEACHER = Teacher()
F32 = tensor_pb2.DATA_TYPE_FLOAT32


def linear(seed: int = 4) -> keras.Model:
    """features (8,) -> Dense 1 "score", mse: unbounded outputs, so huge inputs with a big step diverge."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(FEATURES,), name="features")
    model = keras.Model(inputs, keras.layers.Dense(1, name="score")(inputs))
    model.compile(loss="mse", optimizer="sgd")
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("non-finite")
    poisoned = student()
    kernel = poisoned.get_layer("score").kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    return {
        "student": save(student(), out / "student.keras"),
        "linear": save(linear(), out / "linear.keras"),
        "poisoned": save(poisoned, out / "poisoned.keras"),
        "poisoned_sm": models.as_tar_gz(lambda d: _saved_model(poisoned, d), out),
    }


def _saved_model(model: keras.Model, out: Path) -> Path:
    model.export(out / "poisoned_sm", verbose=False)
    return out / "poisoned_sm"


async def test_a_nan_label_fails_the_stream_naming_it_and_publishes_nothing(
    registry_stub, inference_stub, files
) -> None:
    name = unique_name("nan")
    await upload(registry_stub, name, files["student"])
    x, y = TEACHER.data(8, seed=1)
    # As a JSON/grpcurl user sends it: typed values, one of them "NaN".
    labels = tensor_pb2.Tensor(dtype=F32, shape=[8, 1], float_val=[*y[:5, 0], float("nan"), *y[6:, 0]])
    request = pb.TrainRequest(examples=pb.TrainExamples(features={"features": tensor(x)}, labels={"score": labels}))
    _, error = await run_until_error(inference_stub, [config(name, move_label="online"), request])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert 'examples.labels["score"]' in violations(error)
    assert "row 5" in violations(error)['examples.labels["score"]']
    assert [v.version for v in await versions(registry_stub, name)] == [1]

    # An infinite feature, too.
    x[2, 3] = np.inf
    _, error = await run_until_error(inference_stub, [config(name), examples(x, y)])
    assert 'examples.features["features"]' in violations(error), error.details()
    assert [v.version for v in await versions(registry_stub, name)] == [1]


async def test_drop_non_finite_drops_and_counts_them(registry_stub, inference_stub, files) -> None:
    name = unique_name("drop")
    await upload(registry_stub, name, files["student"])
    x, y = TEACHER.data(64, seed=2)
    x[[3, 10], 0] = np.nan
    y[20, 0] = -np.inf
    responses = await run(inference_stub, [config(name, micro_batch_size=16, drop_non_finite=True), examples(x, y)])
    progress = of(responses, "progress")
    assert progress[-1].examples_seen == 61 and progress[-1].dropped_examples == 3
    assert of(responses, "finished")[0].last_version == 2
    held_x, held_y = TEACHER.data(50, seed=3)
    response = await inference_stub.Predict(
        pb.PredictRequest(model=model_pb2.ModelRef(name=name, version=2), inputs={"features": tensor(held_x)})
    )
    scores = np.frombuffer(response.outputs["score"].content, "<f4")
    assert np.isfinite(scores).all()
    assert (await accuracy(inference_stub, model_pb2.ModelRef(name=name, version=2), held_x, held_y))[1] == 2


async def test_a_diverging_session_fails_and_publishes_nothing(registry_stub, inference_stub, files) -> None:
    name = unique_name("diverge")
    await upload(registry_stub, name, files["linear"])
    # Finite but huge features with a big SGD step: the weights overflow after the first step.
    x = np.full((64, FEATURES), 1e18, np.float32)
    y = np.zeros((64, 1), np.float32)
    responses, error = await run_until_error(
        inference_stub,
        [
            config(
                name,
                optimizer=pb.OPTIMIZER_SGD,
                learning_rate=1.0,
                micro_batch_size=16,
                move_label="online",
                on_abort=pb.ON_ABORT_CHECKPOINT,  # would publish the progress of a broken stream: not this one
                checkpoint=pb.CheckpointPolicy(every_examples=16, on_end=True),
            ),
            examples(x, y),
        ],
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
    assert "diverged" in error.details()
    assert not of(responses, "checkpoint")
    stored = await versions(registry_stub, name)
    assert [v.version for v in stored] == [1] and not stored[0].labels


async def test_uploads_with_nan_weights_are_refused_unless_allowed(
    registry_stub, files, tmp_path: Path, app: Application
) -> None:
    for key in ("poisoned", "poisoned_sm"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await upload(registry_stub, unique_name("poison"), files[key])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "NaN" in (err.value.details() or "")
    if app.settings.database_url:
        return  # the setting is backend-independent: one lenient server is enough
    lenient = Application(server_settings(tmp_path, allow_non_finite_weights=True))
    await lenient.start()
    try:
        async with grpc.aio.insecure_channel(lenient.address) as channel:
            stub = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
            assert (await upload(stub, "allowed", files["poisoned"])).version.version == 1
    finally:
        await lenient.stop(grace=1.0)
