"""ModelRegistryService: converts protobuf <-> domain and delegates to ``Registry``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from tensortrigger.v1 import registry_service_pb2 as pb
from tensortrigger.v1 import registry_service_pb2_grpc

from tt_server.api import convert
from tt_server.errors import InvalidArgument, request_fields
from tt_server.registry.service import Registry

# The upload's domain arguments (Registry.upload: the UploadSpec, the artifact's bytes) -> UploadModelVersion's fields.
UPLOAD_FIELDS = {
    "spec": "header",
    "spec.expected_size": "header.expected_size_bytes",
    "spec.class_names": "header.class_names_text",
    "spec.frozen_graph.inputs": "header.frozen_graph.input_nodes",
    "spec.frozen_graph.outputs": "header.frozen_graph.output_nodes",
    "artifact": "chunk",
}


class RegistryServicer(registry_service_pb2_grpc.ModelRegistryServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def UploadModelVersion(
        self, request_iterator: AsyncIterator[pb.UploadModelVersionRequest], context: grpc.aio.ServicerContext
    ) -> pb.UploadModelVersionResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument.field("header", "the first message of an upload must carry the header")
        spec = convert.upload_spec(first.header)

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.WhichOneof("payload") != "chunk":
                    raise InvalidArgument.field("header", "only the first message may carry a header")
                yield message.chunk

        with request_fields(UPLOAD_FIELDS):
            version, created = await self._registry.upload(spec, chunks())
        return pb.UploadModelVersionResponse(version=convert.model_version(version), model_created=created)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        page = await self._registry.list_models(request.page_size, request.page_token)
        problems = [] if request.page_token else sorted(self._registry.repository_problems.items())
        return pb.ListModelsResponse(
            models=[convert.model(m) for m in page.items],
            next_page_token=page.next_page_token,
            repository_problems=[pb.RepositoryProblem(path=path, reason=reason) for path, reason in problems],
        )

    async def GetModel(self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=convert.model(await self._registry.get_model(request.name)))

    async def DeleteModel(
        self, request: pb.DeleteModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteModelResponse:
        return pb.DeleteModelResponse(deleted_versions=await self._registry.delete_model(request.name))

    async def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelVersionsResponse:
        page = await self._registry.list_versions(request.name, request.page_size, request.page_token)
        return pb.ListModelVersionsResponse(
            versions=[convert.model_version(v) for v in page.items], next_page_token=page.next_page_token
        )

    async def GetModelVersion(
        self, request: pb.GetModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelVersionResponse:
        with request_fields({"ref": "model"}):
            version = await self._registry.select_version(convert.model_ref(request.model))
        return pb.GetModelVersionResponse(version=convert.model_version(version))

    async def DeleteModelVersion(
        self, request: pb.DeleteModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteModelVersionResponse:
        removed = await self._registry.delete_version(request.name, request.version, request.force)
        return pb.DeleteModelVersionResponse(removed_labels=removed)

    async def SetLabel(self, request: pb.SetLabelRequest, context: grpc.aio.ServicerContext) -> pb.SetLabelResponse:
        previous = await self._registry.set_label(request.name, request.label, request.version)
        return pb.SetLabelResponse(previous_version=previous or 0)

    async def DeleteLabel(
        self, request: pb.DeleteLabelRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteLabelResponse:
        previous = await self._registry.delete_label(request.name, request.label)
        return pb.DeleteLabelResponse(previous_version=previous)

    async def DownloadModelVersion(
        self, request: pb.DownloadModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DownloadModelVersionResponse]:
        with request_fields({"ref": "model"}):
            version, chunks = await self._registry.download(convert.model_ref(request.model))
        yield pb.DownloadModelVersionResponse(version=convert.model_version(version))
        async for chunk in chunks:
            yield pb.DownloadModelVersionResponse(chunk=chunk)

    async def SetServingPolicy(
        self, request: pb.SetServingPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetServingPolicyResponse:
        previous, served = await self._registry.set_serving_policy(request.name, convert.serving_policy(request.policy))
        return pb.SetServingPolicyResponse(
            previous_policy=convert.serving_policy_to_pb(previous), served_version=served or 0
        )

    async def PromoteModelVersion(
        self, request: pb.PromoteModelVersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.PromoteModelVersionResponse:
        version, served = await self._registry.promote(request.name, request.version)
        return pb.PromoteModelVersionResponse(version=convert.model_version(version), served_version=served or 0)

    async def SetModelDescription(
        self, request: pb.SetModelDescriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetModelDescriptionResponse:
        model = await self._registry.set_description(request.name, request.description)
        return pb.SetModelDescriptionResponse(model=convert.model(model))

    async def SetRetentionPolicy(
        self, request: pb.SetRetentionPolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetRetentionPolicyResponse:
        policy, pruned = await self._registry.set_retention(request.name, convert.retention(request.retention))
        return pb.SetRetentionPolicyResponse(retention=convert.retention_to_pb(policy), pruned_versions=pruned)
