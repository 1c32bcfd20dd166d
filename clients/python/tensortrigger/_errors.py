"""Typed client errors carrying the server's status code, message and field violations."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class TensorTriggerError(Exception):
    """An RPC failed. ``code`` is the gRPC status code; ``violations`` lists offending request fields."""

    def __init__(self, code: grpc.StatusCode, message: str, violations: list[FieldViolation]) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.violations = violations


class InvalidArgumentError(TensorTriggerError):
    """The request was malformed (see ``violations``)."""


class NotFoundError(TensorTriggerError):
    """A model, version, label or job does not exist."""


class FailedPreconditionError(TensorTriggerError):
    """The request is valid but the server's state forbids it (e.g. an unsafe model)."""


class ResourceExhaustedError(TensorTriggerError):
    """A size, queue or rate limit was hit."""


class UnavailableError(TensorTriggerError):
    """The server or one of its dependencies is unavailable; retry later."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def from_rpc_error(error: grpc.RpcError) -> TensorTriggerError:
    """Convert a grpc error (sync or aio) into a typed error with its field violations."""
    code = error.code()  # type: ignore[attr-defined]
    message = error.details() or ""  # type: ignore[attr-defined]
    violations: list[FieldViolation] = []
    status = rpc_status.from_call(error) if isinstance(error, grpc.Call) else None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
    return _BY_CODE.get(code, TensorTriggerError)(code, message, violations)
