from tensortrigger.v1 import model_pb2 as _model_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UploadHeader(_message.Message):
    __slots__ = ("model_name", "format", "description", "feature_names", "metadata", "labels", "expected_size_bytes", "expected_sha256", "frozen_graph", "class_names_text", "image_scaling", "serving_policy")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SHA256_FIELD_NUMBER: _ClassVar[int]
    FROZEN_GRAPH_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SCALING_FIELD_NUMBER: _ClassVar[int]
    SERVING_POLICY_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    format: _model_pb2.ModelFormat
    description: str
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.ScalarMap[str, str]
    labels: _containers.RepeatedScalarFieldContainer[str]
    expected_size_bytes: int
    expected_sha256: str
    frozen_graph: _model_pb2.FrozenGraphNodes
    class_names_text: str
    image_scaling: _model_pb2.ImageScaling
    serving_policy: _model_pb2.ServingPolicy
    def __init__(self, model_name: _Optional[str] = ..., format: _Optional[_Union[_model_pb2.ModelFormat, str]] = ..., description: _Optional[str] = ..., feature_names: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., labels: _Optional[_Iterable[str]] = ..., expected_size_bytes: _Optional[int] = ..., expected_sha256: _Optional[str] = ..., frozen_graph: _Optional[_Union[_model_pb2.FrozenGraphNodes, _Mapping]] = ..., class_names_text: _Optional[str] = ..., image_scaling: _Optional[_Union[_model_pb2.ImageScaling, str]] = ..., serving_policy: _Optional[_Union[_model_pb2.ServingPolicy, _Mapping]] = ...) -> None: ...

class UploadModelVersionRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadModelVersionResponse(_message.Message):
    __slots__ = ("version", "model_created")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_CREATED_FIELD_NUMBER: _ClassVar[int]
    version: _model_pb2.ModelVersion
    model_created: bool
    def __init__(self, version: _Optional[_Union[_model_pb2.ModelVersion, _Mapping]] = ..., model_created: _Optional[bool] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token", "repository_problems")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REPOSITORY_PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[_model_pb2.Model]
    next_page_token: str
    repository_problems: _containers.RepeatedCompositeFieldContainer[RepositoryProblem]
    def __init__(self, models: _Optional[_Iterable[_Union[_model_pb2.Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., repository_problems: _Optional[_Iterable[_Union[RepositoryProblem, _Mapping]]] = ...) -> None: ...

class RepositoryProblem(_message.Message):
    __slots__ = ("path", "reason")
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    path: str
    reason: str
    def __init__(self, path: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _model_pb2.Model
    def __init__(self, model: _Optional[_Union[_model_pb2.Model, _Mapping]] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("deleted_versions",)
    DELETED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    deleted_versions: int
    def __init__(self, deleted_versions: _Optional[int] = ...) -> None: ...

class ListModelVersionsRequest(_message.Message):
    __slots__ = ("name", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[_model_pb2.ModelVersion]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[_model_pb2.ModelVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelVersionRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _model_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_model_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class GetModelVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: _model_pb2.ModelVersion
    def __init__(self, version: _Optional[_Union[_model_pb2.ModelVersion, _Mapping]] = ...) -> None: ...

class DeleteModelVersionRequest(_message.Message):
    __slots__ = ("name", "version", "force")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    force: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteModelVersionResponse(_message.Message):
    __slots__ = ("removed_labels",)
    REMOVED_LABELS_FIELD_NUMBER: _ClassVar[int]
    removed_labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed_labels: _Optional[_Iterable[str]] = ...) -> None: ...

class SetLabelRequest(_message.Message):
    __slots__ = ("name", "label", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    label: str
    version: int
    def __init__(self, name: _Optional[str] = ..., label: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class SetLabelResponse(_message.Message):
    __slots__ = ("previous_version",)
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    previous_version: int
    def __init__(self, previous_version: _Optional[int] = ...) -> None: ...

class DeleteLabelRequest(_message.Message):
    __slots__ = ("name", "label")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    label: str
    def __init__(self, name: _Optional[str] = ..., label: _Optional[str] = ...) -> None: ...

class DeleteLabelResponse(_message.Message):
    __slots__ = ("previous_version",)
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    previous_version: int
    def __init__(self, previous_version: _Optional[int] = ...) -> None: ...

class DownloadModelVersionRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _model_pb2.ModelRef
    def __init__(self, model: _Optional[_Union[_model_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class DownloadModelVersionResponse(_message.Message):
    __slots__ = ("version", "chunk")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    version: _model_pb2.ModelVersion
    chunk: bytes
    def __init__(self, version: _Optional[_Union[_model_pb2.ModelVersion, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class SetServingPolicyRequest(_message.Message):
    __slots__ = ("name", "policy")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy: _model_pb2.ServingPolicy
    def __init__(self, name: _Optional[str] = ..., policy: _Optional[_Union[_model_pb2.ServingPolicy, _Mapping]] = ...) -> None: ...

class SetServingPolicyResponse(_message.Message):
    __slots__ = ("previous_policy", "served_version")
    PREVIOUS_POLICY_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    previous_policy: _model_pb2.ServingPolicy
    served_version: int
    def __init__(self, previous_policy: _Optional[_Union[_model_pb2.ServingPolicy, _Mapping]] = ..., served_version: _Optional[int] = ...) -> None: ...

class PromoteModelVersionRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class PromoteModelVersionResponse(_message.Message):
    __slots__ = ("version", "served_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: _model_pb2.ModelVersion
    served_version: int
    def __init__(self, version: _Optional[_Union[_model_pb2.ModelVersion, _Mapping]] = ..., served_version: _Optional[int] = ...) -> None: ...

class SetModelDescriptionRequest(_message.Message):
    __slots__ = ("name", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class SetModelDescriptionResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _model_pb2.Model
    def __init__(self, model: _Optional[_Union[_model_pb2.Model, _Mapping]] = ...) -> None: ...

class SetRetentionPolicyRequest(_message.Message):
    __slots__ = ("name", "retention")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    retention: _model_pb2.RetentionPolicy
    def __init__(self, name: _Optional[str] = ..., retention: _Optional[_Union[_model_pb2.RetentionPolicy, _Mapping]] = ...) -> None: ...

class SetRetentionPolicyResponse(_message.Message):
    __slots__ = ("retention", "pruned_versions")
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    PRUNED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    retention: _model_pb2.RetentionPolicy
    pruned_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, retention: _Optional[_Union[_model_pb2.RetentionPolicy, _Mapping]] = ..., pruned_versions: _Optional[_Iterable[int]] = ...) -> None: ...
