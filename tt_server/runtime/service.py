"""InferenceService: the Predict path in domain terms — resolve, validate, batch, filter.

``api/inference.py`` converts protobuf to ``WireTensor``s and back; everything between is here:

    manager.get(ref) -> handle.decoder.decode(inputs) -> handle.batcher.submit(...) -> outputs by name

No gRPC, no TensorFlow: the servable and its batcher do the model work off the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tt_server.config import Settings
from tt_server.errors import FieldViolation, InvalidArgument
from tt_server.runtime.manager import ModelManager, ServableHandle
from tt_server.types import ModelRef, ModelVersion, WireTensor


@dataclass(frozen=True, slots=True)
class PredictResult:
    model_name: str
    version: int  # the version that ran (a label or "newest" resolved to it)
    outputs: dict[str, np.ndarray]  # by output name, in signature order; the first dim is the batch dim


class InferenceService:
    def __init__(self, manager: ModelManager, settings: Settings) -> None:
        self._manager = manager
        self._settings = settings

    async def resolve(self, ref: ModelRef) -> ModelVersion:
        """Load the version ``ref`` names (so the stream that pins it starts warm) and return it."""
        return (await self._manager.get(ref)).model_version

    async def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, WireTensor],
        output_filter: Sequence[str],
        deadline: float | None,
    ) -> PredictResult:
        """Run ``ref`` on ``inputs``; ``output_filter`` names the outputs to return (empty = all);
        ``deadline`` is a ``time.monotonic()`` instant or None.

        Raises ``NotFound`` (model, version, label), ``InvalidArgument`` (inputs, output_filter; every
        violation at once), ``ResourceExhausted`` (queue full), ``DeadlineExceeded``.
        """
        handle = await self._manager.get(ref)
        names, violations = _select_outputs(handle, output_filter)
        try:
            arrays, rows = handle.decoder.decode(inputs)
        except InvalidArgument as e:
            violations = e.violations + violations
        if violations:
            first = violations[0]
            raise InvalidArgument(f"{first.field}: {first.description}", violations)
        outputs = await handle.batcher.submit(arrays, rows, deadline)
        if names is not None:
            outputs = {name: outputs[name] for name in names}
        return PredictResult(handle.model_name, handle.version, outputs)


def _select_outputs(
    handle: ServableHandle, output_filter: Sequence[str]
) -> tuple[list[str] | None, list[FieldViolation]]:
    """The outputs to return in signature order (None = all), and violations for unknown names."""
    if not output_filter:
        return None, []
    known = [spec.name for spec in handle.model_version.signature.outputs]
    violations = [
        FieldViolation(f"output_filter[{i}]", f"unknown output {name!r}; the model's outputs are: {', '.join(known)}")
        for i, name in enumerate(output_filter)
        if name not in known
    ]
    wanted = set(output_filter)
    return [name for name in known if name in wanted], violations
