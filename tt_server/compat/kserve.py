"""The Open Inference Protocol (KServe v2, Triton's gRPC API): ``inference.GRPCInferenceService`` over our domain.

The messages and service base are the generated modules that ship in ``tritonclient`` (``tritonclient.grpc``,
Triton's ``grpc_service.proto``: the protocol's core plus Triton's extensions). We use them instead of a .proto of
our own because protobuf keeps one registry of message names per process: a second file declaring
``inference.ModelInferRequest`` cannot be loaded next to Triton's, so our server and Triton's client could not
share a process (our tests do) and the wire format could drift from what ``tritonclient`` sends.

Each RPC converts, awaits one domain call (``InferenceService.predict`` for inference: the same manager,
validator and batcher as ``tensortrigger.v1``) and converts back; errors become statuses in
``api.middleware``. ``model_version`` is "" for what the model's serving policy selects, a version number, or a
label name (the protocol's version is a string, so a label fits). Inputs come as typed ``contents`` or as
``raw_input_contents``; the answer uses the same form (FP16 has no typed field, so a response with an FP16
output is always raw). Triton's extensions (model repository, statistics, shared memory, trace, logging, model
config) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tt_server.compat.convert import (
    MAX_VERSION,
    all_versions,
    as_bytes,
    deadline,
    dtype_of,
    model_ref,
    raw_bytes,
    unimplemented,
)
from tt_server.errors import FieldViolation, InvalidArgument, NotFound, TensorTriggerError, request_fields
from tt_server.registry.names import LABEL_NAME
from tt_server.registry.service import Registry
from tt_server.runtime.observe import RequestObservation
from tt_server.runtime.service import InferenceService
from tt_server.types import DType, ModelFormat, ModelRef, TensorSpec, WireTensor

SERVER_NAME = "tensortrigger"
DTYPE_FROM_OIP: dict[str, DType] = {
    "BOOL": DType.BOOL,
    "UINT8": DType.UINT8,
    "INT8": DType.INT8,
    "INT16": DType.INT16,
    "INT32": DType.INT32,
    "INT64": DType.INT64,
    "FP16": DType.FLOAT16,
    "FP32": DType.FLOAT32,
    "FP64": DType.FLOAT64,
    "BYTES": DType.STRING,
}
DTYPE_TO_OIP: dict[DType, str] = {v: k for k, v in DTYPE_FROM_OIP.items()}
# The protocol's typed field for each datatype; FP16 has none (it travels raw only).
_CONTENTS_FIELD: dict[DType, str] = {
    DType.BOOL: "bool_contents",
    DType.UINT8: "uint_contents",
    DType.INT8: "int_contents",
    DType.INT16: "int_contents",
    DType.INT32: "int_contents",
    DType.INT64: "int64_contents",
    DType.FLOAT32: "fp32_contents",
    DType.FLOAT64: "fp64_contents",
    DType.STRING: "bytes_contents",
}
_LENGTH = struct.Struct("<I")  # raw BYTES elements: a little-endian uint32 length, then the bytes


# --- conversions -----------------------------------------------------------------------------------------
def oip_ref(name: str, version: str, name_field: str, version_field: str) -> ModelRef:
    """``model_version`` is a string: empty for what the serving policy selects, a number for that version, or a
    label name ("stable"), which Triton and KServe clients can send as is."""
    if not version:
        return model_ref(name, None, name_field, version_field)
    if version.isascii() and version.isdigit():
        if int(version) > MAX_VERSION:
            raise InvalidArgument.field(version_field, f"{version[:40]!r} is over the largest version number")
        return model_ref(name, int(version), name_field, version_field)
    if not LABEL_NAME.match(version):
        raise InvalidArgument.field(
            version_field,
            f"{version[:40]!r} is neither a version number nor a label name (1-63 lowercase letters, digits, '_' "
            "or '-', starting with a letter); leave it empty for what the model's serving policy selects",
        )
    ref = model_ref(name, None, name_field, version_field)
    return ModelRef(ref.name, label=version)


def split_bytes(data: bytes, path: str, limit: int) -> list[bytes]:
    """Raw BYTES content -> its elements (each a 4-byte little-endian length, then that many bytes).

    At most ``limit`` elements: four bytes per (empty) element would otherwise let one message become millions
    of Python objects before the validator sees the shape.
    """
    items: list[bytes] = []
    view = memoryview(data)
    offset = 0
    while offset < len(data):
        if len(items) == limit:
            raise InvalidArgument.field(path, f"more than the {limit} elements the shape (and the size cap) allow")
        if offset + _LENGTH.size > len(data):
            raise InvalidArgument.field(path, f"BYTES element at offset {offset} has a truncated length prefix")
        (size,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + size > len(data):
            raise InvalidArgument.field(path, f"BYTES element at offset {offset} overruns the content")
        items.append(bytes(view[offset : offset + size]))
        offset += size
    return items


def join_bytes(array: np.ndarray) -> bytes:
    return b"".join(_LENGTH.pack(len(b)) + b for b in map(as_bytes, array.ravel()))


def _wire_tensor(tensor: Any, raw: bytes | None, path: str, max_elements: int) -> WireTensor:
    dtype = DTYPE_FROM_OIP.get(tensor.datatype)
    if dtype is None:
        raise InvalidArgument.field(
            f"{path}.datatype", f"{tensor.datatype!r} is not supported; use one of {', '.join(DTYPE_FROM_OIP)}"
        )
    shape = tuple(tensor.shape)
    given = [f.name for f, _ in tensor.contents.ListFields()]
    if raw is not None:
        if given:
            raise InvalidArgument.field(f"{path}.contents", "send contents or raw_input_contents, not both")
        if dtype is DType.STRING:
            count = math.prod(shape) if all(d >= 0 for d in shape) else 0
            return WireTensor(
                dtype, shape, values=split_bytes(raw, f"raw_input_contents ({path})", min(count, max_elements))
            )
        return WireTensor(dtype, shape, content=raw)
    field = _CONTENTS_FIELD.get(dtype)
    if field is None:
        raise InvalidArgument.field(f"{path}.contents", "FP16 has no typed contents field; send raw_input_contents")
    if any(name != field for name in given):
        raise InvalidArgument.field(f"{path}.contents", f"{tensor.datatype} values go in contents.{field}")
    return WireTensor(dtype, shape, values=getattr(tensor.contents, field))


def wire_tensors(request: pb.ModelInferRequest, max_elements: int) -> dict[str, WireTensor]:
    """Every input converted, or one ``InvalidArgument`` naming every malformed one."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument.field(
            "raw_input_contents", f"{len(raw)} entries for {len(request.inputs)} inputs; send one per input, in order"
        )
    converted: dict[str, WireTensor] = {}
    violations: list[FieldViolation] = []
    for i, tensor in enumerate(request.inputs):
        path = f'inputs["{tensor.name}"]'
        try:
            if tensor.name in converted:
                raise InvalidArgument.field(path, f"input {tensor.name!r} is sent twice")
            converted[tensor.name] = _wire_tensor(tensor, raw[i] if raw else None, path, max_elements)
        except InvalidArgument as e:
            violations += e.violations
    if violations:
        raise InvalidArgument(f"{violations[0].field}: {violations[0].description}", violations)
    return converted


