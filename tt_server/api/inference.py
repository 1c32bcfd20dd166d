"""InferenceService: converts protobuf <-> domain and delegates to the runtime's ``InferenceService``."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

import grpc
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import inference_service_pb2_grpc, tensor_pb2

from tt_server.api import convert
from tt_server.api.tensors import fill_tensor, uses_content, wire_tensors
from tt_server.api.training import train_inputs, train_response
from tt_server.errors import InvalidArgument
from tt_server.runtime.service import InferenceService
from tt_server.training.service import TrainingService
from tt_server.types import ModelRef

PREDICT_BATCH_WINDOW = 4  # chunks of one PredictBatch stream in progress at once


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _as_content(encoding: int, request_used_content: bool) -> bool:
    if encoding == tensor_pb2.TENSOR_ENCODING_CONTENT:
        return True
    if encoding == tensor_pb2.TENSOR_ENCODING_TYPED:
        return False
    return request_used_content


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    def __init__(self, inference: InferenceService, training: TrainingService | None = None) -> None:
        self._inference = inference
        self._training = training

    async def Predict(self, request: pb.PredictRequest, context: grpc.aio.ServicerContext) -> pb.PredictResponse:
        inputs = wire_tensors(request.inputs)
        classify = convert.classify_request(request.classify) if request.HasField("classify") else None
        result = await self._inference.predict(
            convert.model_ref(request.model), inputs, list(request.output_filter), _deadline(context), classify
        )
        response = pb.PredictResponse(model_name=result.model_name, model_version=result.version)
        as_content = _as_content(request.output_encoding, uses_content(inputs))
        for name, array in result.outputs.items():
            fill_tensor(response.outputs[name], array, as_content)
        if result.classifications is not None:
            response.classifications.extend(convert.classification(row) for row in result.classifications)
        return response

    async def PredictBatch(
        self, request_iterator: AsyncIterator[pb.PredictBatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PredictBatchResponse]:
        # Up to PREDICT_BATCH_WINDOW chunks are in progress at once, answered strictly in order: the next chunk
        # is read and decoded while the model runs on the previous one. Reading stops while the window is full,
        # so a fast sender is held back by HTTP/2 flow control (backpressure) and memory stays bounded.
        pinned: ModelRef | None = None
        output_filter: list[str] = []
        encoding = tensor_pb2.TENSOR_ENCODING_UNSPECIFIED
        window: deque[asyncio.Task[pb.PredictBatchResponse]] = deque()
        sequence = 0
        try:
            async for request in request_iterator:
                if pinned is None:
                    if not request.HasField("model"):
                        raise InvalidArgument.field("model", "the first message of a stream must name the model")
                    first = await self._inference.resolve(convert.model_ref(request.model))
                    pinned = ModelRef(first.model_name, version=first.version)
                    output_filter = list(request.output_filter)
                    encoding = request.output_encoding
                chunk = self._predict_chunk(request, pinned, output_filter, encoding, sequence, context)
                window.append(asyncio.ensure_future(chunk))
                sequence += 1
                if len(window) >= PREDICT_BATCH_WINDOW:
                    yield await window.popleft()
            while window:
                yield await window.popleft()
        finally:
            for task in window:  # an earlier chunk failed, or the client went away
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: its failure is moot once the stream has ended
                task.cancel()

    async def _predict_chunk(
        self,
        request: pb.PredictBatchRequest,
        pinned: ModelRef,
        output_filter: list[str],
        encoding: int,
        sequence: int,
        context: grpc.aio.ServicerContext,
    ) -> pb.PredictBatchResponse:
        inputs = wire_tensors(request.inputs)
        result = await self._inference.predict(pinned, inputs, output_filter, _deadline(context))
        response = pb.PredictBatchResponse(
            request_id=request.request_id, model_name=result.model_name, model_version=result.version, sequence=sequence
        )
        as_content = _as_content(encoding, uses_content(inputs))
        for name, array in result.outputs.items():
            fill_tensor(response.outputs[name], array, as_content)
        return response

    async def Train(
        self, request_iterator: AsyncIterator[pb.TrainRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.TrainResponse]:
        if self._training is None:
            raise NotImplementedError
        async for event in self._training.train(train_inputs(request_iterator)):
            yield train_response(event)
