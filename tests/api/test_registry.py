"""ModelRegistryService end to end: a real server on each backend, real models, real uploads."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from tensortrigger.v1 import model_pb2, tensor_pb2
from tensortrigger.v1 import registry_service_pb2 as pb

from tests import models
from tests.api.helpers import upload, upload_requests, violations
from tests.serving import server_settings, unique_name
from tt_server.app import Application
from tt_server.errors import NotFound


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Build an artifact from tests.models by builder name once per session."""
    out = tmp_path_factory.mktemp("artifacts")
    built: dict[str, Path] = {}

    def get(builder: str) -> Path:
        if builder not in built:
            folder = out / builder
            folder.mkdir()
            built[builder] = getattr(models, builder)(folder)
        return built[builder]

    return get


async def _no_trace(app: Application, name: str) -> None:
    """Nothing of ``name`` is stored: no model row, no blob, no pending GC entry, no scratch files."""
    with pytest.raises(NotFound):
        await app.registry.get_model(name)
    assert await app.blobs.list_keys(f"models/{name}/") == []
    assert await app.metadata.due_blob_gc(2**62, 100) == []
    assert list(app.settings.scratch_dir.iterdir()) == []


SIG = tensor_pb2.Signature(
    inputs=[tensor_pb2.TensorSpec(name="features", dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[-1, 4])],
)


@pytest.mark.parametrize(
    ("builder", "fmt", "output"),
    [
        ("mlp_keras", model_pb2.MODEL_FORMAT_KERAS, "score"),
        ("mlp_h5", model_pb2.MODEL_FORMAT_H5, "score"),
        ("mlp_saved_model_tar_gz", model_pb2.MODEL_FORMAT_SAVED_MODEL_TAR_GZ, "output_0"),
        ("mlp_saved_model_zip", model_pb2.MODEL_FORMAT_SAVED_MODEL_ZIP, "output_0"),
    ],
)
@pytest.mark.parametrize("declare", [True, False], ids=["declared", "detected"])
async def test_upload_each_format(registry_stub, artifacts, builder, fmt, output, declare) -> None:
    path = artifacts(builder)
    name = unique_name()
    response = await upload(
        registry_stub,
        name,
        path,
        fmt if declare else model_pb2.MODEL_FORMAT_UNSPECIFIED,
        feature_names=["a", "b", "c", "d"],
        description="four features",
        metadata={"team": "ml"},
    )
    v = response.version
    assert response.model_created
    assert (v.model_name, v.version, v.format) == (name, 1, fmt)
    assert v.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert v.size_bytes == path.stat().st_size
    assert list(v.signature.inputs) == list(SIG.inputs)
    assert [o.name for o in v.signature.outputs] == [output]
    assert list(v.signature.outputs[0].shape) == [-1, 1]
    assert v.source == model_pb2.VERSION_SOURCE_UPLOAD
    assert list(v.feature_names) == ["a", "b", "c", "d"]
    assert dict(v.metadata) == {"team": "ml"}
    got = await registry_stub.GetModelVersion(pb.GetModelVersionRequest(model=model_pb2.ModelRef(name=name)))
    assert got.version == v


async def test_multi_io_signature(registry_stub, artifacts) -> None:
    v = (await upload(registry_stub, unique_name(), artifacts("two_io_keras"))).version
    assert [(s.name, s.dtype, list(s.shape)) for s in v.signature.inputs] == [
        ("a", tensor_pb2.DATA_TYPE_FLOAT32, [-1, 3]),
        ("b", tensor_pb2.DATA_TYPE_INT32, [-1, 2]),
    ]
    assert [s.name for s in v.signature.outputs] == ["probs", "value"]


