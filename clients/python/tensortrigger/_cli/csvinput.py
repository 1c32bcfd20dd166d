"""How ``tt predict --csv`` turns a CSV file into model inputs: the rules of the server's batch jobs
(``tt_server/jobs/columns.py``), so a file predicts the same either way.

- Header: the first line, when it is not all numbers (a UTF-8 BOM is dropped; blank lines are skipped).
- With a header and a version that declares ``feature_names``, the features are those columns, by name, in the
  model's order, wherever they sit in the file; every other column (an ``id``) is passed through, as text, to
  the output rows. A feature missing from the header, or named twice, is refused.
- Otherwise every column is a feature, in file order (positional).
- The features are dealt out to the model's inputs in signature order: a ``(-1,)`` input takes one column, a
  ``(-1, k)`` input ``k``, a single ``(-1, -1)`` input all of them. Another column count is refused here,
  before any call, rather than by the server.

Refusals raise ``click.BadParameter`` on ``--csv`` (exit code 2), worded like the server's job errors.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from tensortrigger.v1 import model_pb2

SHOWN_COLUMNS = 20


@dataclass(frozen=True, slots=True)
class CsvInputs:
    """The model inputs read from a CSV, and the columns passed through to the output rows."""

    inputs: np.ndarray | dict[str, np.ndarray]  # a bare array for a single-input model, else arrays by name
    passthrough: dict[str, list[str]]  # column name -> its values, in row order


def read_rows(path: Path, delimiter: str = ",") -> tuple[list[str] | None, list[list[str]]]:
    """The header (the first line, when not all numbers) and the data rows, as text; blank lines skipped."""
    with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a BOM is not part of the first name
        rows = [row for row in csv.reader(f, delimiter=delimiter) if row]
    if rows and not all(_is_number(v) for v in rows[0]):
        return rows[0], rows[1:]
    return None, rows


def read_inputs(path: Path, version: model_pb2.ModelVersion) -> CsvInputs:
    """The inputs of ``version`` from the CSV at ``path``, by the rules in the module docstring."""
    header, rows = read_rows(path)
    count = len(header) if header is not None else len(rows[0]) if rows else 0
    names = header if header is not None else [str(i) for i in range(count)]
    if header is not None and version.feature_names:
        features = _by_name(path, header, list(version.feature_names))
        field = f"version {version.version}'s feature_names"
    else:
        features = list(range(count))
        field = "its columns"
    widths = _input_widths(path, version, len(features))
    wanted = sum(width for _, width, _ in widths)
    if len(features) != wanted:
        described = ", ".join(f"{name!r} {width}" for name, width, _ in widths)
        raise _refuse(
            path, f"{len(features)} feature columns ({field}), but the model's inputs take {wanted} ({described})"
        )
    data = _numbers(path, rows, count, features, names, header is not None)
    inputs: dict[str, np.ndarray] = {}
    start = 0
    for name, width, vector in widths:
        inputs[name] = data[:, start : start + width] if vector else data[:, start]
        start += width
    selected = set(features)
    passthrough = {names[i]: [row[i] for row in rows] for i in range(count) if i not in selected}
    only = next(iter(inputs.values())) if len(inputs) == 1 else None
    return CsvInputs(only if only is not None else inputs, passthrough)


def _by_name(path: Path, header: list[str], wanted: list[str]) -> list[int]:
    """The position of each wanted column in the header."""
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(header):
        positions.setdefault(name, []).append(i)
    for name in wanted:
        found = positions.get(name, [])
        if not found:
            more = ", ..." if len(header) > SHOWN_COLUMNS else ""
            shown = ", ".join(repr(n) for n in header[:SHOWN_COLUMNS]) + more
            raise _refuse(
                path,
                f"no column {name!r} in the header (columns: {shown}); the model's features are "
                f"{', '.join(repr(n) for n in wanted)}",
            )
        if len(found) > 1:
            raise _refuse(path, f"the header has {len(found)} columns named {name!r}")
    return [positions[name][0] for name in wanted]


def _input_widths(path: Path, version: model_pb2.ModelVersion, count: int) -> list[tuple[str, int, bool]]:
    """(input name, columns it takes, takes a 2-D slice) for each input, in signature order."""
    inputs = version.signature.inputs
    widths = []
    for spec in inputs:
        shape = list(spec.shape)
        if len(shape) == 1:
            widths.append((spec.name, 1, False))
        elif len(shape) == 2 and shape[1] > 0:
            widths.append((spec.name, shape[1], True))
        elif len(shape) == 2 and len(inputs) == 1:
            widths.append((spec.name, count, True))
        else:
            raise _refuse(
                path,
                f"input {spec.name!r} has shape {shape}; CSV columns feed inputs of shape [-1] or [-1, k] (or one "
                "input of shape [-1, -1]): use --npy or --json",
            )
    return widths


def _numbers(
    path: Path, rows: list[list[str]], count: int, features: list[int], names: list[str], has_header: bool
) -> np.ndarray:
    """The feature columns as a float64 (rows, features) array; rows count data rows from 1, as the server's."""
    data = np.empty((len(rows), len(features)), dtype=np.float64)
    for number, row in enumerate(rows, start=1):
        if len(row) != count:
            raise _refuse(path, f"row {number}: expected {count} fields, found {len(row)}")
        for j, i in enumerate(features):
            try:
                data[number - 1, j] = float(row[i])
            except ValueError:
                column = f"column {names[i]!r}" if has_header else f"column {i}"
                shown = "empty value" if row[i] == "" else f"{row[i][:40]!r} is not a valid number"
                raise _refuse(path, f"row {number}: {column}: {shown}") from None
    return data


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _refuse(path: Path, reason: str) -> click.BadParameter:
    return click.BadParameter(f"{path}: {reason}", param_hint="--csv")
