"""The one place where exceptions become gRPC statuses (applied to every RPC by ``api.middleware``).

Domain errors (``tt_server.errors``) map straight to their status code with the domain message;
``InvalidArgument`` also carries a ``google.rpc.BadRequest`` with one field violation per offending field
(``grpc-status-details-bin``). Anything unexpected is logged with its traceback and an error id, and the client
gets ``INTERNAL`` with only that id: no internals leak. The error id is the call's request id (``x-request-id``),
so the id a user quotes finds every log line of that call.
"""

from __future__ import annotations

import logging
import uuid

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tt_server import errors
from tt_server.logs import request_id

log = logging.getLogger(__name__)

_CODES: dict[type[errors.TensorTriggerError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_for(exc: BaseException, method: str) -> grpc.Status:
    """The status a client sees for ``exc`` raised while serving ``method``."""
    if isinstance(exc, errors.TensorTriggerError):
        code = next(c for cls, c in _CODES.items() if isinstance(exc, cls))
        details = []
        if isinstance(exc, errors.InvalidArgument) and exc.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in exc.violations
                ]
            )
            detail = any_pb2.Any()
            detail.Pack(bad_request)
            details.append(detail)
        return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=exc.message, details=details))
    if isinstance(exc, NotImplementedError):
        return rpc_status.to_status(
            status_pb2.Status(code=grpc.StatusCode.UNIMPLEMENTED.value[0], message=f"{method} is not implemented yet")
        )
    error_id = request_id.get() or uuid.uuid4().hex[:12]
    log.error("unexpected error in %s (error id %s)", method, error_id, exc_info=exc)
    return rpc_status.to_status(
        status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message=f"internal error (error id {error_id})")
    )
