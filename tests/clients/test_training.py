"""Online training through the Python client (sync and asyncio) and ``tt train``, against a real server: examples
stream in, metrics come back live, a checkpoint is published as a new version and served."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
import tensortrigger as tt

from tests import models
from tests.clients.helpers import AnyClient, call, collect, embedded_only, tt_cli
from tests.serving import unique_name
from tt_server.api.inference import InferenceServicer
from tt_server.app import Application

pytestmark = pytest.mark.skipif(
    "Train" not in vars(InferenceServicer),
    reason="pending server side: InferenceService.Train is not implemented yet (tt_server/api/inference.py)",
)


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 4 -> 1 sigmoid MLP, without a compile config: each session names its loss."""
    out = tmp_path_factory.mktemp("train-models")
    return models.mlp_keras(out)


def labelled(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(rows, 4)).astype(np.float32)
    return x, (x.sum(axis=1, keepdims=True) > 0).astype(np.float32)


def batches(x: np.ndarray, y: np.ndarray, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(x), size):
        yield x[start : start + size], y[start : start + size]  # bare arrays: the only input and output


async def test_train_publishes_a_checkpoint(client: AnyClient, mlp_file: Path) -> None:
    name = unique_name("train")
    await call(client, "upload", name, mlp_file)
    x, y = labelled(640)
    seen: list[tt.v1.inference_service_pb2.TrainProgress] = []
    result = await call(
        client,
        "train",
        name,
        batches(x, y, 64),
        on_progress=seen.append,
        loss="binary_crossentropy",
        optimizer="sgd",
        learning_rate=0.05,
        micro_batch_size=32,
        move_label="online",
        metrics=["accuracy"],
    )
    assert isinstance(result, tt.TrainResult)
    assert result.session_id and result.base_version == 1
    assert (result.steps, result.examples_seen, result.last_version) == (20, 640, 2)
    assert [p.step for p in seen] == list(range(1, 21)) and "accuracy" in seen[-1].metrics
    assert result.last_progress == seen[-1]
    (checkpoint,) = result.checkpoints
    assert (checkpoint.version, checkpoint.parent_version, list(checkpoint.labels)) == (2, 1, ["online"])

    probe = x[:8]
    base = await call(client, "predict", f"{name}:1", probe)
    trained = await call(client, "predict", f"{name}@online", probe)
    assert not np.allclose(base["score"], trained["score"])


async def test_a_failing_example_source_cancels_the_session(client: AnyClient, mlp_file: Path) -> None:
    name = unique_name("abort")
    await call(client, "upload", name, mlp_file)
    x, y = labelled(64)

    def broken() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield x, y
        raise RuntimeError("the data source broke")

    with pytest.raises(RuntimeError, match="the data source broke"):
        await call(client, "train", name, broken(), loss="binary_crossentropy", on_abort="discard")
    await asyncio.sleep(0.5)  # the server ends the session after the stream is gone
    assert [v.version for v in await collect(client, "list_versions", name)] == [1]  # nothing published

    with pytest.raises(ValueError, match="unknown optimizer"):
        await call(client, "train", name, batches(x, y, 32), optimizer="lbfgs")


@embedded_only
async def test_train_command(app: Application, mlp_file: Path, tmp_path: Path) -> None:
    name = unique_name("cli-train")
    assert (await tt_cli("models", "upload", name, str(mlp_file), address=app.address)).code == 0
    x, y = labelled(300, seed=1)
    rows = ["a,b,c,d,label", *(",".join(repr(float(v)) for v in (*xs, ys[0])) for xs, ys in zip(x, y, strict=True))]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    common = ["train", name, str(tmp_path / "train.csv"), "--loss", "binary_crossentropy", "--batch-rows", "50"]

    run = await tt_cli("--json", *common, "--label-column", "label", "--move-label", "online", address=app.address)
    assert run.code == 0, run.err
    body = run.json()
    assert (body["examples_seen"], body["last_version"]) == (300, 2)
    assert [v["version"] for v in body["checkpoints"]] == [2]
    human = await tt_cli(*common, "--optimizer", "sgd", "--metric", "accuracy", address=app.address)
    assert human.code == 0, human.err
    assert "trained on 300 examples" in human.out and "published versions: 3" in human.out
    assert "step 1 " in human.err  # live metrics on stderr

    missing = await tt_cli(*common, "--label-column", "nope", address=app.address)
    assert missing.code == 2
    served = keras.saving.load_model(mlp_file, compile=False)  # the base is untouched by training
    async with tt.AsyncClient(app.address) as client:
        base = await client.predict(f"{name}:1", x[:4])
    np.testing.assert_allclose(base["score"], np.asarray(served(x[:4])), atol=1e-5)
