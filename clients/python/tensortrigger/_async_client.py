"""The asyncio client: ``Client``'s methods as coroutines and async iterators, over a ``grpc.aio`` channel."""

# ASYNC109 wants asyncio.timeout() instead of timeout parameters; ours are gRPC deadlines, which travel to the
# server (it stops work the caller gave up on) and match Client's signatures.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, Unpack

import grpc
import numpy as np

from tensortrigger import _messages as m
from tensortrigger._base import BaseClient
from tensortrigger._errors import TensorTriggerError, from_rpc_error
from tensortrigger._retry import Attempts
from tensortrigger.v1 import (
    inference_service_pb2,
    jobs_service_pb2,
    model_pb2,
    registry_service_pb2,
    tensor_pb2,
)

T = TypeVar("T")
ADMISSION_WAIT = 5.0  # seconds a client stream waits for the server to admit it (see AsyncClient._send_stream)
CORE_WRITE_FAILED = "Internal error from Core"  # grpc.aio's status for a write into a call that has ended


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(size)


def _is_write_failure(error: grpc.RpcError) -> bool:
    return error.code() == grpc.StatusCode.INTERNAL and error.details() == CORE_WRITE_FAILED


def _note_status(call: Any, into: list[grpc.aio.AioRpcError]) -> None:
    """A done callback: note the status the call has now. grpc.aio runs it each time the status is set, and
    then its accessors return without waiting, so their coroutines are stepped once, right here."""

    def now(coroutine: Any) -> Any:
        try:
            coroutine.send(None)
        except StopIteration as done:
            return done.value
        coroutine.close()
        raise RuntimeError("the call's status is not set")

    with contextlib.suppress(Exception):
        into.append(
            grpc.aio.AioRpcError(
                now(call.code()),
                now(call.initial_metadata()),
                now(call.trailing_metadata()),
                now(call.details()),
                now(call.debug_error_string()),
            )
        )


async def _sent(operation: Awaitable[None]) -> bool:
    """Await a client stream's ``write``/``done_writing``; False when the call ended under it (its status is what
    the caller needs). grpc.aio says so with an RpcError, an InvalidStateError, or, when the deadline passes
    during ``done_writing``, an error of its private Cython layer: any exception here means the same."""
    try:
        await operation
    except Exception:
        return False
    return True


async def _file_chunks(path: Path, message: Callable[[bytes], Any], progress: m.Progress | None) -> AsyncIterator[Any]:
    """The file as request messages, read off the event loop so a big upload does not stall other calls.

    The file is opened for each chunk rather than held open across ``yield``: grpc.aio drops a request iterator
    it stops reading (the call failed) without closing it, which would leak the handle until garbage collection.
    """
    total = (await asyncio.to_thread(path.stat)).st_size
    sent = 0
    while chunk := await asyncio.to_thread(_read_at, path, sent, m.CHUNK_BYTES):
        yield message(chunk)
        sent += len(chunk)
        if progress is not None:
            progress(sent, total)


