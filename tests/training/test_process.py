"""The training process (TT_TRAINING_PROCESS, the default): sessions train outside the serving process, and
when that process dies its sessions end with UNAVAILABLE while the server serves on and the next session gets
a new training process."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import pytest

from tests.api.helpers import upload
from tests.serving import unique_name
from tests.training.helpers import chunks, config, drain, save, student
from tests.training.test_sessions import DISCARD, TEACHER, start_when_free
from tt_server.app import Application
from tt_server.training.process import shared_training_process


def _training_processes() -> list[int]:
    """This test process's children running the training process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if ppid == os.getpid() and b"tt_server.training.process" in command:
            found.append(int(entry.name))
    return found


def _thread_niceness(pid: int) -> set[int]:
    """The niceness of each of ``pid``'s threads (field 19 of /proc/<pid>/task/<tid>/stat)."""
    values = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            values.add(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
    return values


@pytest.mark.parametrize("app", ["embedded"], indirect=True)  # the backend makes no difference here
async def test_a_dead_training_process_ends_its_sessions_and_is_replaced(
    app: Application, registry_stub, inference_stub, tmp_path: Path
) -> None:
    name = unique_name("process")
    await upload(registry_stub, name, save(student(), tmp_path / "student.keras"))
    call = inference_stub.Train()
    await call.write(config(name, on_abort=DISCARD, micro_batch_size=16))
    assert (await call.read()).WhichOneof("event") == "started"
    x, y = TEACHER.data(2000, seed=21)
    for request in chunks(x, y, 500):
        await call.write(request)
    assert (await call.read()).WhichOneof("event") == "progress"
    # The steps run there, not in this (the serving) process. (Other tests' servers in this process, with other
    # log or priority settings, may have training processes of their own: pick this server's.)
    s = app.settings
    pid = shared_training_process(s.training_thread_nice, s.log_level, s.log_json).pid
    assert pid is not None and pid in _training_processes()
    # Every thread there is niced, TensorFlow's intra-op pool (which runs the steps) included: training takes
    # what serving leaves of the cores.
    assert s.training_thread_nice > 0
    assert _thread_niceness(pid) == {s.training_thread_nice}

    os.kill(pid, signal.SIGKILL)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await drain(call)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert "training process" in (err.value.details() or "")

    # The lease was released; the next session starts a new training process and trains.
    assert (await start_when_free(inference_stub, name, within=120)).base_version == 1
    replaced = shared_training_process(s.training_thread_nice, s.log_level, s.log_json).pid
    assert replaced is not None and replaced != pid and replaced in _training_processes()
