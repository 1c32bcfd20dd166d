"""Protobuf <-> domain conversions. Pure functions, no I/O, no business rules."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2
from tensortrigger.v1 import model_pb2, registry_service_pb2, tensor_pb2

from tt_server.errors import InvalidArgument
from tt_server.registry.service import UploadSpec
from tt_server.types import (
    DType,
    Model,
    ModelFormat,
    ModelRef,
    ModelVersion,
    Signature,
    TensorSpec,
    VersionSource,
)

DTYPE_TO_PB: dict[DType, tensor_pb2.DataType] = {
    DType.FLOAT16: tensor_pb2.DATA_TYPE_FLOAT16,
    DType.FLOAT32: tensor_pb2.DATA_TYPE_FLOAT32,
    DType.FLOAT64: tensor_pb2.DATA_TYPE_FLOAT64,
    DType.INT8: tensor_pb2.DATA_TYPE_INT8,
    DType.INT16: tensor_pb2.DATA_TYPE_INT16,
    DType.INT32: tensor_pb2.DATA_TYPE_INT32,
    DType.INT64: tensor_pb2.DATA_TYPE_INT64,
    DType.UINT8: tensor_pb2.DATA_TYPE_UINT8,
    DType.BOOL: tensor_pb2.DATA_TYPE_BOOL,
    DType.STRING: tensor_pb2.DATA_TYPE_STRING,
}
DTYPE_FROM_PB: dict[int, DType] = {int(v): k for k, v in DTYPE_TO_PB.items()}

FORMAT_TO_PB: dict[ModelFormat, int] = {
    ModelFormat.KERAS: model_pb2.MODEL_FORMAT_KERAS,
    ModelFormat.H5: model_pb2.MODEL_FORMAT_H5,
    ModelFormat.SAVED_MODEL_TAR_GZ: model_pb2.MODEL_FORMAT_SAVED_MODEL_TAR_GZ,
    ModelFormat.SAVED_MODEL_ZIP: model_pb2.MODEL_FORMAT_SAVED_MODEL_ZIP,
}
FORMAT_FROM_PB: dict[int, ModelFormat] = {v: k for k, v in FORMAT_TO_PB.items()}

SOURCE_TO_PB: dict[VersionSource, int] = {
    VersionSource.UPLOAD: model_pb2.VERSION_SOURCE_UPLOAD,
    VersionSource.TRAINING: model_pb2.VERSION_SOURCE_TRAINING,
}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def model_ref(ref: model_pb2.ModelRef, field: str = "model") -> ModelRef:
    if not ref.name:
        raise InvalidArgument.field(f"{field}.name", "a model name is required")
    selector = ref.WhichOneof("selector")
    if selector == "version":
        if ref.version <= 0:
            raise InvalidArgument.field(f"{field}.version", "versions are numbered from 1")
        return ModelRef(ref.name, version=ref.version)
    if selector == "label":
        if not ref.label:
            raise InvalidArgument.field(f"{field}.label", "the label is empty")
        return ModelRef(ref.name, label=ref.label)
    return ModelRef(ref.name)


def model_ref_to_pb(ref: ModelRef) -> model_pb2.ModelRef:
    if ref.version is not None:
        return model_pb2.ModelRef(name=ref.name, version=ref.version)
    if ref.label is not None:
        return model_pb2.ModelRef(name=ref.name, label=ref.label)
    return model_pb2.ModelRef(name=ref.name)


def tensor_spec(spec: TensorSpec) -> tensor_pb2.TensorSpec:
    return tensor_pb2.TensorSpec(name=spec.name, dtype=DTYPE_TO_PB[spec.dtype], shape=spec.shape)


def signature(sig: Signature) -> tensor_pb2.Signature:
    return tensor_pb2.Signature(
        inputs=[tensor_spec(s) for s in sig.inputs], outputs=[tensor_spec(s) for s in sig.outputs]
    )


def model_version(v: ModelVersion) -> model_pb2.ModelVersion:
    return model_pb2.ModelVersion(
        model_name=v.model_name,
        version=v.version,
        format=FORMAT_TO_PB[v.format],  # type: ignore[arg-type]
        sha256=v.sha256,
        size_bytes=v.size_bytes,
        signature=signature(v.signature),
        source=SOURCE_TO_PB[v.source],  # type: ignore[arg-type]
        parent_version=v.parent_version or 0,
        training_session_id=v.training_session_id or "",
        description=v.description,
        feature_names=v.feature_names,
        metadata=v.metadata,
        labels=sorted(v.labels),
        create_time=timestamp(v.created_at),
    )


def model(m: Model) -> model_pb2.Model:
    return model_pb2.Model(
        name=m.name,
        description=m.description,
        latest_version=m.latest_version or 0,
        version_count=m.version_count,
        labels=m.labels,
        create_time=timestamp(m.created_at),
        update_time=timestamp(m.updated_at),
    )


def upload_spec(header: registry_service_pb2.UploadHeader) -> UploadSpec:
    declared = None
    if header.format:
        if header.format not in FORMAT_FROM_PB:
            raise InvalidArgument.field("header.format", f"unknown format {header.format}")
        declared = FORMAT_FROM_PB[header.format]
    return UploadSpec(
        model_name=header.model_name,
        format=declared,
        description=header.description,
        feature_names=tuple(header.feature_names),
        metadata=dict(header.metadata),
        labels=tuple(header.labels),
        expected_size=header.expected_size_bytes or None,
        expected_sha256=header.expected_sha256.lower() or None,
    )
