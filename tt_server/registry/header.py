"""The rules an upload's header must follow: on its own before any byte is stored (``check_upload_spec``), and
against the signature the inspection read (``check_against_signature``).

Violations name the spec's own attributes (``spec.model_name``, ``spec.labels[0]``); each transport moves them
onto its request's fields (``InvalidArgument.relocated``), e.g. ``header.model_name`` for gRPC, ``name`` for HTTP.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tt_server.errors import FieldViolation, InvalidArgument, ResourceExhausted
from tt_server.formats.frozen_graph import INPUT_FIELD, NODE_NAME, OUTPUT_FIELD
from tt_server.registry.names import LABEL_NAME, model_name_problem
from tt_server.types import FrozenGraphNodes, ImageScaling, ModelFormat, ServingPolicy, Signature, tensor_display_name

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_METADATA_BYTES = 64 * 1024
MAX_GRAPH_NODES = 256  # input plus output nodes a frozen graph upload may name
# Class names: ImageNet's 1000 (some repeated, e.g. "crane") are the usual upper end; these caps only stop abuse.
MAX_CLASS_NAMES = 100_000
MAX_CLASS_NAME_CHARS = 256
CLASS_NAMES_FIELD = "spec.class_names"


@dataclass(frozen=True, slots=True)
class UploadSpec:
    """The header of an upload, after protobuf conversion."""

    model_name: str
    format: ModelFormat | None = None
    description: str = ""
    feature_names: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] = ()
    expected_size: int | None = None
    expected_sha256: str | None = None
    frozen_graph: FrozenGraphNodes | None = None  # given for frozen graphs only
    class_names: tuple[str, ...] = ()  # the labels file's lines, trailing blank ones dropped
    image_scaling: ImageScaling = ImageScaling.RAW
    serving_policy: ServingPolicy | None = None  # the model's, when the upload creates it


def check_upload_spec(spec: UploadSpec, max_upload_bytes: int) -> None:
    """The header's own rules, before any byte is read: every violation at once, then the declared size."""
    violations: list[FieldViolation] = []

    def check(ok: bool, field_name: str, description: str) -> None:
        if not ok:
            violations.append(FieldViolation(field_name, description))

    name_problem = model_name_problem(spec.model_name)
    check(name_problem is None, "spec.model_name", name_problem or "")
    for i, label in enumerate(spec.labels):
        check(bool(LABEL_NAME.match(label)), f"spec.labels[{i}]", f"invalid label {label[:80]!r}")
    check(len(set(spec.labels)) == len(spec.labels), "spec.labels", "labels repeat")
    for i, name in enumerate(spec.feature_names):
        check(bool(name) and len(name) <= 256, f"spec.feature_names[{i}]", "must be 1-256 characters")
    check(len(set(spec.feature_names)) == len(spec.feature_names), "spec.feature_names", "names repeat")
    metadata_size = sum(len(k) + len(v) for k, v in spec.metadata.items()) + len(spec.description)
    check(metadata_size <= MAX_METADATA_BYTES, "spec.metadata", f"over {MAX_METADATA_BYTES} bytes")
    if spec.expected_sha256 is not None:
        check(bool(SHA256_HEX.match(spec.expected_sha256)), "spec.expected_sha256", "not a hex SHA-256")
    if spec.serving_policy is not None and spec.serving_policy.label is not None:
        check(
            bool(LABEL_NAME.match(spec.serving_policy.label)),
            "spec.serving_policy.label",
            f"invalid label {spec.serving_policy.label[:80]!r}",
        )
    if spec.serving_policy is not None and spec.serving_policy.version is not None:
        check(spec.serving_policy.version > 0, "spec.serving_policy.version", "versions are numbered from 1")
    violations += _frozen_graph_violations(spec)
    violations += _class_name_violations(spec.class_names)
    if violations:
        raise InvalidArgument(f"{violations[0].field}: {violations[0].description}", violations)
    if spec.expected_size is not None and spec.expected_size > max_upload_bytes:
        raise ResourceExhausted(
            f"the artifact ({spec.expected_size} bytes) is over the upload limit of {max_upload_bytes} bytes"
        )


def check_against_signature(spec: UploadSpec, signature: Signature) -> None:
    """The header's feature names, class names and image scaling must fit the model the upload holds."""
    _check_feature_names(spec.feature_names, signature)
    _check_class_names(spec.class_names, signature)
    _check_image_scaling(spec.image_scaling, signature)


