"""The Open Inference Protocol's HTTP/REST binding (KServe v2, Triton's HTTP API) over the same domain as its gRPC
binding in ``compat.kserve``: model references, datatypes and the BYTES framing come from there.

Tensors travel as JSON (``data``, flat or nested) or, with the binary tensor data extension, as raw bytes after
the JSON header: the request says how long the header is (``Inference-Header-Content-Length``) and each binary
input its size (``parameters.binary_data_size``). Outputs come back binary when the request asks for it per output
(``parameters.binary_data``) or for all of them (``parameters.binary_data_output``), the way Triton's client does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from aiohttp import web

from tt_server.compat.convert import all_versions, dtype_of, raw_bytes
from tt_server.compat.kserve import (
    DTYPE_FROM_OIP,
    DTYPE_TO_OIP,
    SERVER_NAME,
    join_bytes,
    oip_ref,
    platform,
    server_version,
    split_bytes,
)
from tt_server.errors import FieldViolation, InvalidArgument, request_fields
from tt_server.registry.service import Registry
from tt_server.rest.core import HEALTH_RPC, Route, json_response, whole_number
from tt_server.rest.tensors import json_value, wire_with_shape
from tt_server.runtime.observe import RequestObservation
from tt_server.runtime.service import InferenceService
from tt_server.types import DType, TensorSpec, WireTensor

HEADER_LENGTH = "Inference-Header-Content-Length"
_SERVICE = "/inference.GRPCInferenceService/"
EXTENSIONS = ["binary_tensor_data"]
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"enum": list(DTYPE_FROM_OIP)},
        "data": {"description": "flat or nested, row-major"},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer"}}},
    },
}
INFER_SCHEMA = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                },
            },
        },
        "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
    },
}


def _spec(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": DTYPE_TO_OIP[spec.dtype], "shape": list(spec.shape)}


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument.field(path, f"expected a JSON object, got {type(value).__name__}")
    return value


def _check_envelope(request: dict[str, Any]) -> None:
    """The request's fields besides its inputs, typed as the gRPC ModelInferRequest types them (null = absent)."""
    if not isinstance(request.get("id") or "", str):
        raise InvalidArgument.field("id", "must be a string")
    _object(request.get("parameters") or {}, "parameters")
    outputs = request.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidArgument.field("outputs", "a list of requested outputs is required")
    for i, output in enumerate(outputs):
        _object(output, f"outputs[{i}]")
        if not isinstance(output.get("name"), str):
            raise InvalidArgument.field(f"outputs[{i}].name", "each requested output needs a name")
        _object(output.get("parameters") or {}, f"outputs[{i}].parameters")


def parse_infer(
    body: bytes, header_length: str | None, max_elements: int
) -> tuple[dict[str, Any], dict[str, WireTensor]]:
    """The request's JSON header and its inputs as domain tensors; INVALID_ARGUMENT names every bad field."""
    if header_length is not None:
        split = whole_number(header_length, HEADER_LENGTH, len(body), "a length within the body")
        head, binary = body[:split], memoryview(body)[split:]
    else:
        head, binary = body, memoryview(b"")
    try:
        request = _object(json.loads(head), "body")
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidArgument.field("body", f"not valid JSON: {e}") from None
    _check_envelope(request)
    inputs = request.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument.field("inputs", "a list of input tensors is required")
    converted: dict[str, WireTensor] = {}
    violations: list[FieldViolation] = []
    offset = 0
    for i, raw in enumerate(inputs):
        path = f"inputs[{i}]"
        try:
            tensor = _object(raw, path)
            name = tensor.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidArgument.field(f"{path}.name", "a name is required")
            path = f'inputs["{name}"]'
            if name in converted:
                raise InvalidArgument.field(path, f"input {name!r} is sent twice")
            dtype = DTYPE_FROM_OIP.get(tensor.get("datatype"))  # type: ignore[arg-type]
            if dtype is None:
                raise InvalidArgument.field(
                    f"{path}.datatype", f"{tensor.get('datatype')!r} is not one of {', '.join(DTYPE_FROM_OIP)}"
                )
            shape = tensor.get("shape")
            if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
                raise InvalidArgument.field(f"{path}.shape", "a list of integers is required")
            size = _object(tensor.get("parameters", {}), f"{path}.parameters").get("binary_data_size")
            if size is not None:
                if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                    raise InvalidArgument.field(
                        f"{path}.parameters.binary_data_size", f"{size!r} bytes are not in the request's binary part"
                    )
                data = bytes(binary[offset : offset + size])
                offset += size
                if dtype is DType.STRING:
                    converted[name] = WireTensor(dtype, tuple(shape), values=split_bytes(data, path, max_elements))
                else:
                    converted[name] = WireTensor(dtype, tuple(shape), content=data)
            elif "data" not in tensor:
                raise InvalidArgument.field(f"{path}.data", "data (or parameters.binary_data_size) is required")
            else:
                converted[name] = wire_with_shape(tensor["data"], dtype, tuple(shape), f"{path}.data")
        except InvalidArgument as e:
            violations += e.violations
    if violations:
        raise InvalidArgument(f"{violations[0].field}: {violations[0].description}", violations)
    return request, converted


