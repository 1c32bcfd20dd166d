"""Server reflection that also serves the .proto comments, so `grpcurl describe` shows our documentation.

The stock servicer rebuilds each FileDescriptorProto from the runtime descriptor pool, which never holds
source info (protoc's Python output strips it). ``make proto`` therefore also writes a descriptor set *with*
source info next to the generated code; for our own files this servicer answers from that set instead.
"""

from __future__ import annotations

from importlib import resources

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2

DESCRIPTOR_SET = "descriptor_set.binpb"


def documented_files() -> dict[str, bytes]:
    """Serialized FileDescriptorProtos with comments, by file name, from the committed descriptor set."""
    data = resources.files("tensortrigger.v1").joinpath(DESCRIPTOR_SET).read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    return {f.name: f.SerializeToString() for f in files}


class DocumentedReflectionServicer(reflection.aio.ReflectionServicer):
    def __init__(self, service_names: tuple[str, ...], documented: dict[str, bytes]) -> None:
        super().__init__(service_names)
        self._documented = documented
        self._pool = descriptor_pool.Default()

    def _file_by_filename(self, request, filename):  # type: ignore[no-untyped-def]
        try:
            descriptor = self._pool.FindFileByName(filename)
        except KeyError:
            return super()._file_by_filename(request, filename)
        return self._respond(descriptor, request)

    def _file_containing_symbol(self, request, fully_qualified_name):  # type: ignore[no-untyped-def]
        try:
            descriptor = self._pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            return super()._file_containing_symbol(request, fully_qualified_name)
        return self._respond(descriptor, request)

    def _respond(
        self, descriptor: FileDescriptor, request: reflection_pb2.ServerReflectionRequest
    ) -> reflection_pb2.ServerReflectionResponse:
        files: dict[str, FileDescriptor] = {}
        pending = [descriptor]
        while pending:
            current = pending.pop()
            if current.name not in files:
                files[current.name] = current
                pending.extend(current.dependencies)
        serialized = []
        for name, file in files.items():
            if name in self._documented:
                serialized.append(self._documented[name])
            else:
                proto = descriptor_pb2.FileDescriptorProto()
                file.CopyToProto(proto)
                serialized.append(proto.SerializeToString())
        return reflection_pb2.ServerReflectionResponse(
            file_descriptor_response=reflection_pb2.FileDescriptorResponse(file_descriptor_proto=serialized),
            original_request=request,
        )
