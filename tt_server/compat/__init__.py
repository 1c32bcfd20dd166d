"""Other serving protocols on the same port, as thin servicers over the same domain as ``tensortrigger.v1``.

* ``tfserving``: TensorFlow Serving's ``tensorflow.serving.PredictionService`` and ``ModelService``.
* ``kserve``: the Open Inference Protocol (KServe v2 / Triton), ``inference.GRPCInferenceService``.

``convert`` holds what both share. The composition root (``tt_server.app``) registers them with
``add_to_server`` and lists ``SERVICE_NAMES`` for error mapping, metrics, health and reflection.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from tensorflow_serving.apis import (
    model_service_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tt_server.compat.kserve import GRPCInferenceServicer
from tt_server.compat.tfserving import ModelServicer, PredictionServicer
from tt_server.registry.service import Registry
from tt_server.runtime.service import InferenceService

SERVICE_NAMES = (
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
)


def add_to_server(
    server: grpc.aio.Server,
    inference: InferenceService,
    registry: Registry,
    max_elements: int,
    is_ready: Callable[[], bool],
) -> None:
    """Serve every compatibility service on ``server``; ``is_ready`` answers the OIP's ServerReady."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(inference, registry, max_elements), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(registry), server)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        GRPCInferenceServicer(inference, registry, max_elements, is_ready), server
    )
