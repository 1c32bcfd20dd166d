"""Examples -> numpy arrays checked against the model -> micro-batches for the trainer.

Features are checked exactly like Predict inputs (the runtime's ``InputDecoder`` over the version's signature);
labels by an ``InputDecoder`` over the *label specs* (one per output: the output's dtype and shape, or class ids
for sparse losses). Violations name the client's fields (``examples.labels["score"].shape[1]``), every one at
once. A single-output model takes its labels under any one key, since clients rarely know the output's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tt_server.errors import FieldViolation, InvalidArgument
from tt_server.runtime.validation import InputDecoder
from tt_server.training.messages import Examples
from tt_server.types import DType, Signature, TensorSpec, WireTensor

FEATURES = "examples.features"
LABELS = "examples.labels"
# Labels that may arrive in a narrower dtype than the spec and are widened (class ids as int32 or int64).
_WIDENED = {DType.INT64: DType.INT32}


@dataclass(frozen=True, slots=True)
class Batch:
    """Decoded examples: features in signature input order, labels in output order, all ``rows`` long."""

    features: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    rows: int
    dropped: int = 0  # rows the decoder dropped for holding NaN/Inf (not carried by slices and joins)

    def slice(self, start: int, stop: int) -> Batch:
        """Rows ``start:stop`` as views (no copy)."""
        return Batch(
            tuple(a[start:stop] for a in self.features), tuple(a[start:stop] for a in self.labels), stop - start
        )

    @staticmethod
    def concat(parts: list[Batch]) -> Batch:
        if len(parts) == 1:
            return parts[0]
        features = tuple(np.concatenate(arrays) for arrays in zip(*(p.features for p in parts), strict=True))
        labels = tuple(np.concatenate(arrays) for arrays in zip(*(p.labels for p in parts), strict=True))
        return Batch(features, labels, sum(p.rows for p in parts))


class ExampleDecoder:
    """Checks and decodes ``Examples`` for one model; immutable, used from the event loop."""

    def __init__(
        self,
        signature: Signature,
        label_specs: tuple[TensorSpec, ...],
        max_rows: int,
        max_elements: int,
        drop_non_finite: bool = False,
    ) -> None:
        self._drop_non_finite = drop_non_finite
        self._features = InputDecoder(signature, max_rows, max_elements)
        self._label_specs = label_specs
        self._label_names = tuple(s.name for s in label_specs)
        self._labels = InputDecoder(Signature(inputs=label_specs, outputs=()), max_rows, max_elements)
        # The same specs with the narrower dtype, for labels sent that way.
        narrow = tuple(TensorSpec(s.name, _WIDENED.get(s.dtype, s.dtype), s.shape) for s in label_specs)
        self._narrow_labels = InputDecoder(Signature(inputs=narrow, outputs=()), max_rows, max_elements)
        self._label_dtypes = tuple(np.dtype(s.dtype.value) for s in label_specs)

    def decode(self, examples: Examples) -> Batch:
        """The examples as arrays; ``InvalidArgument`` naming every offending field otherwise."""
        violations: list[FieldViolation] = []
        features: dict[str, np.ndarray] = {}
        rows = 0
        try:
            features, rows = self._features.decode(examples.features)
        except InvalidArgument as e:
            violations += [
                _renamed(v, {n: f'{FEATURES}["{n}"]' for n in examples.features}, FEATURES) for v in e.violations
            ]
        by_output, paths = self._label_keys(examples.labels, violations)
        labels: dict[str, np.ndarray] = {}
        if by_output is not None:
            narrow = any(
                spec.dtype in _WIDENED and by_output[spec.name].dtype is _WIDENED[spec.dtype]
                for spec in self._label_specs
            )
            decoder = self._narrow_labels if narrow else self._labels
            try:
                labels, label_rows = decoder.decode(by_output)
                if features and label_rows != rows:
                    first = paths[self._label_names[0]]
                    violations.append(
                        FieldViolation(
                            f"{first}.shape[0]", f"{label_rows} labels for {rows} examples; the batch sizes must match"
                        )
                    )
            except InvalidArgument as e:
                violations += [_renamed(v, paths, LABELS) for v in e.violations]
        if violations:
            first_v = violations[0]
            more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
            raise InvalidArgument(f"{first_v.field}: {first_v.description}{more}", violations)
        batch = Batch(
            tuple(features[s.name] for s in self._features.signature.inputs),
            tuple(
                _widen(labels[name], dtype) for name, dtype in zip(self._label_names, self._label_dtypes, strict=True)
            ),
            rows,
        )
        return self._finite(batch, examples, paths)

    def _finite(self, batch: Batch, examples: Examples, label_paths: Mapping[str, str]) -> Batch:
        """A NaN or Inf would turn the loss and then every weight into NaN: refuse such rows, naming the field
        and row, or drop them when the session asked to."""
        paths = [f'{FEATURES}["{s.name}"]' for s in self._features.signature.inputs]
        paths += [label_paths[name] for name in self._label_names]
        keep: np.ndarray | None = None
        for path, array in zip(paths, (*batch.features, *batch.labels), strict=True):
            if array.dtype.kind != "f" or array.size == 0:
                continue
            finite = np.isfinite(array.reshape(batch.rows, -1)).all(axis=1)
            if finite.all():
                continue
            if not self._drop_non_finite:
                row = int(np.argmin(finite))
                value = array.reshape(batch.rows, -1)[row][~np.isfinite(array.reshape(batch.rows, -1)[row])][0]
                raise InvalidArgument.field(
                    path,
                    f"row {row} holds {value}: NaN and infinite values would poison the model; fix the data or "
                    "set config.drop_non_finite to drop such examples",
                )
            keep = finite if keep is None else keep & finite
        if keep is None:
            return batch
        kept = int(keep.sum())
        return Batch(
            tuple(a[keep] for a in batch.features), tuple(a[keep] for a in batch.labels), kept, batch.rows - kept
        )

    def _label_keys(
        self, labels: Mapping[str, WireTensor], violations: list[FieldViolation]
    ) -> tuple[dict[str, WireTensor] | None, dict[str, str]]:
        """Labels keyed by output name, and each output's field path as the client named it."""
        names = self._label_names
        if len(names) == 1 and len(labels) == 1:
            ((key, tensor),) = labels.items()
            return {names[0]: tensor}, {names[0]: f'{LABELS}["{key}"]'}
        expected = ", ".join(names)
        found = len(violations)
        if not labels:
            violations.append(FieldViolation(LABELS, f"labels are required, one per output: {expected}"))
        elif len(names) == 1:
            violations.append(FieldViolation(LABELS, f"the model has one output ({expected}); send one label tensor"))
        else:
            for key in labels:
                if key not in names:
                    violations.append(
                        FieldViolation(f'{LABELS}["{key}"]', f"unknown output; the model's outputs are: {expected}")
                    )
            missing = [n for n in names if n not in labels]
            if missing:
                violations.append(FieldViolation(LABELS, f"missing label(s) for output(s): {', '.join(missing)}"))
        if len(violations) > found:
            return None, {}
        return dict(labels), {n: f'{LABELS}["{n}"]' for n in names}


