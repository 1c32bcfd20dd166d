"""Train session lifecycles on a real server, on both backends: cancelled streams (keep or discard), one writer
per model (FAILED_PRECONDITION, or waiting for the lease), and a server stopping mid-training."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import inference_service_pb2_grpc, model_pb2, registry_service_pb2_grpc

from tests.api.helpers import upload
from tests.serving import server_settings, unique_name
from tests.training.helpers import (
    Teacher,
    accuracy,
    chunks,
    config,
    drain,
    of,
    run,
    run_until_error,
    save,
    student,
    versions,
)
from tt_server.app import Application

TEACHER = Teacher()
KEEP, DISCARD = pb.ON_ABORT_CHECKPOINT, pb.ON_ABORT_DISCARD


@pytest.fixture(scope="module")
def compiled_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(student(), tmp_path_factory.mktemp("session-models") / "compiled.keras")


async def start_when_free(stub, name: str, within: float = 10.0) -> pb.TrainStarted:
    """Start (and end) a session on ``name`` once the previous holder has released the lease."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            responses = await run(stub, [config(name, on_abort=DISCARD)])
            return responses[0].started
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("on_abort", [KEEP, DISCARD])
async def test_cancelled_stream_keeps_or_discards_and_frees_the_lease(
    registry_stub, inference_stub, compiled_model, on_abort
) -> None:
    name = unique_name("cancel")
    await upload(registry_stub, name, compiled_model)
    x, y = TEACHER.data(4000, seed=10)
    call = inference_stub.Train()
    await call.write(config(name, on_abort=on_abort, micro_batch_size=16, move_label="online"))
    started = (await call.read()).started
    for request in chunks(x, y, 1000):
        await call.write(request)
    progress = (await call.read()).progress  # training is under way, more messages queued behind it
    assert progress.step == 1
    call.cancel()

    # The session is gone once a new one can take the lease; it aborted before releasing it.
    assert (await start_when_free(inference_stub, name)).base_version >= 1
    stored = await versions(registry_stub, name)
    if on_abort == DISCARD:
        assert [v.version for v in stored] == [1]
        return
    kept = stored[-1]
    assert len(stored) == 2 and kept.parent_version == 1 and kept.training_session_id == started.session_id
    assert kept.source == model_pb2.VERSION_SOURCE_TRAINING and list(kept.labels) == ["online"]
    # Every step that reached the weights is counted, including those whose progress was never read.
    assert int(kept.metadata["training.examples_seen"]) >= 16
    assert int(kept.metadata["training.examples_seen"]) % 16 == 0


async def test_one_writer_per_model(app: Application, registry_stub, inference_stub, compiled_model) -> None:
    name = unique_name("race")
    await upload(registry_stub, name, compiled_model)
    first = inference_stub.Train()
    await first.write(config(name, move_label="online", promote=True))  # promoted: unpinned sessions start from it
    started_first = (await first.read()).started
    assert started_first.base_version == 1
    # A live session's scratch folder survives the sweep of killed processes' leftovers (it holds its lock).
    await app.sweeper.sweep_leftovers()
    assert (app.settings.scratch_dir / f"train-{started_first.session_id}" / ".owner").exists()

    _, error = await run_until_error(inference_stub, [config(name)])
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()

    waiting = inference_stub.Train()
    await waiting.write(config(name, wait_for_lease=True))  # resolved again once it gets the lease
    waiting_started = asyncio.ensure_future(waiting.read())
    quitter = inference_stub.Train()  # waits too, then gives up: it must never end up holding the lease
    await quitter.write(config(name, wait_for_lease=True))
    await asyncio.sleep(0.5)
    assert not waiting_started.done()
    quitter.cancel()

    x, y = TEACHER.data(320, seed=11)
    for request in chunks(x, y, 160):
        await first.write(request)
    await first.done_writing()
    first_responses = await drain(first)
    assert first_responses[-1].finished.last_version == 2

    started = (await asyncio.wait_for(waiting_started, 10)).started
    assert started.base_version == 2  # the first session's checkpoint, published while it waited
    await waiting.done_writing()
    assert [r.WhichOneof("event") for r in await drain(waiting)] == ["finished"]
    assert (await start_when_free(inference_stub, name)).base_version == 2
    # Nothing is left behind: sessions, threads' scratch files.
    assert app.training.open_sessions == 0
    assert not list(app.settings.scratch_dir.glob("train-*"))


@pytest.mark.parametrize("on_abort", [KEEP, DISCARD])
async def test_server_stop_during_training(
    app: Application, tmp_path: Path, registry_stub, inference_stub, compiled_model, on_abort
) -> None:
    """A second server (with the production backend: a replica sharing the database and bucket) stops while
    a session trains on it: the client gets the abort checkpoint (if kept), then UNAVAILABLE, and the lease is
    free again."""
    shared: dict[str, object] = {"training_max_sessions": 1}
    if app.settings.database_url:
        shared |= {
            "database_url": app.settings.database_url,
            "s3_bucket": app.settings.s3_bucket,
            "s3_endpoint_url": app.settings.s3_endpoint_url,
        }
    replica = Application(server_settings(tmp_path / "replica", **shared))
    await replica.start()
    try:
        async with grpc.aio.insecure_channel(replica.address) as channel:
            replica_registry = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
            replica_inference = inference_service_pb2_grpc.InferenceServiceStub(channel)
            name = unique_name("stop")
            await upload(replica_registry, name, compiled_model)
            call = replica_inference.Train()
            await call.write(config(name, on_abort=on_abort, micro_batch_size=32))
            assert (await call.read()).WhichOneof("event") == "started"
            x, y = TEACHER.data(2000, seed=12)
            for request in chunks(x, y, 500):
                await call.write(request)
            assert (await call.read()).WhichOneof("event") == "progress"

            # The server's session limit (1 here) holds for other models too.
            other = unique_name("other")
            await upload(replica_registry, other, compiled_model)
            _, error = await run_until_error(replica_inference, [config(other)])
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            if app.settings.database_url:  # the other replica cannot train the model either
                _, error = await run_until_error(inference_stub, [config(name)])
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

            stopping = asyncio.ensure_future(replica.stop(grace=5.0))
            responses = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                while (response := await call.read()) is not grpc.aio.EOF:
                    responses.append(response)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            await stopping
    finally:
        await replica.stop(grace=1.0)

    kept = of(responses, "checkpoint")
    if on_abort == DISCARD:
        assert not kept
    else:
        assert [c.version.version for c in kept] == [2]
    # The lease was released on the way out.
    lease = await replica.leases.acquire(name, wait=False)
    await lease.release()
    if app.settings.database_url:
        # On the replica that stayed: the model is trainable again, and the kept checkpoint serves when pinned;
        # unpinned callers (and sessions) keep the upload, as the serving policy says.
        assert (await start_when_free(inference_stub, name)).base_version == 1
        held_x, held_y = TEACHER.data(200, seed=13)
        _, served = await accuracy(inference_stub, model_pb2.ModelRef(name=name), held_x, held_y)
        assert served == 1
        if on_abort == KEEP:
            _, pinned = await accuracy(inference_stub, model_pb2.ModelRef(name=name, version=2), held_x, held_y)
            assert pinned == 2
