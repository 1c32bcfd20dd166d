"""Train stream protobuf <-> training domain conversions. Pure functions, no I/O, no business rules."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tensortrigger.v1 import inference_service_pb2 as pb

from tt_server.api import convert
from tt_server.api.tensors import wire_tensors
from tt_server.errors import InvalidArgument
from tt_server.training.messages import (
    DEFAULT_MICRO_BATCH,
    Checkpointed,
    CheckpointPolicy,
    Control,
    Evaluated,
    Examples,
    Finished,
    OnAbort,
    OptimizerKind,
    Progress,
    Started,
    TrainEvent,
    TrainInput,
    TrainSpec,
)

OPTIMIZER_TO_PB: dict[OptimizerKind, int] = {
    OptimizerKind.SGD: pb.OPTIMIZER_SGD,
    OptimizerKind.ADAM: pb.OPTIMIZER_ADAM,
    OptimizerKind.ADAMW: pb.OPTIMIZER_ADAMW,
    OptimizerKind.RMSPROP: pb.OPTIMIZER_RMSPROP,
}
OPTIMIZER_FROM_PB: dict[int, OptimizerKind] = {v: k for k, v in OPTIMIZER_TO_PB.items()}
_CONTROL_FROM_PB = {pb.TRAIN_CONTROL_CHECKPOINT: Control.CHECKPOINT, pb.TRAIN_CONTROL_END: Control.END}


async def train_inputs(requests: AsyncIterator[pb.TrainRequest]) -> AsyncIterator[TrainInput]:
    """The stream's messages as domain inputs; a malformed one raises ``InvalidArgument`` where it stands."""
    async for request in requests:
        item = train_input(request)
        if item is not None:
            yield item


def train_input(request: pb.TrainRequest) -> TrainInput | None:
    """One message; None for a no-op (``TRAIN_CONTROL_UNSPECIFIED``)."""
    payload = request.WhichOneof("payload")
    if payload == "config":
        return train_spec(request.config)
    if payload == "examples":
        ex = request.examples
        return Examples(
            features=wire_tensors(ex.features, "examples.features"),
            labels=wire_tensors(ex.labels, "examples.labels"),
            evaluate_only=ex.evaluate_only,
        )
    if payload == "control":
        if request.control == pb.TRAIN_CONTROL_UNSPECIFIED:
            return None
        control = _CONTROL_FROM_PB.get(request.control)
        if control is None:
            raise InvalidArgument.field("control", f"unknown control {request.control}")
        return control
    raise InvalidArgument.field("payload", "a Train message must carry config, examples or control")


def train_spec(config: pb.TrainConfig) -> TrainSpec:
    if not config.HasField("model"):
        raise InvalidArgument.field("config.model", "the model to train is required")
    optimizer = None
    if config.optimizer:
        optimizer = OPTIMIZER_FROM_PB.get(config.optimizer)
        if optimizer is None:
            raise InvalidArgument.field("config.optimizer", f"unknown optimizer {config.optimizer}")
    policy = CheckpointPolicy()  # unset: publish at the end
    if config.HasField("checkpoint"):
        c = config.checkpoint
        policy = CheckpointPolicy(every_examples=c.every_examples, every_seconds=c.every_seconds, on_end=c.on_end)
    return TrainSpec(
        model=convert.model_ref(config.model, "config.model"),
        loss=config.loss or None,
        optimizer=optimizer,
        learning_rate=config.learning_rate or None,
        momentum=config.momentum,
        micro_batch_size=config.micro_batch_size or DEFAULT_MICRO_BATCH,
        checkpoint=policy,
        move_label=config.move_label or None,
        on_abort=OnAbort.DISCARD if config.on_abort == pb.ON_ABORT_DISCARD else OnAbort.CHECKPOINT,
        wait_for_lease=config.wait_for_lease,
        metrics=tuple(config.metrics),
        promote=config.promote,
        drop_non_finite=config.drop_non_finite,
    )


def train_response(event: TrainEvent) -> pb.TrainResponse:
    if isinstance(event, Progress):  # by far the most frequent
        return pb.TrainResponse(
            progress=pb.TrainProgress(
                step=event.step,
                examples_seen=event.examples_seen,
                loss=event.loss,
                prequential=event.prequential,
                metrics=event.metrics,
                dropped_examples=event.dropped_examples,
            )
        )
    if isinstance(event, Started):
        return pb.TrainResponse(
            started=pb.TrainStarted(
                session_id=event.session_id,
                base_version=event.base_version,
                loss=event.loss,
                optimizer=OPTIMIZER_TO_PB[event.optimizer],  # type: ignore[arg-type]
                learning_rate=event.learning_rate,
            )
        )
    if isinstance(event, Checkpointed):
        return pb.TrainResponse(checkpoint=pb.TrainCheckpoint(version=convert.model_version(event.version)))
    if isinstance(event, Evaluated):
        return pb.TrainResponse(
            evaluation=pb.TrainEvaluation(examples=event.examples, loss=event.loss, metrics=event.metrics)
        )
    assert isinstance(event, Finished)
    return pb.TrainResponse(
        finished=pb.TrainFinished(examples_seen=event.examples_seen, steps=event.steps, last_version=event.last_version)
    )
