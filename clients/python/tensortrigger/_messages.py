"""Request building and response parsing, shared by ``Client`` and ``AsyncClient``.

Pure functions over protobuf messages and numpy arrays: no channels, no I/O, so both clients stay thin wrappers
that only differ in how they wait.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypedDict, cast

import numpy as np
from google.protobuf import wrappers_pb2

from tensortrigger.v1 import (
    inference_service_pb2,
    jobs_service_pb2,
    model_pb2,
    registry_service_pb2,
    tensor_pb2,
)

CHUNK_BYTES = 1 << 20
"""Bytes per streamed file chunk: well under the server's message limit, big enough to keep overhead low."""

Arrays: TypeAlias = "np.ndarray | Mapping[str, Any]"
"""Model inputs (or training features/labels): one array for a single-input model, else arrays by name.
Anything ``np.asarray`` accepts works in place of an array."""

Model: TypeAlias = "str | model_pb2.ModelRef"
"""A model selector: ``"name"`` (newest version), ``"name:3"``, ``"name@stable"``, or a ``ModelRef``."""

Progress: TypeAlias = Callable[[int, int], None]
"""Called as ``progress(done_bytes, total_bytes)`` while a file streams; ``total_bytes`` is 0 when unknown."""

_FORMATS = {
    "keras": model_pb2.MODEL_FORMAT_KERAS,
    "h5": model_pb2.MODEL_FORMAT_H5,
    "saved_model_tar_gz": model_pb2.MODEL_FORMAT_SAVED_MODEL_TAR_GZ,
    "saved_model_zip": model_pb2.MODEL_FORMAT_SAVED_MODEL_ZIP,
    "frozen_graph": model_pb2.MODEL_FORMAT_FROZEN_GRAPH,
}
_IMAGE_SCALINGS = {
    "raw": model_pb2.IMAGE_SCALING_RAW,
    "unit": model_pb2.IMAGE_SCALING_UNIT,
    "symmetric": model_pb2.IMAGE_SCALING_SYMMETRIC,
}

# numpy dtype name <-> wire dtype. Raw `content` is little-endian whatever the host, hence the explicit "<".
_TO_WIRE = {
    "float16": tensor_pb2.DATA_TYPE_FLOAT16,
    "float32": tensor_pb2.DATA_TYPE_FLOAT32,
    "float64": tensor_pb2.DATA_TYPE_FLOAT64,
    "int8": tensor_pb2.DATA_TYPE_INT8,
    "int16": tensor_pb2.DATA_TYPE_INT16,
    "int32": tensor_pb2.DATA_TYPE_INT32,
    "int64": tensor_pb2.DATA_TYPE_INT64,
    "uint8": tensor_pb2.DATA_TYPE_UINT8,
    "bool": tensor_pb2.DATA_TYPE_BOOL,
}
_FROM_WIRE = {wire: np.dtype(name).newbyteorder("<") for name, wire in _TO_WIRE.items()}
_TYPED_FIELD = {
    tensor_pb2.DATA_TYPE_FLOAT16: "float_val",
    tensor_pb2.DATA_TYPE_FLOAT32: "float_val",
    tensor_pb2.DATA_TYPE_FLOAT64: "double_val",
    tensor_pb2.DATA_TYPE_INT8: "int_val",
    tensor_pb2.DATA_TYPE_INT16: "int_val",
    tensor_pb2.DATA_TYPE_INT32: "int_val",
    tensor_pb2.DATA_TYPE_UINT8: "int_val",
    tensor_pb2.DATA_TYPE_INT64: "int64_val",
    tensor_pb2.DATA_TYPE_BOOL: "bool_val",
}


# --- model selectors --------------------------------------------------------------------------------------


