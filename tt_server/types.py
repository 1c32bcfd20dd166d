"""Domain value types shared by the registry, runtime, storage and API layers (no gRPC, no TensorFlow)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class DType(enum.StrEnum):
    """Tensor element types; values are numpy/TensorFlow dtype names."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    INT8 = "int8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    UINT8 = "uint8"
    BOOL = "bool"
    STRING = "string"


# Dtypes an image input may have: every one that holds 0..255 (int8 does not, bool and string are no pixels).
IMAGE_DTYPES = frozenset(
    {DType.UINT8, DType.INT16, DType.INT32, DType.INT64, DType.FLOAT16, DType.FLOAT32, DType.FLOAT64}
)


@dataclass(frozen=True, slots=True)
class ImageShape:
    """The size each image of an image input is resized to, and its channels (1 gray, 3 RGB, 4 RGBA)."""

    height: int
    width: int
    channels: int


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor's dtype and shape; ``-1`` in ``shape`` means any size (the batch dim usually)."""

    name: str
    dtype: DType
    shape: tuple[int, ...]

    def image_shape(self) -> ImageShape | None:
        """For an input that can take encoded images, a ``[-1, H, W, C]`` batch of pixels with H and W known and
        C of 1, 3 or 4, the size images are brought to; else None."""
        if self.dtype not in IMAGE_DTYPES or len(self.shape) != 4 or self.shape[0] != -1:
            return None
        _, height, width, channels = self.shape
        if height <= 0 or width <= 0 or channels not in (1, 3, 4):
            return None
        return ImageShape(height, width, channels)


@dataclass(frozen=True, slots=True)
class Signature:
    """A servable's named inputs and outputs, read from the model at upload."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self) -> dict[str, Any]:
        def specs(items: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
            return [{"name": s.name, "dtype": s.dtype.value, "shape": list(s.shape)} for s in items]

        return {"inputs": specs(self.inputs), "outputs": specs(self.outputs)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Signature:
        def specs(items: list[dict[str, Any]]) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(i["name"], DType(i["dtype"]), tuple(i["shape"])) for i in items)

        return cls(inputs=specs(data["inputs"]), outputs=specs(data["outputs"]))


class ModelFormat(enum.StrEnum):
    """How a version's artifact is stored; the blob holds the bytes exactly as uploaded."""

    KERAS = "keras"  # Keras 3 native .keras zip
    H5 = "h5"  # legacy Keras HDF5
    SAVED_MODEL_TAR_GZ = "saved_model_tar_gz"  # a SavedModel directory packed as .tar.gz
    SAVED_MODEL_ZIP = "saved_model_zip"  # a SavedModel directory packed as .zip
    FROZEN_GRAPH = "frozen_graph"  # a TF1 frozen GraphDef (.pb), served through the nodes in ``FrozenGraphNodes``


@dataclass(frozen=True, slots=True)
class FrozenGraphNodes:
    """The nodes a frozen graph is fed at and read from, as named at upload: ``"x"`` (its first output) or
    ``"x:1"``. Stored with the version, because a GraphDef itself does not say which nodes are its API."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "outputs": list(self.outputs)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FrozenGraphNodes:
        return cls(inputs=tuple(data["inputs"]), outputs=tuple(data["outputs"]))


def tensor_display_name(node: str) -> str:
    """The signature name of a frozen graph's node or tensor name: as given, less a trailing ``:0``."""
    return node.removesuffix(":0")


class ImageScaling(enum.StrEnum):
    """How decoded pixels (0..255) are scaled before an image input gets them."""

    RAW = "raw"  # 0..255, as decoded
    UNIT = "unit"  # value / 255: 0..1
    SYMMETRIC = "symmetric"  # value / 127.5 - 1: -1..1


class VersionSource(enum.StrEnum):
    """What created a version."""

    UPLOAD = "upload"
    TRAINING = "training"
    REPOSITORY = "repository"  # imported from TT_MODEL_REPOSITORY


@dataclass(frozen=True, slots=True)
class ServingPolicy:
    """What a request naming only the model resolves to: a label, a version, or (neither) ``latest``, the newest
    upload, repository import or promoted training checkpoint. Written as text: ``latest``, ``label:<name>``,
    ``version:<n>``."""

    label: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.label is not None:
            return f"label:{self.label}"
        if self.version is not None:
            return f"version:{self.version}"
        return "latest"

    @classmethod
    def parse(cls, text: str) -> ServingPolicy:
        """The inverse of ``str()``; raises ``ValueError`` for anything else."""
        kind, _, value = text.strip().partition(":")
        if kind == "latest" and not value:
            return cls()
        if kind == "label" and value:
            return cls(label=value)
        if kind == "version" and value.isascii() and value.isdigit() and int(value) > 0:
            return cls(version=int(value))
        raise ValueError(f"not a serving policy: {text[:80]!r} (use latest, label:<name> or version:<n>)")


