"""Reading a job's CSV fast and in bounded memory: blocks of whole lines, each parsed by pyarrow.

Why pyarrow's CSV parser: it tokenises and converts in C++ straight into typed columns (measured ~0.9 M rows/s
of 42 float columns on one core, 350 MB/s), so the numbers never become Python objects. Python's ``csv``
module plus ``float()`` is ~20x slower; ``numpy.loadtxt`` cannot keep string pass-through columns.

Why blocks of whole lines parsed one by one (``pyarrow.csv.read_csv`` per block) rather than the streaming
reader ``open_csv``: exact row numbers. The streaming reader cannot say which row failed a conversion (its
error kills the stream) nor, with threads on, which row had the wrong number of fields. Parsing a block on
its own keeps every error local: the block's first row number is known, pyarrow numbers the rows inside it,
and a failed block can be re-parsed slowly to find its bad rows, while good blocks stay on the fast path.
One parser thread leaves the other core to TensorFlow. The price: quoted values may not contain line breaks
(pyarrow's default too; allowing them is also what makes its parser slower).

Row numbers count data rows from 1, not counting the header or blank lines (pyarrow skips those).
"""

from __future__ import annotations

import contextlib
import functools
import io
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tt_server.formats.dtypes import NUMPY_DTYPES
from tt_server.jobs.columns import BOM, ColumnPlan
from tt_server.types import DType, RowError

MAX_LINE_BYTES = 64 << 20  # one row longer than this fails the job instead of growing memory without bound

# How each input dtype is read from text; float16 goes through float32 (pyarrow cannot parse half floats).
ARROW_TYPES: dict[DType, pa.DataType] = {
    DType.FLOAT16: pa.float32(),
    DType.FLOAT32: pa.float32(),
    DType.FLOAT64: pa.float64(),
    DType.INT8: pa.int8(),
    DType.INT16: pa.int16(),
    DType.INT32: pa.int32(),
    DType.INT64: pa.int64(),
    DType.UINT8: pa.uint8(),
    DType.BOOL: pa.bool_(),
    DType.STRING: pa.string(),
}


class JobInputError(Exception):
    """The input is malformed at ``row`` (0 for the file as a whole); the job fails with this message."""

    def __init__(self, row: int, reason: str) -> None:
        super().__init__(f"row {row}: {reason}" if row else reason)
        self.row = row
        self.reason = reason


async def split_blocks(
    chunks: AsyncIterator[bytes], block_bytes: int, skip_header: bool
) -> AsyncGenerator[bytes, None]:
    """Regroup a byte stream into blocks of whole lines of about ``block_bytes`` (the last may lack its final
    newline). Drops a UTF-8 byte order mark and, with ``skip_header``, the first line.

    Each block costs one copy (``bytes.join`` of the chunks it spans, the last one cut after its last line
    break): this runs on the event loop, so an accumulate-slice-delete buffer's three copies of every byte
    were a tenth of a CSV job's CPU time, all of it holding the GIL the parser and model threads need."""
    head: bytearray | None = bytearray()  # the file's start, until the byte order mark and header are gone
    header_pending = skip_header
    pending: list[bytes] = []  # the current block's chunks
    held = 0
    unbroken = False  # True: no chunk in ``pending`` has a line break (one line is longer than a block)
    async with contextlib.aclosing(chunks):  # type: ignore[type-var]  # both blob stores return generators
        async for chunk in chunks:
            if head is not None:
                head += chunk
                if len(head) < len(BOM) and BOM.startswith(bytes(head)):
                    continue  # could still be a byte order mark
                if head.startswith(BOM):
                    del head[: len(BOM)]
                if header_pending:
                    end = head.find(b"\n")
                    if end < 0:
                        _check_line(len(head))
                        continue
                    del head[: end + 1]
                    header_pending = False
                chunk, head = bytes(head), None
                if not chunk:
                    continue
            pending.append(chunk)
            held += len(chunk)
            if held < block_bytes:
                unbroken = False
                continue
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                block, rest = b"".join([*pending[:-1], memoryview(chunk)[: cut + 1]]), chunk[cut + 1 :]
            else:
                found = None if unbroken else _last_break(pending)
                if found is None:
                    unbroken = True
                    _check_line(held)
                    continue
                k, cut = found
                piece = pending[k]
                block = b"".join([*pending[:k], memoryview(piece)[: cut + 1]])
                rest = b"".join([memoryview(piece)[cut + 1 :], *pending[k + 1 :]])
            yield block
            pending, held, unbroken = ([rest] if rest else []), len(rest), True
    if head and not header_pending:
        pending = [bytes(head)]  # the file is shorter than a byte order mark
    if pending:
        yield b"".join(pending)