def model_ref(model: str | model_pb2.ModelRef, version: int | None = None, label: str | None = None) -> Any:
    """``"name"`` (newest), ``"name:3"`` (version 3) or ``"name@stable"`` (label) -> ``ModelRef``."""
    if isinstance(model, model_pb2.ModelRef):
        return model
    name = model
    if version is None and label is None:
        if "@" in model:
            name, label = model.split("@", 1)
        elif ":" in model:
            name, raw = model.rsplit(":", 1)
            if not raw.isdigit():
                raise ValueError(f"{model!r}: the version after ':' must be a number")
            version = int(raw)
    if version is not None:
        return model_pb2.ModelRef(name=name, version=version)
    if label is not None:
        return model_pb2.ModelRef(name=name, label=label)
    return model_pb2.ModelRef(name=name)


def ref_key(ref: model_pb2.ModelRef) -> tuple[str, str, object]:
    """A hashable key for a ``ModelRef``, for per-selector caches."""
    which = ref.WhichOneof("selector") or ""
    return ref.name, which, getattr(ref, which) if which else None


# --- tensors ----------------------------------------------------------------------------------------------


def encode_tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    """An array as a wire tensor: raw little-endian ``content`` (strings as ``string_val``, the only way)."""
    if array.dtype.kind in "OSU":
        values = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]
        return tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_STRING, shape=array.shape, string_val=values)
    wire = _TO_WIRE.get(array.dtype.name)
    if wire is None:
        raise TypeError(f"numpy dtype {array.dtype} has no Tensor Trigger equivalent")
    content = np.ascontiguousarray(array, dtype=_FROM_WIRE[wire]).tobytes()
    return tensor_pb2.Tensor(dtype=wire, shape=array.shape, content=content)


def decode_tensor(tensor: tensor_pb2.Tensor) -> np.ndarray:
    """A wire tensor as an array. Raw ``content`` is wrapped without a copy, so the array is read-only."""
    shape = tuple(tensor.shape)
    if tensor.dtype == tensor_pb2.DATA_TYPE_STRING:
        return np.array(list(tensor.string_val), dtype=object).reshape(shape)
    dtype = _FROM_WIRE.get(tensor.dtype)
    if dtype is None:
        raise ValueError(f"the server sent a tensor of unknown dtype {tensor.dtype}")
    if tensor.content or not len(getattr(tensor, _TYPED_FIELD[tensor.dtype])):
        return np.frombuffer(tensor.content, dtype).reshape(shape)
    return np.asarray(getattr(tensor, _TYPED_FIELD[tensor.dtype]), dtype).reshape(shape)


def decode_tensors(tensors: Mapping[str, tensor_pb2.Tensor]) -> dict[str, np.ndarray]:
    return {name: decode_tensor(tensor) for name, tensor in tensors.items()}


TIMING_METADATA = (("x-tt-timing", "1"),)  # asks the server for its ``server-timing`` trailer


@dataclass(frozen=True)
class ServerTiming:
    """Where the server spent one call's time, in seconds (its ``server-timing`` trailing metadata)."""

    queue: float
    """Waiting in the model's batcher queue for the model call."""
    compute: float
    """In the model call (the batch the request ran in)."""
    decode: float
    """Validating and decoding the inputs."""
    encode: float
    """Encoding the outputs."""
    total: float
    """The whole call in the server's handler (the rest of the client's latency is network and client)."""

    @classmethod
    def from_metadata(cls, metadata: Iterable[tuple[str, str | bytes]] | None) -> ServerTiming | None:
        """Parsed from trailing metadata; None when the server sent none."""
        for key, value in metadata or ():
            if key == "server-timing" and isinstance(value, str):
                parts = dict(part.strip().split(";dur=", 1) for part in value.split(",") if ";dur=" in part)
                ms = {name: float(parts.get(name, 0.0)) / 1e3 for name in ("queue", "compute", "decode", "encode")}
                return cls(**ms, total=float(parts.get("total", 0.0)) / 1e3)
        return None


class Prediction(dict[str, np.ndarray]):
    """A prediction's outputs by name (a plain dict) and, when ``timing=True`` asked for it, ``timing``."""

    timing: ServerTiming | None = None


