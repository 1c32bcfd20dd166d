from tensortrigger.v1 import model_pb2 as _model_pb2
from tensortrigger.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[Optimizer]
    OPTIMIZER_SGD: _ClassVar[Optimizer]
    OPTIMIZER_ADAM: _ClassVar[Optimizer]
    OPTIMIZER_ADAMW: _ClassVar[Optimizer]
    OPTIMIZER_RMSPROP: _ClassVar[Optimizer]

class OnAbort(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ON_ABORT_UNSPECIFIED: _ClassVar[OnAbort]
    ON_ABORT_CHECKPOINT: _ClassVar[OnAbort]
    ON_ABORT_DISCARD: _ClassVar[OnAbort]

class TrainControl(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAIN_CONTROL_UNSPECIFIED: _ClassVar[TrainControl]
    TRAIN_CONTROL_CHECKPOINT: _ClassVar[TrainControl]
    TRAIN_CONTROL_END: _ClassVar[TrainControl]
OPTIMIZER_UNSPECIFIED: Optimizer
OPTIMIZER_SGD: Optimizer
OPTIMIZER_ADAM: Optimizer
OPTIMIZER_ADAMW: Optimizer
OPTIMIZER_RMSPROP: Optimizer
ON_ABORT_UNSPECIFIED: OnAbort
ON_ABORT_CHECKPOINT: OnAbort
ON_ABORT_DISCARD: OnAbort
TRAIN_CONTROL_UNSPECIFIED: TrainControl
TRAIN_CONTROL_CHECKPOINT: TrainControl
TRAIN_CONTROL_END: TrainControl

class PredictRequest(_message.Message):
    __slots__ = ("model", "inputs", "output_filter", "output_encoding", "classify")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FILTER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    CLASSIFY_FIELD_NUMBER: _ClassVar[int]
    model: _model_pb2.ModelRef
    inputs: _containers.MessageMap[str, _tensor_pb2.Tensor]
    output_filter: _containers.RepeatedScalarFieldContainer[str]
    output_encoding: _tensor_pb2.TensorEncoding
    classify: ClassifyOptions
    def __init__(self, model: _Optional[_Union[_model_pb2.ModelRef, _Mapping]] = ..., inputs: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., output_filter: _Optional[_Iterable[str]] = ..., output_encoding: _Optional[_Union[_tensor_pb2.TensorEncoding, str]] = ..., classify: _Optional[_Union[ClassifyOptions, _Mapping]] = ...) -> None: ...

class ClassifyOptions(_message.Message):
    __slots__ = ("top_k", "output", "omit_outputs")
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OMIT_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    top_k: int
    output: str
    omit_outputs: bool
    def __init__(self, top_k: _Optional[int] = ..., output: _Optional[str] = ..., omit_outputs: _Optional[bool] = ...) -> None: ...

class ClassScore(_message.Message):
    __slots__ = ("index", "name", "score")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    score: float
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("classes",)
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedCompositeFieldContainer[ClassScore]
    def __init__(self, classes: _Optional[_Iterable[_Union[ClassScore, _Mapping]]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "outputs", "classifications")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    outputs: _containers.MessageMap[str, _tensor_pb2.Tensor]
    classifications: _containers.RepeatedCompositeFieldContainer[Classification]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., outputs: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., classifications: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ...) -> None: ...

class PredictBatchRequest(_message.Message):
    __slots__ = ("model", "inputs", "output_filter", "output_encoding", "request_id")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FILTER_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: _model_pb2.ModelRef
    inputs: _containers.MessageMap[str, _tensor_pb2.Tensor]
    output_filter: _containers.RepeatedScalarFieldContainer[str]
    output_encoding: _tensor_pb2.TensorEncoding
    request_id: str
    def __init__(self, model: _Optional[_Union[_model_pb2.ModelRef, _Mapping]] = ..., inputs: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., output_filter: _Optional[_Iterable[str]] = ..., output_encoding: _Optional[_Union[_tensor_pb2.TensorEncoding, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class PredictBatchResponse(_message.Message):
    __slots__ = ("request_id", "model_name", "model_version", "outputs", "sequence")
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_name: str
    model_version: int
    outputs: _containers.MessageMap[str, _tensor_pb2.Tensor]
    sequence: int
    def __init__(self, request_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., outputs: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., sequence: _Optional[int] = ...) -> None: ...

class CheckpointPolicy(_message.Message):
    __slots__ = ("every_examples", "every_seconds", "on_end")
    EVERY_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    EVERY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ON_END_FIELD_NUMBER: _ClassVar[int]
    every_examples: int
    every_seconds: float
    on_end: bool
    def __init__(self, every_examples: _Optional[int] = ..., every_seconds: _Optional[float] = ..., on_end: _Optional[bool] = ...) -> None: ...

class TrainConfig(_message.Message):
    __slots__ = ("model", "loss", "optimizer", "learning_rate", "momentum", "micro_batch_size", "checkpoint", "move_label", "on_abort", "wait_for_lease", "metrics", "promote", "drop_non_finite")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    MOVE_LABEL_FIELD_NUMBER: _ClassVar[int]
    ON_ABORT_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_LEASE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PROMOTE_FIELD_NUMBER: _ClassVar[int]
    DROP_NON_FINITE_FIELD_NUMBER: _ClassVar[int]
    model: _model_pb2.ModelRef
    loss: str
    optimizer: Optimizer
    learning_rate: float
    momentum: float
    micro_batch_size: int
    checkpoint: CheckpointPolicy
    move_label: str
    on_abort: OnAbort
    wait_for_lease: bool
    metrics: _containers.RepeatedScalarFieldContainer[str]
    promote: bool
    drop_non_finite: bool
    def __init__(self, model: _Optional[_Union[_model_pb2.ModelRef, _Mapping]] = ..., loss: _Optional[str] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., learning_rate: _Optional[float] = ..., momentum: _Optional[float] = ..., micro_batch_size: _Optional[int] = ..., checkpoint: _Optional[_Union[CheckpointPolicy, _Mapping]] = ..., move_label: _Optional[str] = ..., on_abort: _Optional[_Union[OnAbort, str]] = ..., wait_for_lease: _Optional[bool] = ..., metrics: _Optional[_Iterable[str]] = ..., promote: _Optional[bool] = ..., drop_non_finite: _Optional[bool] = ...) -> None: ...

class TrainExamples(_message.Message):
    __slots__ = ("features", "labels", "evaluate_only")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    features: _containers.MessageMap[str, _tensor_pb2.Tensor]
    labels: _containers.MessageMap[str, _tensor_pb2.Tensor]
    evaluate_only: bool
    def __init__(self, features: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., labels: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., evaluate_only: _Optional[bool] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("config", "examples", "control")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    config: TrainConfig
    examples: TrainExamples
    control: TrainControl
    def __init__(self, config: _Optional[_Union[TrainConfig, _Mapping]] = ..., examples: _Optional[_Union[TrainExamples, _Mapping]] = ..., control: _Optional[_Union[TrainControl, str]] = ...) -> None: ...

class TrainStarted(_message.Message):
    __slots__ = ("session_id", "base_version", "loss", "optimizer", "learning_rate")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    base_version: int
    loss: str
    optimizer: Optimizer
    learning_rate: float
    def __init__(self, session_id: _Optional[str] = ..., base_version: _Optional[int] = ..., loss: _Optional[str] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., learning_rate: _Optional[float] = ...) -> None: ...

class TrainProgress(_message.Message):
    __slots__ = ("step", "examples_seen", "loss", "prequential", "metrics", "dropped_examples")
    class PrequentialEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_SEEN_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    PREQUENTIAL_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    step: int
    examples_seen: int
    loss: float
    prequential: _containers.ScalarMap[str, float]
    metrics: _containers.ScalarMap[str, float]
    dropped_examples: int
    def __init__(self, step: _Optional[int] = ..., examples_seen: _Optional[int] = ..., loss: _Optional[float] = ..., prequential: _Optional[_Mapping[str, float]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., dropped_examples: _Optional[int] = ...) -> None: ...

class TrainCheckpoint(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: _model_pb2.ModelVersion
    def __init__(self, version: _Optional[_Union[_model_pb2.ModelVersion, _Mapping]] = ...) -> None: ...

class TrainEvaluation(_message.Message):
    __slots__ = ("examples", "loss", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    examples: int
    loss: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, examples: _Optional[int] = ..., loss: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class TrainFinished(_message.Message):
    __slots__ = ("examples_seen", "steps", "last_version")
    EXAMPLES_SEEN_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    LAST_VERSION_FIELD_NUMBER: _ClassVar[int]
    examples_seen: int
    steps: int
    last_version: int
    def __init__(self, examples_seen: _Optional[int] = ..., steps: _Optional[int] = ..., last_version: _Optional[int] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("started", "progress", "checkpoint", "evaluation", "finished")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    started: TrainStarted
    progress: TrainProgress
    checkpoint: TrainCheckpoint
    evaluation: TrainEvaluation
    finished: TrainFinished
    def __init__(self, started: _Optional[_Union[TrainStarted, _Mapping]] = ..., progress: _Optional[_Union[TrainProgress, _Mapping]] = ..., checkpoint: _Optional[_Union[TrainCheckpoint, _Mapping]] = ..., evaluation: _Optional[_Union[TrainEvaluation, _Mapping]] = ..., finished: _Optional[_Union[TrainFinished, _Mapping]] = ...) -> None: ...
