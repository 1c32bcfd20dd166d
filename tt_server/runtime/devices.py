"""TensorFlow's devices: found once at start-up, logged, and no GPU noise on a CPU-only host.

TensorFlow's wheel carries CUDA support, so on a host without an NVIDIA driver its first device scan prints
``failed call to cuInit ...`` at ERROR level, from C++ straight to file descriptor 2, which an operator's log
alerting rightly counts as an error. On such a host (no NVIDIA device node or driver) the scan runs with
descriptor 2 caught in a file, and every line it printed is passed on except that known one. On a GPU host
nothing is hidden: a CUDA error there is real.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

log = logging.getLogger(__name__)

_NVIDIA = ("/dev/nvidiactl", "/proc/driver/nvidia/version")
_CPU_HOST_NOISE = (b"failed call to cuInit",)

_found: list[str] | None = None


def gpu_host() -> bool:
    return any(os.path.exists(p) for p in _NVIDIA)


def init_devices() -> list[str]:
    """Scan TensorFlow's physical devices (once per process) and log them; their names ("CPU:0", "GPU:0")."""
    global _found
    if _found is not None:
        return _found
    import tensorflow as tf

    with contextlib.nullcontext() if gpu_host() else _without_lines(_CPU_HOST_NOISE):
        devices = tf.config.list_physical_devices()
    _found = [d.name.removeprefix("/physical_device:") for d in devices]
    log.info("tensorflow devices", extra={"devices": ",".join(_found)})
    return _found


@contextlib.contextmanager
def _without_lines(noise: tuple[bytes, ...]) -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught:
                if not any(n in line for n in noise):
                    os.write(2, line)


def short_device(name: str) -> str:
    """ "/job:localhost/replica:0/task:0/device:GPU:0" -> "GPU:0"."""
    return name.rsplit("device:", 1)[-1]
