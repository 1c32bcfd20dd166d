"""Server reflection that also serves the .proto comments, so `grpcurl describe` shows our documentation.

The stock servicer rebuilds each FileDescriptorProto from the runtime descriptor pool, which never holds
source info (protoc's Python output strips it). ``make proto`` therefore also writes a descriptor set *with*
source info next to the generated code; for our own files this servicer answers from that set instead.

It is served as ``grpc.reflection.v1`` (what grpcurl 1.9+, grpcui and Postman ask for first) and as the older
``grpc.reflection.v1alpha``: grpcio-reflection ships only v1alpha, whose messages are the same on the wire (same
fields and numbers, another package), so one servicer answers both. Every symbol a tool may ask about resolves:
services, methods (which the runtime pool does not index), messages, enums, fields.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FileDescriptor
from grpc_reflection.v1alpha import reflection, reflection_pb2

DESCRIPTOR_SET = "descriptor_set.binpb"
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"


def v1_file_descriptor() -> FileDescriptor:
    """grpc.reflection.v1's descriptor, in the default pool: v1alpha's file under the v1 package."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(_V1_FILE)
    except KeyError:
        proto = descriptor_pb2.FileDescriptorProto()
        reflection_pb2.DESCRIPTOR.CopyToProto(proto)
        old, new = f".{_V1ALPHA_PACKAGE}.", ".grpc.reflection.v1."
        for message in proto.message_type:
            for field in message.field:
                if field.HasField("type_name"):
                    field.type_name = field.type_name.replace(old, new)
        for service in proto.service:
            for method in service.method:
                method.input_type = method.input_type.replace(old, new)
                method.output_type = method.output_type.replace(old, new)
        proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
        proto.options.Clear()
        pool.AddSerializedFile(proto.SerializeToString())
        return pool.FindFileByName(_V1_FILE)


class _V1Request:
    """Parses a v1 request with the (wire-identical) v1alpha class, so the servicer gets what it expects; its
    descriptor names the v1 type (in the middleware's "request is not a valid <type>" message)."""

    DESCRIPTOR: Descriptor

    @classmethod
    def FromString(cls, raw: bytes) -> reflection_pb2.ServerReflectionRequest:
        return reflection_pb2.ServerReflectionRequest.FromString(raw)


def add_reflection_to_server(servicer: reflection.aio.ReflectionServicer, server: Any) -> None:
    """Register ``servicer`` as grpc.reflection.v1alpha and grpc.reflection.v1 on ``server``."""
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    _V1Request.DESCRIPTOR = descriptor_pool.Default().FindMessageTypeByName(
        f"{v1_file_descriptor().package}.ServerReflectionRequest"
    )
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=_V1Request.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_registered_method_handlers(V1_SERVICE_NAME, {"ServerReflectionInfo": handler})


def documented_files() -> dict[str, bytes]:
    """Serialized FileDescriptorProtos with comments, by file name, from the committed descriptor set."""
    data = resources.files("tensortrigger.v1").joinpath(DESCRIPTOR_SET).read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(data).file
    return {f.name: f.SerializeToString() for f in files}


# grpc ships no types, so mypy sees this base class as Any
class DocumentedReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc]
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
            of_method = self._file_of_method(fully_qualified_name)
            if of_method is None:
                return super()._file_containing_symbol(request, fully_qualified_name)
            descriptor = of_method
        return self._respond(descriptor, request)

    def _file_of_method(self, name: str) -> FileDescriptor | None:
        """The file of ``package.Service.Method``: grpcurl asks for methods by that name."""
        service_name, _, method = name.rpartition(".")
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return None
        return service.file if method in service.methods_by_name else None

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
