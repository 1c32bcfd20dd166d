"""Static op scan of an uploaded SavedModel or frozen graph, run before TensorFlow loads it.

A SavedModel is a program: its graph may read or write files, open sockets or call back into Python, and
``tf.saved_model.load`` already runs part of it (resource creators and initializers, the init op). The scan
rejects a model whose graph or function library holds an op that reaches outside the tensor world:

* **file reads** — ``ReadFile``, ``MatchingFiles``, ``ImmutableConst`` (memory-maps a named file),
  ``RecordInput``, ``LoadAndRemapMatrix`` / ``GenerateVocabRemapping`` (read checkpoints / vocab files),
  every ``*Reader``/``*ReaderV2`` op and ``Reader*`` op on their handles, and the file-backed datasets
  (TFRecord, TextLine, FixedLengthRecord, CSV, SQL, LMDB, MatchingFiles, LoadDataset, snapshot readers);
* **file writes** — ``WriteFile``, ``SaveDataset``, ``DatasetToTFRecord``, snapshot/cache datasets (the
  cache file name is a runtime tensor), ``DistributedSave``, ``CalibrationStatisticsSaver``, the summary
  writers (``CreateSummaryFileWriter``, ``CreateSummaryDbWriter``, ``Write*Summary``, ``ImportEvent``),
  ``PrintV2`` whose ``output_stream`` is a file, and every ``Debug*`` op (tfdbg dumps to files or gRPC);
* **filesystem settings** — ``FileSystemSetConfiguration``;
* **Python code** — ``PyFunc``, ``PyFuncStateless``, ``EagerPyFunc`` (run functions registered in the
  serving process);
* **network / other processes** — ``Rpc*``, ``DataServiceDataset*``, ``RegisterDataset*``, ``RemoteCall``,
  ``Send``/``Recv`` and their internal forms, ``Collective*`` and NCCL ops;
* ``DecodeProtoV2`` / ``EncodeProto`` whose ``descriptor_source`` names a file rather than ``local://`` or
  inline ``bytes://``.

``InitializeTableFromTextFile[V2]`` reads the file its ``filename`` tensor names. It is allowed only where
that tensor is provably a packaged asset, as ``tf.lookup.TextFileInitializer`` exports it: an argument of
a function that no other function calls, which the SavedObjectGraph binds to an ``asset`` object and
every graph-level caller feeds from an asset placeholder (directly or through a variable that is only
ever assigned one). Asset file names must stay inside ``assets/``.

Checkpoint ops (``SaveV2``, ``RestoreV2``, ``MergeV2Checkpoints`` ...) belong to the SavedModel's saver
functions, so they are not denied everywhere. They are denied in everything that runs when the model is
loaded or served — whatever is reachable from any signature's outputs, the init op, or any function of the
object graph (resource creators/initializers run at load) — and write ops among them are denied in the
saver's restore path too, which TF1-style loading runs.

Frozen graphs (``scan_graph_def``) get the same deny-list over the GraphDef and its function library. They
have no assets, so a text-file table is always refused, and no saver, so checkpoint ops are denied in
everything the named output nodes depend on (the pruned function runs nothing else).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from tt_server.errors import FailedPrecondition

if TYPE_CHECKING:
    from tensorflow.core.framework.attr_value_pb2 import AttrValue
    from tensorflow.core.framework.function_pb2 import FunctionDef
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.core.framework.node_def_pb2 import NodeDef
    from tensorflow.core.protobuf.meta_graph_pb2 import MetaGraphDef, TensorInfo
    from tensorflow.core.protobuf.saved_model_pb2 import SavedModel


def _reasons(reason: str, *ops: str) -> dict[str, str]:
    return dict.fromkeys(ops, reason)


DENIED_OPS: dict[str, str] = {
    **_reasons(
        "reads files",
        "ReadFile",
        "MatchingFiles",
        "ImmutableConst",
        "RecordInput",
        "LoadAndRemapMatrix",
        "GenerateVocabRemapping",
        "TFRecordDataset",
        "TFRecordDatasetV2",
        "TextLineDataset",
        "FixedLengthRecordDataset",
        "FixedLengthRecordDatasetV2",
        "CSVDataset",
        "CSVDatasetV2",
        "ExperimentalCSVDataset",
        "SqlDataset",
        "ExperimentalSqlDataset",
        "LMDBDataset",
        "ExperimentalLMDBDataset",
        "MatchingFilesDataset",
        "ExperimentalMatchingFilesDataset",
        "LoadDataset",
        "SnapshotDatasetReader",
        "SnapshotNestedDatasetReader",
        "SnapshotChunkDataset",
        "ListSnapshotChunksDataset",
    ),
    **_reasons(
        "writes files",
        "WriteFile",
        "SaveDataset",
        "SaveDatasetV2",
        "DatasetToTFRecord",
        "ExperimentalDatasetToTFRecord",
        "SnapshotDataset",
        "SnapshotDatasetV2",
        "CacheDataset",
        "CacheDatasetV2",
        "DistributedSave",
        "CalibrationStatisticsSaver",
        "CreateSummaryFileWriter",
        "CreateSummaryDbWriter",
        "SummaryWriter",
        "WriteSummary",
        "WriteScalarSummary",
        "WriteHistogramSummary",
        "WriteImageSummary",
        "WriteAudioSummary",
        "WriteGraphSummary",
        "WriteRawProtoSummary",
        "ImportEvent",
        "FlushSummaryWriter",
        "CloseSummaryWriter",
        "StatsAggregatorSetSummaryWriter",
    ),
    **_reasons("changes filesystem settings", "FileSystemSetConfiguration"),
    **_reasons("runs Python code", "PyFunc", "PyFuncStateless", "EagerPyFunc"),
    **_reasons(
        "talks to other processes",
        "RemoteCall",
        "RegisterDataset",
        "RegisterDatasetV2",
        "Send",
        "Recv",
        "_Send",
        "_Recv",
        "_HostSend",
        "_HostRecv",
    ),
}
_DENIED_PREFIXES: dict[str, str] = {
    "Reader": "reads files",  # ReaderRead, ReaderReadUpToV2 ... act on file reader handles
    "Debug": "writes debug dumps to files or the network",
    "Rpc": "talks to other processes",
    "DataServiceDataset": "talks to other processes",
    "Collective": "talks to other processes",
    "_Nccl": "talks to other processes",
}
_DENIED_SUFFIXES: dict[str, str] = {"Reader": "reads files", "ReaderV2": "reads files"}

CHECKPOINT_OPS = frozenset(
    {
        "Save",
        "SaveV2",
        "SaveSlices",
        "Restore",
        "RestoreV2",
        "RestoreSlice",
        "MergeV2Checkpoints",
        "ShardedFilename",
        "ShardedFilespec",
        "DTensorRestoreV2",
    }
)
_CHECKPOINT_WRITE_OPS = frozenset({"Save", "SaveV2", "SaveSlices", "MergeV2Checkpoints"})
_TEXT_FILE_TABLE_OPS = frozenset({"InitializeTableFromTextFile", "InitializeTableFromTextFileV2"})
_PRINT_STREAMS = frozenset({"stderr", "stdout", "log(info)", "log(warning)", "log(error)"})
_PROTO_OPS = frozenset({"DecodeProtoV2", "EncodeProto"})
_CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
_VARIABLE_USES = frozenset({"AssignVariableOp", "ReadVariableOp", "VarIsInitializedOp"})
# Collections TF1 loaders run as the init op.
_INIT_COLLECTIONS = ("saved_model_main_op", "legacy_init_op", "table_initializer")


def scan_saved_model(saved_model: SavedModel) -> None:
    """Raise FailedPrecondition naming the first op (and its function) that makes the model unsafe."""
    for meta_graph in saved_model.meta_graphs:
        _scan_meta_graph(meta_graph)


def scan_graph_def(graph: GraphDef, output_nodes: Iterable[str]) -> None:
    """Raise FailedPrecondition naming the first op (and its function) that makes a frozen graph unsafe;
    ``output_nodes`` are the nodes (or ``node:index`` tensors) it is served through."""
    functions = {f.signature.name: f for f in graph.library.function}
    for node in graph.node:
        _check_node(node, f"graph node {node.name!r}", _no_assets, "frozen graph")
    for name, function in functions.items():
        for node in function.node_def:
            _check_node(node, _where(name, node), _no_assets, "frozen graph")
    for where, node in _reachable(graph, functions, [_node_name(n) for n in output_nodes], []):
        if node.op in CHECKPOINT_OPS:
            raise FailedPrecondition(
                f"unsafe frozen graph: op {node.op} (reads or writes checkpoint files) in {where}, which the "
                "output nodes depend on"
            )


def _no_assets(tensor: str) -> bool:
    return False  # a GraphDef packs no asset files, so no tensor can name one


def _scan_meta_graph(meta_graph: MetaGraphDef) -> None:
    _check_asset_names(meta_graph)
    graph = meta_graph.graph_def
    functions = {f.signature.name: f for f in graph.library.function}
    assets = _AssetPaths(meta_graph, functions)

    for node in graph.node:
        _check_node(node, f"graph node {node.name!r}", assets.in_graph)
    for name, function in functions.items():
        is_asset_arg = assets.in_function(name)
        for node in function.node_def:
            _check_node(node, _where(name, node), is_asset_arg)

    outputs = [t for sig in meta_graph.signature_def.values() for t in _tensor_names(sig.outputs.values())]
    roots = [_node_name(t) for t in outputs]
    for key in _INIT_COLLECTIONS:
        if key in meta_graph.collection_def:  # indexing a missing key would add it to the proto
            roots += [_node_name(n) for n in meta_graph.collection_def[key].node_list.value]
    object_functions = list(meta_graph.object_graph_def.concrete_functions)
    for where, node in _reachable(graph, functions, roots, object_functions):
        if node.op in CHECKPOINT_OPS:
            raise FailedPrecondition(
                f"unsafe SavedModel: op {node.op} (reads or writes checkpoint files) in {where}, which runs "
                "when the model is loaded or served; checkpoint ops belong only in the SavedModel's saver"
            )

    restore_op = meta_graph.saver_def.restore_op_name
    if restore_op:
        for where, node in _reachable(graph, functions, [_node_name(restore_op)], []):
            if node.op in _CHECKPOINT_WRITE_OPS:
                raise FailedPrecondition(
                    f"unsafe SavedModel: op {node.op} (writes files) in {where}, on the path that restores "
                    "variables when the model is loaded"
                )


def _check_node(node: NodeDef, where: str, is_asset_path: Callable[[str], bool], kind: str = "SavedModel") -> None:
    reason = _denied_reason(node.op)
    if reason is None and node.op == "PrintV2":
        stream = _string_attr(node, "output_stream", "stderr")
        if stream not in _PRINT_STREAMS:
            reason = f"prints to {stream!r}"
    if reason is None and node.op in _PROTO_OPS:
        source = _string_attr(node, "descriptor_source", "")
        if source not in ("", "local://") and not source.startswith("bytes://"):
            reason = f"reads protobuf descriptors from {source!r}"
    filename = node.input[1] if len(node.input) > 1 else ""
    if reason is None and node.op in _TEXT_FILE_TABLE_OPS and not is_asset_path(filename):
        reason = "reads a file named by a tensor that is not a packaged asset"
    if reason is not None:
        raise FailedPrecondition(f"unsafe {kind}: op {node.op} ({reason}) in {where}")


def _string_attr(node: NodeDef, key: str, default: str) -> str:
    # Checked with `in` first: indexing a missing key would add it to the proto.
    return node.attr[key].s.decode(errors="replace") if key in node.attr else default


def _denied_reason(op: str) -> str | None:
    if op in DENIED_OPS:
        return DENIED_OPS[op]
    for prefix, reason in _DENIED_PREFIXES.items():
        if op.startswith(prefix):
            return reason
    for suffix, reason in _DENIED_SUFFIXES.items():
        if op.endswith(suffix):
            return reason
    return None


def _where(function: str, node: NodeDef) -> str:
    return f"function {function!r} (node {node.name!r})"


def _check_asset_names(meta_graph: MetaGraphDef) -> None:
    for asset in meta_graph.asset_file_def:
        path = PurePosixPath(asset.filename)
        if not asset.filename or "\\" in asset.filename or path.is_absolute() or ".." in path.parts:
            raise FailedPrecondition(f"unsafe SavedModel: asset file name {asset.filename!r} leaves assets/")


class _AssetPaths:
    """Which tensors surely carry the path of a packaged asset (see the module docstring)."""

    def __init__(self, meta_graph: MetaGraphDef, functions: dict[str, FunctionDef]) -> None:
        self._graph = meta_graph.graph_def
        self._by_name = {node.name: node for node in self._graph.node}
        self._functions = functions
        self._objects = meta_graph.object_graph_def
        self._placeholders = {_node_name(asset.tensor_info.name) for asset in meta_graph.asset_file_def}
        self._called_by_functions = {
            name
            for function in functions.values()
            for node in function.node_def
            for name in _called_functions(node, functions)
        }
        self._function_inputs: dict[str, set[str]] = {}
        self._graph_callers: dict[str, list[NodeDef]] = {}
        for node in self._graph.node:
            for name in _called_functions(node, functions):
                self._graph_callers.setdefault(name, []).append(node)

    def in_graph(self, tensor: str, seen: frozenset[str] = frozenset()) -> bool:
        """An asset placeholder, an Identity of one, or a read of a variable only ever assigned one."""
        name = _node_name(tensor)
        node = self._by_name.get(name)
        if node is None or name in seen:
            return False
        if name in self._placeholders:
            return True
        if node.op == "Identity":
            return self.in_graph(node.input[0], seen | {name})
        if node.op != "ReadVariableOp":
            return False
        handle = _node_name(node.input[0])
        users = [n for n in self._graph.node if handle in {_node_name(i) for i in n.input if i[:1] != "^"}]
        assigns = [n for n in users if n.op == "AssignVariableOp"]
        return (
            bool(assigns)
            and all(n.op in _VARIABLE_USES for n in users)  # no function gets the handle to write it
            and all(self.in_graph(n.input[1], seen | {name}) for n in assigns)
        )

    def in_function(self, name: str) -> Callable[[str], bool]:
        """A test for tensors inside function ``name``: is it an asset path?"""

        def is_asset_path(tensor: str) -> bool:
            # Worked out on first use: only functions holding a text-file table ever ask.
            if name not in self._function_inputs:
                self._function_inputs[name] = self._asset_inputs(name)
            return _node_name(tensor) in self._function_inputs[name]

        return is_asset_path

    def _asset_inputs(self, name: str) -> set[str]:
        """Names inside function ``name`` (arguments, and Identity nodes of them) that are asset paths."""
        function = self._functions[name]
        callers = self._graph_callers.get(name, [])
        saved = self._objects.concrete_functions.get(name)
        if name in self._called_by_functions or (saved is None and not callers):
            return set()
        args = [arg.name for arg in function.signature.input_arg]
        ok = set(range(len(args)))
        if saved is not None:
            # Captured inputs are the trailing arguments, in bound_inputs order.
            first_bound = len(args) - len(saved.bound_inputs)
            ok &= {first_bound + i for i, obj in enumerate(saved.bound_inputs) if self._is_asset_object(obj)}
        for caller in callers:
            if caller.op not in _CALL_OPS and caller.op != name:
                return set()
            inputs = [i for i in caller.input if not i.startswith("^")]
            ok = {i for i in ok if i < len(inputs) and self.in_graph(inputs[i])}
        names = {args[i] for i in ok}
        identities = [n for n in function.node_def if n.op == "Identity" and n.input]
        while aliases := {n.name for n in identities if _node_name(n.input[0]) in names} - names:
            names |= aliases
        return names

    def _is_asset_object(self, node_id: int) -> bool:
        nodes = self._objects.nodes
        return 0 <= node_id < len(nodes) and nodes[node_id].WhichOneof("kind") == "asset"


def _reachable(
    graph: GraphDef,
    functions: dict[str, FunctionDef],
    root_nodes: Iterable[str],
    root_functions: Iterable[str],
) -> Iterator[tuple[str, NodeDef]]:
    """Every graph node the roots depend on (data and control inputs, backwards) and every node of every
    function they call, transitively; yields ``(where, node)``. A reached function counts as wholly run."""
    by_name = {node.name: node for node in graph.node}
    pending_functions = list(root_functions)
    seen_nodes: set[str] = set()
    pending_nodes = list(root_nodes)
    while pending_nodes:
        name = pending_nodes.pop()
        node = by_name.get(name)
        if node is None or name in seen_nodes:
            continue
        seen_nodes.add(name)
        yield f"graph node {name!r}", node
        pending_nodes += [_node_name(i) for i in node.input]
        pending_functions += _called_functions(node, functions)

    seen_functions: set[str] = set()
    while pending_functions:
        fname = pending_functions.pop()
        function = functions.get(fname)
        if function is None or fname in seen_functions:
            continue
        seen_functions.add(fname)
        for node in function.node_def:
            yield _where(fname, node), node
            pending_functions += _called_functions(node, functions)


def _called_functions(node: NodeDef, functions: dict[str, FunctionDef]) -> list[str]:
    # A node calls a library function by naming it as its op, or through a func / list(func) attr
    # (PartitionedCall.f, If.then_branch, While.body, MapDataset.f ...).
    names = [node.op] if node.op in functions else []
    for value in node.attr.values():
        names += _attr_functions(value)
    return names


def _attr_functions(value: AttrValue) -> list[str]:
    funcs = ([value.func] if value.HasField("func") else []) + list(value.list.func)
    names = []
    for func in funcs:
        names.append(func.name)
        for nested in func.attr.values():
            names += _attr_functions(nested)
    return names


def _tensor_names(infos: Iterable[TensorInfo]) -> Iterator[str]:
    for info in infos:
        encoding = info.WhichOneof("encoding")
        if encoding == "name":
            yield info.name
        elif encoding == "coo_sparse":
            yield info.coo_sparse.values_tensor_name
            yield info.coo_sparse.indices_tensor_name
            yield info.coo_sparse.dense_shape_tensor_name
        elif encoding == "composite_tensor":
            yield from _tensor_names(info.composite_tensor.components)


def _node_name(tensor: str) -> str:
    """``^name`` (control input), ``name:0`` or ``name`` -> ``name``."""
    return tensor.lstrip("^").split(":", 1)[0]