def named_arrays(values: Arrays, specs: Sequence[tensor_pb2.TensorSpec], what: str) -> dict[str, np.ndarray]:
    """Name a bare array after the model's only input (or output), and cast to the declared dtypes.

    Casting follows numpy's "same_kind" rule, as Keras does for its own inputs: float64 data feeds a float32
    model, but floats are never truncated to ints (the server reports the mismatch instead).
    """
    if isinstance(values, Mapping):
        named = dict(values)
    elif len(specs) == 1:
        named = {specs[0].name: values}
    else:
        names = ", ".join(s.name for s in specs)
        raise ValueError(f"the model has {len(specs)} {what} ({names}): pass a dict of arrays by name")
    dtypes = {s.name: _FROM_WIRE.get(s.dtype) for s in specs}
    arrays: dict[str, np.ndarray] = {}
    for name, value in named.items():
        array = np.asarray(value)
        target = dtypes.get(name)
        if target is not None and array.dtype != target and np.can_cast(array.dtype, target, "same_kind"):
            array = array.astype(target)
        arrays[name] = array
    return arrays


def encode_arrays(values: Arrays, specs: Sequence[tensor_pb2.TensorSpec], what: str) -> dict[str, Any]:
    return {name: encode_tensor(array) for name, array in named_arrays(values, specs, what).items()}


def read_images(images: Iterable[bytes | str | os.PathLike[str]]) -> np.ndarray:
    """Encoded images (PNG or JPEG file paths, or their bytes) as the array an image input takes: the server
    decodes, resizes and scales them for the model. ``client.predict(model, read_images(["cat.png"]))``."""
    blobs = [image if isinstance(image, bytes) else Path(image).read_bytes() for image in images]
    array = np.empty(len(blobs), dtype=object)  # object, not numpy bytes: those drop trailing NUL bytes
    array[:] = blobs
    return array


# --- inference --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassScore:
    """One of the best classes of a row: its name, its index in the model's output and the model's score."""

    name: str
    index: int
    score: float


def predict_request(
    ref: model_pb2.ModelRef,
    signature: tensor_pb2.Signature,
    inputs: Arrays,
    outputs: Sequence[str] | None,
    classify: inference_service_pb2.ClassifyOptions | None = None,
) -> inference_service_pb2.PredictRequest:
    return inference_service_pb2.PredictRequest(
        model=ref,
        inputs=encode_arrays(inputs, signature.inputs, "inputs"),
        output_filter=list(outputs or []),
        output_encoding=tensor_pb2.TENSOR_ENCODING_CONTENT,
        classify=classify,
    )


def classify_options(top_k: int, output: str | None) -> inference_service_pb2.ClassifyOptions:
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    return inference_service_pb2.ClassifyOptions(top_k=top_k, output=output or "", omit_outputs=True)


def classifications(response: inference_service_pb2.PredictResponse) -> list[list[ClassScore]]:
    return [[ClassScore(c.name, c.index, c.score) for c in row.classes] for row in response.classifications]


def batch_request(
    ref: model_pb2.ModelRef,
    signature: tensor_pb2.Signature,
    inputs: Arrays,
    outputs: Sequence[str] | None,
    sequence: int,
) -> inference_service_pb2.PredictBatchRequest:
    """Chunk ``sequence`` of a PredictBatch stream; only the first names the model and outputs (the server pins
    the version for the whole stream from it)."""
    first = sequence == 0
    return inference_service_pb2.PredictBatchRequest(
        model=ref if first else None,
        inputs=encode_arrays(inputs, signature.inputs, "inputs"),
        output_filter=list(outputs or []) if first else [],
        output_encoding=tensor_pb2.TENSOR_ENCODING_CONTENT if first else tensor_pb2.TENSOR_ENCODING_UNSPECIFIED,
        request_id=str(sequence),
    )


def batch_outputs(response: inference_service_pb2.PredictBatchResponse, expected: int) -> dict[str, np.ndarray]:
    """A PredictBatch answer's outputs, checking it answers chunk ``expected`` (the server answers in order)."""
    if response.sequence != expected:
        raise RuntimeError(f"PredictBatch answered chunk {response.sequence} where {expected} was due")
    return decode_tensors(response.outputs)


