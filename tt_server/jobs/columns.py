"""Which CSV columns feed which model input, and which are copied to the results: the job's column plan.

The plan is derived from the spec, the pinned version's signature (and feature names) and the file's first
line, by ``plan_columns``: once when the job is created, to reject a bad spec with a precise field, and again
by the worker from the same inputs, so both agree. Pure functions, no I/O.

Feeding rules: the selected feature columns, in order, are dealt out to the model's inputs in signature
order: a ``(-1,)`` input takes one column, a ``(-1, k)`` input takes ``k``, and a single ``(-1, -1)`` input
takes them all. Every input and output must have a free batch dimension.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

from tt_server.errors import FailedPrecondition, FieldViolation, InvalidArgument
from tt_server.types import DType, InputFormat, JobSpec, ModelVersion, TensorSpec

MAX_FIRST_LINE_BYTES = 1 << 20
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One model input and the slice of the feature columns it takes."""

    name: str
    dtype: DType
    start: int  # first feature (index into ``ColumnPlan.features``)
    width: int  # how many features
    vector: bool  # True: a (rows, width) array; False: a (rows,) array of one column


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    column_count: int  # fields per row, from the first line
    names: tuple[str, ...]  # header names, or "0", "1", ... without a header (for messages)
    has_header: bool
    delimiter: str
    features: tuple[int, ...]  # file column positions, in the model's feature order
    inputs: tuple[ModelInput, ...]
    passthrough: tuple[tuple[int, str], ...]  # (file column position, result column name), in output order
    outputs: tuple[TensorSpec, ...]

    def column_label(self, index: int) -> str:
        return f"column {self.names[index]!r}" if self.has_header else f"column {index}"


def check_spec(spec: JobSpec, version: ModelVersion) -> None:
    """What can be checked before the input arrives: options, and that the model can be fed from CSV."""
    csv_options = spec.csv
    violations: list[FieldViolation] = []
    if len(csv_options.delimiter) != 1 or csv_options.delimiter in '"\r\n' or not csv_options.delimiter.isascii():
        violations.append(
            FieldViolation("spec.csv.delimiter", "must be one ASCII character other than a quote or newline")
        )
    if csv_options.feature_columns and csv_options.feature_column_indices:
        violations.append(
            FieldViolation("spec.csv.feature_column_indices", "give feature columns by name or by position, not both")
        )
    if not csv_options.has_header and spec.input_format is InputFormat.CSV:  # other formats always name columns
        for name in ("feature_columns", "passthrough_columns"):
            if getattr(csv_options, name):
                violations.append(FieldViolation(f"spec.csv.{name}", "naming columns needs has_header"))
    seen: set[str] = set()
    for i, name in enumerate(csv_options.passthrough_columns):
        if name in seen:
            violations.append(FieldViolation(f"spec.csv.passthrough_columns[{i}]", f"{name!r} is repeated"))
        seen.add(name)
        clash = [c for spec_ in version.signature.outputs for c in output_columns(spec_) if c == name]
        if clash:
            violations.append(
                FieldViolation(f"spec.csv.passthrough_columns[{i}]", f"{name!r} is also the name of a model output")
            )
    if violations:
        raise InvalidArgument(f"{violations[0].field}: {violations[0].description}", violations)
    model_inputs(version, None)  # FailedPrecondition for models jobs cannot feed


def first_record(prefix: bytes, complete: bool, delimiter: str) -> list[str]:
    """The fields of the file's first line. ``prefix`` is the file's start; ``complete``: it is the whole file."""
    data = prefix.removeprefix(BOM)
    end = data.find(b"\n")
    if end < 0:
        if not complete or len(data) > MAX_FIRST_LINE_BYTES:
            raise InvalidArgument.field("input", f"the first line of the input is over {MAX_FIRST_LINE_BYTES} bytes")
        end = len(data)
    try:
        line = data[:end].decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        raise InvalidArgument.field("input", "the first line of the input is not UTF-8 text") from None
    if not line:
        raise InvalidArgument.field("input", "the first line of the input is empty")
    return next(csv.reader([line], delimiter=delimiter))


