"""Parquet and JSON Lines job inputs: columns by name from a typed schema, read a batch at a time.

The plan (``plan_table``) is made from the input's schema, the spec and the pinned version's signature, at
CreateJob (Parquet: from the file's footer, read with one ranged GET; JSON Lines: from the first line) and
again by the worker. Feature columns are either

* one list or fixed-size-list column (the common ``features`` layout) feeding the model's single vector
  input (``(-1, k)``: every row must hold k values; ``(-1, -1)``: k is taken from the first row), or
* one numeric column per feature, dealt out to the model's inputs like CSV columns (``columns.py``).

Without ``feature_columns``: the version's feature names when it has them, else a list column named
``features``, else every column not passed through. Pass-through columns keep their types (Parquet output
writes them as they were; CSV and JSON Lines print them). A null feature value or a list of the wrong length
is a malformed row: the job fails with its row number, or skips and reports it with ``skip_bad_rows``.

Parquet is read row group by row group (``iter_batches``) through ranged reads of the needed column chunks
(``inputs.RangedFile``), so memory holds about one row group whatever the file size; JSON Lines is read in
blocks of whole lines like CSV.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson
import pyarrow.parquet as pq

from tt_server.errors import FailedPrecondition, InvalidArgument
from tt_server.formats.dtypes import NUMPY_DTYPES
from tt_server.jobs.columns import ModelInput, feature_inputs, model_inputs
from tt_server.jobs.csvreader import ARROW_TYPES, JobInputError
from tt_server.types import DType, JobSpec, ModelVersion, RowError, TensorSpec

PARQUET_MAGIC = b"PAR1"
FOOTER_READ_BYTES = 64 * 1024  # one ranged GET covers the footer of most files


@dataclass(frozen=True, slots=True)
class TablePlan:
    features: tuple[str, ...]  # columns feeding the model, in the model's feature order
    vector_column: bool  # True: ``features`` is one list column feeding the single vector input
    inputs: tuple[ModelInput, ...]
    passthrough: tuple[str, ...]  # copied to the results, in order
    outputs: tuple[TensorSpec, ...]
    schema: pa.Schema  # of the columns read (features, then pass-through)

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)


def parquet_footer_length(tail: bytes) -> int:
    """Bytes of the footer (metadata + length + magic) from the file's last bytes; ``InvalidArgument``
    when they are not a Parquet file's."""
    if len(tail) < 12 or not tail.endswith(PARQUET_MAGIC):
        raise InvalidArgument.field("spec.input_format", "the input is not a Parquet file (no PAR1 footer)")
    return int.from_bytes(tail[-8:-4], "little") + 8


def parquet_metadata(footer: bytes) -> pq.FileMetaData:
    """The file metadata from its footer bytes alone (metadata, length, magic)."""
    try:
        return pq.read_metadata(pa.BufferReader(PARQUET_MAGIC + footer))
    except (pa.ArrowException, OSError) as e:
        raise InvalidArgument.field("spec.input_format", f"the Parquet footer cannot be read: {e}") from None


def jsonl_schema(first_line: bytes) -> pa.Schema:
    """The schema of a JSON Lines input, from its first line (an object)."""
    try:
        record = json.loads(first_line)
    except ValueError as e:
        raise InvalidArgument.field("spec.input_format", f"the first line is not JSON: {e}") from None
    if not isinstance(record, dict) or not record:
        raise InvalidArgument.field("spec.input_format", "the first line is not a JSON object with fields")
    try:
        return pajson.read_json(io.BytesIO(first_line)).schema
    except pa.ArrowInvalid as e:
        raise InvalidArgument.field("spec.input_format", f"the first line cannot be read: {e}") from None


def _numeric(t: pa.DataType) -> bool:
    numeric: bool = pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    return numeric


def _list_value_type(t: pa.DataType) -> pa.DataType | None:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return t.value_type
    return None


