"""Tensor Trigger's registry and jobs as JSON under ``/api/v1``: explicit routes over the same domain calls as
``tensortrigger.v1``'s servicers, answering the same messages in proto3 JSON (what grpcurl prints).

Bodies that can be large are streamed both ways and never held whole: an upload's body is the artifact (its header
fields are query parameters), a job's body is its CSV input (its spec is query parameters), and downloads of
artifacts and results are written as the blob store yields them.

    GET    /api/v1/models                                   ListModels (?page_size, page_token)
    GET    /api/v1/models/{name}                            GetModel
    DELETE /api/v1/models/{name}                            DeleteModel
    GET    /api/v1/models/{name}/versions                   ListModelVersions
    POST   /api/v1/models/{name}/versions                   UploadModelVersion (body: the artifact)
    GET    /api/v1/models/{name}/versions/{version}         GetModelVersion
    DELETE /api/v1/models/{name}/versions/{version}         DeleteModelVersion (?force=true)
    GET    /api/v1/models/{name}/versions/{version}/artifact DownloadModelVersion (the bytes uploaded)
    GET    /api/v1/models/{name}/labels/{label}             GetModelVersion by label
    PUT    /api/v1/models/{name}/labels/{label}             SetLabel (body {"version": N})
    DELETE /api/v1/models/{name}/labels/{label}             DeleteLabel
    POST   /api/v1/jobs                                     CreateJob (?model=..., body: the CSV)
    GET    /api/v1/jobs                                     ListJobs (?model, state, page_size, page_token)
    GET    /api/v1/jobs/{id}                                GetJob
    POST   /api/v1/jobs/{id}:cancel                         CancelJob
    GET    /api/v1/jobs/{id}/results                        GetJobResults (?offset; streamed)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from tensortrigger.v1 import jobs_service_pb2, model_pb2, registry_service_pb2

from tt_server.api import convert
from tt_server.api.jobs import STATE_FROM_PB, job_spec, job_to_pb
from tt_server.api.middleware import REQUEST_ID_KEY
from tt_server.compat.convert import MAX_VERSION
from tt_server.errors import InvalidArgument, request_fields
from tt_server.jobs.service import JobsService
from tt_server.logs import request_id
from tt_server.registry.service import Registry
from tt_server.rest.core import Route, body_chunks, json_response, read_json, whole_number
from tt_server.runtime.manager import parse_model_ref
from tt_server.types import ModelRef, OutputFormat

log = logging.getLogger(__name__)

INT64_MAX, INT32_MAX = 2**63 - 1, 2**31 - 1  # the gRPC fields' ranges (offsets, page sizes; column indices)

_REGISTRY = "/tensortrigger.v1.ModelRegistryService/"
_JOBS = "/tensortrigger.v1.JobsService/"
_UPLOAD_QUERY = (
    "format", "description", "label", "feature_name", "class_name", "input_node", "output_node", "image_scaling",
    "expected_sha256",
)  # fmt: skip
_JOB_QUERY = (
    "model", "has_header", "delimiter", "feature_column", "feature_column_index", "passthrough_column",
    "output_format", "skip_bad_rows",
)  # fmt: skip
# The domain's argument paths -> the route's own names ({name} in the path, query parameters, the body), so a
# violation names what the HTTP caller sent.
UPLOAD_FIELDS = {
    "spec.model_name": "name",
    "spec.format": "format",
    "spec.description": "description",
    "spec.metadata": "description",  # the only metadata an HTTP upload carries
    "spec.labels": "label",
    "spec.feature_names": "feature_name",
    "spec.class_names": "class_name",
    "spec.frozen_graph": "input_node",
    "spec.frozen_graph.inputs": "input_node",
    "spec.frozen_graph.outputs": "output_node",
    "spec.image_scaling": "image_scaling",
    "spec.expected_sha256": "expected_sha256",
    "spec.expected_size": "body",  # from Content-Length
    "artifact": "body",
}
REF_FIELDS = {"ref.name": "name", "ref.version": "version", "ref.label": "label"}  # the path's segments
JOB_FIELDS = {
    "ref": "model",
    "ref.name": "model",  # one query parameter holds the whole reference (name, name:3, name@label)
    "spec.model": "model",
    "spec.model.name": "model",
    "spec.model.version": "model",
    "spec.model.label": "model",
    "spec.csv.has_header": "has_header",
    "spec.csv.delimiter": "delimiter",
    "spec.csv.feature_columns": "feature_column",
    "spec.csv.feature_column_indices": "feature_column_index",
    "spec.csv.passthrough_columns": "passthrough_column",
    "spec.output_format": "output_format",
    "spec.skip_bad_rows": "skip_bad_rows",
    "input": "body",
}


def _json(message: Message) -> web.Response:
    return json_response(json_format.MessageToDict(message))


def _int(request: web.Request, key: str, default: int = 0) -> int:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    return whole_number(raw, key, INT64_MAX)


def _bool(request: web.Request, key: str) -> bool:
    raw = request.query.get(key, "false").lower()
    if raw not in ("true", "false", "1", "0", ""):
        raise InvalidArgument.field(key, f"{raw[:40]!r} is not true or false")
    return raw in ("true", "1")


def _enum(enum: Any, prefix: str, request: web.Request, key: str) -> int:
    raw = request.query.get(key)
    if not raw:
        return 0
    try:
        return int(enum.Value(f"{prefix}{raw.upper()}"))
    except ValueError:
        choices = [
            n.removeprefix(prefix).lower() for n in enum.DESCRIPTOR.values_by_name if not n.endswith("UNSPECIFIED")
        ]
        raise InvalidArgument.field(key, f"{raw[:40]!r} is not one of {', '.join(choices)}") from None


def _version_ref(request: web.Request) -> ModelRef:
    name = request.match_info["name"]
    if "label" in request.match_info:
        return ModelRef(name, label=request.match_info["label"])
    raw, what = request.match_info["version"], "a version number (1, 2, ...)"
    version = whole_number(raw, "version", MAX_VERSION, what)
    if version == 0:
        raise InvalidArgument.field("version", f"{raw[:40]!r} is not {what}")
    return ModelRef(name, version=version)


class NativeRoutes:
    def __init__(self, registry: Registry, jobs: JobsService) -> None:
        self._registry = registry
        self._jobs = jobs

    def routes(self) -> list[Route]:
        r, j = "Registry", "Jobs"
        m, v = "/api/v1/models", "/api/v1/models/{name}/versions/{version}"
        lbl = "/api/v1/models/{name}/labels/{label}"
        page = ("page_size", "page_token")
        return [
            Route("GET", m, self.list_models, _REGISTRY + "ListModels", r, "List models.", query=page),
            Route("GET", m + "/{name}", self.get_model, _REGISTRY + "GetModel", r, "A model and its labels."),
            Route("DELETE", m + "/{name}", self.delete_model, _REGISTRY + "DeleteModel", r, "Delete a model."),
            Route(
                "GET", m + "/{name}/versions", self.list_versions, _REGISTRY + "ListModelVersions", r, "Versions.",
                query=page,
            ),
            Route(
                "POST", m + "/{name}/versions", self.upload, _REGISTRY + "UploadModelVersion", r,
                "Upload a version: the body is the artifact, streamed; header fields are query parameters.",
                body="application/octet-stream", query=_UPLOAD_QUERY,
            ),
            Route("GET", v, self.get_version, _REGISTRY + "GetModelVersion", r, "One version."),
            Route(
                "DELETE", v, self.delete_version, _REGISTRY + "DeleteModelVersion", r, "Delete a version.",
                query=("force",),
            ),
            Route(
                "GET", v + "/artifact", self.download, _REGISTRY + "DownloadModelVersion", r,
                "The artifact's bytes as uploaded, streamed.", response="application/octet-stream",
            ),
            Route("GET", lbl, self.get_version, _REGISTRY + "GetModelVersion", r, "The version a label points at."),
            Route("PUT", lbl, self.set_label, _REGISTRY + "SetLabel", r, 'Point a label: {"version": N}.',
                  body="application/json",
                  schema={"type": "object", "required": ["version"], "properties": {"version": {"type": "integer"}}}),
            Route("DELETE", lbl, self.delete_label, _REGISTRY + "DeleteLabel", r, "Delete a label."),
            Route(
                "POST", "/api/v1/jobs", self.create_job, _JOBS + "CreateJob", j,
                "Create a batch job: the body is the CSV input, streamed; the spec is query parameters.",
                body="text/csv", query=_JOB_QUERY,
            ),
            Route(
                "GET", "/api/v1/jobs", self.list_jobs, _JOBS + "ListJobs", j, "List jobs.",
                query=("model", "state", *page),
            ),
            Route("GET", "/api/v1/jobs/{id}", self.get_job, _JOBS + "GetJob", j, "A job and its progress."),
            Route("POST", "/api/v1/jobs/{id}:cancel", self.cancel_job, _JOBS + "CancelJob", j, "Cancel a job."),
            Route(
                "GET", "/api/v1/jobs/{id}/results", self.results, _JOBS + "GetJobResults", j,
                "A finished job's results, streamed (CSV or JSON lines).", query=("offset",), response="text/csv",
            ),
        ]  # fmt: skip

    # --- registry ------------------------------------------------------------------------------------------
    async def list_models(self, request: web.Request) -> web.Response:
        page = await self._registry.list_models(_int(request, "page_size"), request.query.get("page_token", ""))
        return _json(
            registry_service_pb2.ListModelsResponse(
                models=[convert.model(x) for x in page.items], next_page_token=page.next_page_token
            )
        )

    async def get_model(self, request: web.Request) -> web.Response:
        model = await self._registry.get_model(request.match_info["name"])
        return _json(registry_service_pb2.GetModelResponse(model=convert.model(model)))

    async def delete_model(self, request: web.Request) -> web.Response:
        deleted = await self._registry.delete_model(request.match_info["name"])
        return _json(registry_service_pb2.DeleteModelResponse(deleted_versions=deleted))

    async def list_versions(self, request: web.Request) -> web.Response:
        page = await self._registry.list_versions(
            request.match_info["name"], _int(request, "page_size"), request.query.get("page_token", "")
        )
        return _json(
            registry_service_pb2.ListModelVersionsResponse(
                versions=[convert.model_version(x) for x in page.items], next_page_token=page.next_page_token
            )
        )

    async def upload(self, request: web.Request) -> web.Response:
        q = request.query
        header = registry_service_pb2.UploadHeader(
            model_name=request.match_info["name"],
            format=_enum(model_pb2.ModelFormat, "MODEL_FORMAT_", request, "format"),  # type: ignore[arg-type]
            description=q.get("description", ""),
            labels=q.getall("label", []),
            feature_names=q.getall("feature_name", []),
            class_names_text="\n".join(q.getall("class_name", [])),
            image_scaling=_enum(model_pb2.ImageScaling, "IMAGE_SCALING_", request, "image_scaling"),  # type: ignore[arg-type]
            expected_size_bytes=request.content_length or 0,
            expected_sha256=q.get("expected_sha256", ""),
        )
        if "input_node" in q or "output_node" in q:
            header.frozen_graph.input_nodes.extend(q.getall("input_node", []))
            header.frozen_graph.output_nodes.extend(q.getall("output_node", []))
        spec = convert.upload_spec(header)
        with request_fields(UPLOAD_FIELDS):
            version, created = await self._registry.upload(spec, body_chunks(request))
        return _json(
            registry_service_pb2.UploadModelVersionResponse(
                version=convert.model_version(version), model_created=created
            )
        )

    async def get_version(self, request: web.Request) -> web.Response:
        with request_fields(REF_FIELDS):
            version = await self._registry.select_version(_version_ref(request))
        return _json(registry_service_pb2.GetModelVersionResponse(version=convert.model_version(version)))

    async def delete_version(self, request: web.Request) -> web.Response:
        ref = _version_ref(request)
        assert ref.version is not None
        removed = await self._registry.delete_version(ref.name, ref.version, _bool(request, "force"))
        return _json(registry_service_pb2.DeleteModelVersionResponse(removed_labels=removed))

    async def download(self, request: web.Request) -> web.StreamResponse:
        with request_fields(REF_FIELDS):
            version, chunks = await self._registry.download(_version_ref(request))
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "X-Model-Version": str(version.version),
                "X-Sha256": version.sha256,
                "X-Model-Format": version.format.value,
            }
        )
        response.content_length = version.size_bytes
        return await _stream(request, response, chunks)

    async def set_label(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        version = body.get("version") if isinstance(body, dict) else None
        if not isinstance(version, int) or isinstance(version, bool) or not 0 < version <= MAX_VERSION:
            raise InvalidArgument.field("version", 'send {"version": N} with the version number the label points at')
        previous = await self._registry.set_label(request.match_info["name"], request.match_info["label"], version)
        return _json(registry_service_pb2.SetLabelResponse(previous_version=previous or 0))

    async def delete_label(self, request: web.Request) -> web.Response:
        previous = await self._registry.delete_label(request.match_info["name"], request.match_info["label"])
        return _json(registry_service_pb2.DeleteLabelResponse(previous_version=previous))

    # --- jobs ----------------------------------------------------------------------------------------------
    async def create_job(self, request: web.Request) -> web.Response:
        q = request.query
        model = q.get("model", "")
        try:
            ref = parse_model_ref(model)
        except ValueError:
            raise InvalidArgument.field("model", f"{model[:80]!r}: use name, name:version or name@label") from None
        if ref.version is not None and not 0 < ref.version <= MAX_VERSION:
            raise InvalidArgument.field("model", f"{model[:80]!r}: versions are numbered from 1")
        indices = [
            whole_number(raw, "feature_column_index", INT32_MAX, "a column index")
            for raw in q.getall("feature_column_index", [])
        ]
        spec = jobs_service_pb2.JobSpec(
            model=convert.model_ref_to_pb(ref),
            csv=jobs_service_pb2.CsvOptions(
                has_header=_bool(request, "has_header"),
                delimiter=q.get("delimiter", ""),
                feature_columns=q.getall("feature_column", []),
                feature_column_indices=indices,
                passthrough_columns=q.getall("passthrough_column", []),
            ),
            output_format=_enum(jobs_service_pb2.OutputFormat, "OUTPUT_FORMAT_", request, "output_format"),  # type: ignore[arg-type]
            skip_bad_rows=_bool(request, "skip_bad_rows"),
        )
        with request_fields(JOB_FIELDS):
            job = await self._jobs.create(job_spec(spec), body_chunks(request))
        return _json(jobs_service_pb2.CreateJobResponse(job=job_to_pb(job)))

    async def list_jobs(self, request: web.Request) -> web.Response:
        state_value = _enum(jobs_service_pb2.JobState, "JOB_STATE_", request, "state")
        state = STATE_FROM_PB.get(state_value) if state_value else None
        with request_fields({"model_name": "model"}):
            page = await self._jobs.list_jobs(
                request.query.get("model", ""), state, _int(request, "page_size"), request.query.get("page_token", "")
            )
        return _json(
            jobs_service_pb2.ListJobsResponse(
                jobs=[job_to_pb(x) for x in page.items], next_page_token=page.next_page_token
            )
        )

    async def get_job(self, request: web.Request) -> web.Response:
        return _json(jobs_service_pb2.GetJobResponse(job=job_to_pb(await self._jobs.get(request.match_info["id"]))))

    async def cancel_job(self, request: web.Request) -> web.Response:
        job = await self._jobs.cancel(request.match_info["id"])
        return _json(jobs_service_pb2.CancelJobResponse(job=job_to_pb(job)))

    async def results(self, request: web.Request) -> web.StreamResponse:
        job = await self._jobs.get(request.match_info["id"])
        offset = _int(request, "offset")
        total, chunks = await self._jobs.results(job.id, offset)
        jsonl = job.spec.output_format is OutputFormat.JSONL
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/x-ndjson" if jsonl else "text/csv",
                "X-Total-Size": str(total),
            }
        )
        response.content_length = max(total - offset, 0)
        return await _stream(request, response, chunks)


async def _stream(
    request: web.Request, response: web.StreamResponse, chunks: AsyncIterator[bytes]
) -> web.StreamResponse:
    """Write ``chunks`` as they come. The first is awaited before the headers go out, so an early failure still
    gets its status; after that an error can only cut the body short (short of its Content-Length)."""
    iterator = aiter(chunks)
    first = await anext(iterator, None)
    response.headers[REQUEST_ID_KEY] = request_id.get() or ""
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(first)
        async for chunk in iterator:
            await response.write(chunk)
    except Exception:
        log.warning("streaming a response failed after its headers were sent; closing the connection", exc_info=True)
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response
