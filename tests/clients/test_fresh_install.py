"""The client package installs into a fresh virtualenv from its own pyproject, without TensorFlow, and talks to a
real server from there: the library and the `tt` console script alike.

It builds the package and installs its real dependencies from the registry (pip reuses its wheel cache): about
20 s with a warm cache, the slowest test here, and in the default run as the only check that the published
dependency list is complete and TensorFlow-free. The package keeps version ranges (it is a library), and is tested
here against the versions of the development lock (as pip constraints), so a new upstream release cannot turn this
test red; `make lock` moves them on purpose.
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

ROOT = Path(__file__).resolve().parents[2]
CLIENT_SOURCE = ROOT / "clients" / "python"
LOCK = ROOT / "requirements" / "dev.txt"

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


def lock_constraints(lock: str) -> str:
    """The lock's pins (``name==version ; marker``) without hashes: pip takes no hashes in a constraints file."""
    return "".join(line.rstrip(" \\") + "\n" for line in lock.splitlines() if line and line[0].isalnum())


def test_the_locks_pin_what_the_packages_need() -> None:
    """Every dependency the packages name is pinned in the locks, runtime pins equal development pins, and the
    runtime lock holds no development tooling (what `make run` and the image install)."""
    import tomllib

    def pins(text: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for line in lock_constraints(text).splitlines():
            name, _, rest = line.partition("==")
            found.setdefault(name.lower().replace("_", "-"), rest.split(";")[0].strip())
        return found

    def names(requirements: list[str]) -> set[str]:
        import re

        return {re.split(r"[\[<>=~!; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    runtime, dev = pins((ROOT / "requirements" / "runtime.txt").read_text()), pins(LOCK.read_text())
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((CLIENT_SOURCE / "pyproject.toml").read_text())["project"]
    ours = {"tensortrigger-client", "tensortrigger-server"}
    needed = (
        names(server["dependencies"]) | names(client["dependencies"]) | names(client["optional-dependencies"]["cli"])
    )
    assert needed - ours <= set(runtime), needed - ours - set(runtime)
    extras = server["optional-dependencies"]
    tooling = names(extras["dev"]) | names(extras["deploy"]) | names(extras["bench"])
    assert tooling - ours <= set(dev), tooling - ours - set(dev)
    assert not {"pytest", "moto", "mypy", "ruff", "kubernetes-validate", "checkov", "grpcio-tools"} & set(runtime)
    assert {name: dev[name] for name in runtime} == runtime, "the development lock moved a runtime pin"
    assert dev["grpcio-tools"] == runtime["grpcio"], "generated code must come from the grpc release that serves it"


@embedded_only
async def test_installs_and_works_without_tensorflow(app: Application, tmp_path: Path) -> None:
    # Build from a copy, so the build leaves no build/ or egg-info behind in the checkout.
    source = tmp_path / "tensortrigger-client"
    shutil.copytree(CLIENT_SOURCE, source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv = tmp_path / "venv"
    await run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(lock_constraints(LOCK.read_text()))

    # The library alone: its four dependencies, no TensorFlow, no CLI framework.
    await run(python, "-m", "pip", "install", "--quiet", "-c", constraints, source)
    installed = {line.split("==")[0].lower() for line in (await run(python, "-m", "pip", "freeze")).split()}
    assert "tensortrigger-client" in installed and {"grpcio", "grpcio-status", "protobuf", "numpy"} <= installed
    assert not installed & {"tensorflow", "tensorflow-cpu", "keras", "tf-keras", "click", "rich"}
    assert (await run(python, "-c", CHECK, app.address)).strip() == "SERVING"
    assert "tensortrigger-client[cli]" in await run(venv / "bin" / "tt", "health", expect=1)  # says what to install

    # With the cli extra, the console script works.
    await run(python, "-m", "pip", "install", "--quiet", "-c", constraints, f"{source}[cli]")
    health = await run(venv / "bin" / "tt", "--json", "--address", app.address, "health")
    assert json.loads(health) == {"status": "SERVING"}