# --- registry ---------------------------------------------------------------------------------------------


def pack_saved_model(directory: Path) -> Path:
    """Pack a SavedModel directory as .tar.gz in a temporary file, which the caller deletes."""
    fd, name = tempfile.mkstemp(suffix=".tar.gz", prefix="tt-upload-")
    os.close(fd)
    with tarfile.open(name, "w:gz") as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return Path(name)


def upload_header(
    name: str,
    artifact: Path,
    *,
    packed: bool,
    format: str | None,
    description: str,
    feature_names: Sequence[str] | None,
    metadata: Mapping[str, str] | None,
    labels: Sequence[str] | None,
    input_nodes: Sequence[str] | None = None,
    output_nodes: Sequence[str] | None = None,
    class_names: Sequence[str] | str | os.PathLike[str] | None = None,
    image_scaling: str | None = None,
    serving_policy: str | None = None,
) -> registry_service_pb2.UploadModelVersionRequest:
    if format is not None and format not in _FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(_FORMATS)} or None to detect")
    if image_scaling is not None and image_scaling not in _IMAGE_SCALINGS:
        raise ValueError(f"unknown image_scaling {image_scaling!r}; expected one of {', '.join(_IMAGE_SCALINGS)}")
    if (input_nodes is None) != (output_nodes is None):
        raise ValueError("a frozen graph needs both input_nodes and output_nodes")
    if format is not None:
        wire_format = _FORMATS[format]
    elif packed:
        wire_format = model_pb2.MODEL_FORMAT_SAVED_MODEL_TAR_GZ
    else:
        wire_format = model_pb2.MODEL_FORMAT_UNSPECIFIED  # the server detects it from the bytes
    header = registry_service_pb2.UploadHeader(
        model_name=name,
        format=wire_format,
        description=description,
        feature_names=list(feature_names or []),
        metadata=dict(metadata or {}),
        labels=list(labels or []),
        expected_size_bytes=artifact.stat().st_size,
        frozen_graph=(
            model_pb2.FrozenGraphNodes(input_nodes=list(input_nodes), output_nodes=list(output_nodes or []))
            if input_nodes is not None
            else None
        ),
        class_names_text=class_names_text(class_names),
        image_scaling=_IMAGE_SCALINGS[image_scaling] if image_scaling else model_pb2.IMAGE_SCALING_UNSPECIFIED,
        serving_policy=parse_serving_policy(serving_policy) if serving_policy else None,
    )
    return registry_service_pb2.UploadModelVersionRequest(header=header)


def parse_serving_policy(text: str) -> model_pb2.ServingPolicy:
    """``latest``, ``label:<name>`` or ``version:<n>`` -> a ``ServingPolicy`` message."""
    kind, _, value = text.strip().partition(":")
    if kind == "latest" and not value:
        return model_pb2.ServingPolicy(latest=model_pb2.ServingPolicy.Latest())
    if kind == "label" and value:
        return model_pb2.ServingPolicy(label=value)
    if kind == "version" and value.isdigit():
        return model_pb2.ServingPolicy(version=int(value))
    raise ValueError(f"not a serving policy: {text!r} (use latest, label:<name> or version:<n>)")


def format_serving_policy(policy: model_pb2.ServingPolicy) -> str:
    """The inverse of ``parse_serving_policy``."""
    mode = policy.WhichOneof("mode")
    if mode == "label":
        return f"label:{policy.label}"
    if mode == "version":
        return f"version:{policy.version}"
    return "latest"


def class_names_text(class_names: Sequence[str] | str | os.PathLike[str] | None) -> str:
    """A labels file's text: read from a path (``str`` or ``PathLike``), or built from a list of names."""
    if class_names is None:
        return ""
    if isinstance(class_names, str | os.PathLike):
        return Path(class_names).read_text(encoding="utf-8")
    return "".join(f"{name}\n" for name in class_names)


