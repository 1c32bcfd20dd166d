"""The client package installs into a fresh virtualenv from its own pyproject, without TensorFlow, and talks to a
real server from there: the library and the `tt` console script alike.

It builds the package and installs its real dependencies from the registry (pip reuses its wheel cache): about
20 s with a warm cache, the slowest test here, and in the default run as the only check that the published
dependency list is complete and TensorFlow-free.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

from tests.clients.helpers import embedded_only
from tt_server.app import Application

CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "clients" / "python"

CHECK = """
import importlib.util, sys
import tensortrigger
assert importlib.util.find_spec("tensorflow") is None, "tensorflow is installed"
try:
    import tensorflow  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    sys.exit("tensorflow imported")
with tensortrigger.Client(sys.argv[1]) as client:
    print(client.health())
"""


async def run(*command: str | Path, expect: int = 0) -> str:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)  # nothing from this checkout may leak into the fresh environment
    process = await asyncio.create_subprocess_exec(
        *map(str, command), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    out, _ = await asyncio.wait_for(process.communicate(), 600)
    assert process.returncode == expect, f"{command} exited {process.returncode}:\n{out.decode()}"
    return out.decode()


@embedded_only
async def test_installs_and_works_without_tensorflow(app: Application, tmp_path: Path) -> None:
    # Build from a copy, so the build leaves no build/ or egg-info behind in the checkout.
    source = tmp_path / "tensortrigger-client"
    shutil.copytree(CLIENT_SOURCE, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv = tmp_path / "venv"
    await run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"

    # The library alone: its four dependencies, no TensorFlow, no CLI framework.
    await run(python, "-m", "pip", "install", "--quiet", source)
    installed = {line.split("==")[0].lower() for line in (await run(python, "-m", "pip", "freeze")).split()}
    assert "tensortrigger-client" in installed and {"grpcio", "grpcio-status", "protobuf", "numpy"} <= installed
    assert not installed & {"tensorflow", "tensorflow-cpu", "keras", "tf-keras", "click", "rich"}
    assert (await run(python, "-c", CHECK, app.address)).strip() == "SERVING"
    assert "tensortrigger-client[cli]" in await run(venv / "bin" / "tt", "health", expect=1)  # says what to install

    # With the cli extra, the console script works.
    await run(python, "-m", "pip", "install", "--quiet", f"{source}[cli]")
    health = await run(venv / "bin" / "tt", "--json", "--address", app.address, "health")
    assert json.loads(health) == {"status": "SERVING"}
