"""What both compatibility layers share: deadlines, output dtypes, version listings, model references.

No protocol messages here (neither TF Serving's nor the Open Inference Protocol's), but the gRPC call context:
the call's deadline and the UNIMPLEMENTED answer for protocol features no Tensor Trigger model has. The rest are
functions over domain types and the one registry read both protocols need.
"""

from __future__ import annotations

import time

import grpc
import numpy as np

from tt_server.errors import InvalidArgument
from tt_server.formats.dtypes import NUMPY_DTYPES
from tt_server.registry.service import Registry
from tt_server.types import DType, ModelRef

SERVING_DEFAULT = "serving_default"  # the one signature each Tensor Trigger version has
MAX_VERSION = 2**63 - 1  # versions are int64 in every store


def deadline(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline as a ``time.monotonic()`` instant, as ``InferenceService.predict`` takes it."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


async def unimplemented(context: grpc.aio.ServicerContext, why: str) -> None:
    """Fail the call with UNIMPLEMENTED and ``why``; the domain has no error for "this protocol feature is not
    served", so the compat servicers say it themselves."""
    # abort() replaces the trailing metadata the middleware set (x-request-id), so that goes in again.
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, why, context.trailing_metadata() or ())


def dtype_of(array: np.ndarray) -> DType:
    """The domain dtype of a model output (numpy has several string kinds; all are STRING to clients)."""
    if array.dtype.kind in ("O", "S", "U"):
        return DType.STRING
    return DType(array.dtype.name)


def as_bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def raw_bytes(array: np.ndarray, dtype: DType) -> bytes:
    """Little-endian element bytes in row-major order (both protocols' raw form for numbers)."""
    return np.ascontiguousarray(array, dtype=NUMPY_DTYPES[dtype]).tobytes()


def model_ref(name: str, version: int | None, name_field: str, version_field: str) -> ModelRef:
    """A reference to ``version`` of ``name`` (None = what its serving policy selects), with field paths for errors."""
    if not name:
        raise InvalidArgument.field(name_field, "a model name is required")
    if version is None:
        return ModelRef(name)
    if not 0 < version <= MAX_VERSION:
        raise InvalidArgument.field(version_field, "versions are numbered from 1")
    return ModelRef(name, version=version)


async def all_versions(registry: Registry, name: str) -> list[int]:
    """Every existing version of ``name``, newest first; ``NotFound`` for an unknown model."""
    versions: list[int] = []
    token = ""
    while True:
        page = await registry.list_versions(name, 1000, token)
        versions += [v.version for v in page.items]
        token = page.next_page_token
        if not token:
            return versions
