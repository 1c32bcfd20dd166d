"""Loader: turns one model version's artifact on local disk into a warmed-up ``Servable``.

TF Serving's loader contract: the constructor is cheap and touches nothing; ``load()`` does all the heavy,
blocking work (reading the artifact, building the model, tracing, warm-up) and runs in a worker thread,
never on the event loop. A loader is used once. It trusts its artifact only as far as the upload's inspection
did: the bytes are checked against the version's sha256 first, so they are exactly the bytes inspected at
upload (Keras safe mode, allowed classes, the SavedModel op scan).

Reading each format is ``formats.loading``'s job; this module verifies, traces the serving function from the
stored signature and warms it up. ``ModelManager`` never builds a ``Loader`` itself: the composition root hands
it a ``LoaderFactory`` (TF Serving's source adapter: a version's artifact path in, a loader out).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Protocol

from tt_server.config import Settings
from tt_server.errors import FailedPrecondition
from tt_server.formats.artifacts import ArchiveLimits
from tt_server.formats.loading import load_model
from tt_server.runtime.servable import Servable, trace_serving_function, variables_bytes
from tt_server.types import ModelVersion

_HASH_CHUNK = 1 << 20


class ServableLoader(Protocol):
    """What the manager needs of a loader: one blocking ``load`` that returns a warmed-up servable."""

    def load(self) -> Servable: ...


class LoaderFactory(Protocol):
    """Makes the loader for ``version`` from its local ``artifact``; ``work_dir`` is the load's scratch space."""

    def __call__(self, version: ModelVersion, artifact: Path, work_dir: Path) -> ServableLoader: ...


def loader_factory(settings: Settings) -> LoaderFactory:
    """The production ``LoaderFactory``: ``Loader``s bound by the settings' archive limits."""
    return functools.partial(Loader, limits=ArchiveLimits.from_settings(settings))


class Loader:
    """Loads ``version`` from ``artifact`` (a local file, named with ``ARTIFACT_SUFFIX[version.format]``).

    ``work_dir`` is scratch space for unpacking archives; ``load`` removes what it unpacked.
    """

    def __init__(self, version: ModelVersion, artifact: Path, work_dir: Path, limits: ArchiveLimits) -> None:
        self.version = version
        self._artifact = artifact
        self._work_dir = work_dir
        self._limits = limits

    def load(self) -> Servable:
        """Blocking: verify, load, trace and warm up. Raises ``FailedPrecondition`` for an artifact that does
        not match its version record or cannot be served."""
        self._verify_sha256()
        v = self.version
        loaded = load_model(v, self._artifact, self._work_dir, self._limits)
        function = trace_serving_function(loaded.forward, v.signature)
        weights = function.variables if loaded.weights is None else loaded.weights
        size = variables_bytes(weights) + loaded.constant_bytes
        servable = Servable(v.model_name, v.version, v.signature, function, loaded.model, size)
        servable.warm_up()
        return servable

    def _verify_sha256(self) -> None:
        digest = hashlib.sha256()
        with self._artifact.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != self.version.sha256:
            raise FailedPrecondition(
                f"model {self.version.model_name!r} version {self.version.version}: the stored artifact does "
                "not match its recorded sha256"
            )
