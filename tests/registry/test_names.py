"""The registry's naming rules, and how a transport moves their errors onto its own request's fields."""

from __future__ import annotations

import pytest

from tt_server.errors import FieldViolation, InvalidArgument, request_fields
from tt_server.registry.header import UploadSpec, check_upload_spec
from tt_server.registry.names import check_model_name, model_name_problem


def test_one_model_name_rule_for_calls_and_upload_headers() -> None:
    assert model_name_problem("fraud-v2.1_x") is None
    for bad in ("", "-x", "a/b", "../etc", "x" * 64):
        problem = model_name_problem(bad)
        assert problem is not None
        with pytest.raises(InvalidArgument) as called:
            check_model_name(bad)
        with pytest.raises(InvalidArgument) as uploaded:
            check_upload_spec(UploadSpec(model_name=bad), max_upload_bytes=1 << 20)
        assert called.value.violations == [FieldViolation("name", problem)]
        assert uploaded.value.violations == [FieldViolation("spec.model_name", problem)]


def test_a_transport_relocates_a_domain_argument_onto_its_field() -> None:
    with pytest.raises(InvalidArgument) as caught, request_fields({"ref": "model_spec"}):
        check_model_name("../etc", "ref.name")
    (violation,) = caught.value.violations
    assert violation.field == "model_spec.name"
    assert caught.value.message == f"model_spec.name: {violation.description}"


def test_relocation_moves_whole_path_segments_only() -> None:
    error = InvalidArgument(
        "ref: x",
        [FieldViolation("ref", "x"), FieldViolation("ref[0]", "y"), FieldViolation("refs.name", "z")],
    )
    moved = error.relocated({"ref": "model"})
    assert [v.field for v in moved.violations] == ["model", "model[0]", "refs.name"]
    assert moved.message == "model: x"
    assert error.relocated({"other": "x"}) is error
