"""Frozen graphs, TFaaS's format: a TF1 ``GraphDef`` whose variables are folded into constants.

A GraphDef is a bare protobuf: nothing in it says which nodes are the model's inputs and outputs, so the upload
names them (``FrozenGraphNodes``, TFaaS's ``inputNode`` / ``outputNode``) and the version stores the names. The
registry (at upload) and the loader (at every load) build the serving function the same way, here:

    parse_graph_def(bytes) -> check_nodes(graph, nodes) -> import_frozen_graph(graph, nodes) -> (function, signature)

The graph is imported inside ``tf.compat.v1.wrap_function`` and pruned to a concrete function from the input
tensors to the output tensors: only what the outputs depend on ever runs, and no TF1 session is involved. The
op scan (``safety.scan_graph_def``) runs between parsing and importing.

Blocking (TensorFlow); callers run it in a worker thread. TensorFlow is imported on first use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from tt_server.errors import FailedPrecondition, FieldViolation, InvalidArgument
from tt_server.types import DType, FrozenGraphNodes, Signature, TensorSpec, tensor_display_name

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef

# TensorFlow's own rule for node names, plus an optional output index.
NODE_NAME = re.compile(r"^[A-Za-z0-9.][A-Za-z0-9_.\-/>]*(:\d{1,4})?$")
# Where a bad node name is reported: the upload spec's FrozenGraphNodes (see the package's docstring).
INPUT_FIELD = "spec.frozen_graph.inputs"
OUTPUT_FIELD = "spec.frozen_graph.outputs"
_HINTS = 5  # node names suggested when a name is wrong


def parse_graph_def(data: bytes) -> GraphDef:
    """The GraphDef in ``data``; INVALID_ARGUMENT when the bytes are not one (protobuf has no magic bytes, so
    "parses and has named nodes with ops" is the test)."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.framework.graph_pb2 import GraphDef

    graph = GraphDef()
    try:
        graph.ParseFromString(data)
    except DecodeError:
        graph.Clear()
    if not graph.node or any(not node.name or not node.op for node in graph.node):
        raise InvalidArgument.field(
            "artifact", "the file is not a TensorFlow GraphDef (.pb): it does not parse as a graph of named nodes"
        )
    return graph


def check_nodes(graph: GraphDef, nodes: FrozenGraphNodes) -> None:
    """INVALID_ARGUMENT, one violation per bad name, when a named node is missing from the graph or an output
    depends on a Placeholder that is not among the input nodes (it could never be fed)."""
    by_name = {node.name: node for node in graph.node}
    violations: list[FieldViolation] = []
    for field, names in ((INPUT_FIELD, nodes.inputs), (OUTPUT_FIELD, nodes.outputs)):
        for i, name in enumerate(names):
            if _node_name(name) not in by_name:
                violations.append(FieldViolation(f"{field}[{i}]", _missing(name, graph, field == INPUT_FIELD)))
    if not violations:
        fed = {_node_name(name) for name in nodes.inputs}
        for i, name in enumerate(nodes.outputs):
            unfed = _unfed_placeholders(by_name, _node_name(name), fed)
            if unfed:
                violations.append(
                    FieldViolation(
                        f"{OUTPUT_FIELD}[{i}]",
                        f"{name!r} depends on Placeholder {unfed[0]!r}, which is not among the input nodes",
                    )
                )
    if violations:
        raise InvalidArgument(f"{violations[0].field}: {violations[0].description}", violations)