def plan_table(spec: JobSpec, version: ModelVersion, schema: pa.Schema) -> TablePlan:
    options = spec.csv
    names = list(schema.names)
    field = "spec.csv.feature_columns"

    def column(name: str, where: str) -> pa.Field:
        found = [f for f in schema if f.name == name]
        if len(found) != 1:
            shown = ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
            problem = "no column" if not found else f"{len(found)} columns named"
            raise InvalidArgument.field(where, f"{problem} {name!r} in the input (columns: {shown})")
        return found[0]

    if options.feature_column_indices:
        raise InvalidArgument.field(
            "spec.csv.feature_column_indices", "Parquet and JSON Lines columns are selected by name"
        )
    passthrough = tuple(options.passthrough_columns)
    for i, name in enumerate(passthrough):
        column(name, f"spec.csv.passthrough_columns[{i}]")
    if options.feature_columns:
        features = tuple(options.feature_columns)
        for i, name in enumerate(features):
            column(name, f"{field}[{i}]")
    elif version.feature_names and all(n in names for n in version.feature_names):
        features = tuple(version.feature_names)
    elif "features" in names and _list_value_type(schema.field("features").type) is not None:
        features = ("features",)
    else:
        features = tuple(n for n in names if n not in passthrough)
    if not features:
        raise InvalidArgument.field(field, "no feature columns are selected")

    fields = [column(n, field) for n in features]
    value_type = _list_value_type(fields[0].type)
    vector = len(fields) == 1 and value_type is not None
    if vector:
        assert value_type is not None
        width = fields[0].type.list_size if pa.types.is_fixed_size_list(fields[0].type) else None
        inputs = model_inputs(version, width)
        if len(inputs) != 1 or not inputs[0].vector:
            raise FailedPrecondition(
                f"the list column {features[0]!r} feeds a model with one input of shape [-1, k]; model "
                f"{version.model_name!r} version {version.version} has {len(inputs)} input(s)"
            )
        spec_width = version.signature.inputs[0].shape[1]
        if width is not None and spec_width > 0 and width != spec_width:
            raise InvalidArgument.field(
                field, f"column {features[0]!r} holds {width} values per row, the model takes {spec_width}"
            )
        _check_type(features[0], value_type, inputs[0].dtype)
    else:
        inputs = feature_inputs(version, len(features), field)
        for model_input in inputs:
            for f in fields[model_input.start : model_input.start + model_input.width]:
                _check_type(f.name, f.type, model_input.dtype)
    read = list(dict.fromkeys([*features, *passthrough]))
    return TablePlan(
        features=features,
        vector_column=vector,
        inputs=inputs,
        passthrough=passthrough,
        outputs=version.signature.outputs,
        schema=pa.schema([schema.field(n) for n in read]),
    )


def _check_type(name: str, t: pa.DataType, dtype: DType) -> None:
    ok = pa.types.is_string(t) or pa.types.is_large_string(t) if dtype is DType.STRING else _numeric(t)
    if not ok:
        raise InvalidArgument.field("spec.csv.feature_columns", f"column {name!r} is {t}, the model takes {dtype}")


@dataclass(slots=True)
class TableBatch:
    rows: int  # rows kept
    rows_read: int
    inputs: dict[str, np.ndarray]
    passthrough: list[pa.Array]
    errors: list[RowError]


def convert_batch(plan: TablePlan, batch: pa.RecordBatch | pa.Table, first_row: int, skip: bool) -> TableBatch:
    """Model arrays and pass-through columns of one batch (blocking; run it in a thread). ``first_row`` is
    the batch's first row number in the file (from 1)."""
    columns = {name: _whole(batch.column(name)) for name in plan.columns}
    bad: dict[int, str] = {}
    for name in plan.features:
        array = columns[name]
        if array.null_count:
            for index in np.flatnonzero(~np.asarray(array.is_valid())):
                bad.setdefault(int(index), f"column {name!r} is null")
    if plan.vector_column:
        name = plan.features[0]
        array = columns[name]
        width = _vector_width(plan, array)
        if not pa.types.is_fixed_size_list(array.type):
            lengths = pc.fill_null(pc.list_value_length(array), width).to_numpy(zero_copy_only=False)
            for index in np.flatnonzero(lengths != width):
                bad.setdefault(int(index), f"column {name!r} holds {lengths[index]} values, the model takes {width}")
        values = pc.list_flatten(array) if not pa.types.is_fixed_size_list(array.type) else array.flatten()
        if values.null_count:
            owners = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
            for index in np.unique(owners[~np.asarray(values.is_valid())]):
                bad.setdefault(int(index), f"column {name!r} holds a null value")
    errors = [RowError(first_row + index, reason) for index, reason in sorted(bad.items())]
    if errors and not skip:
        raise JobInputError(errors[0].row, errors[0].reason)
    if bad:
        keep = np.ones(len(batch), dtype=bool)
        keep[list(bad)] = False
        mask = pa.array(keep)
        columns = {name: pc.filter(array, mask) for name, array in columns.items()}
    rows = len(batch) - len(bad)
    return TableBatch(
        rows=rows,
        rows_read=len(batch),
        inputs=_model_arrays(plan, columns, rows),
        passthrough=[columns[name] for name in plan.passthrough],
        errors=errors,
    )