def infer_response(
    request: dict[str, Any], model_name: str, version: int, outputs: dict[str, np.ndarray]
) -> web.Response:
    requested = {o.get("name"): o.get("parameters") or {} for o in request.get("outputs") or [] if isinstance(o, dict)}
    binary_default = bool((request.get("parameters") or {}).get("binary_data_output", False))
    body: dict[str, Any] = {"model_name": model_name, "model_version": str(version), "outputs": []}
    if "id" in request:
        body["id"] = request["id"]
    blobs: list[bytes] = []
    for name, array in outputs.items():
        dtype = dtype_of(array)
        out: dict[str, Any] = {"name": name, "datatype": DTYPE_TO_OIP[dtype], "shape": list(array.shape)}
        if requested.get(name, {}).get("binary_data", binary_default):
            blob = join_bytes(array) if dtype is DType.STRING else raw_bytes(array, dtype)
            out["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            out["data"] = json_value(array.ravel())
        body["outputs"].append(out)
    head = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return web.Response(body=head, content_type="application/json")
    return web.Response(
        body=b"".join([head, *blobs]),
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(head))},
    )


class OpenInferenceRoutes:
    def __init__(
        self, inference: InferenceService, registry: Registry, max_elements: int, is_ready: Callable[[], bool]
    ) -> None:
        self._inference = inference
        self._registry = registry
        self._max_elements = max_elements
        self._is_ready = is_ready
        self._version = server_version()

    def routes(self) -> list[Route]:
        tag = "Open Inference Protocol"
        routes = [
            Route("GET", "/v2/health/live", self.live, HEALTH_RPC, tag, "Server liveness (200 = live)."),
            Route("GET", "/v2/health/ready", self.ready, HEALTH_RPC, tag, "Server readiness (503 while draining)."),
            Route("GET", "/v2", self.server_metadata, _SERVICE + "ServerMetadata", tag, "Server name and version."),
        ]
        for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
            routes += [
                Route("GET", prefix, self.model_metadata, _SERVICE + "ModelMetadata", tag, "Model metadata."),
                Route("GET", prefix + "/ready", self.model_ready, _SERVICE + "ModelReady", tag, "Model readiness."),
                Route(
                    "POST",
                    prefix + "/infer",
                    self.infer,
                    _SERVICE + "ModelInfer",
                    tag,
                    "Inference: JSON tensors, or binary tensor data after a JSON header.",
                    body="application/json",
                    schema=INFER_SCHEMA,
                ),
            ]
        return routes

    async def live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self._is_ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": SERVER_NAME, "version": self._version, "extensions": EXTENSIONS})

    def _ref(self, request: web.Request) -> Any:
        return oip_ref(request.match_info["model"], request.match_info.get("version", ""), "model", "version")

    async def model_metadata(self, request: web.Request) -> web.Response:
        with request_fields({"ref.name": "model"}):  # the name's place in OIP's path
            version = await self._registry.select_version(self._ref(request))
        versions = await all_versions(self._registry, version.model_name)
        return json_response(
            {
                "name": version.model_name,
                "versions": [str(v) for v in versions],
                "platform": platform(version.format),
                "inputs": [_spec(s) for s in version.signature.inputs],
                "outputs": [_spec(s) for s in version.signature.outputs],
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        ref = self._ref(request)
        # Loads the version: ready means it can answer at once. The protocol: 200 is ready, a 4xx status is not;
        # an unknown model or version is the front's 404 (NOT_FOUND), with its error body.
        await self._inference.load_version(ref)
        return json_response({"name": ref.name, "ready": True})

    async def infer(self, request: web.Request) -> web.Response:
        with RequestObservation(request.match_info.get("model", "")) as observation:
            ref = self._ref(request)
            body, inputs = parse_infer(await request.read(), request.headers.get(HEADER_LENGTH), self._max_elements)
            names = [o["name"] for o in body.get("outputs") or []]  # checked by parse_infer
            result = await self._inference.predict(ref, inputs, names, None, observation=observation)
            return infer_response(body, result.model_name, result.version, result.outputs)