DEFAULT_KEEP_TRAINING_CHECKPOINTS = 5


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How many versions of a model are kept: unpromoted training checkpoints (None = all) and versions of any
    source (None = all). Labelled, served and in-use versions are always kept."""

    keep_training_checkpoints: int | None = DEFAULT_KEEP_TRAINING_CHECKPOINTS
    keep_versions: int | None = None


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Selects one version of a model: an explicit version, a label, or (neither) the newest ready one."""

    name: str
    version: int | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One immutable version of a model and everything recorded about it."""

    model_name: str
    version: int
    format: ModelFormat
    sha256: str
    size_bytes: int
    blob_key: str
    signature: Signature
    source: VersionSource
    created_at: datetime
    description: str = ""
    feature_names: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    parent_version: int | None = None
    training_session_id: str | None = None
    labels: tuple[str, ...] = ()  # labels pointing at this version when it was read
    class_names: tuple[str, ...] = ()  # class i of the classification output is class_names[i]
    frozen_graph: FrozenGraphNodes | None = None  # set for ModelFormat.FROZEN_GRAPH only
    image_scaling: ImageScaling = ImageScaling.RAW
    promoted: bool = False  # a training checkpoint the ``latest`` serving policy may select
    retired: bool = False  # a repository version whose folder was removed: ``latest`` skips it

    @property
    def eligible_for_latest(self) -> bool:
        return (self.source is not VersionSource.TRAINING or self.promoted) and not self.retired


@dataclass(frozen=True, slots=True)
class Model:
    """A named model: a sequence of immutable versions plus movable labels."""

    name: str
    description: str
    created_at: datetime
    updated_at: datetime
    latest_version: int | None  # newest existing version, None when all were deleted
    version_count: int
    labels: dict[str, int]  # label -> version
    serving_policy: ServingPolicy = field(default_factory=ServingPolicy)
    served_version: int | None = None  # what the serving policy selects now
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing; ``next_page_token`` is empty on the last page."""

    items: list[T]
    next_page_token: str = ""


@dataclass(frozen=True, slots=True)
class WireTensor:
    """A tensor as it arrived, before validation: raw little-endian ``content`` or typed ``values``.

    Exactly one of the two is set (the API layer checks). ``values`` for STRING holds ``bytes`` items.
    """

    dtype: DType
    shape: tuple[int, ...]
    content: bytes | None = None
    values: object | None = None  # a sequence of Python scalars (protobuf repeated field)


@dataclass(frozen=True, slots=True)
class ClassifyRequest:
    """What ``Predict`` should say about classes: the ``top_k`` best of ``output`` (None = the first output)."""

    top_k: int = 5
    output: str | None = None
    omit_outputs: bool = False  # classes only, no output tensors


@dataclass(frozen=True, slots=True)
class ClassScore:
    """One class of one row: its index in the output, its name and the model's score for it."""

    index: int
    name: str
    score: float


class EventKind(enum.StrEnum):
    VERSION_CREATED = "version_created"
    VERSION_DELETED = "version_deleted"
    LABEL_MOVED = "label_moved"  # set or moved; version is the new target
    LABEL_DELETED = "label_deleted"
    MODEL_DELETED = "model_deleted"
    POLICY_CHANGED = "policy_changed"  # the serving policy changed, a version was promoted or retired


@dataclass(frozen=True, slots=True)
class RegistryEvent:
    """A registry change every replica's model manager applies (hot reload / unload)."""

    kind: EventKind
    model_name: str
    version: int | None = None
    label: str | None = None


# --- batch jobs -------------------------------------------------------------------------------------------
class JobState(enum.StrEnum):
    """Lifecycle of a batch job: QUEUED -> RUNNING -> one of the terminal states (RUNNING may go back to QUEUED
    when an attempt is released for a retry)."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class OutputFormat(enum.StrEnum):
    CSV = "csv"
    JSONL = "jsonl"
    PARQUET = "parquet"


class InputFormat(enum.StrEnum):
    CSV = "csv"
    PARQUET = "parquet"
    JSONL = "jsonl"


@dataclass(frozen=True, slots=True)
class CsvOptions:
    """How a job's CSV input is read; column names need ``has_header``."""

    has_header: bool = False
    delimiter: str = ","
    feature_columns: tuple[str, ...] = ()
    feature_column_indices: tuple[int, ...] = ()
    passthrough_columns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a job does, as the caller asked (``model`` may name a label; the job pins the version)."""

    model: ModelRef
    csv: CsvOptions = field(default_factory=CsvOptions)
    output_format: OutputFormat = OutputFormat.CSV
    skip_bad_rows: bool = False
    input_blob_key: str = ""  # an object already in the blob store, instead of streamed chunks
    annotations: dict[str, str] = field(default_factory=dict)
    input_uri: str = ""  # an object in object storage (s3://bucket/key), instead of streamed chunks
    input_format: InputFormat = InputFormat.CSV
    output_uri: str = ""  # results go under this s3:// prefix instead of the blob store


@dataclass(frozen=True, slots=True)
class RowError:
    """A malformed input row: one-based data row number (header and blank lines not counted) and why."""

    row: int
    reason: str


@dataclass(frozen=True, slots=True)
class Job:
    """A batch job and its progress, as stored."""

    id: str
    model_name: str
    model_version: int  # pinned when the job was created
    spec: JobSpec
    state: JobState
    input_blob_key: str
    input_size: int
    created_at: datetime
    rows_done: int = 0
    rows_total: int = 0  # 0 until the whole input has been read
    rows_skipped: int = 0
    row_errors: tuple[RowError, ...] = ()  # the first few, a bounded sample
    attempts: int = 0  # attempts charged against the retry budget (a clean release is not charged)
    attempt: int = 0  # number of the newest attempt: the fencing token a worker must hold to write
    lease_owner: str | None = None
    lease_until_us: int | None = None
    error: str = ""
    result_blob_key: str | None = None
    result_size: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds spent per stage by the last attempt
    started_at: datetime | None = None
    ended_at: datetime | None = None
    rows_total_estimate: int = 0  # while rows_total is unknown: from the share of the input read so far
    rows_per_second: float = 0.0  # the running attempt's recent rate
    eta_seconds: float = 0.0  # 0 when unknown
