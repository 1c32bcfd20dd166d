"""The CSV side of jobs without servers: column plans, block splitting, parsing with row numbers, encoding."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from tt_server.errors import FailedPrecondition, InvalidArgument
from tt_server.jobs.columns import check_spec, first_record, plan_columns
from tt_server.jobs.csvreader import BlockParser, JobInputError, split_blocks
from tt_server.jobs.results import ResultEncoder
from tt_server.types import (
    CsvOptions,
    DType,
    JobSpec,
    ModelFormat,
    ModelRef,
    ModelVersion,
    OutputFormat,
    Signature,
    TensorSpec,
    VersionSource,
)

TWO_INPUTS = Signature(
    inputs=(TensorSpec("a", DType.FLOAT32, (-1, 3)), TensorSpec("b", DType.INT32, (-1,))),
    outputs=(TensorSpec("probs", DType.FLOAT32, (-1, 3)), TensorSpec("value", DType.FLOAT64, (-1, 1))),
)


def version(signature: Signature = TWO_INPUTS, feature_names: tuple[str, ...] = ()) -> ModelVersion:
    return ModelVersion(
        "m", 1, ModelFormat.KERAS, "0" * 64, 1, "k", signature, VersionSource.UPLOAD, datetime.now(UTC),
        feature_names=feature_names,
    )  # fmt: skip


def job_spec(**csv: object) -> JobSpec:
    return JobSpec(ModelRef("m"), CsvOptions(**csv))  # type: ignore[arg-type]


def test_first_record_handles_bom_crlf_and_quotes() -> None:
    assert first_record(b'\xef\xbb\xbfid,"x,y",z\r\n1,2,3\r\n', False, ",") == ["id", "x,y", "z"]
    assert first_record(b"a;b", True, ";") == ["a", "b"]  # the whole file is one line
    with pytest.raises(InvalidArgument):
        first_record(b"a,b", False, ",")  # no newline in the first MiB... of a longer file
    with pytest.raises(InvalidArgument):
        first_record(b"\n1,2\n", False, ",")


def test_plan_deals_features_to_inputs_in_signature_order() -> None:
    plan = plan_columns(job_spec(has_header=True, passthrough_columns=("id",)), version(), ["id", "p", "q", "r", "s"])
    assert plan.features == (1, 2, 3, 4)  # every column not passed through, in file order
    assert [(i.name, i.start, i.width, i.vector) for i in plan.inputs] == [("a", 0, 3, True), ("b", 3, 1, False)]
    named = plan_columns(job_spec(has_header=True), version(feature_names=("s", "r", "q", "p")), ["p", "q", "r", "s"])
    assert named.features == (3, 2, 1, 0)  # the version's feature names pick the columns
    positional = plan_columns(job_spec(feature_column_indices=(4, 0, 1, 2)), version(), ["9"] * 5)
    assert positional.features == (4, 0, 1, 2) and positional.names == ("0", "1", "2", "3", "4")


def test_plan_and_spec_errors() -> None:
    with pytest.raises(InvalidArgument) as err:
        plan_columns(job_spec(has_header=True, feature_columns=("p", "p", "zz", "q")), version(), ["p", "q"])
    assert err.value.violations[0].field == "spec.csv.feature_columns[2]"
    with pytest.raises(InvalidArgument) as err:
        plan_columns(job_spec(has_header=True), version(), ["p", "q", "r", "s", "t"])
    assert "feature columns selected" in err.value.message
    with pytest.raises(InvalidArgument) as err:
        check_spec(job_spec(has_header=True, passthrough_columns=("value", "id", "id")), version())
    assert [v.field for v in err.value.violations] == [
        "spec.csv.passthrough_columns[0]",
        "spec.csv.passthrough_columns[2]",
    ]
    image = Signature((TensorSpec("img", DType.FLOAT32, (-1, 8, 8)),), (TensorSpec("y", DType.FLOAT32, (-1,)),))
    with pytest.raises(FailedPrecondition):
        check_spec(job_spec(), version(image))
    fixed = Signature((TensorSpec("x", DType.FLOAT32, (1, 4)),), (TensorSpec("y", DType.FLOAT32, (1,)),))
    with pytest.raises(FailedPrecondition):
        check_spec(job_spec(), version(fixed))


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("chunk", [1, 2, 5, 1000])
async def test_split_blocks_keeps_whole_lines(chunk: int) -> None:
    data = b"\xef\xbb\xbfh1,h2\n1,2\n3,4\n5,6"
    blocks = [b async for b in split_blocks(_chunks(data, chunk), 4, skip_header=True)]
    assert b"".join(blocks) == b"1,2\n3,4\n5,6"
    assert all(b.endswith(b"\n") for b in blocks[:-1])
    assert [b async for b in split_blocks(_chunks(b"only,a,header\n", chunk), 4, skip_header=True)] == []
    no_header = [b async for b in split_blocks(_chunks(data, chunk), 4, skip_header=False)]
    assert b"".join(no_header) == data[3:]  # the byte order mark goes either way


def test_parser_types_whitespace_and_shared_columns() -> None:
    plan = plan_columns(
        job_spec(has_header=True, feature_columns=("x", "y", "z", "n"), passthrough_columns=("n", "id")),
        version(),
        ["id", "x", "y", "z", "n"],
    )
    parsed = BlockParser(plan, skip_bad_rows=False).parse(b'a, 1.5 ,2,3e2,007\n"b,c",-1,0,1,8\n', first_row=1)
    np.testing.assert_array_equal(parsed.inputs["a"], np.array([[1.5, 2, 300], [-1, 0, 1]], np.float32))
    np.testing.assert_array_equal(parsed.inputs["b"], np.array([7, 8], np.int32))
    assert [p.to_pylist() for p in parsed.passthrough] == [["007", "8"], ["a", "b,c"]]  # text as it was


def test_parser_row_numbers_across_blank_and_invalid_rows() -> None:
    plan = plan_columns(job_spec(has_header=False), version(), ["1", "2", "3", "4"])
    block = b"1,2,3,4\n\n1,2\n1,2,3,x\n1,2,3,4\n1,2,3,99999999999\n"
    parsed = BlockParser(plan, skip_bad_rows=True).parse(block, first_row=101)
    assert [(e.row, e.reason) for e in parsed.errors] == [
        (102, "expected 4 fields, found 2"),
        (103, "column 3: 'x' is not a valid int32"),
        (105, "column 3: '99999999999' is not a valid int32"),
    ]
    assert (parsed.rows, parsed.rows_read) == (2, 5)
    with pytest.raises(JobInputError) as err:
        BlockParser(plan, skip_bad_rows=False).parse(block, first_row=101)
    assert str(err.value) == "row 102: expected 4 fields, found 2"


def test_parser_reports_a_malformed_line_that_is_not_utf8(recwarn: pytest.WarningsRecorder) -> None:
    # Found by the wire fuzz: pyarrow decodes a malformed row's text as UTF-8 to report it, so such a row failed
    # the whole read ("job attempt crashed" with a traceback on every attempt, then dead-lettered).
    plan = plan_columns(job_spec(has_header=False), version(), ["1", "2", "3", "4"])
    block = b"1,2,3,4\n\xeb\xff,2\n\n1,2,3,\xff\n1,2,3,4\n"
    parsed = BlockParser(plan, skip_bad_rows=True).parse(block, first_row=11)
    assert [(e.row, e.reason) for e in parsed.errors] == [(12, "not UTF-8 text"), (13, "not UTF-8 text")]
    assert (parsed.rows, parsed.rows_read) == (2, 4)
    with pytest.raises(JobInputError, match="row 12: not UTF-8 text"):
        BlockParser(plan, skip_bad_rows=False).parse(block, first_row=11)
    assert not recwarn.list  # nor an exception pyarrow could only report as unraisable


def test_csv_encoding_quotes_only_what_needs_it() -> None:
    encoder = ResultEncoder(OutputFormat.CSV, ["id"], TWO_INPUTS.outputs)
    outputs: dict[str, np.ndarray] = {
        "probs": np.array([[0.1, 0.2, 0.7], [1, 0, 0]], np.float32),
        "value": np.array([[1 / 3], [np.nan]], np.float64),
    }
    ids = pa.array(["plain", 'has,comma "and quote"'])
    assert encoder.header(outputs) == b"id,probs_0,probs_1,probs_2,value\n"
    assert encoder.encode([ids], outputs, 2) == (
        b'plain,0.1,0.2,0.7,0.3333333333333333\n"has,comma ""and quote""",1,0,0,nan\n'
    )


def test_jsonl_encoding_escapes_and_nulls() -> None:
    outputs = (TensorSpec("v", DType.FLOAT32, (-1, 2)), TensorSpec("ok", DType.BOOL, (-1,)))
    encoder = ResultEncoder(OutputFormat.JSONL, ["id"], outputs)
    ids = pa.array(['q"\\', "tab\there", "é"])
    data = {"v": np.array([[1, np.inf], [0.5, -2], [0, 0]], np.float16), "ok": np.array([True, False, True])}
    lines = encoder.encode([ids], data, 3).decode().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"id": 'q"\\', "v": [1, None], "ok": True},
        {"id": "tab\there", "v": [0.5, -2], "ok": False},
        {"id": "é", "v": [0, 0], "ok": True},
    ]
    assert encoder.header(data) == b""
