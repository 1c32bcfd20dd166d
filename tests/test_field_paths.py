"""Domain errors name domain arguments (``spec.model_name``, ``artifact``, ``input``); each transport moves them
onto its own request's fields with ``request_fields``. Checked here without a server: no wire name is written in
the domain, and every relocation table sends every domain path to a field its request really has.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from tensortrigger.v1 import jobs_service_pb2, registry_service_pb2

import tt_server
from tt_server.api.registry import UPLOAD_FIELDS as GRPC_UPLOAD
from tt_server.errors import FieldViolation, InvalidArgument
from tt_server.registry.header import UploadSpec
from tt_server.rest import native, tfaas
from tt_server.types import JobSpec

ROOT = Path(tt_server.__file__).parent
DOMAIN = ("registry", "formats", "jobs", "runtime", "training")


def test_the_domain_writes_no_wire_field_names() -> None:
    """``header.*`` and ``chunk`` are UploadModelVersion's and CreateJob's fields: the gRPC transport's to name."""
    offenders = []
    for package in DOMAIN:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    text = node.value
                    if text in ("header", "chunk") or text.startswith(("header.", "header[", "chunk.", "chunk[")):
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text!r}")
    assert offenders == []


def domain_paths(cls: type, root: str) -> Iterator[str]:
    """Every path a violation about ``cls``'s attributes can name: ``spec.labels``, ``spec.labels[0]``,
    ``spec.frozen_graph.inputs[0]`` ..."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{root}.{f.name}"
        yield path
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        for arg in args:
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                yield from domain_paths(arg, path)
            elif typing.get_origin(arg) is tuple:
                yield f"{path}[0]"


def relocated(path: str, fields: Mapping[str, str]) -> str:
    error = InvalidArgument.field(path, "x").relocated(fields)
    return error.violations[0].field


def resolves(message: Descriptor, path: str) -> bool:
    """``path`` (``header.frozen_graph.input_nodes[0]``) names a field of ``message``."""
    for name in re.sub(r"\[\d+\]", "", path).split("."):
        field = message.fields_by_name.get(name)
        if field is None:
            return False
        if field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            message = field.message_type
    return True


def root(path: str) -> str:
    return re.split(r"[.\[]", path, maxsplit=1)[0]


UPLOAD = [*domain_paths(UploadSpec, "spec"), "artifact"]
JOB = [*domain_paths(JobSpec, "spec"), "ref", "ref.name", "ref.version", "ref.label", "input"]


def test_paths_cover_nested_specs() -> None:
    assert {"spec.frozen_graph.inputs[0]", "spec.serving_policy.label", "spec.labels[0]"} <= set(UPLOAD)
    assert {"spec.csv.feature_columns[0]", "spec.model.name"} <= set(JOB)


def test_grpc_upload_names_the_upload_request_fields() -> None:
    request = registry_service_pb2.UploadModelVersionRequest.DESCRIPTOR
    moved = {path: relocated(path, GRPC_UPLOAD) for path in UPLOAD}
    assert [(p, m) for p, m in moved.items() if not resolves(request, m)] == []
    assert moved["spec.expected_size"] == "header.expected_size_bytes"
    assert moved["spec.frozen_graph.inputs[0]"] == "header.frozen_graph.input_nodes[0]"
    assert moved["artifact"] == "chunk"


def test_grpc_create_job_names_the_create_job_request_fields() -> None:
    request = jobs_service_pb2.CreateJobRequest.DESCRIPTOR
    fields = {"ref": "spec.model", "input": "chunk"}  # as JobsServicer.CreateJob relocates
    assert [p for p in JOB if not resolves(request, relocated(p, fields))] == []


def test_http_upload_names_the_route_parameters() -> None:
    sent = {"name", "body", *native._UPLOAD_QUERY}
    # A serving policy cannot be given over HTTP; everything else can.
    reachable = [p for p in UPLOAD if not p.startswith("spec.serving_policy")]
    moved = {path: relocated(path, native.UPLOAD_FIELDS) for path in reachable}
    assert {p: m for p, m in moved.items() if root(m) not in sent} == {}
    assert relocated("spec.labels[1]", native.UPLOAD_FIELDS) == "label[1]"
    assert moved["artifact"] == "body"


def test_http_create_job_names_the_route_parameters() -> None:
    sent = {"body", *native._JOB_QUERY}
    unreachable = ("spec.annotations", "spec.input_blob_key", "spec.input_uri", "spec.output_uri", "spec.input_format")
    # spec.csv as a whole has no one parameter (and no rule names it); its options each have theirs.
    reachable = [p for p in JOB if not p.startswith(unreachable) and p != "spec.csv"]
    moved = {path: relocated(path, native.JOB_FIELDS) for path in reachable}
    assert {p: m for p, m in moved.items() if root(m) not in sent} == {}
    assert moved["spec.csv.passthrough_columns[0]"] == "passthrough_column[0]"


def test_tfaas_upload_names_the_form_fields_or_bundle_files() -> None:
    # What a TFaaS form or bundle can set (tfaas._spec): one node of each kind, no labels or feature names.
    reachable = [
        "spec.model_name",
        "spec.metadata",
        "spec.frozen_graph",
        "spec.frozen_graph.inputs[0]",
        "spec.frozen_graph.outputs[0]",
        "spec.class_names",
        "spec.format",
        "artifact",
    ]
    form = {path: relocated(path, tfaas.FORM_FIELDS) for path in reachable}
    assert {p: m for p, m in form.items() if root(m) not in ("name", "params", "model", "labels")} == {}
    assert form["spec.frozen_graph.inputs[0]"] == "params.inputNode"
    bundle = tfaas.upload_fields("body", "params.json", "body", "labels.txt")
    assert {relocated(p, bundle) for p in reachable} == {
        "body",
        "params.json",
        "params.json.inputNode",
        "params.json.outputNode",
        "labels.txt",
    }


def test_a_description_pointing_at_a_field_follows_it() -> None:
    error = InvalidArgument.field("spec.format", "unknown binary; declare it with `spec.frozen_graph`")
    moved = error.relocated(GRPC_UPLOAD)
    assert moved.violations == [
        FieldViolation("header.format", "unknown binary; declare it with `header.frozen_graph`")
    ]
    assert moved.message == "header.format: unknown binary; declare it with `header.frozen_graph`"
    plain = InvalidArgument.field("artifact", "the artifact is empty")  # words are not paths
    assert plain.relocated(native.UPLOAD_FIELDS).message == "body: the artifact is empty"


def test_the_longest_matching_path_wins_whatever_the_order() -> None:
    table = {"spec": "header", "spec.class_names": "header.text"}
    for fields in (table, dict(reversed(table.items()))):
        assert relocated("spec.class_names", fields) == "header.text"
        assert relocated("spec.class_names_extra", fields) == "header.class_names_extra"