def infer_response(
    request: pb.ModelInferRequest, model_name: str, version: int, outputs: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=model_name, model_version=str(version), id=request.id)
    dtypes = {name: dtype_of(array) for name, array in outputs.items()}
    # raw_output_contents pairs with outputs by position, so it is all or nothing for one response.
    raw = bool(request.raw_input_contents) or DType.FLOAT16 in dtypes.values()
    for name, array in outputs.items():
        dtype = dtypes[name]
        out = response.outputs.add(name=name, datatype=DTYPE_TO_OIP[dtype], shape=array.shape)
        if raw:
            response.raw_output_contents.append(join_bytes(array) if dtype is DType.STRING else raw_bytes(array, dtype))
        elif dtype is DType.STRING:
            out.contents.bytes_contents.extend(map(as_bytes, array.ravel()))
        else:
            getattr(out.contents, _CONTENTS_FIELD[dtype]).extend(array.ravel().tolist())
    return response


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=DTYPE_TO_OIP[spec.dtype], shape=spec.shape)


# Triton's platform names where one fits (Keras files have none there, so they say what they are). Keyed by the
# format's value so that a format added later falls back to plain "tensorflow" instead of failing.
_PLATFORMS = {
    "saved_model_tar_gz": "tensorflow_savedmodel",
    "saved_model_zip": "tensorflow_savedmodel",
    "frozen_graph": "tensorflow_graphdef",
    "keras": "tensorflow_keras",
    "h5": "tensorflow_keras",
}


