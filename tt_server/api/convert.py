"""Protobuf <-> domain conversions. Pure functions, no I/O, no business rules."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2
from tensortrigger.v1 import inference_service_pb2, model_pb2, registry_service_pb2, tensor_pb2

from tt_server.errors import InvalidArgument
from tt_server.registry.header import UploadSpec
from tt_server.runtime.classes import DEFAULT_TOP_K
from tt_server.types import (
    ClassifyRequest,
    ClassScore,
    DType,
    FrozenGraphNodes,
    ImageScaling,
    Model,
    ModelFormat,
    ModelRef,
    ModelVersion,
    RetentionPolicy,
    ServingPolicy,
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
    ModelFormat.FROZEN_GRAPH: model_pb2.MODEL_FORMAT_FROZEN_GRAPH,
}
FORMAT_FROM_PB: dict[int, ModelFormat] = {v: k for k, v in FORMAT_TO_PB.items()}

SCALING_TO_PB: dict[ImageScaling, int] = {
    ImageScaling.RAW: model_pb2.IMAGE_SCALING_RAW,
    ImageScaling.UNIT: model_pb2.IMAGE_SCALING_UNIT,
    ImageScaling.SYMMETRIC: model_pb2.IMAGE_SCALING_SYMMETRIC,
}
# Unspecified is documented to mean raw.
SCALING_FROM_PB: dict[int, ImageScaling] = {
    model_pb2.IMAGE_SCALING_UNSPECIFIED: ImageScaling.RAW,
    **{v: k for k, v in SCALING_TO_PB.items()},
}

SOURCE_TO_PB: dict[VersionSource, int] = {
    VersionSource.UPLOAD: model_pb2.VERSION_SOURCE_UPLOAD,
    VersionSource.TRAINING: model_pb2.VERSION_SOURCE_TRAINING,
    VersionSource.REPOSITORY: model_pb2.VERSION_SOURCE_REPOSITORY,
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
        class_names=v.class_names,
        frozen_graph=frozen_graph_nodes(v.frozen_graph) if v.frozen_graph is not None else None,
        image_scaling=SCALING_TO_PB[v.image_scaling],  # type: ignore[arg-type]
        promoted=v.promoted,
        retired=v.retired,
    )


def frozen_graph_nodes(nodes: FrozenGraphNodes) -> model_pb2.FrozenGraphNodes:
    return model_pb2.FrozenGraphNodes(input_nodes=nodes.inputs, output_nodes=nodes.outputs)


def model(m: Model) -> model_pb2.Model:
    return model_pb2.Model(
        name=m.name,
        description=m.description,
        latest_version=m.latest_version or 0,
        version_count=m.version_count,
        labels=m.labels,
        create_time=timestamp(m.created_at),
        update_time=timestamp(m.updated_at),
        serving_policy=serving_policy_to_pb(m.serving_policy),
        served_version=m.served_version or 0,
        retention=retention_to_pb(m.retention),
    )


def serving_policy(policy: model_pb2.ServingPolicy, field: str = "policy") -> ServingPolicy:
    mode = policy.WhichOneof("mode")
    if mode == "label":
        if not policy.label:
            raise InvalidArgument.field(f"{field}.label", "the label is empty")
        return ServingPolicy(label=policy.label)
    if mode == "version":
        if policy.version <= 0:
            raise InvalidArgument.field(f"{field}.version", "versions are numbered from 1")
        return ServingPolicy(version=policy.version)
    return ServingPolicy()


def serving_policy_to_pb(policy: ServingPolicy) -> model_pb2.ServingPolicy:
    if policy.label is not None:
        return model_pb2.ServingPolicy(label=policy.label)
    if policy.version is not None:
        return model_pb2.ServingPolicy(version=policy.version)
    return model_pb2.ServingPolicy(latest=model_pb2.ServingPolicy.Latest())


def retention(policy: model_pb2.RetentionPolicy, field: str = "retention") -> RetentionPolicy:
    if policy.keep_training_checkpoints < -1:
        raise InvalidArgument.field(f"{field}.keep_training_checkpoints", "use a count, 0 (default 5) or -1 (all)")
    if policy.keep_versions < 0:
        raise InvalidArgument.field(f"{field}.keep_versions", "use a count, or 0 to keep all")
    keep_checkpoints: int | None = policy.keep_training_checkpoints or RetentionPolicy().keep_training_checkpoints
    return RetentionPolicy(
        keep_training_checkpoints=None if keep_checkpoints == -1 else keep_checkpoints,
        keep_versions=policy.keep_versions or None,
    )


def retention_to_pb(policy: RetentionPolicy) -> model_pb2.RetentionPolicy:
    return model_pb2.RetentionPolicy(
        keep_training_checkpoints=-1 if policy.keep_training_checkpoints is None else policy.keep_training_checkpoints,
        keep_versions=policy.keep_versions or 0,
    )


def upload_spec(header: registry_service_pb2.UploadHeader) -> UploadSpec:
    declared = None
    if header.format:
        if header.format not in FORMAT_FROM_PB:
            raise InvalidArgument.field("header.format", f"unknown format {header.format}")
        declared = FORMAT_FROM_PB[header.format]
    if header.image_scaling not in SCALING_FROM_PB:
        raise InvalidArgument.field("header.image_scaling", f"unknown image scaling {header.image_scaling}")
    nodes = None
    if header.HasField("frozen_graph"):
        nodes = FrozenGraphNodes(tuple(header.frozen_graph.input_nodes), tuple(header.frozen_graph.output_nodes))
    return UploadSpec(
        model_name=header.model_name,
        format=declared,
        description=header.description,
        feature_names=tuple(header.feature_names),
        metadata=dict(header.metadata),
        labels=tuple(header.labels),
        expected_size=header.expected_size_bytes or None,
        expected_sha256=header.expected_sha256.lower() or None,
        frozen_graph=nodes,
        class_names=class_names(header.class_names_text),
        image_scaling=SCALING_FROM_PB[header.image_scaling],
        serving_policy=serving_policy(header.serving_policy, "header.serving_policy")
        if header.HasField("serving_policy")
        else None,
    )


def class_names(text: str) -> tuple[str, ...]:
    """A labels file's lines, trimmed, without the trailing blank ones a final newline leaves; the registry
    checks the rest (no empty names in between)."""
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return tuple(lines)


def classify_request(options: inference_service_pb2.ClassifyOptions) -> ClassifyRequest:
    return ClassifyRequest(
        top_k=options.top_k if options.top_k else DEFAULT_TOP_K,
        output=options.output or None,
        omit_outputs=options.omit_outputs,
    )


def classification(classes: tuple[ClassScore, ...]) -> inference_service_pb2.Classification:
    return inference_service_pb2.Classification(
        classes=[inference_service_pb2.ClassScore(index=c.index, name=c.name, score=c.score) for c in classes]
    )
