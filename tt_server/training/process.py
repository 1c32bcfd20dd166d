"""Where a session's ``Trainer`` runs: on a thread of the serving process, or in the training process.

A train step holds the GIL for part of its time (Keras bookkeeping, the step's Python entry, its results),
and TensorFlow's intra-op threads compete with the inference thread for the cores. In the serving process
that shows as Predict latency under a full-speed Train stream. So by default (``TT_TRAINING_PROCESS``) every
session's trainer lives in one separate training process with its own GIL and its own TensorFlow thread pools
(the whole process niced, TensorFlow's pools included), started with the first session and kept for the next:

    session (event loop, serving process) --pipe: (call id, session, method, args)--> training process
        receiver thread -> the session's own thread there (Trainer methods, in order) --pipe: result-->
    serving process: a reader thread resolves the call's future on the event loop

Decoding and validation stay in the serving process (so bad input is rejected before anything is sent);
only decoded micro-batches (numpy arrays, pickled) and small results cross the pipe. Checkpoints are written
by the training process to the session's scratch folder and published by the serving process, as before.

If the training process dies (e.g. killed for memory), its open sessions fail with UNAVAILABLE and the next
session starts a new one. ``ThreadTrainer`` keeps the previous arrangement (one niced thread per session in
the serving process) for ``TT_TRAINING_PROCESS=false``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tt_server import errors
from tt_server.errors import TensorTriggerError, Unavailable
from tt_server.training.decoding import Batch
from tt_server.training.messages import TrainSpec
from tt_server.types import ModelVersion, TensorSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

CLOSE_TIMEOUT_SECONDS = 5.0  # its sessions have ended by then, and it exits at once on end of file


@dataclass(frozen=True, slots=True)
class Loaded:
    """What a session learns from a loaded trainer."""

    loss_name: str
    optimizer_kind: Any
    learning_rate: float
    label_specs: tuple[TensorSpec, ...]


class SessionTrainer(Protocol):
    """A session's trainer, wherever it runs. Calls run one at a time, in the order made; a call whose
    awaiting caller was cancelled still runs, and ``close`` runs after it."""

    async def load(self) -> Loaded: ...

    async def train(self, batches: list[Batch]) -> list[Any]: ...

    async def evaluate(self, batch: Batch) -> Any: ...

    async def steps(self) -> int: ...

    async def save(self, path: Path) -> Any: ...

    async def close(self) -> None: ...


def _loaded(trainer: Any) -> Loaded:
    recipe = trainer.recipe
    return Loaded(recipe.loss_name, recipe.optimizer_kind, recipe.learning_rate, trainer.label_specs)


# --- in the serving process ---------------------------------------------------------------------------------
class ThreadTrainer:
    """The trainer on a thread of its own in this process (niced on Linux)."""

    def __init__(
        self, version: ModelVersion, artifact: Path, spec: TrainSpec, allowed: frozenset[str], nice: int
    ) -> None:
        from tt_server.training.engine import Trainer

        self._trainer = Trainer(version, artifact, spec, allowed)
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix=f"tt-train-{version.model_name}", initializer=lower_priority, initargs=(nice,)
        )

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    async def load(self) -> Loaded:
        trainer = self._trainer
        return await self._call(lambda: (trainer.load(), _loaded(trainer))[1])

    async def train(self, batches: list[Batch]) -> list[Any]:
        return await self._call(self._trainer.train, batches)

    async def evaluate(self, batch: Batch) -> Any:
        return await self._call(self._trainer.evaluate, batch)

    async def steps(self) -> int:
        return await self._call(lambda: self._trainer.steps)

    async def save(self, path: Path) -> Any:
        return await self._call(self._trainer.save, path)

    async def close(self) -> None:
        # Queued behind any job still on the thread; the model is dropped on its own thread.
        closed = self._executor.submit(self._trainer.close)
        self._executor.shutdown(wait=False)
        await asyncio.wrap_future(closed)


class TrainingProcess:
    """The serving process's handle on the training process: started on first use, restarted if it died."""

    def __init__(self, nice: int, log_level: str = "INFO", log_json: bool = True) -> None:
        self._args = (str(nice), log_level, str(int(log_json)))
        self._lock = threading.Lock()
        self._process: Any = None
        self._conn: Connection | None = None
        self._socket: socket.socket | None = None  # for shutdown(): a close() would not wake a blocked recv
        self._send_lock = threading.Lock()
        self._pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._ids = itertools.count()
        self._generation = 0  # bumped by every start
        self._closed = False

    def trainer(
        self, session_id: str, version: ModelVersion, artifact: Path, spec: TrainSpec, allowed: frozenset[str]
    ) -> ProcessTrainer:
        return ProcessTrainer(self, session_id, (version, artifact, spec, allowed))

    async def start(self) -> int:
        """Start the training process unless it runs; its generation, which a session's calls then name."""
        if self._closed:
            raise Unavailable("the server is shutting down")
        if not self._alive():
            await asyncio.to_thread(self._start)
        return self._generation

    async def call(self, generation: int, session_id: str, method: str, *args: Any) -> Any:
        """Run ``method`` of the session's trainer in training process ``generation``: a session whose process
        died gets UNAVAILABLE, never a fresh process that has no trainer for it."""
        if self._closed:
            raise Unavailable("the server is shutting down")
        conn = self._conn
        if conn is None or generation != self._generation or not self._alive():
            raise Unavailable("the training process exited; the session's progress since its last checkpoint is lost")
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[call_id] = (loop, future)
        try:
            with self._send_lock:
                conn.send((call_id, session_id, method, args))
        except (OSError, ValueError) as e:
            self._pending.pop(call_id, None)
            raise Unavailable("the training process is unavailable") from e
        return await future

    def _alive(self) -> bool:
        return self._conn is not None and self._process is not None and self._process.poll() is None

    def _start(self) -> Connection:
        with self._lock:
            if self._alive():
                assert self._conn is not None
                return self._conn
            # A fresh interpreter (never fork a process running gRPC and TensorFlow threads), and not
            # multiprocessing's spawn, which would re-run the server's __main__ in it.
            if self._socket is not None:
                self._socket.close()  # a training process that died
            ours, theirs = socket.socketpair()
            with theirs:
                process = subprocess.Popen(
                    [sys.executable, "-m", "tt_server.training.process", str(theirs.fileno()), *self._args],
                    pass_fds=(theirs.fileno(),),
                )
            conn = Connection(os.dup(ours.fileno()))
            self._process, self._conn, self._socket = process, conn, ours
            self._generation += 1
            threading.Thread(target=self._read, args=(conn,), name="tt-training-reader", daemon=True).start()
            log.info("training process started", extra={"pid": process.pid})
            return conn

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                call_id, ok, value = conn.recv()
            except (EOFError, OSError):
                conn.close()
                break
            loop, future = self._pending.pop(call_id, (None, None))
            if loop is not None and future is not None:
                outcome = value if ok else _rebuild_error(value)
                loop.call_soon_threadsafe(_settle, future, ok, outcome)
        if not self._closed:
            log.error("the training process exited; its sessions end with UNAVAILABLE")
        for loop, future in list(self._pending.values()):
            loop.call_soon_threadsafe(_settle, future, False, Unavailable("the training process exited"))
        self._pending.clear()

    @property
    def pid(self) -> int | None:
        """The training process's pid while it runs (for operators' tools and tests)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def close(self) -> None:
        """Stop the training process (blocking; at interpreter exit)."""
        self._closed = True
        conn, process = self._conn, self._process
        if conn is None or process is None:
            return
        with self._send_lock, contextlib.suppress(OSError):
            if self._socket is not None:
                self._socket.shutdown(socket.SHUT_RDWR)  # the child sees end of file and exits
                self._socket.close()
        try:
            process.wait(CLOSE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("the training process did not exit in time; killing it", extra={"pid": process.pid})
            process.kill()
            process.wait()


_shared: dict[tuple[int, str, bool], TrainingProcess] = {}


def shared_training_process(nice: int, log_level: str, log_json: bool) -> TrainingProcess:
    """The process-wide training process (one per serving process, like the inference thread): servers
    stopped and started again in one process (tests, a restart in place) reuse it rather than pay for
    another TensorFlow start-up. It ends when this process exits, or with it if this process is killed."""
    key = (nice, log_level, log_json)
    if key not in _shared:
        if not _shared:
            atexit.register(_close_shared)
        _shared[key] = TrainingProcess(nice, log_level, log_json)
    return _shared[key]


def _close_shared() -> None:
    for process in _shared.values():
        process.close()


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class ProcessTrainer:
    """A session's trainer in the training process."""

    def __init__(self, process: TrainingProcess, session_id: str, load_args: tuple[Any, ...]) -> None:
        self._process = process
        self._session = session_id
        self._load_args = load_args
        self._generation: int | None = None  # the training process holding this session's trainer

    async def _call(self, method: str, *args: Any) -> Any:
        assert self._generation is not None, "load() first"
        return await self._process.call(self._generation, self._session, method, *args)

    async def load(self) -> Loaded:
        self._generation = await self._process.start()
        loaded: Loaded = await self._call("load", *self._load_args)
        return loaded

    async def train(self, batches: list[Batch]) -> list[Any]:
        results: list[Any] = await self._call("train", batches)
        return results

    async def evaluate(self, batch: Batch) -> Any:
        return await self._call("evaluate", batch)

    async def steps(self) -> int:
        steps: int = await self._call("steps")
        return steps

    async def save(self, path: Path) -> Any:
        return await self._call("save", path)

    async def close(self) -> None:
        if self._generation is None:
            return  # never reached the training process
        with contextlib.suppress(Unavailable):  # the process is gone, and the trainer with it
            await self._call("close")