def platform(fmt: ModelFormat) -> str:
    return _PLATFORMS.get(fmt.value, "tensorflow")


def server_version() -> str:
    try:
        return metadata.version("tensortrigger-server")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


# --- servicer --------------------------------------------------------------------------------------------
# generated gRPC code is untyped, so mypy sees this base class as Any
class GRPCInferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(
        self, inference: InferenceService, registry: Registry, max_elements: int, is_ready: Callable[[], bool]
    ) -> None:
        self._inference = inference
        self._registry = registry
        self._max_elements = max_elements  # bounds the split of raw BYTES inputs
        self._is_ready = is_ready  # False once the server drains, like its health status
        self._version = server_version()

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._is_ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        ref = oip_ref(request.name, request.version, "name", "version")
        try:
            await self._inference.load_version(ref)  # loads the version: ready means it can answer at once
        except NotFound:
            return pb.ModelReadyResponse(ready=False)  # Triton answers false, not an error, for unknown models
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self._version, extensions=[])

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        with request_fields({"ref.name": "name"}):
            version = await self._registry.select_version(oip_ref(request.name, request.version, "name", "version"))
        versions = await all_versions(self._registry, version.model_name)
        return pb.ModelMetadataResponse(
            name=version.model_name,
            versions=[str(v) for v in versions],
            platform=platform(version.format),
            inputs=[_tensor_metadata(s) for s in version.signature.inputs],
            outputs=[_tensor_metadata(s) for s in version.signature.outputs],
        )

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._infer(request, context)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        # The protocol reports a failed request inside the stream and keeps it open for the next one.
        async for request in request_iterator:
            try:
                response = await self._infer(request, context)
            except TensorTriggerError as e:
                # The id lets a client match the error to its request; tritonclient reads error_message only.
                failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
                yield pb.ModelStreamInferResponse(error_message=e.message, infer_response=failed)
                continue
            yield pb.ModelStreamInferResponse(infer_response=response)

    async def _infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        with RequestObservation(request.model_name) as observation:
            ref = oip_ref(request.model_name, request.model_version, "model_name", "model_version")
            inputs = wire_tensors(request, self._max_elements)
            result = await self._inference.predict(
                ref, inputs, [o.name for o in request.outputs], deadline(context), observation=observation
            )
            return infer_response(request, result.model_name, result.version, result.outputs)

    async def _triton_extension(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        await unimplemented(
            context,
            "this RPC is a Triton extension, not part of the Open Inference Protocol core that Tensor Trigger "
            "serves (ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer, "
            "ModelStreamInfer)",
        )

    ModelConfig = ModelStatistics = RepositoryIndex = RepositoryModelLoad = RepositoryModelUnload = _triton_extension
    SystemSharedMemoryStatus = SystemSharedMemoryRegister = SystemSharedMemoryUnregister = _triton_extension
    CudaSharedMemoryStatus = CudaSharedMemoryRegister = CudaSharedMemoryUnregister = _triton_extension
    TraceSetting = LogSettings = _triton_extension
