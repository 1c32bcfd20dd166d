"""Tensor Trigger Python client: ``Client`` (blocking) and ``AsyncClient`` (asyncio), numpy in and out.

Public names are re-exported here from private modules; anything not in ``__all__`` may change without notice.
``tensortrigger.v1`` is the generated gRPC contract (the messages the registry and jobs methods return).
"""

import importlib.metadata as _metadata

from tensortrigger import v1
from tensortrigger._async_client import AsyncClient
from tensortrigger._client import Client
from tensortrigger._errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TensorTriggerError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from tensortrigger._messages import (
    ClassScore,
    JobOptions,
    Prediction,
    ServerTiming,
    TrainOptions,
    TrainResult,
    model_ref,
    read_images,
)
from tensortrigger._retry import Clock, RetryPolicy

try:
    __version__ = _metadata.version("tensortrigger-client")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "AlreadyExistsError",
    "AsyncClient",
    "ClassScore",
    "Client",
    "Clock",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InvalidArgumentError",
    "JobOptions",
    "NotFoundError",
    "PermissionDeniedError",
    "Prediction",
    "ResourceExhaustedError",
    "RetryPolicy",
    "ServerTiming",
    "TensorTriggerError",
    "TrainOptions",
    "TrainResult",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "__version__",
    "model_ref",
    "read_images",
    "v1",
]
