"""Request tensors -> numpy arrays, checked against a servable's signature before TensorFlow sees them.

This runs on every Predict, so the per-signature work (names, dtypes, fixed dims, field paths) is done once
in ``InputDecoder.__init__`` and ``decode`` is a straight loop that only builds messages when something is
wrong. Raw ``content`` becomes a read-only numpy view of the request's bytes (``np.frombuffer``: no copy).

Every violation is collected, so a client fixes its request in one round trip. Checks, in order: unknown
input names, missing inputs, then per input dtype, rank, negative dims, fixed dims, empty batch, batch over
the cap, element count over the cap, byte length / value count; last, that all inputs share one batch size.
NaN and Inf are data and pass.

Image inputs (``TensorSpec.image_shape``) also take encoded PNG/JPEG images, one per row, as a STRING tensor
``[N]``, when the decoder is built with an ``image_scaling``. ``decode`` checks them like any input (batch
size, the element count they will decode to) and passes them on as a 1-D object array; decoding the pixels is
``decode_images``'s job, which blocks (Pillow) and so runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from tt_server.errors import FieldViolation, InvalidArgument
from tt_server.formats.dtypes import NUMPY_DTYPES
from tt_server.runtime.images import MAX_IMAGE_PIXELS, decode_images
from tt_server.types import DType, ImageScaling, ImageShape, Signature, WireTensor

# numpy casts some sources (protobuf repeated fields among them) to narrow ints by wrapping around, so
# these go through int64 and a range check.
_NARROW_INTS = frozenset({DType.INT8, DType.INT16, DType.UINT8})


@dataclass(frozen=True, slots=True)
class _InputPlan:
    """Everything ``decode`` needs about one signature input, computed once."""

    name: str
    path: str  # 'inputs["x"]', the prefix of every field path about this input
    dtype: DType
    np_dtype: np.dtype
    shape: tuple[int, ...]  # the signature's shape, -1 = any
    fixed: tuple[tuple[int, int], ...]  # (axis, size) for each fixed dim
    batched: bool  # rank >= 1: dim 0 is the batch dim
    shape_text: str
    image: ImageShape | None  # set when the input also takes encoded images


class InputDecoder:
    """Checks and decodes request inputs for one signature. Immutable; safe to share between tasks."""

    def __init__(
        self,
        signature: Signature,
        max_batch_rows: int,
        max_elements: int,
        image_scaling: ImageScaling | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        """``image_scaling``: image inputs also take encoded images, whose pixels are scaled so; None: they do
        not (training features, for one, are tensors only)."""
        self.signature = signature
        self.max_batch_rows = max_batch_rows
        self.max_elements = max_elements
        self._image_scaling = image_scaling or ImageScaling.RAW
        self._max_image_pixels = max_image_pixels
        self._plans = tuple(
            _InputPlan(
                name=spec.name,
                path=f'inputs["{spec.name}"]',
                dtype=spec.dtype,
                np_dtype=NUMPY_DTYPES[spec.dtype],
                shape=spec.shape,
                fixed=tuple((axis, size) for axis, size in enumerate(spec.shape) if size >= 0),
                batched=len(spec.shape) >= 1,
                shape_text="[" + ", ".join(str(d) for d in spec.shape) + "]",
                image=spec.image_shape() if image_scaling is not None else None,
            )
            for spec in signature.inputs
        )
        self._names = frozenset(p.name for p in self._plans)
        self._image_plans = tuple(p for p in self._plans if p.image is not None)

    def decode(self, inputs: Mapping[str, WireTensor]) -> tuple[dict[str, np.ndarray], int]:
        """Return the arrays by input name and the batch size (1 when no input has a batch dim).

        Raises ``InvalidArgument`` carrying one ``FieldViolation`` per problem found.
        """
        violations: list[FieldViolation] = []
        if len(inputs) != len(self._plans) or not self._names.issuperset(inputs):
            self._check_names(inputs, violations)
        arrays: dict[str, np.ndarray] = {}
        rows: int | None = None
        first_batched = ""
        for plan in self._plans:
            tensor = inputs.get(plan.name)
            if tensor is None:
                continue
            array = self._decode_one(plan, tensor, violations)
            if array is None:
                continue
            arrays[plan.name] = array
            if plan.batched:
                if rows is None:
                    rows, first_batched = array.shape[0], plan.path
                elif array.shape[0] != rows:
                    violations.append(
                        FieldViolation(
                            f"{plan.path}.shape[0]",
                            f"batch size {array.shape[0]} differs from {first_batched}'s {rows}; "
                            "all inputs must have the same first dimension",
                        )
                    )
        if violations:
            first = violations[0]
            more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
            raise InvalidArgument(f"{first.field}: {first.description}{more}", violations)
        return arrays, 1 if rows is None else rows

    def has_encoded_images(self, arrays: Mapping[str, np.ndarray]) -> bool:
        """Whether ``decode`` passed on encoded images that ``decode_images`` must turn into pixels."""
        # Image inputs are never STRING, so an object array there holds the encoded images.
        return any(arrays[p.name].dtype == object for p in self._image_plans)

    def decode_images(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Blocking: ``arrays`` with every input given as encoded images replaced by its pixel batch.

        Raises ``InvalidArgument`` naming every bad image (``inputs["x"].string_val[3]``)."""
        decoded = dict(arrays)
        violations: list[FieldViolation] = []
        for plan in self._image_plans:
            blobs = arrays[plan.name]
            if blobs.dtype != object or plan.image is None:
                continue
            try:
                decoded[plan.name] = decode_images(
                    blobs, plan.image, plan.np_dtype, self._image_scaling, plan.path, self._max_image_pixels
                )
            except InvalidArgument as e:
                violations += e.violations
        if violations:
            more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
            raise InvalidArgument(f"{violations[0].field}: {violations[0].description}{more}", violations)
        return decoded

    def _check_names(self, inputs: Mapping[str, WireTensor], violations: list[FieldViolation]) -> None:
        expected = ", ".join(p.name for p in self._plans)
        for name in inputs:
            if name not in self._names:
                violations.append(
                    FieldViolation(f'inputs["{name}"]', f"unknown input; the model's inputs are: {expected}")
                )
        missing = [p.name for p in self._plans if p.name not in inputs]
        if missing:
            violations.append(FieldViolation("inputs", f"missing input(s): {', '.join(missing)}"))

    def _decode_one(self, plan: _InputPlan, tensor: WireTensor, violations: list[FieldViolation]) -> np.ndarray | None:
        if plan.image is not None and tensor.dtype is DType.STRING:
            return self._encoded_images(plan, plan.image, tensor, violations)
        path = plan.path
        start = len(violations)
        dtype_ok = tensor.dtype is plan.dtype
        if not dtype_ok:
            violations.append(FieldViolation(f"{path}.dtype", f"expected {plan.dtype.value}, got {tensor.dtype.value}"))
        shape = tensor.shape
        rank_ok = len(shape) == len(plan.shape)
        if not rank_ok:
            violations.append(
                FieldViolation(
                    f"{path}.shape",
                    f"expected rank {len(plan.shape)} (shape {plan.shape_text}), got rank {len(shape)}",
                )
            )
        sizes_known = True
        for axis, size in enumerate(shape):
            if size < 0:
                sizes_known = False
                violations.append(FieldViolation(f"{path}.shape[{axis}]", f"dimension {size} is negative"))
        if rank_ok:
            for axis, size in plan.fixed:
                if shape[axis] != size and shape[axis] >= 0:
                    violations.append(
                        FieldViolation(
                            f"{path}.shape[{axis}]",
                            f"expected {size} (shape {plan.shape_text}), got {shape[axis]}",
                        )
                    )
        if plan.batched and shape:
            rows = shape[0]
            if rows == 0:
                violations.append(FieldViolation(f"{path}.shape[0]", "the batch is empty (0 rows)"))
            elif rows > self.max_batch_rows:
                violations.append(
                    FieldViolation(f"{path}.shape[0]", f"{rows} rows; a request may have at most {self.max_batch_rows}")
                )
        count = 1
        if sizes_known:
            for size in shape:
                count *= size  # Python ints: a hostile shape cannot overflow, it is just over the cap
            if count > self.max_elements:
                violations.append(
                    FieldViolation(f"{path}.shape", f"{count} elements; an input may have at most {self.max_elements}")
                )
        if len(violations) > start or not dtype_ok:
            return None
        return _payload(plan, tensor, shape, count, violations)

    def _encoded_images(
        self, plan: _InputPlan, image: ImageShape, tensor: WireTensor, violations: list[FieldViolation]
    ) -> np.ndarray | None:
        """Encoded images for an image input: checked as a ``[N]`` batch, returned as an object array of bytes."""
        path = plan.path
        start = len(violations)
        if len(tensor.shape) != 1:
            violations.append(
                FieldViolation(
                    f"{path}.shape",
                    f"encoded images go in a string tensor of shape [N], one image per row; got rank "
                    f"{len(tensor.shape)} (pixels need dtype {plan.dtype.value}, shape {plan.shape_text})",
                )
            )
            return None
        rows = tensor.shape[0]
        elements = rows * image.height * image.width * image.channels
        if rows <= 0:
            problem = "the batch is empty (0 rows)" if rows == 0 else f"dimension {rows} is negative"
            violations.append(FieldViolation(f"{path}.shape[0]", problem))
        elif rows > self.max_batch_rows:
            violations.append(
                FieldViolation(f"{path}.shape[0]", f"{rows} rows; a request may have at most {self.max_batch_rows}")
            )
        elif elements > self.max_elements:
            violations.append(
                FieldViolation(
                    f"{path}.shape[0]",
                    f"{rows} images decode to {elements} elements ({image.height} x {image.width} x {image.channels}"
                    f" each); an input may have at most {self.max_elements}",
                )
            )
        values = cast(Sequence[Any], tensor.values if tensor.values is not None else ())
        if len(violations) == start and len(values) != rows:
            violations.append(
                FieldViolation(f"{path}.values", f"expected {rows} images (shape [{rows}]), got {len(values)}")
            )
        if len(violations) > start:
            return None
        blobs = np.empty(rows, dtype=object)
        blobs[:] = [_as_bytes(v) for v in values]
        return blobs


