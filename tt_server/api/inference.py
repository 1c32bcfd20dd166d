"""InferenceService: converts protobuf <-> domain and delegates to the runtime's ``InferenceService``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
from tensortrigger.v1 import inference_service_pb2 as pb
from tensortrigger.v1 import inference_service_pb2_grpc, tensor_pb2

from tt_server.api import convert
from tt_server.api.tensors import fill_tensor, uses_content, wire_tensors
from tt_server.api.training import train_inputs, train_response
from tt_server.errors import InvalidArgument
from tt_server.runtime.observe import RequestObservation
from tt_server.runtime.service import InferenceService
from tt_server.training.service import TrainingService
from tt_server.types import ModelRef

PREDICT_BATCH_WINDOW = 4  # started chunks of one PredictBatch stream waiting to be answered


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
        with RequestObservation(request.model.name) as observation:
            inputs = wire_tensors(request.inputs)
            classify = convert.classify_request(request.classify) if request.HasField("classify") else None
            ref = convert.model_ref(request.model)
            result = await self._inference.predict(
                ref, inputs, list(request.output_filter), _deadline(context), classify, observation
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
        # A reader task reads and starts chunks while earlier ones run; answers go out strictly in order, each
        # as soon as it is ready (never waiting for later requests, so a client that sends one chunk at a time
        # works too). At most PREDICT_BATCH_WINDOW started chunks wait to be answered: then the reader stops
        # reading, and HTTP/2 flow control holds a fast sender back (backpressure, bounded memory). Only one
        # chunk of a stream is in the batcher at a time (the model runs one call at a time anyway): a stream
        # never fills the queue by itself, while decoding and answering overlap with the model call.
        started: asyncio.Queue[asyncio.Future[pb.PredictBatchResponse] | None] = asyncio.Queue(PREDICT_BATCH_WINDOW)
        pins: list[str] = []  # the pinned version is kept from retention while the stream is open
        reader = asyncio.ensure_future(self._read_chunks(request_iterator, started, context, pins))
        try:
            while (chunk := await started.get()) is not None:
                yield await chunk
            await reader  # surfaces nothing new: the reader reports its own failure as a chunk
        finally:
            reader.cancel()
            while not started.empty():  # an earlier chunk failed, or the client went away
                pending = started.get_nowait()
                if pending is not None:
                    if pending.done() and not pending.cancelled():
                        pending.exception()  # retrieved: moot once the stream has ended
                    pending.cancel()
            for holder in pins:
                self._inference.unpin(holder)

    async def _read_chunks(
        self,
        request_iterator: AsyncIterator[pb.PredictBatchRequest],
        started: asyncio.Queue[asyncio.Future[pb.PredictBatchResponse] | None],
        context: grpc.aio.ServicerContext,
        pins: list[str],
    ) -> None:
        pinned: ModelRef | None = None
        output_filter: list[str] = []
        encoding = tensor_pb2.TENSOR_ENCODING_UNSPECIFIED
        sequence = 0
        one_at_a_time = asyncio.Lock()  # FIFO: chunks reach the batcher in stream order
        try:
            async for request in request_iterator:
                if pinned is None:
                    if not request.HasField("model"):
                        raise InvalidArgument.field("model", "the first message of a stream must name the model")
                    first = await self._inference.load_version(convert.model_ref(request.model))
                    pinned = ModelRef(first.model_name, version=first.version)
                    pins.append(self._inference.pin(first))
                    output_filter = list(request.output_filter)
                    encoding = request.output_encoding
                chunk = self._predict_chunk(request, pinned, output_filter, encoding, sequence, one_at_a_time, context)
                await started.put(asyncio.ensure_future(chunk))
                sequence += 1
        except Exception as e:  # answered in order, after the chunks read before it
            failed: asyncio.Future[pb.PredictBatchResponse] = asyncio.get_running_loop().create_future()
            failed.set_exception(e)
            await started.put(failed)
        await started.put(None)

    async def _predict_chunk(
        self,
        request: pb.PredictBatchRequest,
        pinned: ModelRef,
        output_filter: list[str],
        encoding: int,
        sequence: int,
        one_at_a_time: asyncio.Lock,
        context: grpc.aio.ServicerContext,
    ) -> pb.PredictBatchResponse:
        with RequestObservation(pinned.name) as observation:
            inputs = wire_tensors(request.inputs)
            async with one_at_a_time:
                result = await self._inference.predict(
                    pinned, inputs, output_filter, _deadline(context), observation=observation
                )
            response = pb.PredictBatchResponse(
                request_id=request.request_id,
                model_name=result.model_name,
                model_version=result.version,
                sequence=sequence,
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