def _widen(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return array if array.dtype == dtype else array.astype(dtype)


def _renamed(violation: FieldViolation, paths: Mapping[str, str], bare: str) -> FieldViolation:
    """A decoder's violation (fields ``inputs["name"]...``) with the client's field paths."""

    def rename(text: str) -> str:
        for name, path in paths.items():
            text = text.replace(f'inputs["{name}"]', path)
        return text

    field = rename(violation.field)
    if field == "inputs":
        field = bare
    return FieldViolation(field, rename(violation.description))


class MicroBatcher:
    """Re-batches examples of any message size into micro-batches of exactly ``size`` rows (``flush`` returns
    the short remainder). Whole micro-batches inside a message are views of it; rows are copied only to join
    a remainder with the following messages, once per micro-batch."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._parts: list[Batch] = []
        self._rows = 0

    @property
    def pending_rows(self) -> int:
        return self._rows

    def add(self, batch: Batch) -> list[Batch]:
        """Take ``batch``; return the micro-batches now complete."""
        full: list[Batch] = []
        start = 0
        if self._rows:
            start = min(self.size - self._rows, batch.rows)
            self._parts.append(batch.slice(0, start))
            self._rows += start
            if self._rows < self.size:
                return full
            full.append(Batch.concat(self._parts))
            self._parts, self._rows = [], 0
        while batch.rows - start >= self.size:
            full.append(batch.slice(start, start + self.size))
            start += self.size
        if start < batch.rows:
            self._parts, self._rows = [batch.slice(start, batch.rows)], batch.rows - start
        return full

    def flush(self) -> list[Batch]:
        """The remainder as one short micro-batch (none when nothing is pending)."""
        if not self._rows:
            return []
        rest = Batch.concat(self._parts)
        self._parts, self._rows = [], 0
        return [rest]