@dataclass
class DownloadState:
    """What a model download has received so far."""

    version: model_pb2.ModelVersion | None = None
    received: int = 0

    def chunk(self, message: registry_service_pb2.DownloadModelVersionResponse) -> bytes:
        """The bytes a message carries (none for the leading version record, which it remembers)."""
        if message.WhichOneof("payload") == "version":
            self.version = message.version
            return b""
        self.received += len(message.chunk)
        return message.chunk


# --- jobs -------------------------------------------------------------------------------------------------


class JobOptions(TypedDict, total=False):
    """How a job reads its CSV input and writes its results (all optional)."""

    has_header: bool
    """The first row holds column names (default True)."""
    delimiter: str
    """Field delimiter (default ",")."""
    feature_columns: Sequence[str]
    """Input feature columns by name, in the model's order (default: the version's feature names)."""
    feature_column_indices: Sequence[int]
    """Input feature columns by zero-based position (instead of names)."""
    passthrough_columns: Sequence[str]
    """Columns copied to the results unchanged, e.g. an id."""
    output_format: str
    """"csv" (default), "jsonl" or "parquet"."""
    input_format: str
    """"csv", "parquet" or "jsonl"; default: from the file name's extension (".parquet", ".jsonl"), else CSV."""
    skip_bad_rows: bool
    """Skip (and report) malformed rows instead of failing the job."""
    annotations: Mapping[str, str]
    """Free-form labels stored with the job."""
    output_uri: str
    """Write the results under this ``s3://bucket/prefix/`` (allowed by the server) instead of its blob store."""


_OUTPUT_FORMATS = {
    "csv": jobs_service_pb2.OUTPUT_FORMAT_CSV,
    "jsonl": jobs_service_pb2.OUTPUT_FORMAT_JSONL,
    "parquet": jobs_service_pb2.OUTPUT_FORMAT_PARQUET,
}
_INPUT_FORMATS = {
    "csv": jobs_service_pb2.INPUT_FORMAT_CSV,
    "parquet": jobs_service_pb2.INPUT_FORMAT_PARQUET,
    "jsonl": jobs_service_pb2.INPUT_FORMAT_JSONL,
}


def input_format_of(name: str) -> str:
    """The input format a file name suggests: ".parquet"/".pq" -> parquet, ".jsonl"/".ndjson" -> jsonl."""
    lowered = name.lower()
    if lowered.endswith((".parquet", ".pq")):
        return "parquet"
    if lowered.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return "csv"


def is_object_uri(path: object) -> bool:
    """``s3://bucket/key``: an input the server reads from object storage itself (nothing is uploaded)."""
    return isinstance(path, str) and path.startswith("s3://")


def job_spec_request(
    model: str | model_pb2.ModelRef, options: JobOptions, source: str, input_uri: str = ""
) -> jobs_service_pb2.CreateJobRequest:
    output_format = options.get("output_format", "csv")
    if output_format not in _OUTPUT_FORMATS:
        raise ValueError(f"unknown output_format {output_format!r}; expected csv, jsonl or parquet")
    input_format = options.get("input_format") or input_format_of(source)
    if input_format not in _INPUT_FORMATS:
        raise ValueError(f"unknown input_format {input_format!r}; expected csv, parquet or jsonl")
    spec = jobs_service_pb2.JobSpec(
        model=model_ref(model),
        input_format=_INPUT_FORMATS[input_format],
        csv=jobs_service_pb2.CsvOptions(
            has_header=options.get("has_header", True),
            delimiter=options.get("delimiter", ","),
            feature_columns=list(options.get("feature_columns", [])),
            feature_column_indices=list(options.get("feature_column_indices", [])),
            passthrough_columns=list(options.get("passthrough_columns", [])),
        ),
        output_format=_OUTPUT_FORMATS[output_format],
        skip_bad_rows=options.get("skip_bad_rows", False),
        annotations=dict(options.get("annotations", {})),
        input_uri=input_uri,
        output_uri=options.get("output_uri", ""),
    )
    return jobs_service_pb2.CreateJobRequest(spec=spec)


