"""A "canned Predict" server: tt-server's real gRPC layers over an inference service that returns a fixed answer.

Between the bare echo server (``bench.echo``: grpc.aio alone) and the real server, this one runs what the real
Predict runs *outside* the runtime: the middleware (request id, metrics, error mapping, parsing), the servicer's
protobuf -> domain conversion (``wire_tensors``, ``RequestObservation``) and the response building
(``fill_tensor``), but no model manager, validation, batcher or model call. So, at the same load:

    echo -> canned = our per-call gRPC layers;  canned -> real Predict = the runtime (decode, batch, model, hops)

    python -m bench.canned PORT [uvloop|asyncio]    # prints "ready" once listening; stops on SIGTERM
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
import numpy as np
from tensortrigger.v1 import inference_service_pb2_grpc

from bench.echo import MAX_MESSAGE, serve_until_signalled
from bench.workload import MODEL_NAME, OUTPUT_NAME
from tt_server import metrics
from tt_server.api.inference import InferenceServicer
from tt_server.api.middleware import Middleware
from tt_server.runtime.observe import RequestObservation
from tt_server.runtime.service import PredictResult


class CannedInference:
    """Stands in for ``runtime.service.InferenceService``: the same ``predict`` signature, a fixed result."""

    def __init__(self, output_name: str, version: int) -> None:
        self._result = PredictResult(MODEL_NAME, version, {output_name: np.full((1, 1), 0.5, np.float32)})
        # The per-model series a loaded version has, so requests are counted as the real server counts them.
        self._series = metrics.serving_series(MODEL_NAME, version, 1, 0)

    async def predict(
        self,
        ref: Any,
        inputs: Any,
        output_filter: Any,
        deadline: float | None,
        classify: Any = None,
        observation: RequestObservation | None = None,
    ) -> PredictResult:
        if observation is not None:
            observation.series = self._series
        return self._result


async def serve(port: int, output_name: str, version: int) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
    )
    middleware = Middleware({"tensortrigger.v1.InferenceService"})
    servicer = InferenceServicer(CannedInference(output_name, version))  # type: ignore[arg-type]
    inference_service_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, middleware.on(server))  # type: ignore[arg-type]
    await serve_until_signalled(server, port)


def main() -> None:
    port = int(sys.argv[1])
    loop = sys.argv[2] if len(sys.argv) > 2 else "asyncio"
    output_name = sys.argv[3] if len(sys.argv) > 3 else OUTPUT_NAME
    version = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    sys.setswitchinterval(0.0005)  # as tt-server's default TT_GIL_SWITCH_INTERVAL_SECONDS
    if loop == "uvloop":
        import uvloop

        uvloop.run(serve(port, output_name, version))
    else:
        asyncio.run(serve(port, output_name, version))


if __name__ == "__main__":
    main()