def _payload(
    plan: _InputPlan, tensor: WireTensor, shape: tuple[int, ...], count: int, violations: list[FieldViolation]
) -> np.ndarray | None:
    """The tensor's data as an array of ``shape``, or None after recording why it cannot be."""
    content = tensor.content
    if content and plan.dtype is DType.STRING:
        violations.append(FieldViolation(f"{plan.path}.content", "string tensors take typed values only"))
        return None
    if content is not None and plan.dtype is not DType.STRING and (content or tensor.values is None):
        expected = count * plan.np_dtype.itemsize
        if len(content) != expected:
            violations.append(
                FieldViolation(
                    f"{plan.path}.content",
                    f"expected {expected} bytes ({count} x {plan.dtype.value}), got {len(content)}",
                )
            )
            return None
        array = np.frombuffer(content, dtype=plan.np_dtype).reshape(shape)
        if plan.dtype is DType.BOOL and count and array.view(np.uint8).max() > 1:
            violations.append(FieldViolation(f"{plan.path}.content", "bool bytes must be 0 or 1"))
            return None
        return array

    # A sequence of scalars (the API layer passes the protobuf repeated field itself).
    values = cast(Sequence[Any], tensor.values if tensor.values is not None else ())
    got = len(values)
    if got != count:
        violations.append(
            FieldViolation(f"{plan.path}.values", f"expected {count} values (shape {list(shape)}), got {got}")
        )
        return None
    try:
        return _typed_array(values, plan).reshape(shape)
    except (ValueError, TypeError, OverflowError) as e:
        violations.append(FieldViolation(f"{plan.path}.values", f"not valid {plan.dtype.value} values: {e}"))
        return None


def _typed_array(values: Sequence[Any], plan: _InputPlan) -> np.ndarray:
    if plan.dtype is DType.STRING:
        # An object array of bytes is what TensorFlow takes for tf.string; str items are encoded as UTF-8.
        array = np.empty(len(values), dtype=object)
        array[:] = [_as_bytes(v) for v in values]
        return array
    if plan.dtype in _NARROW_INTS:
        wide = np.asarray(values, dtype=np.int64)
        info = np.iinfo(plan.np_dtype)
        if wide.size and (wide.min() < info.min or wide.max() > info.max):
            raise ValueError(f"values must lie in [{info.min}, {info.max}]")
        return wide.astype(plan.np_dtype)
    if plan.dtype is DType.FLOAT16:
        with np.errstate(over="ignore"):  # beyond float16's range is +-inf, which is data
            return np.asarray(values, dtype=plan.np_dtype)
    return np.asarray(values, dtype=plan.np_dtype)


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"string values must be bytes, got {type(value).__name__}")
