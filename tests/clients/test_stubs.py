"""``make stubs`` generates client code for C++, Java, C#, Ruby and Python from the protos.

Messages for every language, gRPC service stubs for all but C# (Debian packages no grpc_csharp_plugin). The
non-Python generators come from Debian's protoc and gRPC plugins; without them the test is skipped (or fails on
CI) with the install command, like the other services the suite needs.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from tests.services import service_missing

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("InferenceService", "ModelRegistryService", "JobsService")
TOOLS = ("make", "protoc", "grpc_cpp_plugin", "grpc_java_plugin", "grpc_ruby_plugin")
INSTALL = "apt-get install -y protobuf-compiler protobuf-compiler-grpc protobuf-compiler-grpc-java-plugin"

# Per language: the generated files (at least one per .proto), and the service stub files (none for C#).
EXPECTED: dict[str, tuple[str, str | None]] = {
    "cpp": ("tensortrigger/v1/*.pb.h", "tensortrigger/v1/*_service.grpc.pb.h"),
    "java": ("tensortrigger/v1/*.java", "tensortrigger/v1/*Grpc.java"),
    "csharp": ("*.cs", None),
    "ruby": ("tensortrigger/v1/*_pb.rb", "tensortrigger/v1/*_services_pb.rb"),
    "python": ("tensortrigger/v1/*_pb2.py", "tensortrigger/v1/*_service_pb2_grpc.py"),
}


async def test_make_stubs(tmp_path: Path) -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        service_missing(f"make stubs needs {', '.join(missing)}. Install with: {INSTALL}")
    # -o: never (re)build the venv from here; PY: this interpreter has grpc_tools.
    process = await asyncio.create_subprocess_exec(
        "make", "-o", ".venv-dev/.installed", "stubs", f"STUBS_OUT={tmp_path}", f"PY={sys.executable}",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, out.decode()

    for language, (messages, services) in EXPECTED.items():
        message_files = sorted((tmp_path / language).glob(messages))
        assert len(message_files) >= 5, (language, message_files)  # one per .proto file
        text = "\n".join(path.read_text() for path in message_files)
        assert "tensortrigger.v1" in text.lower(), language  # C# spells its namespace Tensortrigger.V1
        if services is None:
            assert not [p for p in (tmp_path / language).rglob("*") if "grpc" in p.name.lower()], language
            continue
        stub_text = "\n".join(path.read_text() for path in (tmp_path / language).glob(services))
        for service in SERVICES:
            assert service in stub_text, (language, service)