def plan_columns(spec: JobSpec, version: ModelVersion, first: list[str]) -> ColumnPlan:
    """The column plan; ``InvalidArgument`` naming the spec field for columns that do not fit."""
    options = spec.csv
    count = len(first)
    names = tuple(first) if options.has_header else tuple(str(i) for i in range(count))
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        positions.setdefault(name, []).append(i)

    def by_name(name: str, field: str) -> int:
        found = positions.get(name, [])
        if not found:
            shown = ", ".join(repr(n) for n in names[:20]) + (", ..." if count > 20 else "")
            raise InvalidArgument.field(field, f"no column {name!r} in the header (columns: {shown})")
        if len(found) > 1:
            raise InvalidArgument.field(field, f"the header has {len(found)} columns named {name!r}")
        return found[0]

    passthrough = tuple(
        (by_name(name, f"spec.csv.passthrough_columns[{i}]"), name)
        for i, name in enumerate(options.passthrough_columns)
    )
    if options.feature_columns:
        field = "spec.csv.feature_columns"
        features = tuple(by_name(n, f"{field}[{i}]") for i, n in enumerate(options.feature_columns))
    elif options.feature_column_indices:
        field = "spec.csv.feature_column_indices"
        for i, index in enumerate(options.feature_column_indices):
            if not 0 <= index < count:
                raise InvalidArgument.field(f"{field}[{i}]", f"column {index} does not exist: the input has {count}")
        features = tuple(options.feature_column_indices)
    elif options.has_header and version.feature_names:
        field = "spec.csv.feature_columns"
        for name in version.feature_names:
            if len(positions.get(name, [])) != 1:
                raise InvalidArgument.field(
                    field,
                    f"the model's feature {name!r} is not a column of the input (or is repeated); name the feature "
                    "columns explicitly",
                )
        features = tuple(positions[name][0] for name in version.feature_names)
    else:
        field = "spec.csv.feature_columns"
        skipped = {index for index, _ in passthrough}
        features = tuple(i for i in range(count) if i not in skipped)
    if not features:
        raise InvalidArgument.field(field, "no feature columns are selected")
    inputs = feature_inputs(version, len(features), field)
    return ColumnPlan(
        column_count=count,
        names=names,
        has_header=options.has_header,
        delimiter=options.delimiter,
        features=features,
        inputs=inputs,
        passthrough=passthrough,
        outputs=version.signature.outputs,
    )


def output_columns(spec: TensorSpec, per_row: int | None = None) -> list[str]:
    """Result column names of one output: its name for one value per row, else ``name_0``, ``name_1``, ...
    ``per_row``: values per row when known from a result; otherwise from the signature (unknown: one)."""
    if per_row is None:
        dims = spec.shape[1:]
        per_row = 1
        for d in dims:
            per_row *= max(d, 1)
    return [spec.name] if per_row == 1 else [f"{spec.name}_{i}" for i in range(per_row)]


def feature_inputs(version: ModelVersion, count: int, field: str) -> tuple[ModelInput, ...]:
    """``model_inputs`` fed from ``count`` selected feature columns, or INVALID_ARGUMENT on ``field`` when the
    inputs take another number of values per row."""
    inputs = model_inputs(version, count)
    wanted = sum(i.width for i in inputs)
    if wanted != count:
        described = ", ".join(f"{i.name!r} {i.width}" for i in inputs)
        raise InvalidArgument.field(
            field, f"{count} feature columns selected, but the model's inputs take {wanted} ({described})"
        )
    return inputs


def model_inputs(version: ModelVersion, feature_count: int | None) -> tuple[ModelInput, ...]:
    """How the signature's inputs are fed; ``feature_count`` sizes a single (-1, -1) input."""
    signature = version.signature
    where = f"model {version.model_name!r} version {version.version}"
    for spec in (*signature.inputs, *signature.outputs):
        if not spec.shape or spec.shape[0] != -1:
            raise FailedPrecondition(f"{where} cannot run jobs: {spec.name!r} has no free batch dimension")
    inputs = []
    start = 0
    for spec in signature.inputs:
        if len(spec.shape) == 1:
            width, vector = 1, False
        elif len(spec.shape) == 2 and spec.shape[1] > 0:
            width, vector = spec.shape[1], True
        elif len(spec.shape) == 2 and len(signature.inputs) == 1:
            width, vector = (feature_count if feature_count is not None else 1), True
        else:
            raise FailedPrecondition(
                f"{where} cannot run jobs: input {spec.name!r} has shape {list(spec.shape)}; CSV columns feed inputs "
                "of shape [-1] or [-1, k] (or one input of shape [-1, -1])"
            )
        inputs.append(ModelInput(spec.name, spec.dtype, start, width, vector))
        start += width
    return tuple(inputs)
