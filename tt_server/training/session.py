"""TrainingSession: one Train stream, from its config to its last checkpoint.

A session runs as a task of its own; the RPC only relays its events (``events``). That keeps clean-up in one
place whatever ends the stream: the client half-closing or sending END (finish: train what is buffered,
checkpoint if the policy says so, ``Finished``), a bad message (``InvalidArgument``), the client cancelling,
or the server stopping (``Unavailable``). Every abnormal end keeps or discards the progress since the last
checkpoint as ``on_abort`` says; every end releases the lease, the training thread and the scratch files.

Three things overlap, so the trainer is never idle waiting for the network:

    reader task (event loop): read -> decode + validate -> inputs queue (a few messages ahead)
    session task (event loop): micro-batch -> train job for the trainer -> progress events
    the trainer (training/process.py: in the training process, or on a thread of this one): the train
    steps, evaluation, checkpoint writing

Steps run in order, one job per message (not per micro-batch), so the event loop hops once per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tt_server import metrics
from tt_server.config import Settings
from tt_server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TensorTriggerError,
    TrainingDiverged,
    Unavailable,
    request_fields,
)
from tt_server.formats.artifacts import ARTIFACT_SUFFIX
from tt_server.registry.service import Registry
from tt_server.storage import scratch
from tt_server.storage.blobs import BlobStore
from tt_server.storage.leases import Lease, LeaseManager
from tt_server.training.decoding import Batch, ExampleDecoder, MicroBatcher
from tt_server.training.engine import Snapshot, check_trainable
from tt_server.training.messages import (
    Checkpointed,
    Control,
    Evaluated,
    Examples,
    Finished,
    OnAbort,
    Progress,
    Started,
    TrainEvent,
    TrainInput,
    TrainSpec,
)
from tt_server.training.process import SessionTrainer, ThreadTrainer, TrainingProcess
from tt_server.types import ModelVersion

log = logging.getLogger(__name__)

READ_AHEAD_MESSAGES = 4  # decoded messages waiting for the trainer: enough to overlap reading and training
EVENT_BUFFER = 1024  # events the client has not read yet before the session waits for it


class StopReason(enum.StrEnum):
    CANCELLED = "cancelled"  # the client went away
    SHUTDOWN = "shutdown"  # the server is stopping


@dataclass(frozen=True, slots=True)
class SessionDeps:
    """What a session uses, shared by all sessions of a server."""

    registry: Registry
    blobs: BlobStore
    leases: LeaseManager
    settings: Settings
    training_process: TrainingProcess | None = None  # None: trainers run on threads of this process


class _EndOfStream:
    """The client half-closed."""


_END = _EndOfStream()
_Input = tuple[Batch, bool] | Control | _EndOfStream | Exception  # (examples, evaluate_only)


class EventChannel:
    """Session events on their way to the RPC. ``put`` waits while ``limit`` are unread (a client that stops
    reading pauses its session rather than filling memory); ``put_nowait`` is for the last few events of an
    aborting session, which must not wait for a client that may be gone."""

    def __init__(self, limit: int = EVENT_BUFFER) -> None:
        self._items: deque[TrainEvent] = deque()
        self._limit = limit
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False
        self._error: BaseException | None = None

    async def put(self, event: TrainEvent) -> None:
        while len(self._items) >= self._limit:
            self._writable.clear()
            await self._writable.wait()
        self.put_nowait(event)

    def put_nowait(self, event: TrainEvent) -> None:
        self._items.append(event)
        self._readable.set()

    def close(self, error: BaseException | None = None) -> None:
        """No more events; the reader gets ``error`` (if any) after the events already queued."""
        if not self._closed:
            self._closed, self._error = True, error
            self._readable.set()

    async def __aiter__(self) -> AsyncIterator[TrainEvent]:
        while True:
            if self._items:
                event = self._items.popleft()
                if len(self._items) < self._limit:
                    self._writable.set()
                yield event
            elif self._closed:
                if self._error is not None:
                    raise self._error
                return
            else:
                self._readable.clear()
                await self._readable.wait()


class TrainingSession:
    def __init__(self, session_id: str, requests: AsyncIterator[TrainInput], deps: SessionDeps) -> None:
        self.session_id = session_id
        self._requests = requests
        self._deps = deps
        self._settings = deps.settings
        self.events = EventChannel()
        self.task: asyncio.Task[None] | None = None
        self._stop_reason: StopReason | None = None
        self._aborting = False
        self._ending = False
        self._inputs: asyncio.Queue[_Input] = asyncio.Queue(READ_AHEAD_MESSAGES)
        self._reader: asyncio.Task[None] | None = None
        self._scratch = self._settings.scratch_dir / f"{scratch.TRAIN_PREFIX}{session_id}"
        self._claimed: scratch.ClaimedFolder | None = None  # held while the session runs (storage/scratch.py)
        self._lease: Lease | None = None
        self._spec: TrainSpec | None = None
        self._base: ModelVersion | None = None
        self._trainer: SessionTrainer | None = None
        self._batcher: MicroBatcher | None = None
        # Counted from the steps whose results reached the event loop (progress events); the trainer keeps
        # the totals of what reached the weights.
        self._steps = 0
        self._examples = 0
        self._saved_steps = 0
        self._saved_examples = 0
        self._last_checkpoint_at = time.monotonic()
        self._parent: int | None = None
        self._last_version = 0
        self._publishing: asyncio.Future[ModelVersion | None] | None = None
        self._diverged = False  # the loss or weights went NaN/Inf: nothing more is published
        self._dropped = 0  # examples dropped for holding NaN/Inf (drop_non_finite)
        self._pins: list[str] = []  # the base version's and the newest checkpoint's: retention keeps them

    @property
    def model(self) -> tuple[str, int | None] | None:
        """The model the session trains and its base version, once known (the spec's name before that)."""
        if self._base is not None:
            return self._base.model_name, self._base.version
        return (self._spec.model.name, None) if self._spec is not None else None

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self._run(), name=f"tt-train-{self.session_id}")
        return self.task

    async def stop(self, reason: StopReason) -> None:
        """End the session now (abort per ``on_abort``) and wait until it has cleaned up. Harmless once the
        session ended; a second reason does not replace the first."""
        task = self.task
        if task is None or task.done():
            return
        if self._stop_reason is None and not self._ending:
            self._stop_reason = reason
            task.cancel()
        # Shielded: if our caller is cancelled too, the session still finishes its clean-up on its own.
        await asyncio.shield(task)

    # --- lifecycle -------------------------------------------------------------------------------------
    async def _run(self) -> None:
        error: BaseException | None = None
        finished: Finished | None = None
        try:
            await self._setup()
            finished = await self._loop()
        except asyncio.CancelledError:
            # Deliberate (``stop``): handled here, so the task itself ends normally.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            if self._stop_reason is StopReason.SHUTDOWN:
                error = Unavailable("the server is shutting down; progress was kept or discarded as on_abort says")
        except Exception as e:
            error = e
            if isinstance(e, TrainingDiverged):
                self._diverged = True
                log.warning("training session diverged", extra={"session": self.session_id, "error": e.message})
        # Set with no await since the try block: a later stop() waits for the ending instead of cancelling it.
        self._ending = True
        try:
            if finished is None:
                await self._abort()
        except TensorTriggerError as e:  # e.g. the lease or the database went away: expected, no traceback
            log.warning("abort checkpoint not published", extra={"session": self.session_id, "error": e.message})
        except Exception:
            log.exception("aborting a training session failed", extra={"session": self.session_id})
        finally:
            # The lease is free before the client hears the end, so it can start its next session at once.
            await self._cleanup()
            if self._base is not None:
                _session_ended(self._base, "ok" if error is None and finished is not None else "error")
            if finished is not None:
                self.events.put_nowait(finished)
            self.events.close(error)

    async def _setup(self) -> None:
        spec = await self._first_message()
        self._spec = spec
        registry = self._deps.registry
        with request_fields({"ref": "model"}):  # the spec's model
            base = await registry.select_version(spec.model)
        check_trainable(base)  # before waiting for a lease that would be useless
        self._lease = await self._deps.leases.acquire(base.model_name, spec.wait_for_lease)
        if spec.model.version is None:
            # A label or "newest" may have moved while we waited, e.g. to the previous session's checkpoint.
            with request_fields({"ref": "model"}):
                base = await registry.select_version(spec.model)
            check_trainable(base)
        self._base = base
        self._parent = base.version
        metrics.TRAINING_SESSIONS.labels(base.model_name, str(base.version)).inc()
        # The second pin moves to each checkpoint as it is published (so retention never prunes the newest).
        self._pins = [await registry.pins.pin(base.model_name, base.version) for _ in range(2)]
        # On the loop, not in a thread: a cancellation while a thread claimed it would drop the claim unreleased.
        self._claimed = scratch.claim(self._scratch)
        artifact = self._scratch / f"base{ARTIFACT_SUFFIX[base.format]}"
        try:
            await self._deps.blobs.get_file(base.blob_key, artifact)
        except NotFound:
            raise FailedPrecondition(
                f"model {base.model_name!r} version {base.version} cannot be trained: its artifact is missing"
            ) from None
        s = self._settings
        allowed = frozenset(s.allowed_custom_objects)
        process = self._deps.training_process
        trainer: SessionTrainer = (
            process.trainer(self.session_id, base, artifact, spec, allowed)
            if process is not None
            else ThreadTrainer(base, artifact, spec, allowed, s.training_thread_nice)
        )
        self._trainer = trainer  # set before loading: clean-up closes it whatever happens
        recipe = await trainer.load()
        decoder = ExampleDecoder(
            base.signature, recipe.label_specs, s.max_request_rows, s.max_request_elements, spec.drop_non_finite
        )
        self._batcher = MicroBatcher(spec.micro_batch_size)
        self._last_checkpoint_at = time.monotonic()
        log.info(
            "training session started",
            extra={"session": self.session_id, "model": base.model_name, "base_version": base.version},
        )
        await self._emit(
            Started(self.session_id, base.version, recipe.loss_name, recipe.optimizer_kind, recipe.learning_rate)
        )
        self._reader = asyncio.create_task(self._read(decoder), name=f"tt-train-read-{self.session_id}")

    async def _first_message(self) -> TrainSpec:
        try:
            first = await anext(aiter(self._requests))
        except StopAsyncIteration:
            raise InvalidArgument.field("config", "the stream ended before its config message") from None
        if not isinstance(first, TrainSpec):
            raise InvalidArgument.field("config", "the first message of a Train stream must carry config")
        check_train_spec(first, self._settings)
        return first

    async def _read(self, decoder: ExampleDecoder) -> None:
        """Read, decode and queue the client's messages; a failure is queued too, in stream order."""
        try:
            async for item in self._requests:
                if isinstance(item, TrainSpec):
                    raise InvalidArgument.field("config", "config is sent once, as the first message")
                if isinstance(item, Examples):
                    await self._inputs.put((decoder.decode(item), item.evaluate_only))
                    continue
                await self._inputs.put(item)
                if item is Control.END:
                    return
            await self._inputs.put(_END)
        except Exception as e:
            await self._inputs.put(e)

    async def _loop(self) -> Finished:
        assert self._trainer is not None and self._batcher is not None
        trainer, batcher = self._trainer, self._batcher
        while True:
            item = await self._inputs.get()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, tuple):
                batch, evaluate_only = item
                self._dropped += batch.dropped
                if not evaluate_only:
                    await self._train(batcher.add(batch))
                    continue
                await self._train(batcher.flush())  # an evaluation sees every example sent before it
                if not batch.rows:  # every example was dropped
                    await self._emit(Evaluated(0, math.nan, {}))
                    continue
                result = await trainer.evaluate(batch)
                await self._emit(Evaluated(result.rows, result.loss, result.metrics))
            elif item is Control.CHECKPOINT:
                await self._train(batcher.flush())
                await self._checkpoint()
            else:  # END or half-close
                await self._train(batcher.flush())
                assert self._spec is not None
                if self._spec.checkpoint.on_end:
                    await self._checkpoint()
                if self._spec.promote and self._last_version:
                    await self._deps.registry.promote(self._spec.model.name, self._last_version)
                log.info(
                    "training session finished",
                    extra={"session": self.session_id, "examples": self._examples, "steps": self._steps},
                )
                return Finished(self._examples, self._steps, self._last_version)

    async def _train(self, batches: list[Batch]) -> None:
        if not batches:
            return
        assert self._trainer is not None and self._base is not None and self._spec is not None
        labels = (self._base.model_name, str(self._base.version))  # the version the session started from
        for result in await self._trainer.train(batches):
            if not math.isfinite(result.loss):
                raise TrainingDiverged(
                    f"training diverged: the loss became {result.loss} at step {self._steps + 1}; the session "
                    "publishes nothing more (whatever on_abort says). Try a lower learning rate"
                )
            self._steps += 1
            self._examples += result.rows
            metrics.TRAINING_STEPS.labels(*labels).inc()
            metrics.TRAINING_EXAMPLES.labels(*labels).inc(result.rows)
            metrics.TRAINING_LOSS.labels(*labels).set(result.loss)
            await self._emit(
                Progress(self._steps, self._examples, result.loss, result.prequential, result.metrics, self._dropped)
            )
        policy = self._spec.checkpoint
        if (policy.every_examples and self._examples - self._saved_examples >= policy.every_examples) or (
            policy.every_seconds and time.monotonic() - self._last_checkpoint_at >= policy.every_seconds
        ):
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Publish the weights as a new version if anything was learned since the last one.

        The publishing runs as a task of its own and is awaited shielded: a stream cancelled meanwhile still
        records the version it published, so the abort that follows does not publish the same weights twice.
        """
        self._publishing = asyncio.ensure_future(self._publish_checkpoint())
        version = await asyncio.shield(self._publishing)
        if version is not None:
            await self._emit(Checkpointed(version))

    async def _publish_checkpoint(self) -> ModelVersion | None:
        trainer, base, lease, spec = self._trainer, self._base, self._lease, self._spec
        assert trainer is not None and base is not None and lease is not None and spec is not None
        # Read on the training thread, after any step still running there.
        steps = await trainer.steps()
        if steps == self._saved_steps:
            return None
        await lease.check()  # never publish as the model's writer after losing the lease
        path = self._scratch / f"checkpoint-{steps}.keras"
        snapshot: Snapshot = await trainer.save(path)
        try:
            version = await self._deps.registry.publish_trained(
                base.model_name,
                path,
                base.signature,
                parent_version=self._parent,
                session_id=self.session_id,
                metadata=_checkpoint_metadata(snapshot),
                labels=(spec.move_label,) if spec.move_label else (),
                description=f"online training session {self.session_id}, from version {base.version}",
                feature_names=base.feature_names,
                pin=self._pins[1],
            )
        finally:
            await asyncio.to_thread(path.unlink, True)
        self._saved_steps, self._saved_examples = snapshot.steps, snapshot.examples
        self._last_checkpoint_at = time.monotonic()
        self._parent = self._last_version = version.version
        log.info(
            "training checkpoint published",
            extra={"session": self.session_id, "model": version.model_name, "version": version.version},
        )
        return version

    async def _abort(self) -> None:
        self._aborting = True
        if self._reader is not None:
            self._reader.cancel()
        spec, trainer = self._spec, self._trainer
        reason = self._stop_reason.value if self._stop_reason else "error"
        log.info("training session aborted", extra={"session": self.session_id, "reason": reason})
        if self._publishing is not None and not self._publishing.done():
            # The checkpoint being published when the stream ended counts (and is not published twice).
            with contextlib.suppress(Exception):
                version = await self._publishing
                if version is not None:
                    await self._emit(Checkpointed(version))
        # Weights that went NaN or infinite are never published, whatever on_abort says.
        if spec is not None and trainer is not None and spec.on_abort is OnAbort.CHECKPOINT and not self._diverged:
            await self._checkpoint()

    async def _cleanup(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._reader
        if self._lease is not None:
            await asyncio.shield(self._lease.release())
        for holder in self._pins:
            await asyncio.shield(self._deps.registry.pins.unpin(holder))
        if self._trainer is not None:
            # Runs after any call still under way (a step or load whose wait was cancelled), so the scratch
            # files go only once nothing uses them.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._trainer.close())
        if self._claimed is not None:
            await asyncio.to_thread(self._claimed.release)

    # --- helpers -------------------------------------------------------------------------------------
    async def _emit(self, event: TrainEvent) -> None:
        if self._aborting:
            self.events.put_nowait(event)
        else:
            await self.events.put(event)


def check_train_spec(spec: TrainSpec, settings: Settings) -> None:
    """Field checks that need the server's limits; the recipe checks loss, optimizer and metrics."""
    from tt_server.registry.names import check_label

    limit = settings.training_max_micro_batch
    if not 1 <= spec.micro_batch_size <= limit:
        raise InvalidArgument.field("config.micro_batch_size", f"must be between 1 and {limit}")
    if spec.learning_rate is not None and not 0 < spec.learning_rate < float("inf"):
        raise InvalidArgument.field("config.learning_rate", "must be positive")
    if not 0 <= spec.momentum < float("inf"):
        raise InvalidArgument.field("config.momentum", "must not be negative")
    policy = spec.checkpoint
    if policy.every_examples < 0:
        raise InvalidArgument.field("config.checkpoint.every_examples", "must not be negative")
    if not 0 <= policy.every_seconds < float("inf"):
        raise InvalidArgument.field("config.checkpoint.every_seconds", "must not be negative")
    if spec.move_label:
        check_label(spec.move_label, "config.move_label")


def _checkpoint_metadata(snapshot: Snapshot) -> dict[str, str]:
    """Recorded on the version: how much it learned in this session, and its last step's metrics."""
    metadata = {"training.steps": str(snapshot.steps), "training.examples_seen": str(snapshot.examples)}
    last = snapshot.last
    if last is not None:
        metadata["training.loss"] = f"{last.loss:.6g}"
        metadata.update({f"training.prequential.{k}": f"{v:.6g}" for k, v in last.prequential.items()})
        metadata.update({f"training.metrics.{k}": f"{v:.6g}" for k, v in last.metrics.items()})
    return metadata


def _session_ended(base: ModelVersion, outcome: str) -> None:
    labels = (base.model_name, str(base.version))
    metrics.TRAINING_SESSIONS.labels(*labels).dec()
    metrics.TRAINING_SESSIONS_ENDED.labels(*labels, outcome).inc()
    with contextlib.suppress(KeyError):  # a finished session's last loss would mislead
        metrics.TRAINING_LOSS.remove(*labels)
