"""Models for the compatibility tests, built once per session and uploaded to each module's server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import models
from tests.api.helpers import upload
from tests.compat.helpers import Served, half_keras
from tests.serving import unique_name


@pytest.fixture(scope="session")
def compat_model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    # Two MLP files built apart have different random weights, so versions 1 and 2 answer differently.
    return {
        "mlp_v1": models.mlp_keras(tmp_path_factory.mktemp("mlp-v1")),
        "mlp_v2": models.mlp_keras(tmp_path_factory.mktemp("mlp-v2")),
        "two_io": models.two_io_keras(tmp_path_factory.mktemp("two-io")),
        "vocab": models.as_tar_gz(models.vocab_asset_saved_model_dir, tmp_path_factory.mktemp("vocab")),
        "half": half_keras(tmp_path_factory.mktemp("half")),
    }


@pytest.fixture(scope="module")
async def served(registry_stub, compat_model_files: dict[str, Path]) -> Served:
    mlp, two_io, vocab, half = unique_name("mlp"), unique_name("two"), unique_name("vocab"), unique_name("half")
    await upload(registry_stub, mlp, compat_model_files["mlp_v1"], labels=["stable"])
    await upload(registry_stub, mlp, compat_model_files["mlp_v2"])
    await upload(registry_stub, two_io, compat_model_files["two_io"])
    await upload(registry_stub, vocab, compat_model_files["vocab"])
    await upload(registry_stub, half, compat_model_files["half"])
    return Served(mlp=mlp, two_io=two_io, vocab=vocab, half=half, files=compat_model_files)
