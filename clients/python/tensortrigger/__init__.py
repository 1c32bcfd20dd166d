"""Tensor Trigger Python client. Public names are re-exported here; everything else is private."""

from tensortrigger._client import Client, model_ref
from tensortrigger._errors import (
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    TensorTriggerError,
    UnavailableError,
)

__all__ = [
    "Client",
    "FailedPreconditionError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "TensorTriggerError",
    "UnavailableError",
    "model_ref",
]
