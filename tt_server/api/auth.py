"""Bearer-token authentication with three roles, and a per-client rate limit.

Tokens live in a file (a mounted Kubernetes Secret, typically), one per line: ``<role> <token> [name]``;
``#`` starts a comment. The file is re-read when it changes, so rotating a token needs no restart.
Roles are ordered: ``reader`` (predict, list, get, download, watch) < ``writer`` (upload, train, jobs) <
``admin`` (delete, labels). A missing or unknown token is UNAUTHENTICATED; a known token whose role is too low
is PERMISSION_DENIED. Tokens are compared by SHA-256 digest with ``hmac.compare_digest`` against every known
token, so timing reveals neither a token nor which one matched.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class Role(enum.IntEnum):
    READER = 1
    WRITER = 2
    ADMIN = 3


# Methods not listed need ADMIN: a new RPC is locked down until someone decides otherwise.
_REQUIRED: dict[str, Role] = {
    f"/tensortrigger.v1.{service}/{method}": role
    for service, methods in {
        "InferenceService": {"Predict": Role.READER, "PredictBatch": Role.READER, "Train": Role.WRITER},
        "ModelRegistryService": {
            "ListModels": Role.READER,
            "GetModel": Role.READER,
            "ListModelVersions": Role.READER,
            "GetModelVersion": Role.READER,
            "DownloadModelVersion": Role.READER,
            "UploadModelVersion": Role.WRITER,
            "DeleteModel": Role.ADMIN,
            "DeleteModelVersion": Role.ADMIN,
            "SetLabel": Role.ADMIN,
            "DeleteLabel": Role.ADMIN,
        },
        "JobsService": {
            "GetJob": Role.READER,
            "ListJobs": Role.READER,
            "WatchJob": Role.READER,
            "GetJobResults": Role.READER,
            "CreateJob": Role.WRITER,
            "CancelJob": Role.WRITER,
        },
    }.items()
    for method, role in methods.items()
}
# The compatibility protocols: everything they offer is reading or predicting.
_REQUIRED.update(
    {
        f"/{service}/{method}": Role.READER
        for service, methods in {
            "tensorflow.serving.PredictionService": (
                "Predict",
                "GetModelMetadata",
                "Classify",
                "Regress",
                "MultiInference",
            ),
            "tensorflow.serving.ModelService": ("GetModelStatus",),
            "inference.GRPCInferenceService": (
                "ServerLive",
                "ServerReady",
                "ModelReady",
                "ServerMetadata",
                "ModelMetadata",
                "ModelInfer",
                "ModelStreamInfer",
            ),
        }.items()
        for method in methods
    }
)
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_REFLECTION_PREFIX = "/grpc.reflection."


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: Role


class AuthError(Exception):
    """``permission`` False = UNAUTHENTICATED (who are you?), True = PERMISSION_DENIED (not allowed)."""

    def __init__(self, message: str, permission: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permission = permission


class TokenAuthenticator:
    RELOAD_SECONDS = 5.0  # how often the file's mtime is checked; a stat per call would be wasted hot-path work

    def __init__(self, tokens_file: Path, public_health: bool, public_reflection: bool) -> None:
        self._path = tokens_file
        self._public_prefixes = tuple(
            p for p, public in ((_HEALTH_PREFIX, public_health), (_REFLECTION_PREFIX, public_reflection)) if public
        )
        self._tokens: list[tuple[bytes, Identity]] = []
        self._mtime_ns = -1
        self._checked = 0.0
        self._reload()
        if not self._tokens:
            raise ValueError(f"{tokens_file}: no tokens; expected lines of '<role> <token> [name]'")

    def is_public(self, method: str) -> bool:
        return method.startswith(self._public_prefixes) if self._public_prefixes else False

    def authorize(self, method: str, authorization: str | None) -> Identity:
        """The caller's identity, if its token allows ``method``; raises ``AuthError`` otherwise."""
        self._maybe_reload()
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("missing bearer token (metadata 'authorization: Bearer <token>')", permission=False)
        presented = hashlib.sha256(authorization[7:].strip().encode()).digest()
        found: Identity | None = None
        for digest, identity in self._tokens:  # no early exit: constant time in which token matched
            if hmac.compare_digest(digest, presented):
                found = identity
        if found is None:
            raise AuthError("invalid token", permission=False)
        required = (
            Role.READER
            if method.startswith((_HEALTH_PREFIX, _REFLECTION_PREFIX))
            else _REQUIRED.get(method, Role.ADMIN)
        )
        if found.role < required:
            raise AuthError(
                f"{found.name} has role {found.role.name.lower()}; {method} needs {required.name.lower()}",
                permission=True,
            )
        return found

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked >= self.RELOAD_SECONDS:
            self._checked = now
            self._reload()

    def _reload(self) -> None:
        try:
            mtime = os.stat(self._path).st_mtime_ns
        except OSError:
            log.warning("token file unreadable; keeping the tokens loaded before", extra={"path": str(self._path)})
            return
        if mtime == self._mtime_ns:
            return
        try:
            tokens = self._parse()
        except (OSError, UnicodeDecodeError, ValueError) as e:
            if self._mtime_ns == -1:  # at start-up a bad file is a configuration error
                raise ValueError(str(e)) from None
            # At run time an edit in progress or a typo must not lock out every caller: keep the tokens loaded
            # before, and say so once per change of the file (not on every reload check).
            self._mtime_ns = mtime
            log.warning(
                "token file not reloaded; keeping the tokens loaded before",
                extra={"path": str(self._path), "reason": str(e)},
            )
            return
        self._tokens = tokens
        self._mtime_ns = mtime
        log.info("tokens loaded", extra={"path": str(self._path), "count": len(tokens)})

    def _parse(self) -> list[tuple[bytes, Identity]]:
        tokens: list[tuple[bytes, Identity]] = []
        for number, raw in enumerate(self._path.read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) not in (2, 3) or parts[0].upper() not in Role.__members__:
                raise ValueError(f"{self._path}:{number}: expected '<reader|writer|admin> <token> [name]'")
            name = parts[2] if len(parts) == 3 else f"token-{number}"
            tokens.append((hashlib.sha256(parts[1].encode()).digest(), Identity(name, Role[parts[0].upper()])))
        return tokens


class RateLimiter:
    """A token bucket per client (identity name, or peer address without auth): ``rate`` calls/s, ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill)

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.get(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return False
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:  # bound memory under a flood of distinct peers: forget full buckets
            self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self._burst}
        return True
