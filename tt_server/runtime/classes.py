"""Class names for a classifier's output: the top-k classes of each row (TFaaS's labels file, served).

A version's ``class_names`` name the columns of its classification output, ``[N, classes]``: column i is
class ``class_names[i]``. Scores are the output's values as they are (a softmax or sigmoid output makes them
probabilities); nothing is renormalised. One special case, common in TFaaS's binary classifiers: an output of
width 1 with two class names is read as a sigmoid, class 1 scoring the value and class 0 scoring 1 - value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tt_server.errors import FailedPrecondition, InvalidArgument
from tt_server.types import ClassifyRequest, ClassScore, ModelVersion, TensorSpec

DEFAULT_TOP_K = 5


def classified_output(version: ModelVersion, request: ClassifyRequest) -> TensorSpec:
    """The output ``request`` classifies, after checking the version can: it has class names, the output exists
    and its shape can hold one score per class. Raises ``FailedPrecondition`` / ``InvalidArgument``."""
    if request.top_k < 0:
        raise InvalidArgument.field("classify.top_k", f"must not be negative, got {request.top_k}")
    names = version.class_names
    if not names:
        raise FailedPrecondition(
            f"model {version.model_name!r} version {version.version} has no class names; upload it with class "
            "names (a labels file) to classify"
        )
    outputs = version.signature.outputs
    if request.output is None:
        spec = outputs[0]
    else:
        found = [s for s in outputs if s.name == request.output]
        if not found:
            known = ", ".join(s.name for s in outputs)
            raise InvalidArgument.field(
                "classify.output", f"unknown output {request.output!r}; the outputs are: {known}"
            )
        spec = found[0]
    if len(spec.shape) != 2:
        raise FailedPrecondition(
            f"output {spec.name!r} has shape {list(spec.shape)}; classes need one score per class, [N, classes]"
        )
    _check_width(spec.name, spec.shape[1], len(names))
    return spec


def top_classes(scores: np.ndarray, names: Sequence[str], top_k: int, output: str) -> list[tuple[ClassScore, ...]]:
    """The ``top_k`` best classes of each row of ``scores`` (``[N, len(names)]``, or ``[N, 1]`` with two names),
    highest score first, ties in class order. ``top_k`` 0 means ``DEFAULT_TOP_K``."""
    _check_width(output, scores.shape[1], len(names))  # again: a -1 width is only known now
    scores = scores.astype(np.float64)  # any numeric output; 1 - value must not wrap around
    if scores.shape[1] == 1 and len(names) == 2:
        scores = np.concatenate([1 - scores, scores], axis=1)
    k = min(top_k or DEFAULT_TOP_K, len(names))
    # A stable sort of the negated scores keeps ties in class order; NaN sorts last.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(scores, order, axis=1)
    return [
        tuple(ClassScore(int(i), names[i], float(s)) for i, s in zip(row_order, row_scores, strict=True))
        for row_order, row_scores in zip(order, picked, strict=True)
    ]


def _check_width(output: str, width: int, classes: int) -> None:
    if width >= 0 and width != classes and not (width == 1 and classes == 2):
        raise FailedPrecondition(
            f"output {output!r} has {width} values per row but the version has {classes} class names"
        )
