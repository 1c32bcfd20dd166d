"""TensorFlow Serving's gRPC API (``tensorflow.serving.PredictionService`` and ``ModelService``) over our domain.

The messages and service bases are the generated modules of the ``tensorflow-serving-api`` package, so a client
built on that package's stubs talks to Tensor Trigger exactly as to TF Serving. Each RPC converts the request to
domain types, awaits one domain call (``InferenceService.predict`` for Predict: the same manager, validator and
batcher as ``tensortrigger.v1``) and converts back; domain errors become statuses in ``api.middleware``.

Mapping: ``ModelSpec.name`` -> model, ``version`` -> version, ``version_label`` -> label, neither -> what the
model's serving policy selects. Every version has exactly one signature, ``serving_default`` (a predict
signature); another ``signature_name`` fails with FAILED_PRECONDITION, as TF Serving answers for a signature
key it does not have.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf import any_pb2, wrappers_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from tt_server.compat.convert import (
    SERVING_DEFAULT,
    all_versions,
    as_bytes,
    deadline,
    dtype_of,
    model_ref,
    raw_bytes,
    unimplemented,
)
from tt_server.errors import FailedPrecondition, FieldViolation, InvalidArgument, request_fields
from tt_server.registry.service import Registry
from tt_server.runtime.observe import RequestObservation
from tt_server.runtime.service import InferenceService
from tt_server.types import DType, ModelRef, Signature, TensorSpec, WireTensor

PREDICT_METHOD_NAME = "tensorflow/serving/predict"
SIGNATURE_DEF_FIELD = "signature_def"  # the only metadata field TF Serving defines

DTYPE_FROM_TF: dict[int, DType] = {
    types_pb2.DT_HALF: DType.FLOAT16,
    types_pb2.DT_FLOAT: DType.FLOAT32,
    types_pb2.DT_DOUBLE: DType.FLOAT64,
    types_pb2.DT_INT8: DType.INT8,
    types_pb2.DT_INT16: DType.INT16,
    types_pb2.DT_INT32: DType.INT32,
    types_pb2.DT_INT64: DType.INT64,
    types_pb2.DT_UINT8: DType.UINT8,
    types_pb2.DT_BOOL: DType.BOOL,
    types_pb2.DT_STRING: DType.STRING,
}
DTYPE_TO_TF: dict[DType, int] = {v: k for k, v in DTYPE_FROM_TF.items()}
# Where TensorProto keeps each dtype's typed values (TensorFlow's own convention: small ints share int_val).
_TYPED_FIELD: dict[DType, str] = {
    DType.FLOAT16: "half_val",
    DType.FLOAT32: "float_val",
    DType.FLOAT64: "double_val",
    DType.INT8: "int_val",
    DType.INT16: "int_val",
    DType.INT32: "int_val",
    DType.UINT8: "int_val",
    DType.INT64: "int64_val",
    DType.BOOL: "bool_val",
    DType.STRING: "string_val",
}
_VALUE_FIELDS = frozenset(
    {*_TYPED_FIELD.values(), "scomplex_val", "dcomplex_val", "uint32_val", "uint64_val", "float8_val"}
)


# --- conversions -----------------------------------------------------------------------------------------
def check_signature(spec: model_pb2.ModelSpec) -> None:
    if spec.signature_name not in ("", SERVING_DEFAULT):
        # TF Serving's code and words for a missing signature key, plus what we do have.
        raise FailedPrecondition(
            f'Serving signature key "{spec.signature_name}" not found. '
            f'Tensor Trigger serves one signature per version, "{SERVING_DEFAULT}".'
        )


def spec_ref(spec: model_pb2.ModelSpec) -> ModelRef:
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    ref = model_ref(spec.name, version, "model_spec.name", "model_spec.version")
    # An empty label (set explicitly, e.g. from JSON) counts as no choice: the serving policy decides.
    return ModelRef(ref.name, label=spec.version_label) if spec.version_label else ref


def response_spec(name: str, version: int) -> model_pb2.ModelSpec:
    return model_pb2.ModelSpec(
        name=name, version=wrappers_pb2.Int64Value(value=version), signature_name=SERVING_DEFAULT
    )


def _dtype_name(number: int) -> str:
    """``DT_FLOAT`` for a known dtype; the bare number for one TensorFlow does not define (a client's garbage)."""
    try:
        name: str = types_pb2.DataType.Name(number)
        return name
    except ValueError:
        return f"dtype {number}"


def wire_tensor(proto: tensor_pb2.TensorProto, path: str, max_elements: int) -> WireTensor:
    """``tensor_content`` is passed on as raw bytes without a copy; typed values as their repeated field.

    As in TensorFlow, typed values fewer than the shape holds are padded with the last one
    (``tf.make_tensor_proto(0.5, shape=[2, 4])`` sends a single float_val). Sizes, dtypes and counts against
    the model are the validator's job; this only reads the envelope.
    """
    dtype = DTYPE_FROM_TF.get(proto.dtype)
    if dtype is None:
        supported = ", ".join(types_pb2.DataType.Name(d) for d in DTYPE_FROM_TF)
        raise InvalidArgument.field(
            f"{path}.dtype", f"{_dtype_name(proto.dtype)} is not supported; use one of {supported}"
        )
    if proto.tensor_shape.unknown_rank:
        raise InvalidArgument.field(f"{path}.tensor_shape", "the shape must be known (unknown_rank is set)")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if proto.tensor_content:
        if dtype is DType.STRING:
            raise InvalidArgument.field(f"{path}.tensor_content", "DT_STRING values go in string_val")
        return WireTensor(dtype, shape, content=proto.tensor_content)
    typed = _TYPED_FIELD[dtype]
    others = [f.name for f, _ in proto.ListFields() if f.name in _VALUE_FIELDS and f.name != typed]
    if others:
        raise InvalidArgument.field(
            f"{path}.{others[0]}", f"{_dtype_name(proto.dtype)} values go in {typed} or tensor_content"
        )
    values = getattr(proto, typed)
    count = math.prod(shape) if all(d >= 0 for d in shape) else 0  # Python ints: no overflow
    if 0 < len(values) < count <= max_elements:
        values = [*values, *[values[-1]] * (count - len(values))]
    if dtype is DType.FLOAT16:
        return WireTensor(dtype, shape, content=_half_bytes(values, f"{path}.half_val"))
    return WireTensor(dtype, shape, values=values)


def _half_bytes(bit_patterns: Sequence[int], path: str) -> bytes:
    """``half_val`` holds each float16's 16 bits in an int32: reinterpret them as raw little-endian halves."""
    bits = np.asarray(bit_patterns, dtype=np.int64)
    if bits.size and (bits.min() < 0 or bits.max() > 0xFFFF):
        raise InvalidArgument.field(path, "half_val holds float16 bit patterns, 0 to 65535")
    return bits.astype("<u2").tobytes()


def wire_tensors(protos: Mapping[str, tensor_pb2.TensorProto], max_elements: int) -> dict[str, WireTensor]:
    """Every input converted, or one ``InvalidArgument`` naming every malformed one."""
    converted: dict[str, WireTensor] = {}
    violations: list[FieldViolation] = []
    for name, proto in protos.items():
        try:
            converted[name] = wire_tensor(proto, f'inputs["{name}"]', max_elements)
        except InvalidArgument as e:
            violations += e.violations
    if violations:
        raise InvalidArgument(f"{violations[0].field}: {violations[0].description}", violations)
    return converted


def fill_tensor_proto(out: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Numbers go in ``tensor_content`` (what TF Serving sends); strings in ``string_val``, their only form."""
    dtype = dtype_of(array)
    out.dtype = DTYPE_TO_TF[dtype]
    out.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape)
    if dtype is DType.STRING:
        out.string_val.extend(as_bytes(v) for v in array.ravel())
    else:
        out.tensor_content = raw_bytes(array, dtype)


def _tensor_info(spec: TensorSpec) -> meta_graph_pb2.TensorInfo:
    # We keep no graph tensor names; the alias is what clients use to address the tensor anyway.
    return meta_graph_pb2.TensorInfo(
        name=spec.name,
        dtype=DTYPE_TO_TF[spec.dtype],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in spec.shape]
        ),
    )


def signature_def_map(signature: Signature) -> any_pb2.Any:
    """GetModelMetadata's ``signature_def`` entry: a packed SignatureDefMap, as TF Serving returns it."""
    definition = meta_graph_pb2.SignatureDef(
        inputs={s.name: _tensor_info(s) for s in signature.inputs},
        outputs={s.name: _tensor_info(s) for s in signature.outputs},
        method_name=PREDICT_METHOD_NAME,
    )
    packed = any_pb2.Any()
    packed.Pack(get_model_metadata_pb2.SignatureDefMap(signature_def={SERVING_DEFAULT: definition}))
    return packed


# --- servicers -------------------------------------------------------------------------------------------
# generated gRPC code is untyped, so mypy sees this base class as Any
class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, inference: InferenceService, registry: Registry, max_elements: int) -> None:
        self._inference = inference
        self._registry = registry
        self._max_elements = max_elements  # bounds TensorFlow-style padding of short typed values

    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        with RequestObservation(request.model_spec.name) as observation:
            check_signature(request.model_spec)
            ref = spec_ref(request.model_spec)
            inputs = wire_tensors(request.inputs, self._max_elements)
            result = await self._inference.predict(
                ref, inputs, list(request.output_filter), deadline(context), observation=observation
            )
            response = predict_pb2.PredictResponse(model_spec=response_spec(result.model_name, result.version))
            for name, array in result.outputs.items():
                fill_tensor_proto(response.outputs[name], array)
            return response

    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.metadata_field:
            raise InvalidArgument.field("metadata_field", f'name at least one metadata field ("{SIGNATURE_DEF_FIELD}")')
        for i, name in enumerate(request.metadata_field):
            if name != SIGNATURE_DEF_FIELD:
                raise InvalidArgument.field(
                    f"metadata_field[{i}]", f'metadata field "{name}" is not supported; use "{SIGNATURE_DEF_FIELD}"'
                )
        with request_fields({"ref": "model_spec"}):
            version = await self._registry.select_version(spec_ref(request.model_spec))
        return get_model_metadata_pb2.GetModelMetadataResponse(
            model_spec=response_spec(version.model_name, version.version),
            metadata={SIGNATURE_DEF_FIELD: signature_def_map(version.signature)},
        )

    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        await self._no_such_signature(request, context, "Classify", "classification", "tensorflow/serving/classify")

    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        await self._no_such_signature(request, context, "Regress", "regression", "tensorflow/serving/regress")

    async def MultiInference(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        await unimplemented(
            context,
            "MultiInference runs Classify and Regress tasks, and Tensor Trigger models have predict signatures "
            "only; call Predict",
        )

    async def _no_such_signature(
        self, request: Any, context: grpc.aio.ServicerContext, rpc: str, kind: str, method_name: str
    ) -> None:
        # The model must exist (NOT_FOUND first, as in TF Serving); then say why it cannot be served this way.
        spec = request.model_spec
        check_signature(spec)
        with request_fields({"ref": "model_spec"}):
            version = await self._registry.select_version(spec_ref(spec))
        await unimplemented(
            context,
            f"{rpc} needs a {kind} signature ({method_name}); version {version.version} of model "
            f"{version.model_name!r} has only {SERVING_DEFAULT}, a predict signature ({PREDICT_METHOD_NAME}), "
            "as every Tensor Trigger version does: call Predict",
        )


# generated gRPC code is untyped, so mypy sees this base class as Any
class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        # Every stored version can be served (loaded on first use), so each one is AVAILABLE.
        ref = spec_ref(request.model_spec)
        with request_fields({"ref": "model_spec", "name": "model_spec.name"}):
            if ref.version is None and ref.label is None:
                versions = sorted(await all_versions(self._registry, ref.name))
            else:
                versions = [(await self._registry.select_version(ref)).version]
        return get_model_status_pb2.GetModelStatusResponse(
            model_version_status=[
                get_model_status_pb2.ModelVersionStatus(
                    version=v,
                    state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
                    status=status_pb2.StatusProto(),
                )
                for v in versions
            ]
        )

    async def HandleReloadConfigRequest(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        await unimplemented(
            context,
            "Tensor Trigger has no model config file to reload: upload versions and move labels through "
            "tensortrigger.v1.ModelRegistryService",
        )