def import_frozen_graph(graph: GraphDef, nodes: FrozenGraphNodes) -> tuple[Any, Signature]:
    """A concrete function taking the input nodes' tensors positionally and returning the output nodes' tensors
    as a list, and the signature read from the graph (names as in ``tensor_display_name``)."""
    import tensorflow as tf

    def import_all() -> None:
        tf.compat.v1.import_graph_def(graph, name="")

    try:
        wrapped = tf.compat.v1.wrap_function(import_all, [])
    except Exception as e:  # unknown ops, bad attributes, dangling inputs ...: TF raises many types
        raise InvalidArgument.field("artifact", f"the frozen graph cannot be imported: {_first_line(e)}") from None
    feeds = [_tensor(wrapped.graph, name, f"{INPUT_FIELD}[{i}]") for i, name in enumerate(nodes.inputs)]
    fetches = [_tensor(wrapped.graph, name, f"{OUTPUT_FIELD}[{i}]") for i, name in enumerate(nodes.outputs)]
    try:
        function = wrapped.prune(feeds=feeds, fetches=fetches)
    except Exception as e:  # check_nodes rules out the known causes; anything left is the graph's fault
        raise InvalidArgument.field("spec.frozen_graph", f"the graph cannot be cut at these nodes: {e}") from None
    signature = Signature(
        inputs=_specs(nodes.inputs, feeds, "input"),
        outputs=_specs(nodes.outputs, fetches, "output"),
    )
    return function, signature


def _node_name(tensor: str) -> str:
    """``name:1`` or ``name`` -> ``name``."""
    return tensor.split(":", 1)[0]


def _missing(name: str, graph: GraphDef, is_input: bool) -> str:
    """Why ``name`` is wrong, with the names a TFaaS user most likely meant: the Placeholders for an input, the
    nodes nothing else reads (the graph's ends) for an output."""
    if is_input:
        hints = [node.name for node in graph.node if node.op == "Placeholder"]
        kind = "Placeholder nodes"
    else:
        read = {_node_name(i.lstrip("^")) for node in graph.node for i in node.input}
        hints = [node.name for node in graph.node if node.name not in read and node.op != "NoOp"]
        kind = "nodes no other node reads"
    shown = ", ".join(repr(h) for h in hints[:_HINTS]) + (", ..." if len(hints) > _HINTS else "")
    return f"no node {_node_name(name)!r} in the graph" + (f"; its {kind}: {shown}" if hints else "")


def _unfed_placeholders(by_name: dict[str, Any], output: str, fed: set[str]) -> list[str]:
    """Placeholders ``output`` depends on (data and control inputs, backwards, stopping at fed nodes)."""
    found: list[str] = []
    seen: set[str] = set()
    pending = [output]
    while pending:
        name = pending.pop()
        if name in seen or name in fed:
            continue
        seen.add(name)
        node = by_name.get(name)
        if node is None:
            continue
        if node.op in ("Placeholder", "PlaceholderV2"):
            found.append(name)
        pending += [_node_name(i.lstrip("^")) for i in node.input]
    return sorted(found)


def _tensor(graph: Any, name: str, field: str) -> Any:
    node, _, index = name.partition(":")
    try:
        operation = graph.get_operation_by_name(node)
    except (KeyError, ValueError):  # check_nodes rules this out for graphs that import faithfully
        raise InvalidArgument.field(field, f"no node {node!r} in the imported graph") from None
    output = int(index or 0)
    if output >= len(operation.outputs):
        raise InvalidArgument.field(
            field, f"node {node!r} ({operation.type}) has {len(operation.outputs)} output(s); {name!r} asks for more"
        )
    return operation.outputs[output]


def _specs(names: Sequence[str], tensors: Iterable[Any], kind: str) -> tuple[TensorSpec, ...]:
    specs = []
    for name, tensor in zip(names, tensors, strict=True):
        display = tensor_display_name(name)
        if tensor.shape.rank is None:
            raise FailedPrecondition(f"{kind} {display!r} has an unknown rank; the graph must declare its shape")
        try:
            dtype = DType(tensor.dtype.name)
        except ValueError:
            raise FailedPrecondition(
                f"{kind} {display!r} has dtype {tensor.dtype.name}, which is not supported"
            ) from None
        shape = tuple(-1 if d is None else int(d) for d in tensor.shape.as_list())
        specs.append(TensorSpec(display, dtype, shape))
    return tuple(specs)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= 300 else line[:297] + "..."
