"""InferenceService.predict end to end on real stores and models: resolve, validate, batch, filter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests import models
from tests.runtime.helpers import publish
from tt_server.errors import DeadlineExceeded, InvalidArgument, NotFound
from tt_server.runtime.manager import ModelManager
from tt_server.runtime.service import InferenceService
from tt_server.storage.local import LocalBlobStore
from tt_server.storage.sqlite import SqliteMetadataStore
from tt_server.types import DType, ModelFormat, ModelRef, WireTensor


@pytest.fixture(scope="module")
def two_io_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("service")
    model = models.build_two_io()
    path = out / "two_io.keras"
    model.save(path)
    return path, model


@pytest.fixture
async def manager(
    make_manager: Callable[..., ModelManager],
    metadata: SqliteMetadataStore,
    blobs: LocalBlobStore,
    two_io_model: tuple[Path, object],
) -> ModelManager:
    await publish(metadata, blobs, two_io_model[0], "two", signature=models.TWO_IO_SIGNATURE, labels=("prod",))
    return make_manager()


@pytest.fixture
def service(manager: ModelManager) -> InferenceService:
    return InferenceService(manager)


def inputs(rows: int, typed: bool = False) -> tuple[dict[str, WireTensor], dict[str, np.ndarray]]:
    rng = np.random.default_rng(rows)
    a = rng.random((rows, 3), dtype=np.float32)
    b = rng.integers(0, 10, (rows, 2)).astype(np.int32)
    if typed:
        wire = {
            "a": WireTensor(DType.FLOAT32, a.shape, values=a.ravel().tolist()),
            "b": WireTensor(DType.INT32, b.shape, values=b.ravel().tolist()),
        }
    else:
        wire = {
            "a": WireTensor(DType.FLOAT32, a.shape, content=a.tobytes()),
            "b": WireTensor(DType.INT32, b.shape, content=b.tobytes()),
        }
    return wire, {"a": a, "b": b}


@pytest.mark.parametrize("typed", [False, True])
async def test_predict_returns_every_output_of_the_version_that_ran(
    service: InferenceService, two_io_model: tuple[Path, object], typed: bool
) -> None:
    wire, arrays = inputs(5, typed)
    result = await service.predict(ModelRef("two", label="prod"), wire, [], None)
    assert (result.model_name, result.version) == ("two", 1)
    expected = two_io_model[1]([arrays["a"], arrays["b"]], training=False)  # type: ignore[operator]
    assert list(result.outputs) == ["probs", "value"]
    for name in ("probs", "value"):
        assert np.max(np.abs(result.outputs[name] - expected[name].numpy())) <= 1e-5


async def test_concurrent_predicts_are_batched_and_answered_each(
    service: InferenceService, manager: ModelManager
) -> None:
    requests = [inputs(rows) for rows in range(1, 31)]
    results = await asyncio.gather(*[service.predict(ModelRef("two"), wire, [], None) for wire, _ in requests])
    for (_, arrays), result in zip(requests, results, strict=True):
        assert result.outputs["probs"].shape == (arrays["a"].shape[0], 3)
    handle = await manager.get(ModelRef("two"))
    assert handle.batcher.batches_run < len(requests)


async def test_output_filter_selects_outputs(service: InferenceService) -> None:
    wire, _ = inputs(2)
    result = await service.predict(ModelRef("two"), wire, ["value"], None)
    assert list(result.outputs) == ["value"] and result.outputs["value"].shape == (2, 1)


async def test_bad_output_names_and_bad_inputs_are_reported_together(service: InferenceService) -> None:
    wire, _ = inputs(2)
    wire["a"] = WireTensor(DType.FLOAT32, (2, 4), content=bytes(32))
    with pytest.raises(InvalidArgument) as info:
        await service.predict(ModelRef("two"), wire, ["value", "logits", "probs", "nope"], None)
    assert [v.field for v in info.value.violations] == [
        'inputs["a"].shape[1]',
        "output_filter[1]",
        "output_filter[3]",
    ]
    assert "the model's outputs are: probs, value" in info.value.violations[1].description


async def test_unknown_models_versions_and_labels(service: InferenceService) -> None:
    wire, _ = inputs(1)
    for ref in (ModelRef("missing"), ModelRef("two", version=2), ModelRef("two", label="staging")):
        with pytest.raises(NotFound):
            await service.predict(ref, wire, [], None)


async def test_a_passed_deadline_is_not_run(service: InferenceService) -> None:
    wire, _ = inputs(1)
    with pytest.raises(DeadlineExceeded):
        await service.predict(ModelRef("two"), wire, [], time.monotonic() - 0.001)


async def test_resolve_pins_the_version(service: InferenceService) -> None:
    version = await service.load_version(ModelRef("two", label="prod"))
    assert (version.model_name, version.version, version.format) == ("two", 1, ModelFormat.KERAS)


async def test_values_the_model_rejects_fail_only_their_own_request(service: InferenceService) -> None:
    requests = [inputs(2)[0] for _ in range(6)]
    bad = np.array([[1, 2], [3, 26]], np.int32)  # 26 is outside the embedding's 10 tokens
    requests[3]["b"] = WireTensor(DType.INT32, (2, 2), content=bad.tobytes())
    results = await asyncio.gather(
        *[service.predict(ModelRef("two"), wire, [], None) for wire in requests], return_exceptions=True
    )
    error = results.pop(3)
    assert isinstance(error, InvalidArgument)
    assert error.violations[0].field == "inputs"
    assert (
        error.violations[0].description == "the model cannot run on these values: indices[1,1] = 26 is not in [0, 10)"
    )
    assert all(not isinstance(r, BaseException) for r in results)