def _whole(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _vector_width(plan: TablePlan, array: pa.Array) -> int:
    spec_width = plan.inputs[0].width
    if pa.types.is_fixed_size_list(array.type):
        return int(array.type.list_size)
    if spec_width > 1 or len(array) == 0:
        return spec_width
    first = pc.list_value_length(array[:1]).to_pylist()[0]
    return int(first or 0)


def _model_arrays(plan: TablePlan, columns: dict[str, pa.Array], rows: int) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    if plan.vector_column:
        model_input = plan.inputs[0]
        array = columns[plan.features[0]]
        values = array.flatten() if pa.types.is_fixed_size_list(array.type) else pc.list_flatten(array)
        flat = _numpy(values, model_input.dtype)
        width = len(flat) // rows if rows else max(model_input.width, 1)
        arrays[model_input.name] = flat.reshape(rows, width)
        return arrays
    for model_input in plan.inputs:
        names = plan.features[model_input.start : model_input.start + model_input.width]
        dtype = NUMPY_DTYPES[model_input.dtype]
        if not model_input.vector:
            arrays[model_input.name] = _numpy(columns[names[0]], model_input.dtype)
            continue
        matrix = np.empty((rows, model_input.width), dtype=dtype)
        for j, name in enumerate(names):
            matrix[:, j] = _numpy(columns[name], model_input.dtype)
        arrays[model_input.name] = matrix
    return arrays


def _numpy(array: pa.Array, dtype: DType) -> np.ndarray:
    if dtype is DType.STRING:
        return np.array([s.encode() for s in array.to_pylist()], dtype=object)
    if pa.types.is_boolean(array.type):
        array = array.cast(pa.uint8())
    target = ARROW_TYPES[dtype]
    if array.type != target:
        try:
            array = array.cast(target)  # safe cast: an out-of-range or fractional value fails the job
        except pa.ArrowInvalid as e:
            raise JobInputError(0, f"a feature value does not fit the model's {dtype}: {e}") from None
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=NUMPY_DTYPES[dtype])


class JsonLinesParser:
    """Parses blocks of whole JSON lines to ``TableBatch``es with the plan's schema (blocking)."""

    def __init__(self, plan: TablePlan, skip: bool) -> None:
        self._plan = plan
        self._skip = skip
        # Features are read as float64 (an integer-looking first line must not fix the column to int64);
        # pass-through columns keep the types of the first line.
        types = {}
        for f in plan.schema:
            if f.name in plan.features:
                inner = _list_value_type(f.type)
                types[f.name] = pa.list_(pa.float64()) if inner is not None else pa.float64()
                if plan.inputs[0].dtype is DType.STRING:
                    types[f.name] = f.type
            else:
                types[f.name] = f.type
        self._schema = pa.schema([pa.field(n, t) for n, t in types.items()])

    def _read(self, data: bytes) -> pa.Table:
        return pajson.read_json(
            io.BytesIO(data),
            read_options=pajson.ReadOptions(use_threads=False, block_size=max(len(data) + 1, 1 << 20)),
            parse_options=pajson.ParseOptions(explicit_schema=self._schema, unexpected_field_behavior="ignore"),
        )

    def parse(self, block: bytes, first_row: int) -> TableBatch:
        try:
            table = self._read(block)
            errors: list[RowError] = []
        except pa.ArrowInvalid:
            # Slow path, for this block only: line by line, to number the bad rows.
            lines = [line for line in block.split(b"\n") if line.strip()]
            good: list[bytes] = []
            numbers: list[int] = []  # block-relative number of each good line
            errors = []
            for number, line in enumerate(lines):
                try:
                    self._read(line)
                    good.append(line)
                    numbers.append(number)
                except pa.ArrowInvalid as e:
                    errors.append(RowError(first_row + number, f"not a valid JSON object for the job: {e}"))
            if errors and not self._skip:
                raise JobInputError(errors[0].row, errors[0].reason) from None
            table = self._read(b"\n".join(good)) if good else self._schema.empty_table()
            if errors:
                kept = convert_batch(self._plan, table, first_row, self._skip)
                kept.rows_read = len(lines)
                # convert_batch numbered the good lines alone: give their errors the lines' own numbers.
                renumbered = [RowError(first_row + numbers[e.row - first_row], e.reason) for e in kept.errors]
                kept.errors = sorted(errors + renumbered, key=lambda e: e.row)
                return kept
        return convert_batch(self._plan, table, first_row, self._skip)
