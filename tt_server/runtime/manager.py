"""ModelManager: resolves model refs to loaded servables, loading on first use (TF Serving's manager).

* **Resolution.** ``ModelRef`` -> version: an explicit version is used as is; a label or the model's serving
  policy (a ref naming only the model) is read from the metadata store and reused for
  ``model_resolution_ttl_seconds``. Registry events drop cached resolutions at once (``handle_event``); the
  TTL only bounds staleness when an event is lost. When the metadata store is unavailable, the last known
  resolution keeps serving (stale beats down for a model that is already loaded): requests get it at once
  while one background query per TTL checks whether the store is back.
* **Loading.** The first request for a version downloads its artifact into ``cache_dir``, loads and warms
  it up on the loader thread (never the event loop) with a loader from the ``loader_factory`` it was given
  (TF Serving's source adapter: the composition root passes ``runtime.loader.loader_factory``), and creates
  its batcher. Concurrent first requests share one load; if it fails they all get the error.
* **Load backoff.** A failed load is remembered per version: until its backoff passes (1 s after the first
  failure, doubling per consecutive failure up to ``model_load_retry_max_seconds``), calls for that version
  fail at once with the same error, plus when the next attempt may start, instead of downloading a big
  artifact again per call. The first call after the backoff tries again (its concurrent callers share that
  load). A successful load, or any registry event for the model (a new version may be the fix, a deletion
  makes it moot), forgets the failure.
* **Aspired versions.** When a label that requests use moves, or an event may change what the serving policy
  selects (new version, label moved, policy changed, promotion), the new target is resolved and loaded in the
  background straight away, so requests rarely wait for the swap.
* **Unloading.** Loaded versions are kept in LRU order, bounded by count and by estimated bytes; deleted
  versions and models are dropped on their events. Dropping only removes the manager's reference: requests
  holding a handle finish on it, and Python frees the model when the last one is done.

All methods run on the event loop; the manager is not thread-safe.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import re
import shutil
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tt_server import metrics
from tt_server.config import Settings
from tt_server.errors import FailedPrecondition, NotFound, TensorTriggerError, Unavailable
from tt_server.events import EventBus
from tt_server.formats.artifacts import ARTIFACT_SUFFIX
from tt_server.runtime.batcher import DynamicBatcher
from tt_server.runtime.loader import LoaderFactory
from tt_server.runtime.memory import Settler
from tt_server.runtime.servable import Servable, configure_threads
from tt_server.runtime.validation import InputDecoder
from tt_server.storage.blobs import BlobStore
from tt_server.storage.metadata import MetadataStore
from tt_server.storage.pins import VersionPins
from tt_server.types import EventKind, ModelRef, ModelVersion, RegistryEvent

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
VersionKey = tuple[str, int]  # (model name, version)
ResolutionKey = tuple[str, str | None]  # (model name, label); None = what the serving policy selects

LOAD_RETRY_FIRST_SECONDS = 1.0  # the backoff after a version's first failed load; doubled per failure since

_REF = re.compile(r"^(?P<name>[^:@]+)(?::(?P<version>\d+)|@(?P<label>.+))?$")


def parse_model_ref(text: str) -> ModelRef:
    """``name`` (its serving policy), ``name:3`` (version 3) or ``name@label``, as in ``preload_models``."""
    match = _REF.match(text.strip())
    if match is None:
        raise ValueError(f"not a model reference: {text!r} (use name, name:version or name@label)")
    version = match["version"]
    return ModelRef(match["name"], version=int(version) if version else None, label=match["label"])


@dataclass(slots=True)
class _LoadFailure:
    """The last failed load of a version: what it raised, and when the next one may start."""

    error: Exception  # a copy of a domain error (no traceback), or a RuntimeError standing for an unexpected one
    failures: int  # consecutive failed loads
    retry_at: float  # on the manager's clock


@dataclass(frozen=True, slots=True, eq=False)
class ServableHandle:
    """A loaded version, ready for requests: the servable, its batcher and its input decoder."""

    model_version: ModelVersion
    servable: Servable
    batcher: DynamicBatcher
    decoder: InputDecoder
    series: metrics.ServingSeries  # its per-model series (requests, batches, queue, timings)

    @property
    def model_name(self) -> str:
        return self.model_version.model_name

    @property
    def version(self) -> int:
        return self.model_version.version


class ModelManager:
    def __init__(
        self,
        metadata_store: MetadataStore,
        blob_store: BlobStore,
        cache_dir: Path,
        settings: Settings,
        executor: Executor | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        loader_factory: LoaderFactory,
    ) -> None:
        """``executor`` runs model calls (the inference thread, shared by every batcher unless
        ``inference_thread_per_model``); None = the manager makes and owns a one-thread executor.
        ``clock``: the seconds resolutions expire and load backoffs pass on (tests advance a fake one instead
        of waiting).
        ``loader_factory`` makes the loader of each version the manager loads."""
        configure_threads(settings.inference_intra_op_threads, settings.inference_inter_op_threads)
        self._metadata = metadata_store
        self._blobs = blob_store
        self._cache_dir = cache_dir
        self._settings = settings
        self._clock = clock
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(1, thread_name_prefix="tt-inference")
        # Loads are slow (seconds for big models) and CPU-bound: one at a time, beside inference.
        self._load_executor = ThreadPoolExecutor(1, thread_name_prefix="tt-model-load")
        self._loader_factory = loader_factory
        self._loaded: OrderedDict[VersionKey, ServableHandle] = OrderedDict()  # LRU first
        self._loaded_bytes = 0
        self._loads: dict[VersionKey, asyncio.Task[ServableHandle]] = {}
        self._load_failures: dict[VersionKey, _LoadFailure] = {}  # versions in load backoff
        self._resolved: dict[ResolutionKey, tuple[ModelVersion, float]] = {}  # -> (version, expires)
        self._resolving: dict[ResolutionKey, asyncio.Task[ModelVersion]] = {}
        # Resolutions served stale because the metadata store was unavailable at their last refresh.
        self._stale: set[ResolutionKey] = set()
        # Bumped per model by every event (resolutions, load backoffs) / by deletions (loads), so a query or
        # load that was in flight when the event arrived does not cache what the event made stale.
        self._resolution_epoch: dict[str, int] = {}
        self._load_epoch: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._settler = Settler(settings.gc_freeze)  # freeze what a load created, free what an unload dropped
        self._closed = False
        self.loads_started = 0  # for tests and metrics
        self.pins = VersionPins(metadata_store)  # versions open PredictBatch streams use; retention keeps them

    # --- lifecycle ------------------------------------------------------------------------------------------
    async def start(self, events: EventBus | None = None) -> None:
        """Subscribe to registry events and load the ``preload_models``. A preload that fails is logged and
        skipped (the model may be uploaded later); a malformed entry raises ``ValueError``."""
        if events is not None:
            events.subscribe(self.handle_event)
        refs = [parse_model_ref(text) for text in self._settings.preload_models]
        for ref in refs:
            try:
                handle = await self.get(ref)
            except Exception:
                log.warning("preloading a model failed", exc_info=True, extra={"model": ref.name})
            else:
                log.info("model preloaded", extra={"model": handle.model_name, "version": handle.version})

    async def close(self) -> None:
        """Stop loading, finish queued requests, unload everything."""
        self._closed = True
        self._settler.cancel()
        await self.pins.close()
        tasks = [*self._background, *self._loads.values(), *self._resolving.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        handles = list(self._loaded.values())
        self._loaded.clear()
        self._loaded_bytes = 0
        for handle in handles:
            await handle.batcher.close(drain=True)
            handle.servable.unload()
            handle.series.remove()
            metrics.MODELS_LOADED.dec()
            if handle.batcher.executor is not self._executor:  # inference_thread_per_model
                handle.batcher.executor.shutdown(wait=False)
        self._load_executor.shutdown(wait=False, cancel_futures=True)
        if self._owns_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def loaded_versions(self) -> list[VersionKey]:
        """Loaded (model, version) pairs, least recently used first."""
        return list(self._loaded)

    @property
    def loaded_bytes(self) -> int:
        return self._loaded_bytes

    # --- requests -------------------------------------------------------------------------------------------
    async def get(self, ref: ModelRef) -> ServableHandle:
        """The loaded servable for ``ref``, loading it first if needed. Raises ``NotFound`` for unknown
        models, versions and labels; load failures propagate."""
        if self._closed:
            raise Unavailable("the server is shutting down")
        known: ModelVersion | None = None
        if ref.version is not None:
            key = (ref.name, ref.version)
        else:
            known = await self._resolve(ref.name, ref.label)
            key = (ref.name, known.version)
        handle = self._loaded.get(key)
        if handle is not None:
            self._loaded.move_to_end(key)
            return handle
        if key not in self._loads:  # a load in flight is joined, even one that started when a backoff ended
            self._check_backoff(key)
        return await _single_flight(self._loads, key, lambda: self._load(key, known))

    async def current_version(self, ref: ModelRef) -> ModelVersion:
        """The version ``ref`` names now, without loading it."""
        if ref.version is not None:
            handle = self._loaded.get((ref.name, ref.version))
            if handle is not None:
                return handle.model_version
            return await self._metadata.get_version(ref.name, ref.version)
        return await self._resolve(ref.name, ref.label)

    async def _resolve(self, name: str, label: str | None) -> ModelVersion:
        rkey = (name, label)
        cached = self._resolved.get(rkey)
        if cached is not None:
            version, expires = cached
            if expires > self._clock():
                return version
            if rkey in self._stale:
                # The store was down at the last try: answer now and retry behind the request, so that requests
                # never wait for a connect timeout while the outage lasts.
                self._resolved[rkey] = (version, self._clock() + self._settings.model_resolution_ttl_seconds)
                self._spawn(self._refresh_behind(name, label))
                return version
        return await self._refresh(name, label)

    async def _refresh(self, name: str, label: str | None) -> ModelVersion:
        """Query the resolution; when the store is unavailable, serve the last known one for another TTL."""
        rkey = (name, label)
        try:
            return await _single_flight(self._resolving, rkey, lambda: self._query(name, label))
        except Unavailable:
            cached = self._resolved.get(rkey)  # an event may have dropped it meanwhile: then it is known stale
            if cached is None:
                raise
            if rkey not in self._stale:
                log.warning(
                    "metadata store unavailable; serving the last known resolution",
                    extra={"model": name, "label": label, "version": cached[0].version},
                )
                self._stale.add(rkey)
            self._resolved[rkey] = (cached[0], self._clock() + self._settings.model_resolution_ttl_seconds)
            return cached[0]

    async def _refresh_behind(self, name: str, label: str | None) -> None:
        try:
            await self._refresh(name, label)
        except Exception:
            # Not an outage (e.g. the label is gone): forget the stale answer, so the next request queries
            # again and gets the error itself.
            self._resolved.pop((name, label), None)
            self._stale.discard((name, label))

    async def _query(self, name: str, label: str | None) -> ModelVersion:
        epoch = self._resolution_epoch.get(name, 0)
        if label is None:
            version = await self._metadata.get_served_version(name)
        else:
            version = await self._metadata.get_labelled_version(name, label)
        if self._resolution_epoch.get(name, 0) == epoch:
            expires = self._clock() + self._settings.model_resolution_ttl_seconds
            self._resolved[(name, label)] = (version, expires)
            if (name, label) in self._stale:
                self._stale.discard((name, label))
                log.info("metadata store reachable again; resolution refreshed", extra={"model": name, "label": label})
        return version

    def _check_backoff(self, key: VersionKey) -> None:
        """Raise the last load's error again if ``key`` failed to load and its backoff has not passed."""
        failure = self._load_failures.get(key)
        if failure is None:
            return
        wait = failure.retry_at - self._clock()
        if wait <= 0:
            return
        metrics.MODEL_LOAD_BACKOFF_REFUSALS.labels(key[0], str(key[1])).inc()
        raise _refusal(failure.error, wait)

    def _remember_failure(self, key: VersionKey, error: Exception, events_seen: int) -> float:
        """Start (or lengthen) ``key``'s load backoff; the seconds it lasts (0: none). ``events_seen``: the
        model's event count when the load started; a registry event since may have fixed the cause."""
        limit = self._settings.model_load_retry_max_seconds
        if limit <= 0 or self._resolution_epoch.get(key[0], 0) != events_seen or self._closed:
            return 0.0
        now = self._clock()
        # Forget backoffs long over (versions nobody asked for since), so the table holds only recent failures.
        for old in [k for k, f in self._load_failures.items() if f.retry_at + limit < now]:
            del self._load_failures[old]
        previous = self._load_failures.get(key)
        failures = previous.failures + 1 if previous is not None else 1
        seconds = min(limit, LOAD_RETRY_FIRST_SECONDS * 2.0 ** min(failures - 1, 30))
        # Kept without its traceback, whose frames may hold what the failed load had built.
        kept = (
            copy.copy(error)
            if isinstance(error, TensorTriggerError)
            else RuntimeError(f"the last load failed unexpectedly ({type(error).__name__})")
        )
        self._load_failures[key] = _LoadFailure(kept, failures, now + seconds)
        return seconds

    async def _load(self, key: VersionKey, known: ModelVersion | None) -> ServableHandle:
        name, number = key
        epoch = self._load_epoch.get(name, 0)
        events_seen = self._resolution_epoch.get(name, 0)
        version = known if known is not None else await self._metadata.get_version(name, number)
        self.loads_started += 1
        started = time.perf_counter()
        work = self._cache_dir / f"{name}-{number}-{uuid.uuid4().hex[:12]}"
        loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(work.mkdir, parents=True)
            artifact = work / f"artifact{ARTIFACT_SUFFIX[version.format]}"
            try:
                await self._blobs.get_file(version.blob_key, artifact)
            except NotFound:  # not the client's "no such model": the registry lost an artifact
                raise FailedPrecondition(
                    f"model {name!r} version {number} cannot be loaded: its artifact is missing"
                ) from None
            loader = self._loader_factory(version, artifact, work)
            servable = await loop.run_in_executor(self._load_executor, loader.load)
        except TensorTriggerError as e:
            metrics.MODEL_LOAD_FAILURES.labels(name, str(number)).inc()
            backoff = self._remember_failure(key, e, events_seen)
            log.warning(
                "model load failed",
                extra={"model": name, "version": number, "error": e.message, "retry_in_seconds": backoff},
            )
            raise
        except asyncio.CancelledError:
            raise
        except Exception as e:
            metrics.MODEL_LOAD_FAILURES.labels(name, str(number)).inc()
            backoff = self._remember_failure(key, e, events_seen)
            log.exception("model load failed", extra={"model": name, "version": number, "retry_in_seconds": backoff})
            raise
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        self._load_failures.pop(key, None)
        handle = self._make_handle(version, servable)
        metrics.MODEL_LOADS.labels(name, str(number)).inc()
        metrics.MODEL_LOAD_SECONDS.labels(name, str(number)).observe(time.perf_counter() - started)
        log.info(
            "model loaded",
            extra={
                "model": name,
                "version": number,
                "estimated_bytes": servable.estimated_bytes,
                "device": servable.device,
                "load_seconds": round(time.perf_counter() - started, 3),
            },
        )
        if self._load_epoch.get(name, 0) == epoch and not self._closed:
            self._insert(key, handle)
            self._settler.soon()
        else:
            handle.series.remove()  # never listed as loaded: it serves only the requests already waiting
        return handle  # a version deleted meanwhile still serves the requests that were waiting for it

    def _make_handle(self, version: ModelVersion, servable: Servable) -> ServableHandle:
        s = self._settings
        series = metrics.serving_series(
            version.model_name, version.version, s.batch_max_queue_rows, servable.estimated_bytes
        )
        executor = self._executor
        if s.inference_thread_per_model:
            # Dropped with the handle; its idle thread exits when the executor is collected.
            executor = ThreadPoolExecutor(1, thread_name_prefix=f"tt-inference-{version.model_name}")
        batcher = DynamicBatcher(
            servable.run,
            max_batch_rows=s.batch_max_rows,
            max_wait_s=s.batch_max_wait_seconds,
            max_queue_rows=s.batch_max_queue_rows,
            executor=executor,
            merge=servable.batchable,
            name=f"{version.model_name}:{version.version}",
            series=series,
        )
        decoder = InputDecoder(
            version.signature,
            s.max_request_rows,
            s.max_request_elements,
            image_scaling=version.image_scaling,
            max_image_pixels=s.max_image_pixels,
        )
        return ServableHandle(version, servable, batcher, decoder, series)

    def _insert(self, key: VersionKey, handle: ServableHandle) -> None:
        self._loaded[key] = handle
        metrics.MODELS_LOADED.inc()
        handle.series.loaded = True
        self._loaded_bytes += handle.servable.estimated_bytes
        s = self._settings
        # The newest entry is never evicted, even when it alone is over the byte budget.
        while len(self._loaded) > 1 and (
            len(self._loaded) > s.model_cache_max_versions or self._loaded_bytes > s.model_cache_max_bytes
        ):
            old_key, _ = next(iter(self._loaded.items()))
            self._unload(old_key, "least recently used")

    def _unload(self, key: VersionKey, reason: str) -> None:
        handle = self._loaded.pop(key, None)
        if handle is None:
            return
        self._loaded_bytes -= handle.servable.estimated_bytes
        metrics.MODELS_LOADED.dec()
        metrics.MODEL_UNLOADS.labels(key[0], str(key[1]), reason).inc()
        handle.series.remove()
        log.info("model unloaded", extra={"model": key[0], "version": key[1], "reason": reason})
        self._settler.soon()

    # --- registry events ----------------------------------------------------------------------------------
    async def handle_event(self, event: RegistryEvent) -> None:
        """Apply a registry change (an ``EventBus`` subscriber): drop the model's cached resolutions and load
        backoffs, unload deleted versions, and start loading a moved label's new target if that label is in
        use."""
        name = event.model_name
        # Resolutions requests use that the event may change: a moved label's, and the serving policy's (which
        # may follow that label, a new upload or a promotion).
        in_use = [
            rkey
            for rkey in ((name, None), (name, event.label if event.kind is EventKind.LABEL_MOVED else None))
            if rkey in self._resolved
        ]
        self._resolution_epoch[name] = self._resolution_epoch.get(name, 0) + 1
        for rkey in [k for k in self._resolved if k[0] == name]:
            del self._resolved[rkey]
            self._stale.discard(rkey)
        for rkey in [k for k in self._resolving if k[0] == name]:
            del self._resolving[rkey]  # the query in flight may be stale: later callers start a fresh one
        for vkey in [k for k in self._load_failures if k[0] == name]:
            del self._load_failures[vkey]  # the change may be the fix: the next call tries again

        if event.kind is EventKind.VERSION_DELETED and event.version is not None:
            self._load_epoch[name] = self._load_epoch.get(name, 0) + 1
            self._unload((name, event.version), "version deleted")
            metrics.forget_version(name, event.version)
        elif event.kind is EventKind.MODEL_DELETED:
            self._load_epoch[name] = self._load_epoch.get(name, 0) + 1
            for key in [k for k in self._loaded if k[0] == name]:
                self._unload(key, "model deleted")
            metrics.forget_model(name)
        elif (
            event.kind in (EventKind.LABEL_MOVED, EventKind.VERSION_CREATED, EventKind.POLICY_CHANGED)
            and in_use
            and not self._closed
        ):
            for rkey in dict.fromkeys(in_use):
                self._spawn(self._preload(ModelRef(name, label=rkey[1])))

    async def check_loaded(self) -> int:
        """The polling fallback for lost registry events: unload loaded versions the metadata store no longer
        has (label and newest resolutions already expire after ``model_resolution_ttl_seconds``). Returns how
        many were unloaded."""
        gone = 0
        for name, number in list(self._loaded):
            try:
                await self._metadata.get_version(name, number)
            except NotFound:
                await self.handle_event(RegistryEvent(EventKind.VERSION_DELETED, name, number))
                gone += 1
        return gone

    async def _preload(self, ref: ModelRef) -> None:
        try:
            await self.get(ref)
        except NotFound:
            pass  # deleted again meanwhile
        except Exception:
            log.warning("background load failed", exc_info=True, extra={"model": ref.name, "version": ref.version})

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _refusal(error: Exception, wait: float) -> Exception:
    """What a call refused during a load backoff raises: the failed load's error (same class, so the same
    status), its message followed by when the next attempt may start."""
    note = f"next load attempt in {math.ceil(wait)} s"
    if isinstance(error, TensorTriggerError):
        refused = copy.copy(error)
        refused.message = f"{error.message}; {note}"
        refused.args = (refused.message,)
        return refused
    # An unexpected error: the client sees INTERNAL with a generic message, as for the load itself.
    return RuntimeError(f"{error}; {note}")


async def _single_flight(flights: dict[K, asyncio.Task[V]], key: K, start: Callable[[], Awaitable[V]]) -> V:
    """Await the task in ``flights[key]``, starting it if there is none: concurrent callers share one.

    A caller that is cancelled does not cancel the shared task (others may wait on it). The entry goes when
    the task ends, so after a failure the next caller starts again.
    """
    task = flights.get(key)
    if task is None:
        task = asyncio.ensure_future(start())
        flights[key] = task

        def forget(done: asyncio.Task[V]) -> None:
            if flights.get(key) is done:
                del flights[key]

        task.add_done_callback(forget)
    return await asyncio.shield(task)
