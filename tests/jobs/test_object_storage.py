"""Job inputs and results in the caller's object storage (``s3://`` URIs), on moto's S3 server, with the
production stack (PostgreSQL, RabbitMQ, a worker consuming over AMQP) and the operator's allowed prefixes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensortrigger.v1 import jobs_service_pb2 as pb
from tensortrigger.v1 import jobs_service_pb2_grpc, registry_service_pb2_grpc

from tests.jobs.conftest import FAST_JOB_SETTINGS, InProcessWorker, production_overrides
from tests.jobs.helpers import code_of, csv_bytes, features, parse_results_csv, predict, results, spec, upload_model
from tests.jobs.helpers import wait_for as wait_for_job
from tests.serving import server_settings, unique_name
from tt_server.app import Application
from tt_server.errors import InvalidArgument, PermissionDenied
from tt_server.jobs.objects import check_uri
from tt_server.storage.s3 import S3BlobStore


class Lake:
    """The caller's bucket: ``allowed/`` is readable and writable by jobs, ``private/`` is not."""

    def __init__(self, bucket: str, store: S3BlobStore) -> None:
        self.bucket = bucket
        self.store = store

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    async def put(self, key: str, data: bytes) -> str:
        async def chunks() -> AsyncIterator[bytes]:
            yield data

        await self.store.put_stream(key, chunks())
        return self.uri(key)

    async def get(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.store.get_stream(key)])


@pytest.fixture(scope="module")
async def lake(request: pytest.FixtureRequest) -> AsyncIterator[Lake]:
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    store = S3BlobStore(bucket, request.getfixturevalue("s3_endpoint"), "us-east-1")
    await store.open()  # creates the bucket
    yield Lake(bucket, store)
    await store.close()


@pytest.fixture(scope="module")
async def lake_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, lake: Lake
) -> AsyncIterator[Application]:
    overrides = await production_overrides(
        request, job_s3_allowed_prefixes=[lake.uri("allowed"), "s3://other-bucket-never-created/"]
    )
    app = Application(server_settings(tmp_path_factory.mktemp("lake"), **FAST_JOB_SETTINGS, **overrides))
    await app.start()
    worker = InProcessWorker(app.settings)
    await worker.start()
    yield app
    await worker.stop()
    await app.stop(grace=1.0)


@pytest.fixture(scope="module")
async def lake_jobs(lake_server: Application) -> AsyncIterator[jobs_service_pb2_grpc.JobsServiceStub]:
    async with grpc.aio.insecure_channel(lake_server.address) as channel:
        yield jobs_service_pb2_grpc.JobsServiceStub(channel)


@pytest.fixture(scope="module")
async def lake_model(lake_server: Application, job_artifacts: dict[str, Path]) -> str:
    async with grpc.aio.insecure_channel(lake_server.address) as channel:
        name = unique_name("mlp")
        await upload_model(registry_service_pb2_grpc.ModelRegistryServiceStub(channel), name, job_artifacts["mlp"])
        return name


async def create(stub: jobs_service_pb2_grpc.JobsServiceStub, job_spec: pb.JobSpec, data: bytes = b"") -> pb.Job:
    async def requests() -> AsyncIterator[pb.CreateJobRequest]:
        yield pb.CreateJobRequest(spec=job_spec)
        if data:
            yield pb.CreateJobRequest(chunk=data)

    return (await stub.CreateJob(requests())).job


