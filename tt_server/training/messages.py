"""What flows through a training session: the client's inputs and the session's events (no gRPC, no TensorFlow).

A stream is ``TrainSpec`` first, then any mix of ``Examples`` and ``Control``; the session answers with
``Started``, then ``Progress`` / ``Checkpointed`` / ``Evaluated`` as they happen, and ``Finished`` last when
the stream ends normally (an abnormal end is an exception instead).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tt_server.types import ModelRef, ModelVersion, WireTensor

DEFAULT_MICRO_BATCH = 32


class OptimizerKind(enum.StrEnum):
    """The optimizers a client can ask for (Keras class names)."""

    SGD = "SGD"
    ADAM = "Adam"
    ADAMW = "AdamW"
    RMSPROP = "RMSprop"


class OnAbort(enum.StrEnum):
    """What happens to progress since the last checkpoint when a stream ends abruptly."""

    CHECKPOINT = "checkpoint"
    DISCARD = "discard"


class Control(enum.StrEnum):
    CHECKPOINT = "checkpoint"  # publish now, after training on everything received
    END = "end"  # finish as if the client half-closed


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When checkpoints are published; zero / False switch a trigger off."""

    every_examples: int = 0
    every_seconds: float = 0.0
    on_end: bool = True


@dataclass(frozen=True, slots=True)
class TrainSpec:
    """A session's configuration; None means "from the model's compile config, else the default"."""

    model: ModelRef
    loss: str | None = None
    optimizer: OptimizerKind | None = None
    learning_rate: float | None = None
    momentum: float = 0.0
    micro_batch_size: int = DEFAULT_MICRO_BATCH
    checkpoint: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    move_label: str | None = None
    on_abort: OnAbort = OnAbort.CHECKPOINT
    wait_for_lease: bool = False
    metrics: tuple[str, ...] = ()
    promote: bool = False  # promote the last checkpoint when the session ends normally
    drop_non_finite: bool = False  # drop examples holding NaN/Inf instead of failing the stream


@dataclass(frozen=True, slots=True)
class Examples:
    """Labelled examples as they arrived, before validation against the model."""

    features: dict[str, WireTensor]
    labels: dict[str, WireTensor]
    evaluate_only: bool = False


TrainInput = TrainSpec | Examples | Control


# --- events -------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Started:
    session_id: str
    base_version: int
    loss: str
    optimizer: OptimizerKind
    learning_rate: float


@dataclass(frozen=True, slots=True)
class Progress:
    step: int
    examples_seen: int
    loss: float
    prequential: dict[str, float]  # scored before the step's update: "loss", "accuracy" (classification)
    metrics: dict[str, float]  # the requested metrics, over the same pre-update predictions
    dropped_examples: int = 0  # dropped so far in the session for holding NaN/Inf


@dataclass(frozen=True, slots=True)
class Checkpointed:
    version: ModelVersion


@dataclass(frozen=True, slots=True)
class Evaluated:
    examples: int
    loss: float
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class Finished:
    examples_seen: int
    steps: int
    last_version: int  # 0 when nothing was published


TrainEvent = Started | Progress | Checkpointed | Evaluated | Finished
