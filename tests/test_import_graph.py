"""The package map DESIGN.md draws, checked against the code: which tt_server package may import which.

Imports are read with ``ast`` (nothing is imported), including the ones inside functions; imports under
``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import tt_server

ROOT = Path(tt_server.__file__).parent
# gRPC and the wire messages stay in the transports and the composition root (tracing wraps the gRPC server).
GRPC_MODULES = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "google.rpc")
WIRE_MODULES = ("tensortrigger", "tensorflow_serving", "tritonclient")
TRANSPORTS = ("tt_server.api", "tt_server.compat", "tt_server.rest", "tt_server.app")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = ("tt_server", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except what sits under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield child
                yield from _runtime_nodes(child)
            continue
        yield node
        yield from _runtime_nodes(node)


def imports_of(module: str) -> set[str]:
    """The absolute names ``module`` imports at run time (``from a import b`` counts as ``a.b`` when that is a
    module of ours, else as ``a``)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                names.add(sub if sub in MODULES else source)
    return names


def unit(module: str) -> str:
    """The package a module belongs to: ``tt_server.registry.service`` -> ``registry``; top-level modules are
    their own unit (``tt_server.app`` -> ``app``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tt_server"


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        for name in imports_of(module):
            if name.startswith("tt_server.") and unit(name) != unit(module):
                graph.setdefault(unit(module), set()).add(unit(name))
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_reader_sees_imports_inside_functions_and_skips_type_checking_ones() -> None:
    # supervised.py imports the app inside a function; app.py imports supervised only for type checking.
    assert "tt_server.app" in imports_of("tt_server.supervised")
    assert "tt_server.supervised" not in imports_of("tt_server.app")
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_packages() -> None:
    assert _cycles(package_graph()) == []


def test_registry_and_runtime_do_not_import_each_other() -> None:
    graph = package_graph()
    assert "runtime" not in graph.get("registry", set())
    assert "registry" not in graph.get("runtime", set())


def test_formats_depends_on_no_domain_package() -> None:
    allowed = {"config", "errors", "types"}
    assert graph_of("formats") <= allowed, graph_of("formats") - allowed


def graph_of(package: str) -> set[str]:
    return package_graph().get(package, set())


def test_grpc_and_wire_messages_stay_in_the_transports() -> None:
    offenders = []
    for module in MODULES:
        if module.startswith(TRANSPORTS):
            continue
        for name in imports_of(module):
            grpc_allowed = module == "tt_server.tracing"  # wraps the gRPC server in its interceptor
            if name.startswith(WIRE_MODULES) or (name.startswith(GRPC_MODULES) and not grpc_allowed):
                offenders.append(f"{module} imports {name}")
    assert offenders == []
