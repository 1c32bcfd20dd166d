import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tensortrigger.v1 import model_pb2 as _model_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INPUT_FORMAT_UNSPECIFIED: _ClassVar[InputFormat]
    INPUT_FORMAT_CSV: _ClassVar[InputFormat]
    INPUT_FORMAT_PARQUET: _ClassVar[InputFormat]
    INPUT_FORMAT_JSONL: _ClassVar[InputFormat]

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_CSV: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_JSONL: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_PARQUET: _ClassVar[OutputFormat]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
INPUT_FORMAT_UNSPECIFIED: InputFormat
INPUT_FORMAT_CSV: InputFormat
INPUT_FORMAT_PARQUET: InputFormat
INPUT_FORMAT_JSONL: InputFormat
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
OUTPUT_FORMAT_CSV: OutputFormat
OUTPUT_FORMAT_JSONL: OutputFormat
OUTPUT_FORMAT_PARQUET: OutputFormat
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class CsvOptions(_message.Message):
    __slots__ = ("has_header", "delimiter", "feature_columns", "feature_column_indices", "passthrough_columns")
    HAS_HEADER_FIELD_NUMBER: _ClassVar[int]
    DELIMITER_FIELD_NUMBER: _ClassVar[int]
    FEATURE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_COLUMN_INDICES_FIELD_NUMBER: _ClassVar[int]
    PASSTHROUGH_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    has_header: bool
    delimiter: str
    feature_columns: _containers.RepeatedScalarFieldContainer[str]
    feature_column_indices: _containers.RepeatedScalarFieldContainer[int]
    passthrough_columns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, has_header: _Optional[bool] = ..., delimiter: _Optional[str] = ..., feature_columns: _Optional[_Iterable[str]] = ..., feature_column_indices: _Optional[_Iterable[int]] = ..., passthrough_columns: _Optional[_Iterable[str]] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("model", "input_format", "csv", "output_format", "skip_bad_rows", "input_blob_key", "annotations", "input_uri", "output_uri")
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    CSV_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SKIP_BAD_ROWS_FIELD_NUMBER: _ClassVar[int]
    INPUT_BLOB_KEY_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_URI_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URI_FIELD_NUMBER: _ClassVar[int]
    model: _model_pb2.ModelRef
    input_format: InputFormat
    csv: CsvOptions
    output_format: OutputFormat
    skip_bad_rows: bool
    input_blob_key: str
    annotations: _containers.ScalarMap[str, str]
    input_uri: str
    output_uri: str
    def __init__(self, model: _Optional[_Union[_model_pb2.ModelRef, _Mapping]] = ..., input_format: _Optional[_Union[InputFormat, str]] = ..., csv: _Optional[_Union[CsvOptions, _Mapping]] = ..., output_format: _Optional[_Union[OutputFormat, str]] = ..., skip_bad_rows: _Optional[bool] = ..., input_blob_key: _Optional[str] = ..., annotations: _Optional[_Mapping[str, str]] = ..., input_uri: _Optional[str] = ..., output_uri: _Optional[str] = ...) -> None: ...

class CreateJobRequest(_message.Message):
    __slots__ = ("spec", "chunk")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    chunk: bytes
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class RowError(_message.Message):
    __slots__ = ("row", "reason")
    ROW_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    row: int
    reason: str
    def __init__(self, row: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "model", "spec", "state", "rows_done", "rows_total", "rows_skipped", "row_errors", "attempts", "error", "input_size_bytes", "result_size_bytes", "create_time", "start_time", "end_time", "result_uri", "rows_total_estimate", "rows_per_second", "eta_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ROWS_DONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROWS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ROW_ERRORS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESULT_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    RESULT_URI_FIELD_NUMBER: _ClassVar[int]
    ROWS_TOTAL_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: _model_pb2.ModelRef
    spec: JobSpec
    state: JobState
    rows_done: int
    rows_total: int
    rows_skipped: int
    row_errors: _containers.RepeatedCompositeFieldContainer[RowError]
    attempts: int
    error: str
    input_size_bytes: int
    result_size_bytes: int
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    result_uri: str
    rows_total_estimate: int
    rows_per_second: float
    eta_seconds: float
    def __init__(self, id: _Optional[str] = ..., model: _Optional[_Union[_model_pb2.ModelRef, _Mapping]] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., rows_done: _Optional[int] = ..., rows_total: _Optional[int] = ..., rows_skipped: _Optional[int] = ..., row_errors: _Optional[_Iterable[_Union[RowError, _Mapping]]] = ..., attempts: _Optional[int] = ..., error: _Optional[str] = ..., input_size_bytes: _Optional[int] = ..., result_size_bytes: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result_uri: _Optional[str] = ..., rows_total_estimate: _Optional[int] = ..., rows_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "model_name", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    model_name: str
    state: JobState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., model_name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobResultsRequest(_message.Message):
    __slots__ = ("id", "offset")
    ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    id: str
    offset: int
    def __init__(self, id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class GetJobResultsResponse(_message.Message):
    __slots__ = ("chunk", "offset", "total_size_bytes")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    offset: int
    total_size_bytes: int
    def __init__(self, chunk: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_size_bytes: _Optional[int] = ...) -> None: ...
