"""Domain errors. They know nothing of gRPC; ``tt_server.api.errors`` maps each one to a status code.

Hierarchy::

    TensorTriggerError
    ├── InvalidArgument        the request itself is wrong (carries field violations)
    ├── NotFound               a named model, version, label or job does not exist
    ├── AlreadyExists          the thing being created exists already
    ├── FailedPrecondition     the request is well formed but the system is not in a state to do it
    │   └── TrainingDiverged   a training session's loss or weights became NaN or infinite
    ├── ResourceExhausted      a size, queue or rate limit was hit
    ├── PermissionDenied       the caller may not touch what it named (e.g. an object outside the allowed prefixes)
    ├── Unavailable            a dependency is down or the server is draining; retrying later may work
    └── DeadlineExceeded       the caller's deadline passed before the work could be done
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One offending request field: ``field`` is a dotted path (``inputs["x"].shape[1]``). A description that
    points at another field names it between backquotes, so relocation moves it too."""

    field: str
    description: str


class TensorTriggerError(Exception):
    """Base of every error the domain raises on purpose; its message is safe to show to clients."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(TensorTriggerError):
    """Raised when a request field is malformed; ``violations`` names each offending field."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """An error about a single field, message and violation alike."""
        return cls(f"{field}: {description}", [FieldViolation(field, description)])

    def relocated(self, fields: Mapping[str, str]) -> InvalidArgument:
        """This error with its field paths moved: each key of ``fields`` (a domain argument, e.g. ``ref``, or a
        path under one, e.g. ``spec.expected_size``) becomes its value (a request's field, e.g. ``model_spec``)
        where a path starts with it, the longest key winning, so ``ref.name`` becomes ``model_spec.name``. Paths
        a description names between backquotes move too. The message follows its first violation."""

        def move(path: str) -> str:
            matches = [old for old in fields if path == old or path.startswith((f"{old}.", f"{old}["))]
            if not matches:
                return path
            old = max(matches, key=len)
            return fields[old] + path[len(old) :]

        def move_quoted(text: str) -> str:
            return _QUOTED_PATH.sub(lambda m: f"`{move(m[1])}`", text)

        violations = [FieldViolation(move(v.field), move_quoted(v.description)) for v in self.violations]
        if violations == self.violations:
            return self
        message = self.message
        first = self.violations[0].field
        if message.startswith(f"{first}: "):
            message = f"{violations[0].field}{message[len(first) :]}"
        return InvalidArgument(move_quoted(message), violations)


_QUOTED_PATH = re.compile(r"`([^`\s]+)`")  # a field path a description points at


@contextmanager
def request_fields(fields: Mapping[str, str]) -> Iterator[None]:
    """Around a domain call in a transport: an ``InvalidArgument`` it raises comes out ``relocated`` onto the
    request's own fields (``with request_fields({"ref": "model_spec"}): ...``)."""
    try:
        yield
    except InvalidArgument as e:
        raise e.relocated(fields) from None


class NotFound(TensorTriggerError):
    """Raised when a model, version, label or job does not exist."""


class AlreadyExists(TensorTriggerError):
    """Raised when creating something that exists already."""


class FailedPrecondition(TensorTriggerError):
    """Raised when the request is valid but the current state forbids it (e.g. an unsafe artifact)."""


class TrainingDiverged(FailedPrecondition):
    """Raised when a training session's loss or weights become NaN or infinite: it publishes nothing more."""


class ResourceExhausted(TensorTriggerError):
    """Raised when a size cap, queue bound or rate limit is hit."""


class PermissionDenied(TensorTriggerError):
    """Raised when a request names something the server's configuration does not let callers reach."""


class Unavailable(TensorTriggerError):
    """Raised when a dependency (database, blob store, broker) is down or the server is draining."""


class DeadlineExceeded(TensorTriggerError):
    """Raised when the caller's deadline passed before the work was done."""
