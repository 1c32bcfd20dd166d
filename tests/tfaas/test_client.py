"""The Python client's TFaaS helpers against a real server: upload with node names and class names,
``read_images`` + ``classify``, on the blocking and the asyncio client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import tensortrigger as tt

from tests import models
from tests.clients.helpers import embedded_only
from tests.serving import unique_name
from tests.tfaas.helpers import image
from tt_server.app import Application

pytestmark = embedded_only  # the client only sees the API; the backends are covered by the other modules


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tfaas-client")
    red = out / "red.png"
    red.write_bytes(image("red", "PNG", (30, 20)))
    labels = out / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    return {
        "colours": models.colour_classifier_keras(out),
        "mlp_pb": models.mlp_frozen_graph(out),
        "red.png": red,
        "labels": labels,
    }


async def test_async_client_classifies_images(app: Application, files: dict[str, Path]) -> None:
    name = unique_name("client")
    async with tt.AsyncClient(app.address) as client:
        version = await client.upload(name, files["colours"], class_names=files["labels"], image_scaling="unit")
        assert list(version.class_names) == list(models.COLOURS)
        images = tt.read_images([files["red.png"], image("blue", "JPEG"), str(files["red.png"])])
        rows = await client.classify(name, images, top_k=2)
        assert [row[0].name for row in rows] == ["red", "blue", "red"] and all(len(row) == 2 for row in rows)
        assert rows[0][0] == tt.ClassScore("red", 0, pytest.approx(rows[0][0].score))
        # The same images through predict: the raw output for each row.
        outputs = await client.predict(name, images)
        assert outputs["probs"].shape == (3, 3)
        with pytest.raises(ValueError, match="top_k"):
            await client.classify(name, images, top_k=0)


async def test_sync_client_uploads_a_frozen_graph_with_names(app: Application, files: dict[str, Path]) -> None:
    name = unique_name("client")

    def run() -> list[list[tt.ClassScore]]:
        with tt.Client(app.address) as client:
            version = client.upload(
                name,
                files["mlp_pb"],
                input_nodes=[models.FROZEN_INPUT],
                output_nodes=[models.FROZEN_OUTPUT],
                class_names=["background", "signal"],
            )
            assert version.format == tt.v1.model_pb2.MODEL_FORMAT_FROZEN_GRAPH
            with pytest.raises(ValueError, match="both input_nodes and output_nodes"):
                client.upload(name, files["mlp_pb"], input_nodes=["x"])
            return client.classify(name, [[0.1, 0.2, 0.3, 0.4]], top_k=1)

    [[best]] = await asyncio.to_thread(run)  # the server runs on this loop: the blocking client gets a thread
    assert best.name in ("background", "signal") and 0.5 <= best.score <= 1
