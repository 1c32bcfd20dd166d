"""Typed client errors: one class per gRPC status the server sends on purpose.

Hierarchy::

    TensorTriggerError               any failed call (``code``, ``message``, ``violations``)
    ├── InvalidArgumentError         the request is malformed; ``violations`` names each offending field
    ├── NotFoundError                a model, version, label or job does not exist
    ├── AlreadyExistsError           the thing being created exists already
    ├── FailedPreconditionError      valid request, but the server's state forbids it (e.g. an unsafe model)
    ├── ResourceExhaustedError       a size, queue or rate limit was hit
    ├── UnavailableError             the server or one of its dependencies is down; retrying later may work
    ├── DeadlineExceededError        the call's deadline passed
    ├── UnauthenticatedError         no or bad credentials
    ├── PermissionDeniedError        the credentials do not allow the call
    └── UnimplementedError           the server does not offer this call (yet)

Any other status (INTERNAL, UNKNOWN, CANCELLED, ...) raises the base class itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One offending request field: ``field`` is a path such as ``inputs["features"].shape[1]``."""

    field: str
    description: str


class TensorTriggerError(Exception):
    """Raised when an RPC fails; ``code`` is the gRPC status code, ``violations`` the offending fields."""

    def __init__(self, code: grpc.StatusCode, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.violations = violations or []


class InvalidArgumentError(TensorTriggerError):
    """Raised when the request is malformed (see ``violations``)."""


class NotFoundError(TensorTriggerError):
    """Raised when a model, version, label or job does not exist."""


class AlreadyExistsError(TensorTriggerError):
    """Raised when creating something that exists already."""


class FailedPreconditionError(TensorTriggerError):
    """Raised when the request is valid but the server's state forbids it (e.g. an unsafe model)."""


class ResourceExhaustedError(TensorTriggerError):
    """Raised when a size, queue or rate limit was hit."""


class UnavailableError(TensorTriggerError):
    """Raised when the server or one of its dependencies is unavailable (after any retries)."""


class DeadlineExceededError(TensorTriggerError):
    """Raised when the call's deadline passed before it finished."""


class UnauthenticatedError(TensorTriggerError):
    """Raised when the call carried no valid credentials."""


class PermissionDeniedError(TensorTriggerError):
    """Raised when the credentials do not allow the call."""


class UnimplementedError(TensorTriggerError):
    """Raised when the server does not implement the call."""


_BY_CODE: dict[grpc.StatusCode, type[TensorTriggerError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def from_rpc_error(error: grpc.RpcError) -> TensorTriggerError:
    """Convert a grpc error (sync or aio) into its typed error, with the field violations it carried."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    violations: list[FieldViolation] = []
    # Sync errors are grpc.Call objects; aio errors are not, but both answer trailing_metadata(), which is all
    # rpc_status reads.
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
    return _BY_CODE.get(code, TensorTriggerError)(code, message, violations)
