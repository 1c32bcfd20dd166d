"""Retention on a real server, on both backends: it prunes old training checkpoints and (when asked) old
versions, but never a labelled one, the served one, or one an open Train session or PredictBatch stream uses;
pruned artifacts go through the blob GC."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import model_pb2
from tensortrigger.v1 import registry_service_pb2 as rpb

from tests.api.helpers import upload
from tests.serving import unique_name
from tests.training.helpers import FEATURES, Teacher, chunks, config, drain, of, run, save, student, tensor
from tt_server.app import Application

TEACHER = Teacher()


@pytest.fixture(scope="module")
def student_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(student(), tmp_path_factory.mktemp("retention") / "student.keras")


async def stored(registry_stub, name: str) -> list[int]:
    response = await registry_stub.ListModelVersions(rpb.ListModelVersionsRequest(name=name))
    return sorted(v.version for v in response.versions)


async def set_retention(
    registry_stub, name: str, checkpoints: int = 0, versions: int = 0
) -> rpb.SetRetentionPolicyResponse:
    retention = model_pb2.RetentionPolicy(keep_training_checkpoints=checkpoints, keep_versions=versions)
    return await registry_stub.SetRetentionPolicy(rpb.SetRetentionPolicyRequest(name=name, retention=retention))


async def train(inference_stub, name: str, checkpoints: int, **fields: object) -> list[int]:
    """A session that publishes ``checkpoints`` versions (one per 16 examples); their numbers."""
    x, y = TEACHER.data(16 * checkpoints, seed=checkpoints)
    policy = pb.CheckpointPolicy(every_examples=16)
    responses = await run(
        inference_stub, [config(name, micro_batch_size=16, checkpoint=policy, **fields), *chunks(x, y, 16)]
    )
    return [c.version.version for c in of(responses, "checkpoint")]


async def test_checkpoints_beyond_the_limit_are_pruned_but_labelled_and_served_ones_stay(
    app: Application, registry_stub, inference_stub, student_file: Path
) -> None:
    name = unique_name("keep")
    await upload(registry_stub, name, student_file)
    record = (await registry_stub.GetModel(rpb.GetModelRequest(name=name))).model
    assert (record.retention.keep_training_checkpoints, record.retention.keep_versions) == (5, 0)  # the defaults
    assert (await set_retention(registry_stub, name, checkpoints=2)).pruned_versions == []

    assert await train(inference_stub, name, 1, move_label="keep") == [2]
    assert await train(inference_stub, name, 5) == [3, 4, 5, 6, 7]
    # Pruned as the session went: the labelled checkpoint, the served upload and the newest two stay.
    assert await stored(registry_stub, name) == [1, 2, 6, 7]
    # The pruned artifacts are collected by the blob GC.
    assert await app.sweeper.collect_garbage() >= 3
    missing = registry_stub.GetModelVersion(rpb.GetModelVersionRequest(model=model_pb2.ModelRef(name=name, version=3)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await missing
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    # keep_versions counts every source; the served upload (8 now) and the labelled 2 still stay.
    await upload(registry_stub, name, student_file)
    response = await set_retention(registry_stub, name, checkpoints=-1, versions=2)
    assert (response.retention.keep_training_checkpoints, response.retention.keep_versions) == (-1, 2)
    assert list(response.pruned_versions) == [1, 6]
    assert await stored(registry_stub, name) == [2, 7, 8]


async def test_versions_in_use_by_a_stream_or_session_are_kept(
    registry_stub, inference_stub, student_file: Path
) -> None:
    name = unique_name("inuse")
    for _ in range(3):
        await upload(registry_stub, name, student_file)
    x = np.zeros((2, FEATURES), np.float32)
    stream = inference_stub.PredictBatch()
    await stream.write(
        pb.PredictBatchRequest(model=model_pb2.ModelRef(name=name, version=1), inputs={"features": tensor(x)})
    )
    assert (await stream.read()).model_version == 1
    # Version 1 is in use by the open stream, 3 is served: only 2 goes.
    assert list((await set_retention(registry_stub, name, versions=1)).pruned_versions) == [2]
    await stream.write(pb.PredictBatchRequest(inputs={"features": tensor(x)}))
    assert (await stream.read()).model_version == 1  # still served to the stream
    await stream.done_writing()
    assert await stream.read() == grpc.aio.EOF
    assert list((await set_retention(registry_stub, name, versions=1)).pruned_versions) == [1]

    # An open Train session keeps the version it trains from, even when a newer upload takes over.
    call = inference_stub.Train()
    await call.write(config(name))
    assert (await call.read()).started.base_version == 3
    await upload(registry_stub, name, student_file)
    assert list((await set_retention(registry_stub, name, versions=1)).pruned_versions) == []
    await call.done_writing()
    assert [r.WhichOneof("event") for r in await drain(call)] == ["finished"]
    assert list((await set_retention(registry_stub, name, versions=1)).pruned_versions) == [3]
    assert await stored(registry_stub, name) == [4]


async def test_bad_retention_is_invalid_argument(registry_stub, student_file: Path) -> None:
    name = unique_name("bad")
    await upload(registry_stub, name, student_file)
    for checkpoints, versions in ((-2, 0), (0, -1)):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await set_retention(registry_stub, name, checkpoints, versions)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await set_retention(registry_stub, "no-such-model", 1)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
