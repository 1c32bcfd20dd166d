import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tensortrigger.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_FORMAT_UNSPECIFIED: _ClassVar[ModelFormat]
    MODEL_FORMAT_KERAS: _ClassVar[ModelFormat]
    MODEL_FORMAT_H5: _ClassVar[ModelFormat]
    MODEL_FORMAT_SAVED_MODEL_TAR_GZ: _ClassVar[ModelFormat]
    MODEL_FORMAT_SAVED_MODEL_ZIP: _ClassVar[ModelFormat]
    MODEL_FORMAT_FROZEN_GRAPH: _ClassVar[ModelFormat]

class ImageScaling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_SCALING_UNSPECIFIED: _ClassVar[ImageScaling]
    IMAGE_SCALING_RAW: _ClassVar[ImageScaling]
    IMAGE_SCALING_UNIT: _ClassVar[ImageScaling]
    IMAGE_SCALING_SYMMETRIC: _ClassVar[ImageScaling]

class VersionSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERSION_SOURCE_UNSPECIFIED: _ClassVar[VersionSource]
    VERSION_SOURCE_UPLOAD: _ClassVar[VersionSource]
    VERSION_SOURCE_TRAINING: _ClassVar[VersionSource]
    VERSION_SOURCE_REPOSITORY: _ClassVar[VersionSource]
MODEL_FORMAT_UNSPECIFIED: ModelFormat
MODEL_FORMAT_KERAS: ModelFormat
MODEL_FORMAT_H5: ModelFormat
MODEL_FORMAT_SAVED_MODEL_TAR_GZ: ModelFormat
MODEL_FORMAT_SAVED_MODEL_ZIP: ModelFormat
MODEL_FORMAT_FROZEN_GRAPH: ModelFormat
IMAGE_SCALING_UNSPECIFIED: ImageScaling
IMAGE_SCALING_RAW: ImageScaling
IMAGE_SCALING_UNIT: ImageScaling
IMAGE_SCALING_SYMMETRIC: ImageScaling
VERSION_SOURCE_UNSPECIFIED: VersionSource
VERSION_SOURCE_UPLOAD: VersionSource
VERSION_SOURCE_TRAINING: VersionSource
VERSION_SOURCE_REPOSITORY: VersionSource

class ModelRef(_message.Message):
    __slots__ = ("name", "version", "label")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    label: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., label: _Optional[str] = ...) -> None: ...

class FrozenGraphNodes(_message.Message):
    __slots__ = ("input_nodes", "output_nodes")
    INPUT_NODES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NODES_FIELD_NUMBER: _ClassVar[int]
    input_nodes: _containers.RepeatedScalarFieldContainer[str]
    output_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, input_nodes: _Optional[_Iterable[str]] = ..., output_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class ServingPolicy(_message.Message):
    __slots__ = ("latest", "label", "version")
    class Latest(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    LATEST_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    latest: ServingPolicy.Latest
    label: str
    version: int
    def __init__(self, latest: _Optional[_Union[ServingPolicy.Latest, _Mapping]] = ..., label: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RetentionPolicy(_message.Message):
    __slots__ = ("keep_training_checkpoints", "keep_versions")
    KEEP_TRAINING_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    KEEP_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    keep_training_checkpoints: int
    keep_versions: int
    def __init__(self, keep_training_checkpoints: _Optional[int] = ..., keep_versions: _Optional[int] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("model_name", "version", "format", "sha256", "size_bytes", "signature", "source", "parent_version", "training_session_id", "description", "feature_names", "metadata", "labels", "create_time", "class_names", "frozen_graph", "image_scaling", "promoted", "retired")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAINING_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    FROZEN_GRAPH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SCALING_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    RETIRED_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: int
    format: ModelFormat
    sha256: str
    size_bytes: int
    signature: _tensor_pb2.Signature
    source: VersionSource
    parent_version: int
    training_session_id: str
    description: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    class_names: _containers.RepeatedScalarFieldContainer[str]
    frozen_graph: FrozenGraphNodes
    image_scaling: ImageScaling
    promoted: bool
    retired: bool
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[int] = ..., format: _Optional[_Union[ModelFormat, str]] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., signature: _Optional[_Union[_tensor_pb2.Signature, _Mapping]] = ..., source: _Optional[_Union[VersionSource, str]] = ..., parent_version: _Optional[int] = ..., training_session_id: _Optional[str] = ..., description: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., labels: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., class_names: _Optional[_Iterable[str]] = ..., frozen_graph: _Optional[_Union[FrozenGraphNodes, _Mapping]] = ..., image_scaling: _Optional[_Union[ImageScaling, str]] = ..., promoted: _Optional[bool] = ..., retired: _Optional[bool] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "description", "latest_version", "version_count", "labels", "create_time", "update_time", "serving_policy", "served_version", "retention")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    SERVING_POLICY_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    latest_version: int
    version_count: int
    labels: _containers.ScalarMap[str, int]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    serving_policy: ServingPolicy
    served_version: int
    retention: RetentionPolicy
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., latest_version: _Optional[int] = ..., version_count: _Optional[int] = ..., labels: _Optional[_Mapping[str, int]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., serving_policy: _Optional[_Union[ServingPolicy, _Mapping]] = ..., served_version: _Optional[int] = ..., retention: _Optional[_Union[RetentionPolicy, _Mapping]] = ...) -> None: ...