def job_state(state: str | int | None) -> jobs_service_pb2.JobState:
    """``"running"``, ``"RUNNING"``, ``"JOB_STATE_RUNNING"`` or the enum number -> the enum (None -> unspecified)."""
    if state is None:
        return jobs_service_pb2.JOB_STATE_UNSPECIFIED
    if isinstance(state, int):
        return cast(jobs_service_pb2.JobState, jobs_service_pb2.JobState.Value(jobs_service_pb2.JobState.Name(state)))
    name = state.upper()
    number = jobs_service_pb2.JobState.Value(name if name.startswith("JOB_STATE_") else f"JOB_STATE_{name}")
    return cast(jobs_service_pb2.JobState, number)  # protoc's stubs type an enum's numbers as plain int


def state_name(state: int) -> str:
    """``JOB_STATE_RUNNING`` -> ``"RUNNING"``."""
    return jobs_service_pb2.JobState.Name(state).removeprefix("JOB_STATE_")


TERMINAL_STATES = frozenset(
    {jobs_service_pb2.JOB_STATE_SUCCEEDED, jobs_service_pb2.JOB_STATE_FAILED, jobs_service_pb2.JOB_STATE_CANCELLED}
)


@dataclass
class ResultsCursor:
    """Where a results download stands; a retried stream asks for ``offset``, so nothing is fetched twice."""

    offset: int = 0
    total: int = 0

    def request(self, job_id: str) -> Callable[[], jobs_service_pb2.GetJobResultsRequest]:
        """Builds each attempt's request, from wherever the previous attempt stopped."""
        return lambda: jobs_service_pb2.GetJobResultsRequest(id=job_id, offset=self.offset)

    def chunk(self, message: jobs_service_pb2.GetJobResultsResponse) -> bytes:
        if message.offset != self.offset:
            raise RuntimeError(f"GetJobResults sent offset {message.offset} where {self.offset} was due")
        self.offset += len(message.chunk)
        self.total = message.total_size_bytes
        return message.chunk


# --- training ---------------------------------------------------------------------------------------------


class TrainOptions(TypedDict, total=False):
    """How an online training session runs (all optional; the server's defaults are the model's own)."""

    loss: str
    """Keras loss name, e.g. "mse" (default: the model's compile config)."""
    optimizer: str
    """"sgd", "adam", "adamw" or "rmsprop" (default: the model's compile config, else Adam)."""
    learning_rate: float
    momentum: float
    """Momentum for SGD."""
    micro_batch_size: int
    """Examples per train step, whatever the size of the batches sent (default 32)."""
    checkpoint_every_examples: int
    """Publish a version after every this many examples."""
    checkpoint_every_seconds: float
    """Publish a version at most this often while examples arrive."""
    checkpoint_on_end: bool
    """Publish a version when the examples run out (default True)."""
    move_label: str
    """Label moved to each published version, e.g. "online"."""
    on_abort: str
    """"checkpoint" (default) or "discard": what happens to unsaved progress if the stream breaks."""
    wait_for_lease: bool
    """Wait for another session on the model to finish instead of failing."""
    metrics: Sequence[str]
    """Extra Keras metrics to report, e.g. "accuracy"."""
    promote: bool
    """Promote the last checkpoint at the end, so the model's ``latest`` serving policy serves it."""
    drop_non_finite: bool
    """Drop examples holding NaN or infinite values (counted in progress) instead of failing the stream."""


_OPTIMIZERS = {
    "sgd": inference_service_pb2.OPTIMIZER_SGD,
    "adam": inference_service_pb2.OPTIMIZER_ADAM,
    "adamw": inference_service_pb2.OPTIMIZER_ADAMW,
    "rmsprop": inference_service_pb2.OPTIMIZER_RMSPROP,
}
_ON_ABORT = {"checkpoint": inference_service_pb2.ON_ABORT_CHECKPOINT, "discard": inference_service_pb2.ON_ABORT_DISCARD}


