"""InferenceService: Predict, PredictBatch and Train (implemented by later issues; UNIMPLEMENTED until then)."""

from __future__ import annotations

from tensortrigger.v1 import inference_service_pb2_grpc


class InferenceServicer(inference_service_pb2_grpc.InferenceServiceServicer):
    pass
