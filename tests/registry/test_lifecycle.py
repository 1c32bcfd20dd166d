"""Model lifecycle on a real server, on both backends: the serving policy (what callers that name only the model
get, in every protocol), promotion of training checkpoints, labels for the Open Inference Protocol, and the
model description rule."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
import tritonclient.grpc as triton
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import jobs_service_pb2, model_pb2
from tensortrigger.v1 import registry_service_pb2 as rpb
from tritonclient.utils import InferenceServerException

from tests.api.helpers import upload
from tests.serving import unique_name
from tests.training.helpers import FEATURES, Teacher, chunks, config, of, run, save, student, tensor
from tt_server.app import Application

TEACHER = Teacher()
X = np.random.default_rng(5).normal(size=(3, FEATURES)).astype(np.float32)


@pytest.fixture(scope="module")
def student_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(student(), tmp_path_factory.mktemp("lifecycle") / "student.keras")


@pytest.fixture(scope="module")
def tfs(app: Application) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    with grpc.insecure_channel(app.address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def oip(app: Application) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=app.address)
    yield client
    client.close()


async def in_thread(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(method, *args, **kwargs)


async def native_version(inference_stub, name: str, **selector: Any) -> int:
    ref = model_pb2.ModelRef(name=name, **selector)
    response = await inference_stub.Predict(pb.PredictRequest(model=ref, inputs={"features": tensor(X)}))
    return int(response.model_version)


async def tfs_version(tfs, name: str, label: str = "") -> int:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if label:
        request.model_spec.version_label = label
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(X))
    response = await in_thread(tfs.Predict, request, timeout=60)
    return int(response.model_spec.version.value)


async def oip_version(oip, name: str, version: str = "") -> int:
    features = triton.InferInput("features", list(X.shape), "FP32")
    features.set_data_from_numpy(X)
    result = await in_thread(oip.infer, name, [features], model_version=version)
    return int(result.get_response().model_version)


async def unpinned_versions(inference_stub, tfs, oip, name: str) -> tuple[int, int, int]:
    """What a native, a TF Serving and a Triton caller that name only the model are served."""
    return (
        await native_version(inference_stub, name),
        await tfs_version(tfs, name),
        await oip_version(oip, name),
    )


async def train_briefly(inference_stub, name: str, **fields: Any) -> pb.TrainFinished:
    x, y = TEACHER.data(64, seed=1)
    responses = await run(inference_stub, [config(name, micro_batch_size=32, **fields), *chunks(x, y, 64)])
    return of(responses, "finished")[0]


async def model(registry_stub, name: str) -> model_pb2.Model:
    return (await registry_stub.GetModel(rpb.GetModelRequest(name=name))).model


async def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value.code()


async def test_checkpoints_serve_unpinned_callers_only_once_promoted(
    registry_stub, inference_stub, jobs_stub, tfs, oip, student_file: Path
) -> None:
    name = unique_name("policy")
    await upload(registry_stub, name, student_file, description="churn model")
    finished = await train_briefly(inference_stub, name)
    assert finished.last_version == 2
    # A finished session's checkpoint is not what unpinned callers get, in any protocol, nor a job.
    assert await unpinned_versions(inference_stub, tfs, oip, name) == (1, 1, 1)
    assert await native_version(inference_stub, name, version=2) == 2
    assert await oip_version(oip, name, "2") == 2
    job = await jobs_stub.CreateJob(_job_requests(name))
    assert job.job.model.version == 1
    record = await model(registry_stub, name)
    assert (record.latest_version, record.served_version) == (2, 1)
    assert record.serving_policy.WhichOneof("mode") == "latest"
    # Training never touches the model's description.
    assert record.description == "churn model"

    promoted = await registry_stub.PromoteModelVersion(rpb.PromoteModelVersionRequest(name=name, version=2))
    assert (promoted.version.promoted, promoted.served_version) == (True, 2)
    assert await unpinned_versions(inference_stub, tfs, oip, name) == (2, 2, 2)

    # A session that promotes at its end serves at once; one that does not, again does not.
    finished = await train_briefly(inference_stub, name, promote=True)
    assert finished.last_version == 3
    assert await unpinned_versions(inference_stub, tfs, oip, name) == (3, 3, 3)
    await train_briefly(inference_stub, name)
    assert await unpinned_versions(inference_stub, tfs, oip, name) == (3, 3, 3)
    assert (await model(registry_stub, name)).served_version == 3


def _job_requests(name: str) -> Any:
    async def requests() -> Any:
        spec = jobs_service_pb2.JobSpec(model=model_pb2.ModelRef(name=name))
        yield jobs_service_pb2.CreateJobRequest(spec=spec)
        yield jobs_service_pb2.CreateJobRequest(chunk=b"0,0,0,0,0,0,0,0\n")

    return requests()


async def test_label_policy_serves_the_label_in_every_protocol(
    registry_stub, inference_stub, tfs, oip, student_file: Path
) -> None:
    name = unique_name("label")
    label_policy = model_pb2.ServingPolicy(label="stable")
    await upload(registry_stub, name, student_file, labels=["stable"], serving_policy=label_policy)
    await upload(registry_stub, name, student_file)
    assert await unpinned_versions(inference_stub, tfs, oip, name) == (1, 1, 1)
    # The Open Inference Protocol's model_version takes a label, as TF Serving's version_label does.
    assert await oip_version(oip, name, "stable") == 1
    assert await tfs_version(tfs, name, label="stable") == 1
    with pytest.raises(InferenceServerException) as err:
        await oip_version(oip, name, "canary")
    assert err.value.status() == "StatusCode.NOT_FOUND"

    await registry_stub.SetLabel(rpb.SetLabelRequest(name=name, label="stable", version=2))
    assert await unpinned_versions(inference_stub, tfs, oip, name) == (2, 2, 2)
    assert await oip_version(oip, name, "stable") == 2

    # What the policy serves cannot be pulled from under it.
    delete_label = registry_stub.DeleteLabel(rpb.DeleteLabelRequest(name=name, label="stable"))
    assert await code_of(delete_label) == grpc.StatusCode.FAILED_PRECONDITION
    delete_version = registry_stub.DeleteModelVersion(rpb.DeleteModelVersionRequest(name=name, version=2, force=True))
    assert await code_of(delete_version) == grpc.StatusCode.FAILED_PRECONDITION
    # A policy must name something that exists.
    for bad in (model_pb2.ServingPolicy(label="nope"), model_pb2.ServingPolicy(version=99)):
        call = registry_stub.SetServingPolicy(rpb.SetServingPolicyRequest(name=name, policy=bad))
        assert await code_of(call) == grpc.StatusCode.FAILED_PRECONDITION
    # An upload to an existing model may not silently carry another policy.
    latest = model_pb2.ServingPolicy(latest=model_pb2.ServingPolicy.Latest())
    assert await code_of(upload(registry_stub, name, student_file, serving_policy=latest)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert (await model(registry_stub, name)).version_count == 2  # the refused upload stored nothing

    pinned = await registry_stub.SetServingPolicy(
        rpb.SetServingPolicyRequest(name=name, policy=model_pb2.ServingPolicy(version=1))
    )
    assert (pinned.previous_policy.label, pinned.served_version) == ("stable", 1)
    assert await unpinned_versions(inference_stub, tfs, oip, name) == (1, 1, 1)
    await registry_stub.SetServingPolicy(rpb.SetServingPolicyRequest(name=name))  # unset: latest
    assert await unpinned_versions(inference_stub, tfs, oip, name) == (2, 2, 2)


async def test_description_is_set_at_creation_and_by_its_rpc(registry_stub, student_file: Path) -> None:
    name = unique_name("desc")
    await upload(registry_stub, name, student_file, description="first")
    second = await upload(registry_stub, name, student_file, description="second upload")
    assert second.version.description == "second upload"  # the version keeps its own
    assert (await model(registry_stub, name)).description == "first"
    changed = await registry_stub.SetModelDescription(rpb.SetModelDescriptionRequest(name=name, description="new"))
    assert changed.model.description == "new"
    assert (await model(registry_stub, name)).description == "new"
    missing = registry_stub.SetModelDescription(rpb.SetModelDescriptionRequest(name="no-such-model"))
    assert await code_of(missing) == grpc.StatusCode.NOT_FOUND
