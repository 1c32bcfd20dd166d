"""The contract: generated code is fresh, every element is documented, names follow buf's STANDARD rules."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
GENERATED = ROOT / "clients" / "python" / "tensortrigger" / "v1"
PROTOS = sorted((PROTO_DIR / "tensortrigger" / "v1").glob("*.proto"))


def _protoc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", *args], check=True)


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path_factory.mktemp("descriptors") / "set.pb"
    _protoc("--include_source_info", f"--descriptor_set_out={out}", *map(str, PROTOS))
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    out = tmp_path / "tensortrigger" / "v1"
    out.mkdir(parents=True)
    _protoc(
        f"--python_out={tmp_path}",
        f"--pyi_out={tmp_path}",
        f"--grpc_python_out={tmp_path}",
        "--include_source_info",
        f"--descriptor_set_out={out / 'descriptor_set.binpb'}",
        *map(str, PROTOS),
    )
    fresh = sorted(p.name for p in (tmp_path / "tensortrigger" / "v1").iterdir())
    committed = sorted(p.name for p in GENERATED.iterdir() if p.name != "__init__.py" and p.suffix != "")
    committed = [n for n in committed if n.endswith((".py", ".pyi", ".binpb"))]
    assert fresh == committed, "run `make proto` and commit the result"
    for name in fresh:
        assert (out / name).read_bytes() == (GENERATED / name).read_bytes(), (
            f"{name} is stale: run `make proto` and commit the result"
        )


def _undocumented(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Paths of messages, fields, enums, values, services and methods without a leading comment."""
    documented = {tuple(loc.path) for loc in file.source_code_info.location if loc.leading_comments.strip()}
    missing: list[str] = []

    def check(path: tuple[int, ...], name: str) -> None:
        if path not in documented:
            missing.append(f"{file.name}: {name}")

    def message(msg: descriptor_pb2.DescriptorProto, path: tuple[int, ...], prefix: str) -> None:
        check(path, prefix + msg.name)
        for i, f in enumerate(msg.field):
            check((*path, 2, i), f"{prefix}{msg.name}.{f.name}")
        for i, nested in enumerate(msg.nested_type):
            if not nested.options.map_entry:
                message(nested, (*path, 3, i), f"{prefix}{msg.name}.")
        for i, e in enumerate(msg.enum_type):
            enum(e, (*path, 4, i), f"{prefix}{msg.name}.")

    def enum(e: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], prefix: str) -> None:
        check(path, prefix + e.name)
        for i, v in enumerate(e.value):
            check((*path, 2, i), f"{prefix}{e.name}.{v.name}")

    for i, msg in enumerate(file.message_type):
        message(msg, (4, i), "")
    for i, e in enumerate(file.enum_type):
        enum(e, (5, i), "")
    for i, service in enumerate(file.service):
        check((6, i), service.name)
        for j, method in enumerate(service.method):
            check((6, i, 2, j), f"{service.name}.{method.name}")
    return missing


def test_every_element_is_documented(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    missing = [m for f in descriptor_set.file for m in _undocumented(f)]
    assert not missing, "undocumented proto elements:\n" + "\n".join(missing)


def test_buf_standard_naming(descriptor_set: descriptor_pb2.FileDescriptorSet) -> None:
    problems: list[str] = []
    for file in descriptor_set.file:
        assert file.package == "tensortrigger.v1"
        assert re.fullmatch(r"tensortrigger/v1/[a-z0-9_]+\.proto", file.name)
        enums = list(file.enum_type) + [e for m in file.message_type for e in m.enum_type]
        for e in enums:
            prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", e.name).upper() + "_"
            if e.value[0].name != prefix + "UNSPECIFIED" or e.value[0].number != 0:
                problems.append(f"{e.name}: zero value must be {prefix}UNSPECIFIED")
            problems += [
                f"{e.name}.{v.name}: missing prefix {prefix}" for v in e.value if not v.name.startswith(prefix)
            ]
        for service in file.service:
            if not service.name.endswith("Service"):
                problems.append(f"{service.name}: services end in 'Service'")
            for method in service.method:
                if method.input_type != f".tensortrigger.v1.{method.name}Request":
                    problems.append(f"{service.name}.{method.name}: request must be {method.name}Request")
                if method.output_type != f".tensortrigger.v1.{method.name}Response":
                    problems.append(f"{service.name}.{method.name}: response must be {method.name}Response")
        for msg in file.message_type:
            problems += [
                f"{msg.name}.{f.name}: fields are lower_snake_case"
                for f in msg.field
                if not re.fullmatch(r"[a-z][a-z0-9_]*", f.name)
            ]
    assert not problems, "\n".join(problems)
