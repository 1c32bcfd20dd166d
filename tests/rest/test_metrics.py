"""The HTTP front's inference routes count in the same per-model series as gRPC (docs/operations.md)."""

from __future__ import annotations

import aiohttp
from prometheus_client import REGISTRY, generate_latest

from tests.api.scrape import Scrape, parse
from tests.compat.helpers import Served


def current() -> Scrape:
    return parse(generate_latest(REGISTRY).decode())


async def test_rest_inference_moves_the_per_model_series(http: aiohttp.ClientSession, served: Served) -> None:
    oip = {"inputs": [{"name": "features", "shape": [2, 4], "datatype": "FP32", "data": [0.5] * 8}]}
    async with http.post(f"/v2/models/{served.mlp}/versions/1/infer", json=oip) as response:
        assert response.status == 200, await response.text()  # loads version 1
    before = current()
    for _ in range(3):
        async with http.post(f"/v2/models/{served.mlp}/versions/1/infer", json=oip) as response:
            assert response.status == 200
    async with http.post(f"/v1/models/{served.mlp}/versions/1:predict", json={"instances": [[0.5] * 4]}) as response:
        assert response.status == 200, await response.text()
    bad = {"inputs": [{"name": "features", "shape": [1, 5], "datatype": "FP32", "data": [0.5] * 5}]}
    async with http.post(f"/v2/models/{served.mlp}/versions/1/infer", json=bad) as response:
        assert response.status == 400
    after = current()
    series = {"model": served.mlp, "version": "1"}

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **series, **labels) - before.value(name, **series, **labels)

    assert moved("tt_model_requests_total", status="OK") == 4
    assert moved("tt_model_requests_total", status="INVALID_ARGUMENT") == 1
    assert moved("tt_model_rows_total") == 7
