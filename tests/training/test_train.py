"""Train end to end on a real server, on both storage backends: learning, checkpoints and lineage, labels,
validation errors, and the model's own compile config."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import model_pb2, tensor_pb2

from tests import models
from tests.api.helpers import upload, violations
from tests.serving import unique_name
from tests.training.helpers import (
    FEATURES,
    Teacher,
    accuracy,
    chunks,
    config,
    control,
    examples,
    of,
    run,
    run_until_error,
    save,
    student,
    tensor,
    versions,
)

TEACHER = Teacher()
F32 = tensor_pb2.DATA_TYPE_FLOAT32


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("train-models")
    return {
        "compiled": save(student(), out / "compiled.keras"),
        "compiled_h5": save(student(), out / "compiled.h5"),
        "uncompiled": save(student(compiled=False), out / "uncompiled.keras"),
        "saved_model": models.pack_tar_gz(models.module_saved_model_dir(out), out / "module.tar.gz"),
    }


async def uploaded(registry_stub, path: Path, prefix: str = "t") -> str:
    name = unique_name(prefix)
    await upload(registry_stub, name, path)
    return name


async def test_learning_beats_the_base_version(registry_stub, inference_stub, model_files) -> None:
    name = await uploaded(registry_stub, model_files["compiled"], "learn")
    x, y = TEACHER.data(4000, seed=1)
    held_x, held_y = TEACHER.data(2000, seed=2)
    responses = await run(
        inference_stub,
        [config(name, move_label="online", micro_batch_size=32, metrics=["accuracy"]), *chunks(x, y, 250)],
    )
    kinds = [r.WhichOneof("event") for r in responses]
    assert kinds[0] == "started" and kinds[-2:] == ["checkpoint", "finished"], kinds[:3] + kinds[-3:]
    started = responses[0].started
    # The defaults come from the model's compile config.
    assert (started.base_version, started.loss, started.optimizer) == (1, "binary_crossentropy", pb.OPTIMIZER_ADAM)
    assert started.learning_rate == pytest.approx(0.01)

    progress = of(responses, "progress")
    assert [p.step for p in progress] == list(range(1, 126))  # 4000 / 32, re-batched across 250-row messages
    assert progress[-1].examples_seen == 4000
    assert set(progress[0].prequential) == {"loss", "accuracy"} and set(progress[0].metrics) == {"accuracy"}
    # Dense layers only: the training forward pass is the pre-update prediction, so the losses coincide.
    assert all(p.loss == p.prequential["loss"] for p in progress)
    early = np.mean([p.prequential["loss"] for p in progress[:10]])
    late = np.mean([p.prequential["loss"] for p in progress[-10:]])
    assert late < 0.7 * early, (early, late)
    assert np.mean([p.prequential["accuracy"] for p in progress[-20:]]) > 0.8

    (checkpoint,) = of(responses, "checkpoint")
    version = checkpoint.version
    assert version.version == 2 and version.parent_version == 1
    assert version.source == model_pb2.VERSION_SOURCE_TRAINING
    assert version.training_session_id == started.session_id
    assert version.metadata["training.examples_seen"] == "4000"
    assert "training.prequential.accuracy" in version.metadata
    assert list(version.labels) == ["online"]
    finished = responses[-1].finished
    assert (finished.examples_seen, finished.steps, finished.last_version) == (4000, 125, 2)

    # Evaluated through Predict: the label serves the checkpoint, which beats the untouched base.
    base_accuracy, base_version = await accuracy(
        inference_stub, model_pb2.ModelRef(name=name, version=1), held_x, held_y
    )
    trained_accuracy, served = await accuracy(
        inference_stub, model_pb2.ModelRef(name=name, label="online"), held_x, held_y
    )
    assert (base_version, served) == (1, 2)
    assert trained_accuracy > base_accuracy + 0.2, (base_accuracy, trained_accuracy)
    assert trained_accuracy > 0.85


async def test_checkpoint_policy_lineage_evaluation_and_end(registry_stub, inference_stub, model_files) -> None:
    name = await uploaded(registry_stub, model_files["compiled_h5"], "policy")
    x, y = TEACHER.data(2000, seed=3)
    eval_x, eval_y = TEACHER.data(500, seed=4)
    policy = pb.CheckpointPolicy(every_examples=800, on_end=False)
    call = inference_stub.Train()
    await call.write(config(name, checkpoint=policy, move_label="online", micro_batch_size=64))
    for request in chunks(x[:1000], y[:1000], 100):
        await call.write(request)
    await call.write(examples(eval_x, eval_y, evaluate_only=True))
    await call.write(control(pb.TRAIN_CONTROL_CHECKPOINT))
    for request in chunks(x[1000:], y[1000:], 100):
        await call.write(request)
    await call.write(control(pb.TRAIN_CONTROL_END))  # the server ends the stream without a half-close
    responses = [r async for r in call]
    assert await call.code() == grpc.StatusCode.OK

    # Checkpoints come after the first micro-batch that reaches 800 new examples: 896 (14 x 64) -> v2; the
    # requested one at 1000 (the evaluation flushed the partial batch) -> v3; 1000 + 896 -> v4; none at the end.
    chain = [c.version for c in of(responses, "checkpoint")]
    assert [(v.version, v.parent_version) for v in chain] == [(2, 1), (3, 2), (4, 3)]
    assert [int(v.metadata["training.examples_seen"]) for v in chain] == [896, 1000, 1896]
    assert len({v.training_session_id for v in chain}) == 1
    (evaluation,) = of(responses, "evaluation")
    assert evaluation.examples == 500 and 0 <= evaluation.metrics["accuracy"] <= 1 and evaluation.loss > 0
    # The evaluation came after the 1000 examples before it were all trained (none left in a partial batch).
    kinds = [r.WhichOneof("event") for r in responses]
    assert of(responses[: kinds.index("evaluation")], "progress")[-1].examples_seen == 1000
    assert responses[-1].finished.last_version == 4
    stored = await versions(registry_stub, name)
    assert [list(v.labels) for v in stored] == [[], [], [], ["online"]]
    # A new session on the label starts from the newest checkpoint, whose compile config carried the recipe.
    again = await run(inference_stub, [config(name, label="online")])
    assert again[0].started.base_version == 4 and again[0].started.loss == "binary_crossentropy"


async def test_model_without_compile_config_needs_a_loss(registry_stub, inference_stub, model_files) -> None:
    name = await uploaded(registry_stub, model_files["uncompiled"], "noloss")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run(inference_stub, [config(name)])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no loss given and the model has none" in err.value.details()

    x, y = TEACHER.data(256, seed=5)
    by_time = pb.CheckpointPolicy(every_seconds=1e-6)  # due after every message's steps; no end checkpoint
    responses = await run(
        inference_stub,
        [
            config(name, loss="mse", optimizer=pb.OPTIMIZER_SGD, learning_rate=0.05, momentum=0.5, checkpoint=by_time),
            *chunks(x, y, 128),
        ],
    )
    started = responses[0].started
    assert (started.loss, started.optimizer, started.learning_rate) == ("mse", pb.OPTIMIZER_SGD, pytest.approx(0.05))
    assert "accuracy" not in of(responses, "progress")[0].prequential  # a regression loss: no accuracy
    assert [c.version.version for c in of(responses, "checkpoint")] == [2, 3]


async def test_dropout_multi_output_and_sparse_models(registry_stub, inference_stub, tmp_path) -> None:
    import keras

    rng = np.random.default_rng(8)
    # Dropout: the prequential loss comes from a separate inference-mode pass, not the noisy training pass.
    inputs = keras.Input(shape=(4,), name="features")
    hidden = keras.layers.Dropout(0.5)(keras.layers.Dense(16, activation="relu")(inputs))
    dropout = keras.Model(inputs, keras.layers.Dense(1, name="score")(hidden))
    name = await uploaded(registry_stub, save(dropout, tmp_path / "dropout.keras"), "dropout")
    x = rng.normal(size=(64, 4)).astype(np.float32)
    responses = await run(inference_stub, [config(name, loss="mse"), examples(x, x[:, :1])])
    assert all(p.loss != p.prequential["loss"] for p in of(responses, "progress"))

    # Two inputs (one int), two outputs: labels by output name, metrics per output.
    name = await uploaded(registry_stub, models.two_io_keras(tmp_path), "twoio")
    a = rng.normal(size=(40, 3)).astype(np.float32)
    b = rng.integers(0, 10, size=(40, 2)).astype(np.int32)
    probs = np.eye(3, dtype=np.float32)[rng.integers(0, 3, size=40)]
    value = rng.normal(size=(40, 1)).astype(np.float32)
    request = pb.TrainRequest(
        examples=pb.TrainExamples(
            features={"a": tensor(a), "b": tensor(b, tensor_pb2.DATA_TYPE_INT32)},
            labels={"probs": tensor(probs), "value": tensor(value)},
        )
    )
    responses = await run(inference_stub, [config(name, loss="mse", metrics=["mae"], micro_batch_size=20), request])
    assert set(of(responses, "progress")[0].metrics) == {"probs.mae", "value.mae"}
    assert of(responses, "finished")[0].steps == 2
    unknown = pb.TrainRequest(
        examples=pb.TrainExamples(
            features={"a": tensor(a), "b": tensor(b, tensor_pb2.DATA_TYPE_INT32)}, labels={"prob": tensor(probs)}
        )
    )
    _, error = await run_until_error(inference_stub, [config(name, loss="mse"), unknown])
    assert {'examples.labels["prob"]', "examples.labels"} <= set(violations(error))

    # Sparse categorical: class ids (int32 or int64, one per example) label a 3-way softmax.
    inputs = keras.Input(shape=(4,), name="features")
    classifier = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probs")(inputs))
    classifier.compile(loss="sparse_categorical_crossentropy")
    name = await uploaded(registry_stub, save(classifier, tmp_path / "sparse.keras"), "sparse")
    x = rng.normal(size=(32, 4)).astype(np.float32)
    ids = rng.integers(0, 3, size=32)
    sparse = [
        pb.TrainRequest(
            examples=pb.TrainExamples(features={"features": tensor(x)}, labels={"c": tensor(ids.astype(t), dtype)})
        )
        for t, dtype in ((np.int32, tensor_pb2.DATA_TYPE_INT32), (np.int64, tensor_pb2.DATA_TYPE_INT64))
    ]
    responses = await run(inference_stub, [config(name), *sparse])
    assert responses[0].started.loss == "sparse_categorical_crossentropy"
    assert [set(p.prequential) for p in of(responses, "progress")] == [{"loss", "accuracy"}] * 2


async def test_bad_configs(registry_stub, inference_stub, model_files) -> None:
    name = await uploaded(registry_stub, model_files["compiled"], "badcfg")
    sm = await uploaded(registry_stub, model_files["saved_model"], "sm")
    cases = [
        ([config(sm)], grpc.StatusCode.FAILED_PRECONDITION, None),
        ([config("no-such-model")], grpc.StatusCode.NOT_FOUND, None),
        ([config(name, loss="nope")], grpc.StatusCode.INVALID_ARGUMENT, "config.loss"),
        ([config(name, metrics=["nope"])], grpc.StatusCode.INVALID_ARGUMENT, "config.metrics[0]"),
        ([config(name, loss="mse", metrics=["f1_score"])], grpc.StatusCode.FAILED_PRECONDITION, None),  # shapes
        ([config(name, momentum=0.9)], grpc.StatusCode.INVALID_ARGUMENT, "config.momentum"),
        ([config(name, move_label="Bad Label")], grpc.StatusCode.INVALID_ARGUMENT, "config.move_label"),
        ([config(name, micro_batch_size=-1)], grpc.StatusCode.INVALID_ARGUMENT, "config.micro_batch_size"),
        ([control(pb.TRAIN_CONTROL_END)], grpc.StatusCode.INVALID_ARGUMENT, "config"),
        ([config(name), config(name)], grpc.StatusCode.INVALID_ARGUMENT, "config"),
    ]
    for requests, code, field in cases:
        _, error = await run_until_error(inference_stub, requests)
        assert error.code() == code, (requests[0], error.details())
        if field is not None:
            assert field in violations(error), (field, violations(error))
    assert len(await versions(registry_stub, name)) == 1  # nothing was published


BAD_EXAMPLES = {
    "label shape": (np.zeros((4, FEATURES)), np.zeros((4, 2)), F32, 'examples.labels["y"].shape[1]'),
    "label dtype": (
        np.zeros((4, FEATURES)),
        np.zeros((4, 1)),
        tensor_pb2.DATA_TYPE_INT32,
        'examples.labels["y"].dtype',
    ),
    "label rows": (np.zeros((4, FEATURES)), np.zeros((3, 1)), F32, 'examples.labels["y"].shape[0]'),
    "feature shape": (np.zeros((4, FEATURES + 1)), np.zeros((4, 1)), F32, 'examples.features["features"].shape[1]'),
}


@pytest.mark.parametrize("case", list(BAD_EXAMPLES))
@pytest.mark.parametrize("on_abort", [pb.ON_ABORT_CHECKPOINT, pb.ON_ABORT_DISCARD])
async def test_bad_examples_end_the_stream_naming_the_field(
    registry_stub, inference_stub, model_files, case, on_abort
) -> None:
    name = await uploaded(registry_stub, model_files["compiled"], "badex")
    features, labels, label_dtype, field = BAD_EXAMPLES[case]
    x, y = TEACHER.data(64, seed=6)
    label_array = labels.astype(np.int32 if label_dtype == tensor_pb2.DATA_TYPE_INT32 else np.float32)
    bad = pb.TrainRequest(
        examples=pb.TrainExamples(
            features={"features": tensor(features.astype(np.float32))},
            labels={"y": tensor(label_array, label_dtype)},
        )
    )
    responses, error = await run_until_error(
        inference_stub, [config(name, on_abort=on_abort), examples(x, y, key="y"), bad]
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(error), violations(error)
    assert len(of(responses, "progress")) == 2  # the good message before it was trained on
    kept = of(responses, "checkpoint")
    stored = await versions(registry_stub, name)
    if on_abort == pb.ON_ABORT_DISCARD:
        assert not kept and len(stored) == 1
    else:
        assert [c.version.version for c in kept] == [2] and len(stored) == 2