async def test_versions_labels_download_delete(app, registry_stub, artifacts, tmp_path) -> None:
    name = unique_name()
    keras_path, h5_path = artifacts("mlp_keras"), artifacts("mlp_h5")
    v1 = (await upload(registry_stub, name, keras_path, labels=["stable"])).version
    second = await upload(registry_stub, name, h5_path, labels=["canary"])
    v2 = second.version
    assert not second.model_created
    assert (v1.version, v2.version) == (1, 2)
    assert list(v1.labels) == ["stable"]

    model = (await registry_stub.GetModel(pb.GetModelRequest(name=name))).model
    assert (model.latest_version, model.version_count, dict(model.labels)) == (
        2,
        2,
        {"stable": 1, "canary": 2},
    )
    listed = await registry_stub.ListModelVersions(pb.ListModelVersionsRequest(name=name))
    assert [v.version for v in listed.versions] == [2, 1]

    def ref(**kw: object) -> pb.GetModelVersionRequest:
        return pb.GetModelVersionRequest(model=model_pb2.ModelRef(name=name, **kw))  # type: ignore[arg-type]

    assert (await registry_stub.GetModelVersion(ref(label="stable"))).version.version == 1
    assert (await registry_stub.GetModelVersion(ref())).version.version == 2
    moved = await registry_stub.SetLabel(pb.SetLabelRequest(name=name, label="stable", version=2))
    assert moved.previous_version == 1
    assert (await registry_stub.GetModelVersion(ref(label="stable"))).version.version == 2

    # Download returns exactly the uploaded bytes.
    stream = registry_stub.DownloadModelVersion(
        pb.DownloadModelVersionRequest(model=model_pb2.ModelRef(name=name, version=1))
    )
    messages = [m async for m in stream]
    assert messages[0].version.version == 1
    assert b"".join(m.chunk for m in messages[1:]) == keras_path.read_bytes()

    # A labelled version is protected unless forced.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry_stub.DeleteModelVersion(pb.DeleteModelVersionRequest(name=name, version=2))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stable" in (err.value.details() or "")
    removed = await registry_stub.DeleteModelVersion(pb.DeleteModelVersionRequest(name=name, version=2, force=True))
    assert sorted(removed.removed_labels) == ["canary", "stable"]
    for request in (ref(version=2), ref(label="stable")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry_stub.GetModelVersion(request)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # A label cannot point at a deleted version; numbers are never reused.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry_stub.SetLabel(pb.SetLabelRequest(name=name, label="stable", version=2))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    v3 = (await upload(registry_stub, name, keras_path)).version
    assert v3.version == 3
    assert len(await app.blobs.list_keys(f"models/{name}/")) == 2

    deleted = await registry_stub.DeleteModel(pb.DeleteModelRequest(name=name))
    assert deleted.deleted_versions == 2
    await _no_trace(app, name)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await registry_stub.DeleteLabel(pb.DeleteLabelRequest(name=name, label="stable"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_concurrent_uploads_of_a_new_name(app, registry_stub, artifacts) -> None:
    name = unique_name()
    responses = await asyncio.gather(*(upload(registry_stub, name, artifacts("mlp_keras")) for _ in range(5)))
    assert sorted(r.version.version for r in responses) == [1, 2, 3, 4, 5]
    assert sum(r.model_created for r in responses) == 1
    assert len(await app.blobs.list_keys(f"models/{name}/")) == 5


async def test_list_models_pages_and_tampered_tokens(registry_stub, artifacts) -> None:
    prefix = unique_name("page")
    for i in range(3):
        await upload(registry_stub, f"{prefix}-{i}", artifacts("mlp_keras"))
    seen: list[str] = []
    token = ""
    while True:
        page = await registry_stub.ListModels(pb.ListModelsRequest(page_size=2, page_token=token))
        assert len(page.models) <= 2
        seen += [m.name for m in page.models]
        token = page.next_page_token
        if not token:
            break
    assert [n for n in seen if n.startswith(prefix)] == [f"{prefix}-{i}" for i in range(3)]
    assert seen == sorted(seen)

    first = await registry_stub.ListModels(pb.ListModelsRequest(page_size=1))
    good = first.next_page_token
    tampered = [good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1], "garbage", good + "x", "%%%"]
    for token in tampered:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry_stub.ListModels(pb.ListModelsRequest(page_size=1, page_token=token))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token" in violations(err.value)


REJECTIONS = [
    # builder, expected code, a word the message must contain
    ("lambda_keras", grpc.StatusCode.FAILED_PRECONDITION, "Lambda"),
    ("lambda_h5", grpc.StatusCode.FAILED_PRECONDITION, "Lambda"),
    ("custom_layer_keras", grpc.StatusCode.FAILED_PRECONDITION, "ScaleLayer"),
    ("weights_only_h5", grpc.StatusCode.INVALID_ARGUMENT, "config"),
    ("truncated_keras", grpc.StatusCode.INVALID_ARGUMENT, ""),
    ("unbuilt_sequential_keras", grpc.StatusCode.FAILED_PRECONDITION, "input"),
    ("zip_slip_zip", grpc.StatusCode.FAILED_PRECONDITION, ".."),
    ("zip_slip_tar_gz", grpc.StatusCode.FAILED_PRECONDITION, ".."),
    ("absolute_path_tar_gz", grpc.StatusCode.FAILED_PRECONDITION, "absolute"),
    ("symlink_tar_gz", grpc.StatusCode.FAILED_PRECONDITION, "link"),
    ("symlink_zip", grpc.StatusCode.FAILED_PRECONDITION, "link"),
    ("device_tar_gz", grpc.StatusCode.FAILED_PRECONDITION, ""),
    ("zip_bomb_zip", grpc.StatusCode.RESOURCE_EXHAUSTED, "ratio"),
]


@pytest.mark.parametrize(("builder", "code", "word"), REJECTIONS, ids=[r[0] for r in REJECTIONS])
async def test_unsafe_or_broken_artifacts_are_refused_and_nothing_is_stored(
    app, registry_stub, artifacts, builder, code, word
) -> None:
    name = unique_name()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(registry_stub, name, artifacts(builder))
    assert err.value.code() == code, err.value.details()
    details = err.value.details() or ""
    assert word.lower() in details.lower()
    assert "Traceback" not in details
    await _no_trace(app, name)


@pytest.mark.parametrize(
    "builder",
    ["read_file_saved_model_dir", "write_file_saved_model_dir", "nested_read_file_saved_model_dir"],
)
async def test_saved_models_with_file_ops_are_refused(app, registry_stub, tmp_path, builder) -> None:
    path = models.as_tar_gz(getattr(models, builder), tmp_path)
    name = unique_name()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(registry_stub, name, path)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "File" in (err.value.details() or "")
    await _no_trace(app, name)


async def test_wrong_format_flag(app, registry_stub, artifacts) -> None:
    name = unique_name()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await upload(registry_stub, name, artifacts("mlp_keras"), model_pb2.MODEL_FORMAT_H5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "header.format" in violations(err.value)
    await _no_trace(app, name)


async def test_bad_headers(app, registry_stub, artifacts) -> None:
    data = artifacts("mlp_keras").read_bytes()
    cases = {
        "header.model_name": pb.UploadHeader(model_name="bad name!"),
        "header.labels[0]": pb.UploadHeader(model_name="ok", labels=["Not A Label"]),
        "header.expected_sha256": pb.UploadHeader(model_name="ok", expected_sha256="0" * 64),
        "header.expected_size_bytes": pb.UploadHeader(model_name="ok", expected_size_bytes=len(data) + 1),
        "header.feature_names": pb.UploadHeader(model_name="ok", feature_names=["only", "three", "names"]),
    }
    for field, header in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry_stub.UploadModelVersion(upload_requests(header, data))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in violations(err.value), (field, violations(err.value))

    async def chunk_first():
        yield pb.UploadModelVersionRequest(chunk=b"abc")

    async def header_twice():
        yield pb.UploadModelVersionRequest(header=pb.UploadHeader(model_name="ok"))
        yield pb.UploadModelVersionRequest(header=pb.UploadHeader(model_name="ok"))

    async def empty():
        return
        yield  # pragma: no cover

    for stream in (chunk_first(), header_twice(), empty()):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry_stub.UploadModelVersion(stream)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "header" in violations(err.value)
    await _no_trace(app, "ok")


async def test_cancelled_upload_leaves_nothing(app, registry_stub, artifacts) -> None:
    name = unique_name()
    data = artifacts("mlp_keras").read_bytes()
    sent_half = asyncio.Event()

    async def half_then_stall():
        yield pb.UploadModelVersionRequest(header=pb.UploadHeader(model_name=name))
        yield pb.UploadModelVersionRequest(chunk=data[: len(data) // 2])
        sent_half.set()
        await asyncio.sleep(3600)

    call = registry_stub.UploadModelVersion(half_then_stall())
    await sent_half.wait()
    await asyncio.sleep(0.3)  # let the server spool the first half
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for _ in range(50):  # the server notices the cancellation asynchronously
        if not list(app.settings.scratch_dir.iterdir()):
            break
        await asyncio.sleep(0.1)
    await _no_trace(app, name)


async def test_unknown_things_are_not_found(registry_stub) -> None:
    name = unique_name()
    calls = [
        registry_stub.GetModel(pb.GetModelRequest(name=name)),
        registry_stub.GetModelVersion(pb.GetModelVersionRequest(model=model_pb2.ModelRef(name=name))),
        registry_stub.GetModelVersion(pb.GetModelVersionRequest(model=model_pb2.ModelRef(name=name, version=7))),
        registry_stub.ListModelVersions(pb.ListModelVersionsRequest(name=name)),
        registry_stub.DeleteModel(pb.DeleteModelRequest(name=name)),
        registry_stub.DeleteModelVersion(pb.DeleteModelVersionRequest(name=name, version=1)),
        registry_stub.SetLabel(pb.SetLabelRequest(name=name, label="stable", version=1)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, err.value.details()


async def test_upload_size_cap(tmp_path, artifacts) -> None:
    path = artifacts("mlp_keras")
    application = Application(server_settings(tmp_path, max_upload_bytes=path.stat().st_size - 1))
    await application.start()
    try:
        async with grpc.aio.insecure_channel(application.address) as channel:
            from tensortrigger.v1 import registry_service_pb2_grpc

            stub = registry_service_pb2_grpc.ModelRegistryServiceStub(channel)
            for declared in (True, False):
                extra = {"expected_size_bytes": path.stat().st_size} if declared else {}
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await upload(stub, "big", path, **extra)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await _no_trace(application, "big")
    finally:
        await application.stop(grace=1.0)