async def test_input_and_results_in_the_callers_bucket(
    lake_jobs, lake_model, lake: Lake, lake_server: Application, job_artifacts
) -> None:
    x = features(3000, seed=40)
    source = await lake.put("allowed/day1/in.csv", csv_bytes(x))
    job = await create(lake_jobs, spec(lake_model, input_uri=source, output_uri=lake.uri("allowed/scores")))
    assert (job.spec.input_uri, job.spec.output_uri) == (source, lake.uri("allowed/scores/"))
    assert job.input_size_bytes == len(csv_bytes(x))
    done = await wait_for_job(lake_jobs, job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error
    assert done.result_uri == lake.uri(f"allowed/scores/{job.id}/attempt-1/results.csv")
    written = await lake.get(f"allowed/scores/{job.id}/attempt-1/results.csv")
    assert written == await results(lake_jobs, job.id)  # GetJobResults reads it from the lake too
    assert done.result_size_bytes == len(written)
    assert await lake.store.list_keys(f"allowed/scores/{job.id}/") == [f"allowed/scores/{job.id}/attempt-1/results.csv"]
    header, rows = parse_results_csv(written)
    assert header == ["id", "note", "score"]
    assert [r[0] for r in rows] == [f"r{i}" for i in range(3000)]
    got = np.array([float(r[2]) for r in rows], dtype=np.float32)
    np.testing.assert_allclose(got, predict(job_artifacts["mlp"], x)[:, 0], rtol=1e-6, atol=1e-7)
    # Nothing of the input was copied into the server's own blob store.
    assert await lake_server.blobs.list_keys(f"jobs/{job.id}/") == []


async def test_a_bare_key_is_under_the_first_allowed_prefix(lake_jobs, lake_model, lake: Lake) -> None:
    await lake.put("allowed/relative.csv", csv_bytes(features(50, seed=41)))
    job = await create(lake_jobs, spec(lake_model, input_uri="relative.csv"))
    assert job.spec.input_uri == lake.uri("allowed/relative.csv")
    done = await wait_for_job(lake_jobs, job.id)
    assert (done.state, done.rows_done, done.result_uri) == (pb.JOB_STATE_SUCCEEDED, 50, "")


@pytest.mark.parametrize(
    ("field", "where"),
    [
        ("input_uri", "private/secret.csv"),  # same bucket, outside the prefix
        ("input_uri", "allowed-not/x.csv"),  # a sibling that merely starts with the prefix's text
        ("input_uri", "s3://another-bucket/allowed/x.csv"),
        ("output_uri", "private/out/"),
    ],
)
async def test_outside_the_allowed_prefixes_is_permission_denied(
    lake_jobs, lake_model, lake: Lake, field: str, where: str
) -> None:
    await lake.put("private/secret.csv", csv_bytes(features(5)))  # exists: denied all the same
    await lake.put("allowed/ok.csv", csv_bytes(features(5)))
    uris = {"input_uri": lake.uri("allowed/ok.csv")}
    uris[field] = where if where.startswith("s3://") else lake.uri(where)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(lake_jobs, spec(lake_model, **uris))
    assert code_of(caught.value) == grpc.StatusCode.PERMISSION_DENIED
    assert f"spec.{field}" in (caught.value.details() or "")


async def test_bad_object_uris(lake_jobs, lake_model, lake: Lake) -> None:
    await lake.put("allowed/empty.csv", b"")
    cases = [
        ({"input_uri": lake.uri("allowed/missing.csv")}, b"", grpc.StatusCode.NOT_FOUND),
        ({"input_uri": lake.uri("allowed/empty.csv")}, b"", grpc.StatusCode.INVALID_ARGUMENT),
        ({"input_uri": lake.uri("allowed/../private/secret.csv")}, b"", grpc.StatusCode.INVALID_ARGUMENT),
        ({"input_uri": lake.uri("allowed/ok.csv")}, b"a,b\n", grpc.StatusCode.INVALID_ARGUMENT),  # and chunks
        # The allowed bucket that does not exist: the object is not found, no internals.
        ({"input_uri": "s3://other-bucket-never-created/x.csv"}, b"", grpc.StatusCode.NOT_FOUND),
    ]
    await lake.put("allowed/ok.csv", csv_bytes(features(5)))
    for uris, data, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(lake_jobs, spec(lake_model, **uris), data)
        assert code_of(caught.value) == code, (uris, caught.value.details())


def test_check_uri_rules() -> None:
    allowed = ["s3://lake/scoring", "s3://archive/"]
    assert check_uri("s3://lake/scoring/a/b.csv", allowed, "f") == "s3://lake/scoring/a/b.csv"
    assert check_uri("a/b.csv", allowed, "f") == "s3://lake/scoring/a/b.csv"
    assert check_uri("s3://archive/x", allowed, "f") == "s3://archive/x"
    assert check_uri("s3://lake/scoring/out", allowed, "f", folder=True) == "s3://lake/scoring/out/"
    for denied in ("s3://lake/scoring-private/x", "s3://lake/x", "s3://lakehouse/scoring/x", "s3://lake/scoring"):
        with pytest.raises(PermissionDenied):
            check_uri(denied, allowed, "f")
    for bad in ("s3://lake/scoring//x", "s3://lake/scoring/./x", "s3:///x", "s3://lake/scoring/../x"):
        with pytest.raises(InvalidArgument):
            check_uri(bad, allowed, "f")
    with pytest.raises(PermissionDenied):
        check_uri("s3://lake/scoring/x", [], "f")  # nothing allowed: nothing readable


async def test_client_and_cli_submit_an_s3_input(lake_jobs, lake_model, lake: Lake, lake_server: Application) -> None:
    import tensortrigger as tt

    from tests.clients.helpers import tt_cli

    source = await lake.put("allowed/client.csv", csv_bytes(features(40, seed=42)))
    async with tt.AsyncClient(lake_server.address) as client:
        job = await client.submit_job(
            lake_model, source, passthrough_columns=["id", "note"], output_uri=lake.uri("allowed/client-out/")
        )
        with pytest.raises(tt.PermissionDeniedError):
            await client.submit_job(lake_model, lake.uri("private/secret.csv"))
    done = await wait_for_job(lake_jobs, job.id)
    assert done.result_uri.startswith(lake.uri(f"allowed/client-out/{job.id}/")), done
    run = await tt_cli(
        "jobs",
        "submit",
        lake_model,
        source,
        "--passthrough",
        "id",
        "--passthrough",
        "note",
        "--watch",
        address=lake_server.address,
    )
    assert run.code == 0, run.err
    assert "SUCCEEDED (40 rows" in run.out
    denied = await tt_cli("jobs", "submit", lake_model, lake.uri("private/x.csv"), address=lake_server.address)
    assert denied.code != 0 and "outside the object storage" in denied.err, denied


async def test_parts_of_a_multipart_upload_travel_concurrently_and_in_order(lake: Lake) -> None:
    import hashlib

    store = S3BlobStore(lake.bucket, lake.store._endpoint_url, "us-east-1", part_size=5 << 20, upload_concurrency=3)
    await store.open()
    try:
        data = np.random.default_rng(7).integers(0, 256, (21 << 20) + 11, dtype=np.uint8).tobytes()

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 1 << 20):
                yield data[i : i + (1 << 20)]

        info = await store.put_stream("allowed/multipart.bin", chunks())  # 5 parts, 3 at a time
        assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert await lake.get("allowed/multipart.bin") == data
    finally:
        await store.close()