def _last_break(pieces: list[bytes]) -> tuple[int, int] | None:
    """(piece, offset) of the last line break in ``pieces``, or None."""
    for k in range(len(pieces) - 1, -1, -1):
        cut = pieces[k].rfind(b"\n")
        if cut >= 0:
            return k, cut
    return None


def _check_line(length: int) -> None:
    if length > MAX_LINE_BYTES:
        raise JobInputError(0, f"a line of the input is longer than {MAX_LINE_BYTES} bytes")


@dataclass(slots=True)
class ParsedBlock:
    rows: int  # rows kept (the model runs on these)
    rows_read: int  # data rows in the block, kept or not: the next block's row numbers start after them
    inputs: dict[str, np.ndarray]  # by model input name
    passthrough: list[pa.Array]  # string columns, in output order
    errors: list[RowError]  # malformed rows (skipped with skip_bad_rows), in row order


class BlockParser:
    """Parses one block of whole lines at a time (``parse`` is blocking; run it in a thread)."""

    def __init__(self, plan: ColumnPlan, skip_bad_rows: bool) -> None:
        self._plan = plan
        self._skip = skip_bad_rows
        self._names = [f"c{i}" for i in range(plan.column_count)]
        feature_types: dict[int, pa.DataType] = {}
        for model_input in plan.inputs:
            for position in plan.features[model_input.start : model_input.start + model_input.width]:
                feature_types[position] = ARROW_TYPES[model_input.dtype]
        passthrough = {position for position, _ in plan.passthrough}
        # Target type per needed column. A column both fed and passed through is read as text, so that it is
        # copied unchanged, and converted for the model afterwards.
        self._targets: dict[int, pa.DataType] = {}
        self._read_types: dict[int, pa.DataType] = {}
        for position in sorted(passthrough | set(feature_types)):
            target = feature_types.get(position, pa.string())
            self._targets[position] = target
            self._read_types[position] = pa.string() if position in passthrough else target
        self._feature_positions = sorted(feature_types)

    def parse(self, block: bytes, first_row: int) -> ParsedBlock:
        invalid: list[tuple[int, int]] = []  # (row number in the block, fields found)
        not_utf8: set[int] = set()  # row numbers in the block of lines that are not UTF-8 text
        if not block.isascii():
            block, not_utf8 = self._mask_non_utf8(block)

        def on_invalid(row: pacsv.InvalidRow) -> str:
            invalid.append((row.number or 0, row.actual_columns))
            return "skip"

        bad: dict[int, str] = {}  # row index in the table -> reason
        try:
            table = self._read(block, on_invalid, self._read_types)
            read = {p: table.column(f"c{p}").combine_chunks() for p in self._targets}
            features = {p: _convert(read[p], self._targets[p]) for p in self._feature_positions}
        except pa.ArrowInvalid:
            # Slow path, for this block only: read raw bytes and find every value that does not convert.
            invalid.clear()
            table = self._read(block, on_invalid, {p: pa.binary() for p in self._targets})
            raw = {p: table.column(f"c{p}").combine_chunks() for p in self._targets}
            for p, target in self._targets.items():
                read_type = self._read_types[p]
                failing = set(_failing(raw[p], functools.partial(_convert, target=read_type)))
                if target != read_type:
                    failing |= set(_failing(raw[p], functools.partial(_convert, target=target)))
                for index in sorted(failing):
                    bad.setdefault(index, _describe(self._plan.column_label(p), raw[p][index].as_py(), target))
            keep = np.ones(table.num_rows, dtype=bool)
            keep[list(bad)] = False
            mask = pa.array(keep)
            read = {p: _convert(pc.filter(raw[p], mask), self._read_types[p]) for p in self._targets}
            features = {p: _convert(read[p], self._targets[p]) for p in self._feature_positions}
        rows_read = table.num_rows + len(invalid)
        errors = [
            RowError(
                first_row + number - 1,
                "not UTF-8 text" if number in not_utf8 else f"expected {self._plan.column_count} fields, found {found}",
            )
            for number, found in invalid
        ]
        if bad:
            numbers = _kept_row_numbers(rows_read, {number for number, _ in invalid})
            errors += [RowError(first_row + numbers[index] - 1, reason) for index, reason in bad.items()]
            errors.sort(key=lambda e: e.row)
        if errors and not self._skip:
            raise JobInputError(errors[0].row, errors[0].reason)
        rows = table.num_rows - len(bad)
        return ParsedBlock(
            rows=rows,
            rows_read=rows_read,
            inputs=self._model_arrays(features, rows),
            passthrough=[read[p] for p, _ in self._plan.passthrough],
            errors=errors,
        )

    def _mask_non_utf8(self, block: bytes) -> tuple[bytes, set[int]]:
        """``block`` with each line that is not UTF-8 replaced by one of too many (empty) fields, so that it is
        reported as a bad row, and those rows' numbers. pyarrow decodes an invalid row's text as UTF-8 to report
        it: a line both malformed and not UTF-8 made it fail the whole read (the job crashed on every attempt)."""
        try:
            block.decode("utf-8")
            return block, set()
        except UnicodeDecodeError:
            pass
        lines = block.split(b"\n")
        placeholder = self._plan.delimiter.encode() * self._plan.column_count
        masked: set[int] = set()
        number = 0
        for index, line in enumerate(lines):
            if not line:
                continue  # pyarrow skips empty lines without numbering them
            number += 1
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                lines[index] = placeholder
                masked.add(number)
        return b"\n".join(lines), masked

    def _read(
        self, block: bytes, on_invalid: Callable[[pacsv.InvalidRow], str], types: dict[int, pa.DataType]
    ) -> pa.Table:
        return pacsv.read_csv(
            io.BytesIO(block),
            # No threads: pyarrow then numbers the rows, and the other core runs the model meanwhile.
            read_options=pacsv.ReadOptions(
                column_names=self._names, use_threads=False, block_size=max(len(block) + 1, 1 << 20)
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=self._plan.delimiter, ignore_empty_lines=True, invalid_row_handler=on_invalid
            ),
            convert_options=pacsv.ConvertOptions(
                include_columns=[f"c{p}" for p in types],
                column_types={f"c{p}": t for p, t in types.items()},
                # Nothing is null: an empty or "NA" field is a malformed value, not a silent NaN.
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )

    def _model_arrays(self, features: dict[int, pa.Array], rows: int) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for model_input in self._plan.inputs:
            positions = self._plan.features[model_input.start : model_input.start + model_input.width]
            dtype = NUMPY_DTYPES[model_input.dtype]
            if not model_input.vector:
                arrays[model_input.name] = _numpy(features[positions[0]], model_input.dtype).astype(dtype, copy=False)
                continue
            matrix = np.empty((rows, model_input.width), dtype=dtype)
            for j, position in enumerate(positions):
                matrix[:, j] = _numpy(features[position], model_input.dtype)
            arrays[model_input.name] = matrix
        return arrays


def _convert(array: pa.Array, target: pa.DataType) -> pa.Array:
    """Text (or raw bytes) to ``target`` as pyarrow's CSV reader would: UTF-8 checked, numbers trimmed."""
    if array.type == target:
        return array
    if array.type == pa.binary():
        array = array.cast(pa.string())  # raises ArrowInvalid on bad UTF-8
    if target == pa.string():
        return array
    return pc.utf8_trim_whitespace(array).cast(target)


def _failing(array: pa.Array, convert: Callable[[pa.Array], pa.Array]) -> list[int]:
    """Indices of the values ``convert`` rejects, by bisection: O(bad x log n) conversions of slices, each
    in C++, instead of one Python call per value."""
    try:
        convert(array)
        return []
    except pa.ArrowInvalid:
        if len(array) == 1:
            return [0]
    middle = len(array) // 2
    return _failing(array.slice(0, middle), convert) + [middle + i for i in _failing(array.slice(middle), convert)]


def _describe(column: str, value: object, target: pa.DataType) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return f"{column}: not UTF-8 text"
    if value == "":
        return f"{column}: empty value"
    shown = repr(value) if len(str(value)) <= 40 else repr(str(value)[:40]) + "..."
    return f"{column}: {shown} is not a valid {target}"


def _kept_row_numbers(rows_read: int, skipped: set[int]) -> list[int]:
    """Block-relative numbers (from 1) of the rows pyarrow kept, in order: all but the skipped ones."""
    return [n for n in range(1, rows_read + 1) if n not in skipped]


def _numpy(array: pa.Array, dtype: DType) -> np.ndarray:
    if dtype is DType.STRING:
        return np.array([s.encode() for s in array.to_pylist()], dtype=object)
    values: np.ndarray = array.to_numpy(zero_copy_only=False)
    return values
