"""InferenceService: the Predict path in domain terms — resolve, validate, batch, filter.

``api/inference.py`` converts protobuf to ``WireTensor``s and back; everything between is here:

    manager.get(ref) -> handle.decoder.decode(inputs) [-> decode_images in a worker thread]
        -> handle.batcher.submit(...) -> outputs by name [-> top classes by the version's class names]

No gRPC, no TensorFlow: the servable and its batcher do the model work off the event loop, and encoded images
are decoded on asyncio's default executor, so decoding overlaps model calls on the inference thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tt_server.errors import FieldViolation, InvalidArgument
from tt_server.logs import served_model
from tt_server.runtime.classes import classified_output, top_classes
from tt_server.runtime.manager import ModelManager, ServableHandle
from tt_server.runtime.observe import RequestObservation
from tt_server.types import ClassifyRequest, ClassScore, ModelRef, ModelVersion, WireTensor


@dataclass(frozen=True, slots=True)
class PredictResult:
    model_name: str
    version: int  # the version that ran (a label or "newest" resolved to it)
    outputs: dict[str, np.ndarray]  # by output name, in signature order; the first dim is the batch dim
    classifications: list[tuple[ClassScore, ...]] | None = None  # per row, best first; None unless asked for


class InferenceService:
    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    def pin(self, version: ModelVersion) -> str:
        """Keep ``version`` from retention (on every replica) until ``unpin``: a stream uses it. Neither call
        waits for the metadata store."""
        return self._manager.pins.pin_soon(version.model_name, version.version)

    def unpin(self, holder: str) -> None:
        self._manager.pins.unpin_soon(holder)

    async def load_version(self, ref: ModelRef) -> ModelVersion:
        """Load the version ``ref`` names (so the stream that pins it starts warm) and return it."""
        served_model.set((ref.name, None))  # the access log names the model even if it is not found
        version = (await self._manager.get(ref)).model_version
        served_model.set((version.model_name, version.version))
        return version

    async def predict(
        self,
        ref: ModelRef,
        inputs: Mapping[str, WireTensor],
        output_filter: Sequence[str],
        deadline: float | None,
        classify: ClassifyRequest | None = None,
        observation: RequestObservation | None = None,
    ) -> PredictResult:
        """Run ``ref`` on ``inputs``; ``output_filter`` names the outputs to return (empty = all);
        ``deadline`` is a ``time.monotonic()`` instant or None; ``classify`` asks for the top classes of each row.

        Raises ``NotFound`` (model, version, label), ``InvalidArgument`` (inputs, images, output_filter, classify;
        every violation at once), ``FailedPrecondition`` (classes asked of a version without class names),
        ``ResourceExhausted`` (queue full), ``DeadlineExceeded``. ``observation`` gets the version's series and
        the request's decode, queue and compute times.
        """
        served_model.set((ref.name, None))  # the access log names the model even if it is not found
        handle = await self._manager.get(ref)
        served_model.set((handle.model_name, handle.version))  # for the access log
        if observation is not None:
            observation.series = handle.series
            decoding = time.perf_counter()
        scored = classified_output(handle.model_version, classify) if classify is not None else None
        names, violations = _select_outputs(handle, output_filter)
        try:
            arrays, rows = handle.decoder.decode(inputs)
        except InvalidArgument as e:
            violations = e.violations + violations
        if violations:
            first = violations[0]
            raise InvalidArgument(f"{first.field}: {first.description}", violations)
        if handle.decoder.has_encoded_images(arrays):
            loop = asyncio.get_running_loop()
            arrays = await loop.run_in_executor(None, handle.decoder.decode_images, arrays)
        if observation is not None:
            observation.decode = time.perf_counter() - decoding
            observation.rows = rows
        outputs = await handle.batcher.submit(arrays, rows, deadline, observation)
        classifications = None
        if classify is not None and scored is not None:  # scored is set whenever classify is
            classes = handle.model_version.class_names
            classifications = top_classes(outputs[scored.name], classes, classify.top_k, scored.name)
            if classify.omit_outputs:
                outputs = {}
        if names is not None and outputs:
            outputs = {name: outputs[name] for name in names}
        if observation is not None:
            observation.encoding_from = time.perf_counter()
        return PredictResult(handle.model_name, handle.version, outputs, classifications)


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