def _error_payload(e: BaseException) -> tuple[str, str, list[Any]]:
    if isinstance(e, TensorTriggerError):
        return type(e).__name__, e.message, list(getattr(e, "violations", []))
    return "", f"{type(e).__name__}: {e}", []


def _rebuild_error(payload: tuple[str, str, list[Any]]) -> BaseException:
    name, message, violations = payload
    cls = getattr(errors, name, None) if name else None
    if cls is errors.InvalidArgument:
        return errors.InvalidArgument(message, violations)
    if isinstance(cls, type) and issubclass(cls, TensorTriggerError):
        return cls(message)
    return RuntimeError(f"training process: {message}")  # unexpected: INTERNAL, as it would be in-process


# --- in the training process --------------------------------------------------------------------------------
def child_main(argv: Sequence[str]) -> None:
    """The training process: one thread per session runs its Trainer's calls in order."""
    fd, nice, log_level, log_json = int(argv[0]), int(argv[1]), argv[2], argv[3] == "1"
    # The whole process niced, before TensorFlow starts its thread pools (Linux threads inherit their
    # creator's niceness): the intra-op threads that run the train steps are most of training's CPU, and at
    # nice 0 they took the cores from the serving process's event loop and inference thread (Predict's p99
    # under a full-speed Train stream). Training gets what serving leaves; alone it runs at full speed.
    _lower_process_priority(nice)
    from tt_server.logs import configure_logging

    configure_logging(log_level, log_json)
    from tt_server.runtime.devices import init_devices

    init_devices()  # no GPU noise on a CPU-only host, as in the serving process
    conn = Connection(fd)
    from tt_server.training.engine import Trainer

    send_lock = threading.Lock()
    sessions: dict[str, tuple[Any, ThreadPoolExecutor]] = {}

    def reply(call_id: int, ok: bool, value: Any) -> None:
        with send_lock, contextlib.suppress(OSError, ValueError):  # the serving process is gone
            conn.send((call_id, ok, value))

    def run(call_id: int, session_id: str, method: str, args: Sequence[Any]) -> None:
        try:
            if method == "load":
                trainer = Trainer(*args)
                sessions[session_id] = (trainer, sessions[session_id][1])
                trainer.load()
                value: Any = _loaded(trainer)
            else:
                trainer = sessions[session_id][0]
                if method == "steps":
                    value = trainer.steps
                elif method == "close":
                    if trainer is not None:  # None: its load failed
                        trainer.close()
                    _, executor = sessions.pop(session_id)
                    executor.shutdown(wait=False)
                    value = None
                else:
                    value = getattr(trainer, method)(*args)
        except BaseException as e:
            if not isinstance(e, TensorTriggerError):
                traceback.print_exc()
            reply(call_id, False, _error_payload(e))
            return
        reply(call_id, True, value)

    while True:
        try:
            call_id, session_id, method, args = conn.recv()
        except (EOFError, OSError):
            break
        if session_id not in sessions:
            # Inherits the process's niceness (set at start, with TensorFlow's pools).
            executor = ThreadPoolExecutor(1, thread_name_prefix=f"tt-train-{session_id[:8]}")
            sessions[session_id] = (None, executor)
        sessions[session_id][1].submit(run, call_id, session_id, method, args)
    # The serving process closed its end (it is exiting) or died: nothing here is worth keeping, and an
    # orderly TensorFlow teardown takes seconds the serving process's exit should not wait for.
    logging.shutdown()
    os._exit(0)


def _lower_process_priority(nice: int) -> None:
    """Raise the niceness of every thread of this process (Linux niceness is per thread; the imports have
    started some already, e.g. OpenBLAS's pool with numpy); threads started later inherit it."""
    tasks = Path("/proc/self/task")
    if nice <= 0 or not tasks.is_dir():
        return
    for task in tasks.iterdir():
        try:
            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
        except ProcessLookupError:  # the thread ended meanwhile
            continue
        except OSError:
            log.warning("could not lower the training process's priority", exc_info=True)


def lower_priority(nice: int) -> None:
    """Thread initializer: raise this thread's niceness (Linux schedules threads individually)."""
    if nice > 0 and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError:
            log.warning("could not lower the training thread's priority", exc_info=True)


if __name__ == "__main__":
    from tt_server.training.process import child_main as _main  # the module's own names, not __main__'s

    _main(sys.argv[1:])
