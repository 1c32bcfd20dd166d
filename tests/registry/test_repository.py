"""The model repository (TT_MODEL_REPOSITORY) on real servers, on both backends: a TF Serving layout folder with a
SavedModel version folder and a .keras model is served at start-up (loaded before SERVING), a new version folder
is served within one poll, an unchanged restart makes no new version, a bad folder is refused without stopping
anything, and two replicas on one PostgreSQL import once."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import inference_service_pb2_grpc, model_pb2, registry_service_pb2_grpc
from tensortrigger.v1 import registry_service_pb2 as rpb

from tests import models
from tests.serving import BACKENDS, _fresh_database, server_settings
from tests.training.helpers import tensor
from tt_server.app import Application
from tt_server.storage.s3 import S3BlobStore

X = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("repository-artifacts")
    _mkdirs(out / "one", out / "two")
    return {
        "saved_model_1": models.mlp_export_dir(out / "one"),
        "saved_model_2": models.mlp_export_dir(out / "two"),
        "keras": models.mlp_keras(out),
        "frozen": models.mlp_frozen_graph(out),
    }


def _mkdirs(*paths: Path) -> None:
    for path in paths:
        path.mkdir(parents=True)


@pytest.fixture
def repository(tmp_path: Path, artifacts: dict[str, Path]) -> Path:
    root = tmp_path / "models"
    _mkdirs(root / "churn" / "3", root / "broken" / "1", root / "mlp")
    shutil.copytree(artifacts["saved_model_1"], root / "mlp" / "1")  # TF Serving's layout
    shutil.copy(artifacts["keras"], root / "churn" / "3" / "model.keras")
    config = {"description": "churn", "labels": {"stable": 3}, "serving_policy": "label:stable"}
    (root / "churn" / "tensortrigger.json").write_text(json.dumps(config))
    (root / "broken" / "1" / "model.keras").write_bytes(b"not a model")
    # A TFaaS model folder as it is: the graph, params.json naming its nodes, and labels.txt.
    _mkdirs(root / "tfaas")
    shutil.copy(artifacts["frozen"], root / "tfaas" / "model.pb")
    params = {"model": "model.pb", "labels": "labels.txt", "inputNode": "dense_1_input", "outputNode": "output_node0"}
    (root / "tfaas" / "params.json").write_text(json.dumps(params))
    (root / "tfaas" / "labels.txt").write_text("background\nsignal\n")
    return root


@pytest.fixture(params=BACKENDS)
async def settings_for(request: pytest.FixtureRequest, tmp_path: Path, repository: Path):
    """Server settings for a replica over this test's repository (same database and bucket for every call)."""
    shared: dict[str, object] = {}
    if request.param == "production":
        shared = {
            "database_url": await _fresh_database(request.getfixturevalue("postgres_dsn")),
            "s3_bucket": f"tt-{uuid.uuid4().hex[:12]}",
            "s3_endpoint_url": request.getfixturevalue("s3_endpoint"),
        }

    def make(data: str, **overrides: object):
        values = {"model_repository": str(repository), "model_repository_poll_seconds": 0.3, **shared, **overrides}
        return server_settings(tmp_path / data, **values)

    return make


async def started(settings) -> Application:
    app = Application(settings)
    await app.start()
    return app


@pytest.fixture
async def stubs() -> AsyncIterator[dict]:
    channels: list[grpc.aio.Channel] = []

    def make(app: Application):
        channel = grpc.aio.insecure_channel(app.address)
        channels.append(channel)
        return (
            registry_service_pb2_grpc.ModelRegistryServiceStub(channel),
            inference_service_pb2_grpc.InferenceServiceStub(channel),
        )

    yield {"make": make}
    for channel in channels:
        await channel.close()


async def served(inference, name: str) -> int:
    request = pb.PredictRequest(model=model_pb2.ModelRef(name=name), inputs={"features": tensor(X)})
    return int((await inference.Predict(request)).model_version)