class AsyncClient(BaseClient):
    """An asyncio client: ``async with AsyncClient("127.0.0.1:50051") as client: await client.predict(...)``.

    Same methods as ``Client``; iterating ones return async iterators, and iterables they take may be async.
    """

    def _open(self, address: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> Any:
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(address, options)
        else:
            self._channel = grpc.aio.secure_channel(address, credentials, options)
        return self._channel

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- calling ----------------------------------------------------------------------------------------

    async def _unary(
        self,
        method: Callable[..., Awaitable[T]],
        request: Any,
        timeout: float | None,
        *,
        idempotent: bool,
        upload: bool = False,
        metadata: tuple[tuple[str, str], ...] = (),
        trailers: list[Any] | None = None,
    ) -> T:
        """One call (retried if ``idempotent``); an ``upload`` (a client stream) has no default deadline.
        ``trailers`` gets the successful call's trailing metadata appended."""
        policy = self.retry if idempotent else None
        attempts = Attempts(policy, timeout if upload else self._timeout(timeout), self._clock)
        while True:
            try:
                call: Any = method(request, timeout=attempts.timeout(), metadata=self._metadata + metadata)
                response = await call
                if trailers is not None:
                    trailers.extend(await call.trailing_metadata() or ())
                return response
            except grpc.RpcError as error:
                delay = attempts.next_delay(error)
                if delay is None:
                    raise from_rpc_error(error) from None
                await self._clock.sleep_async(delay)

    async def _send_stream(
        self, method: Callable[..., Any], requests: AsyncIterator[Any], timeout: float | None
    ) -> Any:
        """A client stream (upload, job input), not retried. Nothing is written until the server has admitted
        the call (its initial metadata carries the request id): grpc.aio reports a write into a call the server
        has already refused (no token, no permission, overloaded) as INTERNAL "Internal error from Core", and
        the server's real status is lost. Servers older than this client are waited for ``ADMISSION_WAIT`` s."""
        call = method(timeout=timeout, metadata=self._metadata)
        ended: list[grpc.aio.AioRpcError] = []
        call.add_done_callback(lambda done: _note_status(done, ended))
        try:
            try:
                sent = await asyncio.wait_for(asyncio.shield(call.initial_metadata()), ADMISSION_WAIT)
                admitted = any(key == "x-request-id" for key, _ in sent or ())
            except TimeoutError:
                admitted = True  # an older server: it answers only at the end
            if admitted:
                async for request in requests:
                    if not await _sent(call.write(request)):
                        break
                else:
                    await _sent(call.done_writing())
            return await call
        except grpc.RpcError as error:
            if _is_write_failure(error):
                # The status arrived while a write was under way (the server refused the upload after reading its
                # header, the deadline passed): grpc.aio then puts its INTERNAL in the status's place.
                error = next((e for e in ended if not _is_write_failure(e)), error)
            raise from_rpc_error(error) from None
        finally:
            call.cancel()  # a no-op when done; stops the call when the caller is cancelled

    async def _read_stream(
        self, method: Callable[..., Any], request: Callable[[], Any], timeout: float | None
    ) -> AsyncIterator[Any]:
        """A server stream that is read again from ``request()`` (which may resume) after UNAVAILABLE."""
        attempts = Attempts(self.retry, timeout, self._clock)
        while True:
            call = method(request(), timeout=attempts.timeout(), metadata=self._metadata)
            try:
                async for message in call:
                    yield message
                return
            except grpc.RpcError as error:
                delay = attempts.next_delay(error)
                if delay is None:
                    raise from_rpc_error(error) from None
                await self._clock.sleep_async(delay)
            finally:
                call.cancel()  # a no-op when done; stops the stream when the caller breaks off early

    async def _paged(self, method: Callable[..., Any], request: Any, items: str) -> AsyncIterator[Any]:
        while True:
            page = await self._unary(method, request, None, idempotent=True)
            for item in getattr(page, items):
                yield item
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    # --- inference --------------------------------------------------------------------------------------

    async def signature(self, model: m.Model, *, timeout: float | None = None) -> tensor_pb2.Signature:
        """The inputs and outputs of the version ``model`` selects (cached per selector)."""
        ref = m.model_ref(model)
        key = m.ref_key(ref)
        if key not in self._signatures:
            self._signatures[key] = (await self.get_version(ref, timeout=timeout)).signature
        return self._signatures[key]

    async def predict(
        self,
        model: m.Model,
        inputs: m.Arrays,
        outputs: Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        timing: bool = False,
    ) -> m.Prediction:
        """See ``Client.predict``."""
        ref = m.model_ref(model)
        request = m.predict_request(ref, await self.signature(ref, timeout=timeout), inputs, outputs)
        trailers: list[Any] | None = [] if timing else None
        extra = m.TIMING_METADATA if timing else ()
        try:
            response = await self._unary(
                self._inference.Predict, request, timeout, idempotent=True, metadata=extra, trailers=trailers
            )
        except TensorTriggerError as error:
            self._forget_signature(ref, error)
            raise
        result = m.Prediction(m.decode_tensors(response.outputs))
        if trailers is not None:
            result.timing = m.ServerTiming.from_metadata(trailers)
        return result

    async def classify(
        self,
        model: m.Model,
        inputs: m.Arrays,
        *,
        top_k: int = 5,
        output: str | None = None,
        timeout: float | None = None,
    ) -> list[list[m.ClassScore]]:
        """See ``Client.classify``."""
        ref = m.model_ref(model)
        options = m.classify_options(top_k, output)
        request = m.predict_request(ref, await self.signature(ref, timeout=timeout), inputs, None, options)
        try:
            response = await self._unary(self._inference.Predict, request, timeout, idempotent=True)
        except TensorTriggerError as error:
            self._forget_signature(ref, error)
            raise
        return m.classifications(response)

    async def predict_batch(
        self,
        model: m.Model,
        batches: Iterable[m.Arrays] | AsyncIterable[m.Arrays],
        outputs: Sequence[str] | None = None,
        *,
        max_in_flight: int = 4,
        timeout: float | None = None,
    ) -> AsyncIterator[dict[str, np.ndarray]]:
        """See ``Client.predict_batch``."""
        ref = m.model_ref(model)
        signature = await self.signature(ref, timeout=timeout)
        call = self._inference.PredictBatch(timeout=timeout, metadata=self._metadata)

        async def answer(expected: int) -> dict[str, np.ndarray]:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise RuntimeError("PredictBatch ended before answering every batch")
            return m.batch_outputs(response, expected)

        sent = received = 0
        failure: Exception | None = None
        source = _aiter(batches)
        try:
            while True:
                # A bad batch (or a failing producer) ends the stream cleanly, like the sync client: the batches
                # before it are answered, then its error is raised.
                try:
                    request = m.batch_request(ref, signature, await anext(source), outputs, sent)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    failure = exc
                    break
                await call.write(request)
                sent += 1
                # Write until max_in_flight batches await their answers, then read one before writing the next.
                if sent - received >= max_in_flight:
                    yield await answer(received)
                    received += 1
            await call.done_writing()
            while received < sent:
                yield await answer(received)
                received += 1
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()
        if failure is not None:
            raise failure

    async def train(
        self,
        model: m.Model,
        examples: Iterable[tuple[m.Arrays, m.Arrays]] | AsyncIterable[tuple[m.Arrays, m.Arrays]],
        *,
        on_progress: Callable[[inference_service_pb2.TrainProgress], None] | None = None,
        timeout: float | None = None,
        **options: Unpack[m.TrainOptions],
    ) -> m.TrainResult:
        """See ``Client.train``."""
        ref = m.model_ref(model)
        signature = await self.signature(ref, timeout=timeout)
        config = m.train_config_request(ref, options)
        failure: list[Exception] = []

        async def requests() -> AsyncIterator[inference_service_pb2.TrainRequest]:
            yield config
            try:
                async for features, labels in _aiter(examples):
                    yield m.train_examples_request(signature, features, labels)
            except Exception as exc:
                # Re-raised: grpc.aio then cancels the call rather than ending the stream, which would publish
                # the end-of-stream checkpoint.
                failure.append(exc)
                raise

        call = self._inference.Train(requests(), timeout=timeout, metadata=self._metadata)
        events = m.TrainEvents(on_progress)
        try:
            async for response in call:
                events.apply(response)
        except (grpc.RpcError, asyncio.CancelledError) as error:
            # Our own cancel (after a failing `examples`) surfaces as CancelledError: raise the real cause.
            if failure:
                raise failure[0] from None
            if isinstance(error, grpc.RpcError):
                raise from_rpc_error(error) from None
            raise
        finally:
            call.cancel()
        return events.result

    # --- registry ---------------------------------------------------------------------------------------

    async def upload(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        description: str = "",
        feature_names: Sequence[str] | None = None,
        metadata: dict[str, str] | None = None,
        labels: Sequence[str] | None = None,
        input_nodes: Sequence[str] | None = None,
        output_nodes: Sequence[str] | None = None,
        class_names: Sequence[str] | str | os.PathLike[str] | None = None,
        image_scaling: str | None = None,
        serving_policy: str | None = None,
        progress: m.Progress | None = None,
        timeout: float | None = None,
    ) -> model_pb2.ModelVersion:
        """See ``Client.upload``."""
        source = Path(path)
        packed = await asyncio.to_thread(m.pack_saved_model, source) if await asyncio.to_thread(source.is_dir) else None
        artifact = packed or source
        try:
            header = m.upload_header(
                name,
                artifact,
                packed=packed is not None,
                format=format,
                description=description,
                feature_names=feature_names,
                metadata=metadata,
                labels=labels,
                input_nodes=input_nodes,
                output_nodes=output_nodes,
                class_names=class_names,
                image_scaling=image_scaling,
                serving_policy=serving_policy,
            )

            async def requests() -> AsyncIterator[registry_service_pb2.UploadModelVersionRequest]:
                yield header
                chunks = _file_chunks(
                    artifact, lambda c: registry_service_pb2.UploadModelVersionRequest(chunk=c), progress
                )
                async for request in chunks:
                    yield request

            response = await self._send_stream(self._registry.UploadModelVersion, requests(), timeout)
            return response.version
        finally:
            if packed is not None:
                packed.unlink(missing_ok=True)

    def list_models(self, *, page_size: int = 0) -> AsyncIterator[model_pb2.Model]:
        """See ``Client.list_models``."""
        request = registry_service_pb2.ListModelsRequest(page_size=page_size)
        return self._paged(self._registry.ListModels, request, "models")

    async def repository_problems(self, *, timeout: float | None = None) -> dict[str, str]:
        """See ``Client.repository_problems``."""
        request = registry_service_pb2.ListModelsRequest(page_size=1)
        response = await self._unary(self._registry.ListModels, request, timeout, idempotent=True)
        return {p.path: p.reason for p in response.repository_problems}

    async def get_model(self, name: str, *, timeout: float | None = None) -> model_pb2.Model:
        request = registry_service_pb2.GetModelRequest(name=name)
        return (await self._unary(self._registry.GetModel, request, timeout, idempotent=True)).model

    async def delete_model(self, name: str, *, timeout: float | None = None) -> int:
        """See ``Client.delete_model``."""
        request = registry_service_pb2.DeleteModelRequest(name=name)
        return (await self._unary(self._registry.DeleteModel, request, timeout, idempotent=False)).deleted_versions

    def list_versions(self, name: str, *, page_size: int = 0) -> AsyncIterator[model_pb2.ModelVersion]:
        """See ``Client.list_versions``."""
        request = registry_service_pb2.ListModelVersionsRequest(name=name, page_size=page_size)
        return self._paged(self._registry.ListModelVersions, request, "versions")

    async def get_version(self, model: m.Model, *, timeout: float | None = None) -> model_pb2.ModelVersion:
        """See ``Client.get_version``."""
        request = registry_service_pb2.GetModelVersionRequest(model=m.model_ref(model))
        return (await self._unary(self._registry.GetModelVersion, request, timeout, idempotent=True)).version

    async def delete_version(
        self, name: str, version: int, *, force: bool = False, timeout: float | None = None
    ) -> list[str]:
        """See ``Client.delete_version``."""
        request = registry_service_pb2.DeleteModelVersionRequest(name=name, version=version, force=force)
        response = await self._unary(self._registry.DeleteModelVersion, request, timeout, idempotent=False)
        return list(response.removed_labels)

    async def set_label(self, name: str, label: str, version: int, *, timeout: float | None = None) -> int:
        """See ``Client.set_label``."""
        request = registry_service_pb2.SetLabelRequest(name=name, label=label, version=version)
        return (await self._unary(self._registry.SetLabel, request, timeout, idempotent=False)).previous_version

    async def delete_label(self, name: str, label: str, *, timeout: float | None = None) -> int:
        """See ``Client.delete_label``."""
        request = registry_service_pb2.DeleteLabelRequest(name=name, label=label)
        return (await self._unary(self._registry.DeleteLabel, request, timeout, idempotent=False)).previous_version

    async def set_serving_policy(
        self, name: str, policy: str, *, timeout: float | None = None
    ) -> registry_service_pb2.SetServingPolicyResponse:
        """See ``Client.set_serving_policy``."""
        request = registry_service_pb2.SetServingPolicyRequest(name=name, policy=m.parse_serving_policy(policy))
        return await self._unary(self._registry.SetServingPolicy, request, timeout, idempotent=True)

    async def promote_version(self, name: str, version: int, *, timeout: float | None = None) -> model_pb2.ModelVersion:
        """See ``Client.promote_version``."""
        request = registry_service_pb2.PromoteModelVersionRequest(name=name, version=version)
        return (await self._unary(self._registry.PromoteModelVersion, request, timeout, idempotent=True)).version

    async def set_description(self, name: str, description: str, *, timeout: float | None = None) -> model_pb2.Model:
        """See ``Client.set_description``."""
        request = registry_service_pb2.SetModelDescriptionRequest(name=name, description=description)
        return (await self._unary(self._registry.SetModelDescription, request, timeout, idempotent=True)).model

    async def set_retention(
        self,
        name: str,
        *,
        keep_training_checkpoints: int = 0,
        keep_versions: int = 0,
        timeout: float | None = None,
    ) -> registry_service_pb2.SetRetentionPolicyResponse:
        """See ``Client.set_retention``."""
        request = registry_service_pb2.SetRetentionPolicyRequest(
            name=name,
            retention=model_pb2.RetentionPolicy(
                keep_training_checkpoints=keep_training_checkpoints, keep_versions=keep_versions
            ),
        )
        return await self._unary(self._registry.SetRetentionPolicy, request, timeout, idempotent=True)

    async def download(
        self,
        model: m.Model,
        dest: str | os.PathLike[str],
        *,
        progress: m.Progress | None = None,
        timeout: float | None = None,
    ) -> model_pb2.ModelVersion:
        """See ``Client.download``."""
        request = registry_service_pb2.DownloadModelVersionRequest(model=m.model_ref(model))
        target = Path(dest)
        partial = target.with_name(target.name + ".part")
        state = m.DownloadState()
        out: BinaryIO = await asyncio.to_thread(partial.open, "wb")
        try:
            async for message in self._read_stream(self._registry.DownloadModelVersion, lambda: request, timeout):
                if message.WhichOneof("payload") == "version":
                    out.seek(0)
                    out.truncate()  # a retried download starts over
                await asyncio.to_thread(out.write, state.chunk(message))
                if progress is not None and state.version is not None:
                    progress(state.received, state.version.size_bytes)
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
        out.close()
        if state.version is None:
            raise RuntimeError("the server sent no version record")
        partial.replace(target)
        return state.version

    # --- jobs -------------------------------------------------------------------------------------------

    async def submit_job(
        self,
        model: m.Model,
        path: str | os.PathLike[str],
        *,
        progress: m.Progress | None = None,
        timeout: float | None = None,
        **options: Unpack[m.JobOptions],
    ) -> jobs_service_pb2.Job:
        """See ``Client.submit_job``."""
        if m.is_object_uri(path):
            only = m.job_spec_request(model, options, str(path), input_uri=str(path))

            async def one() -> AsyncIterator[jobs_service_pb2.CreateJobRequest]:
                yield only

            return (await self._unary(self._jobs.CreateJob, one(), timeout, idempotent=False)).job
        spec = m.job_spec_request(model, options, str(path))

        async def requests() -> AsyncIterator[jobs_service_pb2.CreateJobRequest]:
            yield spec
            async for request in _file_chunks(
                Path(path), lambda c: jobs_service_pb2.CreateJobRequest(chunk=c), progress
            ):
                yield request

        return (await self._send_stream(self._jobs.CreateJob, requests(), timeout)).job

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> jobs_service_pb2.Job:
        request = jobs_service_pb2.GetJobRequest(id=job_id)
        return (await self._unary(self._jobs.GetJob, request, timeout, idempotent=True)).job

    def list_jobs(
        self, *, model: str | None = None, state: str | int | None = None, page_size: int = 0
    ) -> AsyncIterator[jobs_service_pb2.Job]:
        """See ``Client.list_jobs``."""
        request = jobs_service_pb2.ListJobsRequest(
            page_size=page_size, model_name=model or "", state=m.job_state(state)
        )
        return self._paged(self._jobs.ListJobs, request, "jobs")

    async def watch_job(self, job_id: str, *, timeout: float | None = None) -> AsyncIterator[jobs_service_pb2.Job]:
        """See ``Client.watch_job``."""
        request = jobs_service_pb2.WatchJobRequest(id=job_id)
        async for message in self._read_stream(self._jobs.WatchJob, lambda: request, timeout):
            yield message.job

    async def cancel_job(self, job_id: str, *, timeout: float | None = None) -> jobs_service_pb2.Job:
        request = jobs_service_pb2.CancelJobRequest(id=job_id)
        return (await self._unary(self._jobs.CancelJob, request, timeout, idempotent=False)).job

    async def job_results(self, job_id: str, *, offset: int = 0, timeout: float | None = None) -> AsyncIterator[bytes]:
        """See ``Client.job_results``."""
        async for chunk, _total in self._results(job_id, offset, timeout):
            yield chunk

    async def _results(self, job_id: str, offset: int, timeout: float | None) -> AsyncIterator[tuple[bytes, int]]:
        cursor = m.ResultsCursor(offset)
        async for message in self._read_stream(self._jobs.GetJobResults, cursor.request(job_id), timeout):
            yield cursor.chunk(message), cursor.total

    async def download_job_results(
        self,
        job_id: str,
        dest: str | os.PathLike[str],
        *,
        progress: m.Progress | None = None,
        timeout: float | None = None,
    ) -> Path:
        """See ``Client.download_job_results``."""
        target = Path(dest)
        partial = target.with_name(target.name + ".part")
        offset = partial.stat().st_size if partial.exists() else 0
        out: BinaryIO = await asyncio.to_thread(partial.open, "ab")
        try:
            done = offset
            async for chunk, total in self._results(job_id, offset, timeout):
                await asyncio.to_thread(out.write, chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        finally:
            out.close()
        partial.replace(target)
        return target

    # --- health -----------------------------------------------------------------------------------------

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """See ``Client.health``."""
        response = await self._unary(self._health, m.HEALTH_REQUEST(value=service), timeout, idempotent=True)
        return m.serving_status(response)