def _check_feature_names(names: tuple[str, ...], signature: Signature) -> None:
    if not names or len(signature.inputs) != 1:
        return
    shape = signature.inputs[0].shape
    if len(shape) == 2 and shape[1] >= 0 and shape[1] != len(names):
        raise InvalidArgument.field(
            "spec.feature_names",
            f"{len(names)} names given but the input {signature.inputs[0].name!r} has {shape[1]} features",
        )


def _frozen_graph_violations(spec: UploadSpec) -> list[FieldViolation]:
    """Header rules for frozen graph nodes: given exactly for frozen graphs, well formed, not too many, and
    naming distinct signature inputs and outputs (``x`` and ``x:0`` are the same tensor)."""
    nodes = spec.frozen_graph
    if nodes is None:
        if spec.format is ModelFormat.FROZEN_GRAPH:
            return [FieldViolation("spec.frozen_graph", "a frozen graph needs its input and output node names")]
        return []
    if spec.format not in (None, ModelFormat.FROZEN_GRAPH):
        return [FieldViolation("spec.frozen_graph", f"node names are for frozen graphs, not {spec.format.name}")]
    violations: list[FieldViolation] = []
    for path, names in ((INPUT_FIELD, nodes.inputs), (OUTPUT_FIELD, nodes.outputs)):
        if not names:
            violations.append(FieldViolation(path, "name at least one node"))
        seen: set[str] = set()
        for i, name in enumerate(names):
            if not NODE_NAME.match(name):
                violations.append(FieldViolation(f"{path}[{i}]", f"{name[:80]!r} is not a node name ('x' or 'x:1')"))
            elif tensor_display_name(name) in seen:
                violations.append(FieldViolation(f"{path}[{i}]", f"{name!r} is named twice"))
            seen.add(tensor_display_name(name))
    if len(nodes.inputs) + len(nodes.outputs) > MAX_GRAPH_NODES:
        violations.append(FieldViolation("spec.frozen_graph", f"more than {MAX_GRAPH_NODES} nodes named"))
    return violations


def _class_name_violations(names: tuple[str, ...]) -> list[FieldViolation]:
    if len(names) > MAX_CLASS_NAMES:
        return [FieldViolation(CLASS_NAMES_FIELD, f"{len(names)} class names; at most {MAX_CLASS_NAMES}")]
    # Repeated names are allowed: real labels files have them (ImageNet's "crane" is a bird and a machine).
    for line, name in enumerate(names, start=1):
        if not name:
            return [FieldViolation(CLASS_NAMES_FIELD, f"line {line} is empty; class {line - 1} needs a name")]
        if len(name) > MAX_CLASS_NAME_CHARS:
            return [FieldViolation(CLASS_NAMES_FIELD, f"line {line} is over {MAX_CLASS_NAME_CHARS} characters")]
    return []


def _check_class_names(names: tuple[str, ...], signature: Signature) -> None:
    """The names must fit the first output when its width is known: one per column, or two for a single
    sigmoid column. Other outputs are checked when ``Predict`` classifies them."""
    if not names or not signature.outputs:
        return
    first = signature.outputs[0]
    if len(first.shape) != 2 or first.shape[1] < 0:
        return
    width = first.shape[1]
    if width != len(names) and not (width == 1 and len(names) == 2):
        raise InvalidArgument.field(
            CLASS_NAMES_FIELD,
            f"{len(names)} class names given but the output {first.name!r} has {width} values per row",
        )


def _check_image_scaling(scaling: ImageScaling, signature: Signature) -> None:
    """Scaling pixels to 0..1 or -1..1 needs an image input whose dtype can hold fractions."""
    if scaling is ImageScaling.RAW:
        return
    if not any(spec.image_shape() and spec.dtype.value.startswith("float") for spec in signature.inputs):
        inputs = ", ".join(f"{s.name} {s.dtype.value}{list(s.shape)}" for s in signature.inputs)
        raise InvalidArgument.field(
            "spec.image_scaling",
            f"scaling pixels needs an image input of a float dtype, [-1, H, W, C] with C 1, 3 or 4; the model's "
            f"inputs are: {inputs}",
        )