async def until_served(inference, name: str, version: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while await served(inference, name) != version:
        assert time.monotonic() < deadline, f"{name} does not serve version {version} after {within} s"
        await asyncio.sleep(0.1)


async def test_repository_is_served_at_start_and_followed(settings_for, stubs, repository: Path, artifacts) -> None:
    app = await started(settings_for("one"))
    try:
        registry, inference = stubs["make"](app)
        # Loaded and warm before the server reported SERVING.
        assert {name for name, _ in app.models.loaded_versions} == {"mlp", "churn", "tfaas"}
        assert await served(inference, "mlp") == 1 and await served(inference, "churn") == 1
        mlp = (await registry.GetModelVersion(rpb.GetModelVersionRequest(model=model_pb2.ModelRef(name="mlp")))).version
        assert mlp.source == model_pb2.VERSION_SOURCE_REPOSITORY and mlp.metadata["repository.version"] == "1"
        assert mlp.format == model_pb2.MODEL_FORMAT_SAVED_MODEL_TAR_GZ
        churn = (await registry.GetModel(rpb.GetModelRequest(name="churn"))).model
        assert (churn.description, dict(churn.labels), churn.serving_policy.label) == ("churn", {"stable": 1}, "stable")
        # The bad folder is reported and skipped.
        assert list(app.repository.problems) == [str(repository / "broken" / "1")]  # type: ignore[union-attr]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry.GetModel(rpb.GetModelRequest(name="broken"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await registry.ListModels(rpb.ListModelsRequest())
        assert [m.name for m in listed.models] == ["churn", "mlp", "tfaas"]
        tfaas = await registry.GetModelVersion(rpb.GetModelVersionRequest(model=model_pb2.ModelRef(name="tfaas")))
        assert tfaas.version.format == model_pb2.MODEL_FORMAT_FROZEN_GRAPH
        assert list(tfaas.version.class_names) == ["background", "signal"]
        assert list(tfaas.version.frozen_graph.input_nodes) == ["dense_1_input"]
        (problem,) = listed.repository_problems
        assert problem.path == str(repository / "broken" / "1") and "unrecognised model file" in problem.reason

        # A new version folder (written elsewhere, then moved in, as a deployment would) is served within a poll.
        staging = repository.parent / "staging-2"
        shutil.copytree(artifacts["saved_model_2"], staging)
        staging.rename(repository / "mlp" / "2")
        await until_served(inference, "mlp", 2)

        # A removed version folder retires its version: unpinned callers go back to 1, pinned ones still reach 2.
        (repository / "mlp" / "2").rename(staging)
        await until_served(inference, "mlp", 1)
        ref = model_pb2.ModelRef(name="mlp", version=2)
        assert (await registry.GetModelVersion(rpb.GetModelVersionRequest(model=ref))).version.retired
        request = pb.PredictRequest(model=ref, inputs={"features": tensor(X)})
        assert (await inference.Predict(request)).model_version == 2
        staging.rename(repository / "mlp" / "2")  # back with the same files: un-retired, no new version
        await until_served(inference, "mlp", 2)
        assert (await registry.GetModel(rpb.GetModelRequest(name="mlp"))).model.version_count == 2
    finally:
        await app.stop(grace=1.0)

    # An unchanged restart (same database and blobs) makes no new version.
    again = await started(settings_for("one"))
    try:
        registry, _ = stubs["make"](again)
        for name, count in (("mlp", 2), ("churn", 1)):
            assert (await registry.GetModel(rpb.GetModelRequest(name=name))).model.version_count == count
    finally:
        await again.stop(grace=1.0)


@pytest.mark.parametrize("settings_for", ["production"], indirect=True)  # replicas share PostgreSQL
async def test_two_replicas_import_once(settings_for, stubs) -> None:
    apps = await asyncio.gather(started(settings_for("a")), started(settings_for("b")))
    try:
        registry, _ = stubs["make"](apps[0])
        for name in ("mlp", "churn"):
            assert (await registry.GetModel(rpb.GetModelRequest(name=name))).model.version_count == 1
        _, other = stubs["make"](apps[1])
        assert await served(other, "churn") == 1
    finally:
        await asyncio.gather(*(app.stop(grace=1.0) for app in apps))


@pytest.mark.parametrize("settings_for", ["production"], indirect=True)  # PostgreSQL + S3, the repository in S3
async def test_an_s3_repository_is_mirrored_and_served(settings_for, stubs, repository: Path, s3_endpoint: str) -> None:
    bucket = f"repo-{uuid.uuid4().hex[:10]}"
    store = S3BlobStore(bucket=bucket, endpoint_url=s3_endpoint, region="us-east-1", prefix="models")
    await store.open()
    try:
        for key, path in _files(repository):
            await store.put_file(key, path)
        app = await started(settings_for("s3", model_repository=f"s3://{bucket}/models"))
        try:
            registry, inference = stubs["make"](app)
            assert await served(inference, "mlp") == 1 and await served(inference, "churn") == 1
            listed = await registry.ListModels(rpb.ListModelsRequest())
            assert [p.path for p in listed.repository_problems] == [f"s3://{bucket}/models/broken/1"]
            # A new version uploaded to the bucket is served within a poll.
            for key, path in _files(repository / "mlp" / "1"):
                await store.put_file(f"mlp/2/{key}", path)
            deadline = time.monotonic() + 10
            while await served(inference, "mlp") != 2:
                assert time.monotonic() < deadline, "version 2 not served after 10 s"
                await asyncio.sleep(0.1)
        finally:
            await app.stop(grace=1.0)
    finally:
        await store.close()


def _files(root: Path) -> list[tuple[str, Path]]:
    return [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file()]
