"""How ``tt`` shows things: plain dicts for ``--json``, rich tables for people, exit codes for failures."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
import grpc
import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from tensortrigger._errors import TensorTriggerError

if TYPE_CHECKING:  # the C (upb) descriptors protobuf may hand out instead of the Python ones
    from google._upb._message import FieldDescriptor as UpbFieldDescriptor

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2  # click's own code for usage errors
EXIT_NOT_FOUND = 3
EXIT_INVALID_ARGUMENT = 4
EXIT_UNAVAILABLE = 5

EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  any other error (including a failed or cancelled job)
  2  usage error (bad command line)
  3  not found (model, version, label or job)
  4  invalid argument (the server rejected the request; violations are listed)
  5  server unavailable, or not serving"""

_EXIT_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_INVALID_ARGUMENT,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
}

# Markup off by default: names, descriptions and server messages are printed as they are, never as rich tags.
stdout = Console(highlight=False, soft_wrap=True, markup=False)
stderr = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def exit_code(error: TensorTriggerError) -> int:
    return _EXIT_BY_CODE.get(error.code, EXIT_ERROR)


def print_error(error: TensorTriggerError, as_json: bool) -> None:
    if as_json:
        violations = [{"field": v.field, "description": v.description} for v in error.violations]
        body = {"error": {"code": error.code.name, "message": error.message, "violations": violations}}
        click.echo(json.dumps(body), err=True)
        return
    stderr.print(f"[red]error:[/] {error.code.name}: {escape(error.message)}", markup=True)
    lines = [f"  {v.field}: {v.description}" for v in error.violations]
    if lines != [f"  {error.message}"]:  # the server often words a single violation as the message itself
        for line in lines:
            stderr.print(line)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


# --- protobuf -> plain values ----------------------------------------------------------------------------


def _enum_prefix(type_name: str) -> str:
    # Enum values carry their type's name in UPPER_SNAKE as a prefix (JobState -> JOB_STATE_): drop it.
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type_name).upper() + "_"


def plain(message: Message) -> dict[str, Any]:
    """A message as JSON-ready values, every field present: ints stay ints (proto's JSON mapping would quote
    int64s), enums lose their type prefix, timestamps become RFC 3339 strings or null."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _plain_value(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_plain_value(field, v) for v in value]
        elif field.message_type is not None and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _plain_value(field, value)
    return out


def _plain_value(field: FieldDescriptor | UpbFieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return value.ToJsonString()
        return plain(value)
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name.removeprefix(_enum_prefix(field.enum_type.name))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def array_json(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [array_json(a) for a in array] if array.ndim else _text(array.item())
    return array.tolist()


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# --- tables ----------------------------------------------------------------------------------------------


def table(*columns: str) -> Table:
    grid = Table(box=None, header_style="bold", pad_edge=False)
    for column in columns:
        grid.add_column(column)
    return grid


def when(timestamp: Any) -> str:
    return timestamp.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if timestamp.seconds else "-"


def size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def labels_text(labels: Mapping[str, int]) -> str:
    return ", ".join(f"{name}->{version}" for name, version in sorted(labels.items())) or "-"


def cell(row: np.ndarray) -> str:
    """One row of an output for a table: a scalar, or a short list."""
    if row.ndim == 0 or row.size == 1:
        value = row.reshape(()).item()
        return _text(value) if isinstance(value, bytes | str) else f"{value:.6g}"
    values = [_text(v) if isinstance(v, bytes | str) else f"{v:.4g}" for v in row.ravel()[:8]]
    return "[" + ", ".join(values) + (", ...]" if row.size > 8 else "]")


# --- progress --------------------------------------------------------------------------------------------


@contextmanager
def transfer(description: str, enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr for a file transfer; yields the ``progress(done, total)`` callback."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeRemainingColumn(), console=stderr, transient=True, disable=not enabled) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update
