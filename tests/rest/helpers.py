"""What the HTTP tests share: the real curl binary, and TF Serving's half_plus_two example model."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import tensorflow as tf

from tests import models


async def curl(*args: str) -> tuple[int, Any]:
    """Run curl (as a subprocess: the server runs on this event loop); returns the HTTP status and the JSON body
    (or the text, when it is not JSON)."""
    binary = shutil.which("curl")
    assert binary, "curl is needed (Debian package curl)"
    process = await asyncio.create_subprocess_exec(
        binary, "-sS", "-w", "\n%{http_code}", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    text, _, status = out.decode().rpartition("\n")
    try:
        return int(status), json.loads(text)
    except ValueError:
        return int(status), text


async def curl_raw(*args: str) -> bytes:
    """curl's raw output (binary answers)."""
    binary = shutil.which("curl")
    assert binary, "curl is needed (Debian package curl)"
    process = await asyncio.create_subprocess_exec(
        binary, "-sS", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out


class HalfPlusTwo(tf.Module):
    """TF Serving's documented example model: y = 0.5 * x + 2, input "x" and output "y", shape [batch]."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
    def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": 0.5 * x + 2.0}


def half_plus_two_tar_gz(out_dir: Path) -> Path:
    module = HalfPlusTwo()
    target = out_dir / "half_plus_two"
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})
    return models.pack_tar_gz(target, out_dir / "half_plus_two.tar.gz")


async def finished_job(http: Any, job_id: str, within: float = 60.0) -> dict[str, Any]:
    """Poll GET /api/v1/jobs/{id} (``http`` an aiohttp session on the front) until the job has ended; the job."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with http.get(f"/api/v1/jobs/{job_id}") as response:
            job: dict[str, Any] = (await response.json())["job"]
        if job["state"] not in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING"):
            return job
        assert asyncio.get_running_loop().time() < deadline, f"job {job_id} still {job['state']} after {within} s"
        await asyncio.sleep(0.1)
