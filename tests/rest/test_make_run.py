"""``make run``'s server answers HTTP: the command line its recipe runs (``make -n run``) is started as is, but for
the interpreter (this environment's) and free ports, then driven with curl, and stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.rest.helpers import curl, half_plus_two_tar_gz

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_recipe() -> str:
    out = subprocess.run(["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    [line] = [line for line in out.splitlines() if "bin/tt-server" in line]
    return line


async def test_make_run_serves_http_by_default_and_curl_works(tmp_path: Path) -> None:
    recipe = _run_recipe()
    assert recipe.startswith("TT_HTTP_ADDRESS=${TT_HTTP_ADDRESS-127.0.0.1:8501} ")  # on unless set (empty = off)
    assignments = recipe[: recipe.index(recipe.split()[-1])]
    command = f"{assignments}exec {sys.executable} -m tt_server"  # the recipe's environment, this interpreter
    grpc_port, http_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TT_")}
    env.update(
        TT_GRPC_ADDRESS=f"127.0.0.1:{grpc_port}",
        TT_HTTP_ADDRESS=f"127.0.0.1:{http_port}",  # a free port instead of the default 8501
        TT_DATA_DIR=str(tmp_path / "var"),
        TT_LOG_LEVEL="WARNING",
        TF_CPP_MIN_LOG_LEVEL="2",
        TT_GC_FREEZE="false",  # its start-up collection only slows this test down
    )
    log = (tmp_path / "server.log").open("wb")
    server = await asyncio.create_subprocess_exec("sh", "-c", command, env=env, stderr=log, cwd=tmp_path)
    url = f"http://127.0.0.1:{http_port}"
    try:
        for _ in range(600):
            assert server.returncode is None, (tmp_path / "server.log").read_text()[-3000:]
            code = await asyncio.create_subprocess_exec("curl", "-sf", "-o", "/dev/null", f"{url}/v2/health/ready")
            if await code.wait() == 0:
                break
            await asyncio.sleep(0.2)
        archive = half_plus_two_tar_gz(tmp_path)
        status, body = await curl("--data-binary", f"@{archive}", f"{url}/api/v1/models/half_plus_two/versions")
        assert status == 200, body
        status, body = await curl(
            "-d", '{"instances": [1.0, 2.0, 5.0]}', "-X", "POST", f"{url}/v1/models/half_plus_two:predict"
        )
        assert (status, body) == (200, {"predictions": [2.5, 3.0, 4.5]})
        status, body = await curl(f"{url}/v2/models/half_plus_two/ready")
        assert (status, body["ready"]) == (200, True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            assert await asyncio.wait_for(server.wait(), 60) == 0, (tmp_path / "server.log").read_text()[-3000:]
        finally:
            if server.returncode is None:
                server.kill()
            log.close()