def train_config_request(model: str | model_pb2.ModelRef, options: TrainOptions) -> inference_service_pb2.TrainRequest:
    optimizer = options.get("optimizer")
    if optimizer is not None and optimizer.lower() not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(_OPTIMIZERS)}")
    on_abort = options.get("on_abort", "checkpoint")
    if on_abort not in _ON_ABORT:
        raise ValueError(f"unknown on_abort {on_abort!r}; expected checkpoint or discard")
    config = inference_service_pb2.TrainConfig(
        model=model_ref(model),
        loss=options.get("loss", ""),
        optimizer=_OPTIMIZERS[optimizer.lower()] if optimizer else inference_service_pb2.OPTIMIZER_UNSPECIFIED,
        learning_rate=options.get("learning_rate", 0.0),
        momentum=options.get("momentum", 0.0),
        micro_batch_size=options.get("micro_batch_size", 0),
        checkpoint=inference_service_pb2.CheckpointPolicy(
            every_examples=options.get("checkpoint_every_examples", 0),
            every_seconds=options.get("checkpoint_every_seconds", 0.0),
            on_end=options.get("checkpoint_on_end", True),
        ),
        move_label=options.get("move_label", ""),
        on_abort=_ON_ABORT[on_abort],
        wait_for_lease=options.get("wait_for_lease", False),
        metrics=list(options.get("metrics", [])),
        promote=options.get("promote", False),
        drop_non_finite=options.get("drop_non_finite", False),
    )
    return inference_service_pb2.TrainRequest(config=config)


def train_examples_request(
    signature: tensor_pb2.Signature, features: Arrays, labels: Arrays
) -> inference_service_pb2.TrainRequest:
    examples = inference_service_pb2.TrainExamples(
        features=encode_arrays(features, signature.inputs, "inputs"),
        labels=encode_arrays(labels, signature.outputs, "outputs"),
    )
    return inference_service_pb2.TrainRequest(examples=examples)


@dataclass
class TrainResult:
    """What a training session did."""

    session_id: str = ""
    base_version: int = 0
    """The version training started from."""
    steps: int = 0
    examples_seen: int = 0
    last_version: int = 0
    """The last version published; 0 when none."""
    checkpoints: list[model_pb2.ModelVersion] = field(default_factory=list)
    """Every version the session published, in order."""
    last_progress: inference_service_pb2.TrainProgress | None = None
    """The metrics after the last train step."""


class TrainEvents:
    """Folds a Train response stream into a ``TrainResult``, calling ``on_progress`` after every step."""

    def __init__(self, on_progress: Callable[[inference_service_pb2.TrainProgress], None] | None) -> None:
        self.result = TrainResult()
        self._on_progress = on_progress

    def apply(self, response: inference_service_pb2.TrainResponse) -> None:
        event = response.WhichOneof("event")
        result = self.result
        if event == "started":
            result.session_id = response.started.session_id
            result.base_version = response.started.base_version
        elif event == "progress":
            result.last_progress = response.progress
            result.steps = response.progress.step
            result.examples_seen = response.progress.examples_seen
            if self._on_progress is not None:
                self._on_progress(response.progress)
        elif event == "checkpoint":
            result.checkpoints.append(response.checkpoint.version)
            result.last_version = response.checkpoint.version.version
        elif event == "finished":
            result.steps = response.finished.steps
            result.examples_seen = response.finished.examples_seen
            result.last_version = response.finished.last_version or result.last_version


# --- health -----------------------------------------------------------------------------------------------

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
# grpc.health.v1's HealthCheckRequest {string service = 1} and HealthCheckResponse {ServingStatus status = 1} have
# the same wire format as the well-known StringValue and Int32Value, which protobuf ships: no need to depend on
# grpcio-health-checking for two one-field messages.
HEALTH_REQUEST = wrappers_pb2.StringValue
HEALTH_RESPONSE = wrappers_pb2.Int32Value
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def serving_status(response: wrappers_pb2.Int32Value) -> str:
    return _SERVING_STATUS.get(response.value, "UNKNOWN")
