"""The Python client (first cut) against a real server: upload from a path or a SavedModel folder, list, get."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import tensortrigger as tt

from tests import models
from tests.serving import unique_name
from tt_server.app import Application


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("client-models")
    return {"keras": models.mlp_keras(out), "saved_model_dir": models.mlp_export_dir(out)}


def _exercise(address: str, files: dict[str, Path], name: str, download_to: Path) -> None:
    progress: list[tuple[int, int]] = []
    with tt.Client(address) as client:
        v1 = client.upload(
            name,
            files["keras"],
            labels=["stable"],
            feature_names=["a", "b", "c", "d"],
            progress=lambda sent, total: progress.append((sent, total)),
        )
        assert v1.version == 1 and list(v1.labels) == ["stable"]
        assert progress and progress[-1][0] == progress[-1][1] == files["keras"].stat().st_size
        v2 = client.upload(name, files["saved_model_dir"])  # a folder is packed as .tar.gz for us
        assert v2.version == 2
        assert [i.name for i in v2.signature.inputs] == ["features"]

        listed = {m.name: m for m in client.list_models(page_size=1)}
        assert listed[name].latest_version == 2
        assert dict(listed[name].labels) == {"stable": 1}
        assert client.get_model(name).version_count == 2
        assert client.get_version(f"{name}@stable").version == 1
        assert client.get_version(f"{name}:2").version == 2
        assert [v.version for v in client.list_versions(name)] == [2, 1]

        record = client.download(name, download_to, version=1)
        assert record.sha256 == v1.sha256
        assert download_to.read_bytes() == files["keras"].read_bytes()

        with pytest.raises(tt.NotFoundError):
            client.get_version(f"{name}:9")
        with pytest.raises(tt.InvalidArgumentError) as err:
            client.upload("bad name", files["keras"])
        assert [v.field for v in err.value.violations] == ["header.model_name"]


async def test_client_round_trip(app: Application, model_files: dict[str, Path], tmp_path: Path) -> None:
    # The sync client blocks; run it in a thread so the server on this event loop keeps serving.
    await asyncio.to_thread(_exercise, app.address, model_files, unique_name(), tmp_path / "v1.keras")
