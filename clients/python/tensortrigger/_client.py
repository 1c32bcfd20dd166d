"""The blocking client. Requests are built and answers parsed in ``_messages``; this module only calls."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, Unpack

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


def _file_chunks(path: Path, total: int, progress: m.Progress | None) -> Iterator[bytes]:
    """The file in ``CHUNK_BYTES`` pieces, reporting (bytes sent, total) after each."""
    sent = 0
    with path.open("rb") as f:
        while chunk := f.read(m.CHUNK_BYTES):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent, total)


class Client(BaseClient):
    """A blocking client: ``with Client("127.0.0.1:50051") as client: client.predict("iris", x)``.

    Thread-safe: one client (one channel) can serve many threads. ``AsyncClient`` has the same methods.
    """

    def _open(self, address: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]) -> Any:
        if credentials is None:
            self._channel = grpc.insecure_channel(address, options)
        else:
            self._channel = grpc.secure_channel(address, credentials, options)
        return self._channel

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- calling ----------------------------------------------------------------------------------------

    def _unary(
        self,
        method: Callable[..., T],
        request: Any,
        timeout: float | None,
        *,
        idempotent: bool,
        upload: bool = False,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> T:
        """One call (retried if ``idempotent``); an ``upload`` (a client stream) has no default deadline."""
        policy = self.retry if idempotent else None
        attempts = Attempts(policy, timeout if upload else self._timeout(timeout), self._clock)
        while True:
            try:
                return method(request, timeout=attempts.timeout(), metadata=self._metadata + metadata)
            except grpc.RpcError as error:
                delay = attempts.next_delay(error)
                if delay is None:
                    raise from_rpc_error(error) from None
                self._clock.sleep(delay)

    def _read_stream(
        self, method: Callable[..., Any], request: Callable[[], Any], timeout: float | None
    ) -> Iterator[Any]:
        """A server stream that is read again from ``request()`` (which may resume) after UNAVAILABLE."""
        attempts = Attempts(self.retry, timeout, self._clock)
        while True:
            call = method(request(), timeout=attempts.timeout(), metadata=self._metadata)
            try:
                yield from call
                return
            except grpc.RpcError as error:
                delay = attempts.next_delay(error)
                if delay is None:
                    raise from_rpc_error(error) from None
                self._clock.sleep(delay)
            finally:
                call.cancel()  # a no-op when done; stops the stream when the caller breaks off early

    def _paged(self, method: Callable[..., Any], request: Any, items: str) -> Iterator[Any]:
        while True:
            page = self._unary(method, request, None, idempotent=True)
            yield from getattr(page, items)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    # --- inference --------------------------------------------------------------------------------------

    def signature(self, model: m.Model, *, timeout: float | None = None) -> tensor_pb2.Signature:
        """The inputs and outputs of the version ``model`` selects (cached per selector)."""
        ref = m.model_ref(model)
        key = m.ref_key(ref)
        if key not in self._signatures:
            self._signatures[key] = self.get_version(ref, timeout=timeout).signature
        return self._signatures[key]

    def predict(
        self,
        model: m.Model,
        inputs: m.Arrays,
        outputs: Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        timing: bool = False,
    ) -> m.Prediction:
        """Run ``model`` on ``inputs`` (one array for a single-input model, else arrays by input name).

        Inputs are cast to the declared dtypes when numpy's "same_kind" rule allows (float64 -> float32). An image
        input also takes encoded PNG/JPEG images, ``read_images(paths)``, which the server decodes and resizes.
        Returns the outputs by name (only ``outputs`` when given), as read-only arrays over the received bytes.
        With ``timing``, the result's ``timing`` says where the server spent the call's time (``ServerTiming``).
        """
        ref = m.model_ref(model)
        request = m.predict_request(ref, self.signature(ref, timeout=timeout), inputs, outputs)
        extra = m.TIMING_METADATA if timing else ()
        try:
            response, call = self._unary(
                self._inference.Predict.with_call, request, timeout, idempotent=True, metadata=extra
            )
        except TensorTriggerError as error:
            self._forget_signature(ref, error)
            raise
        result = m.Prediction(m.decode_tensors(response.outputs))
        if timing:
            result.timing = m.ServerTiming.from_metadata(call.trailing_metadata())
        return result

    def classify(
        self,
        model: m.Model,
        inputs: m.Arrays,
        *,
        top_k: int = 5,
        output: str | None = None,
        timeout: float | None = None,
    ) -> list[list[m.ClassScore]]:
        """The ``top_k`` best classes of each row, best first, named by the version's class names (a version
        uploaded with ``class_names``). ``output``: the output holding the scores (default: the first).

        For an image classifier, ``inputs`` may be encoded images: ``client.classify("cnn", read_images(paths))``.
        """
        ref = m.model_ref(model)
        options = m.classify_options(top_k, output)
        request = m.predict_request(ref, self.signature(ref, timeout=timeout), inputs, None, options)
        try:
            response = self._unary(self._inference.Predict, request, timeout, idempotent=True)
        except TensorTriggerError as error:
            self._forget_signature(ref, error)
            raise
        return m.classifications(response)

    def predict_batch(
        self,
        model: m.Model,
        batches: Iterable[m.Arrays],
        outputs: Sequence[str] | None = None,
        *,
        max_in_flight: int = 4,
        timeout: float | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Run ``model`` over many batches on one stream, yielding each batch's outputs in order.

        At most ``max_in_flight`` batches are sent ahead of the answers, so a fast producer cannot fill memory,
        and the version is pinned for the whole stream.
        """
        ref = m.model_ref(model)
        signature = self.signature(ref, timeout=timeout)
        window = threading.Semaphore(max_in_flight)
        finished = threading.Event()
        failure: list[Exception] = []

        def requests() -> Iterator[inference_service_pb2.PredictBatchRequest]:
            # Runs on gRPC's sending thread. A bad batch ends the stream cleanly; the reader raises it once the
            # batches before it are answered.
            try:
                for sequence, batch in enumerate(batches):
                    while not window.acquire(timeout=0.1):
                        if finished.is_set():
                            return
                    yield m.batch_request(ref, signature, batch, outputs, sequence)
            except Exception as exc:
                failure.append(exc)

        call = self._inference.PredictBatch(requests(), timeout=timeout, metadata=self._metadata)
        try:
            for expected, response in enumerate(call):
                window.release()
                yield m.batch_outputs(response, expected)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            finished.set()
            call.cancel()
        if failure:
            raise failure[0]

    def train(
        self,
        model: m.Model,
        examples: Iterable[tuple[m.Arrays, m.Arrays]],
        *,
        on_progress: Callable[[inference_service_pb2.TrainProgress], None] | None = None,
        timeout: float | None = None,
        **options: Unpack[m.TrainOptions],
    ) -> m.TrainResult:
        """Train ``model`` online on ``(features, labels)`` batches; the server publishes checkpoints as versions.

        ``on_progress`` gets the metrics after every train step. If ``examples`` raises, or ``on_progress``
        does, the session is cancelled (the server applies ``on_abort``) and the error is raised here.
        """
        ref = m.model_ref(model)
        signature = self.signature(ref, timeout=timeout)
        config = m.train_config_request(ref, options)
        started = threading.Event()
        calls: list[Any] = []
        failure: list[Exception] = []

        def requests() -> Iterator[inference_service_pb2.TrainRequest]:
            yield config
            try:
                for features, labels in examples:
                    yield m.train_examples_request(signature, features, labels)
            except Exception as exc:
                # Cancel rather than end the stream: ending it would publish the end-of-stream checkpoint.
                failure.append(exc)
                started.wait()
                calls[0].cancel()

        call = self._inference.Train(requests(), timeout=timeout, metadata=self._metadata)
        calls.append(call)
        started.set()
        events = m.TrainEvents(on_progress)
        try:
            for response in call:
                events.apply(response)
        except grpc.RpcError as error:
            if failure:
                raise failure[0] from None
            raise from_rpc_error(error) from None
        finally:
            call.cancel()
        return events.result

    # --- registry ---------------------------------------------------------------------------------------

    def upload(
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
        """Upload a ``.keras``/``.h5`` file, a packed SavedModel, a SavedModel directory (packed for you), or a
        TF1 frozen graph (``.pb``).

        ``format``: "keras", "h5", "saved_model_tar_gz", "saved_model_zip", "frozen_graph", or None to let the
        server detect it. ``input_nodes`` / ``output_nodes``: a frozen graph's nodes (TFaaS's ``inputNode`` and
        ``outputNode``), which also declare the format. ``class_names``: a labels file (path, one name per line)
        or the names, class 0 first; ``classify`` names the best classes with them. ``image_scaling``: "raw"
        (0..255), "unit" (0..1) or "symmetric" (-1..1), how the server scales the pixels of images sent to an
        image input. ``serving_policy``: "latest", "label:<name>" or "version:<n>", the model's policy when this
        upload creates it. ``progress(sent, total)`` is called after each chunk (from gRPC's sending thread).
        """
        source = Path(path)
        packed = m.pack_saved_model(source) if source.is_dir() else None
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
            total = header.header.expected_size_bytes

            def requests() -> Iterator[registry_service_pb2.UploadModelVersionRequest]:
                yield header
                for chunk in _file_chunks(artifact, total, progress):
                    yield registry_service_pb2.UploadModelVersionRequest(chunk=chunk)

            return self._unary(
                self._registry.UploadModelVersion, requests(), timeout, idempotent=False, upload=True
            ).version
        finally:
            if packed is not None:
                packed.unlink(missing_ok=True)

    def list_models(self, *, page_size: int = 0) -> Iterator[model_pb2.Model]:
        """Every model, in name order (pages are fetched as the iterator advances)."""
        request = registry_service_pb2.ListModelsRequest(page_size=page_size)
        return self._paged(self._registry.ListModels, request, "models")

    def repository_problems(self, *, timeout: float | None = None) -> dict[str, str]:
        """Model repository entries the server refused at its last scan: path -> why."""
        request = registry_service_pb2.ListModelsRequest(page_size=1)
        response = self._unary(self._registry.ListModels, request, timeout, idempotent=True)
        return {p.path: p.reason for p in response.repository_problems}

    def get_model(self, name: str, *, timeout: float | None = None) -> model_pb2.Model:
        request = registry_service_pb2.GetModelRequest(name=name)
        return self._unary(self._registry.GetModel, request, timeout, idempotent=True).model

    def delete_model(self, name: str, *, timeout: float | None = None) -> int:
        """Delete a model with all its versions and labels; returns how many versions went."""
        request = registry_service_pb2.DeleteModelRequest(name=name)
        return self._unary(self._registry.DeleteModel, request, timeout, idempotent=False).deleted_versions

    def list_versions(self, name: str, *, page_size: int = 0) -> Iterator[model_pb2.ModelVersion]:
        """A model's versions, newest first."""
        request = registry_service_pb2.ListModelVersionsRequest(name=name, page_size=page_size)
        return self._paged(self._registry.ListModelVersions, request, "versions")

    def get_version(self, model: m.Model, *, timeout: float | None = None) -> model_pb2.ModelVersion:
        """The version a selector picks: ``"name"`` (newest), ``"name:3"`` or ``"name@stable"``."""
        request = registry_service_pb2.GetModelVersionRequest(model=m.model_ref(model))
        return self._unary(self._registry.GetModelVersion, request, timeout, idempotent=True).version

    def delete_version(
        self, name: str, version: int, *, force: bool = False, timeout: float | None = None
    ) -> list[str]:
        """Delete one version; ``force`` also removes labels pointing at it. Returns the removed labels."""
        request = registry_service_pb2.DeleteModelVersionRequest(name=name, version=version, force=force)
        return list(self._unary(self._registry.DeleteModelVersion, request, timeout, idempotent=False).removed_labels)

    def set_label(self, name: str, label: str, version: int, *, timeout: float | None = None) -> int:
        """Point ``label`` at ``version``; returns the version it pointed at before (0 if new)."""
        request = registry_service_pb2.SetLabelRequest(name=name, label=label, version=version)
        return self._unary(self._registry.SetLabel, request, timeout, idempotent=False).previous_version

    def delete_label(self, name: str, label: str, *, timeout: float | None = None) -> int:
        """Remove ``label``; returns the version it pointed at."""
        request = registry_service_pb2.DeleteLabelRequest(name=name, label=label)
        return self._unary(self._registry.DeleteLabel, request, timeout, idempotent=False).previous_version

    def set_serving_policy(
        self, name: str, policy: str, *, timeout: float | None = None
    ) -> registry_service_pb2.SetServingPolicyResponse:
        """Set what callers naming only the model get: "latest", "label:<name>" or "version:<n>". The response
        has the previous policy and the version now served (0: none)."""
        request = registry_service_pb2.SetServingPolicyRequest(name=name, policy=m.parse_serving_policy(policy))
        return self._unary(self._registry.SetServingPolicy, request, timeout, idempotent=True)

    def promote_version(self, name: str, version: int, *, timeout: float | None = None) -> model_pb2.ModelVersion:
        """Let the ``latest`` serving policy serve a training checkpoint."""
        request = registry_service_pb2.PromoteModelVersionRequest(name=name, version=version)
        return self._unary(self._registry.PromoteModelVersion, request, timeout, idempotent=True).version

    def set_description(self, name: str, description: str, *, timeout: float | None = None) -> model_pb2.Model:
        """Replace the model's description."""
        request = registry_service_pb2.SetModelDescriptionRequest(name=name, description=description)
        return self._unary(self._registry.SetModelDescription, request, timeout, idempotent=True).model

    def set_retention(
        self,
        name: str,
        *,
        keep_training_checkpoints: int = 0,
        keep_versions: int = 0,
        timeout: float | None = None,
    ) -> registry_service_pb2.SetRetentionPolicyResponse:
        """Set how many versions are kept (0 = default: 5 checkpoints, every version; -1 checkpoints = all) and
        prune now; the response lists the pruned versions."""
        request = registry_service_pb2.SetRetentionPolicyRequest(
            name=name,
            retention=model_pb2.RetentionPolicy(
                keep_training_checkpoints=keep_training_checkpoints, keep_versions=keep_versions
            ),
        )
        return self._unary(self._registry.SetRetentionPolicy, request, timeout, idempotent=True)

    def download(
        self,
        model: m.Model,
        dest: str | os.PathLike[str],
        *,
        progress: m.Progress | None = None,
        timeout: float | None = None,
    ) -> model_pb2.ModelVersion:
        """Save the artifact of the version ``model`` selects to ``dest``; returns that version's record.

        The file appears complete or not at all (it is written as ``dest.part`` and renamed).
        """
        request = registry_service_pb2.DownloadModelVersionRequest(model=m.model_ref(model))
        target = Path(dest)
        partial = target.with_name(target.name + ".part")
        state = m.DownloadState()
        try:
            with partial.open("wb") as out:
                for message in self._read_stream(self._registry.DownloadModelVersion, lambda: request, timeout):
                    if message.WhichOneof("payload") == "version":
                        out.seek(0)
                        out.truncate()  # a retried download starts over
                    out.write(state.chunk(message))
                    if progress is not None and state.version is not None:
                        progress(state.received, state.version.size_bytes)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if state.version is None:
            raise RuntimeError("the server sent no version record")
        partial.replace(target)
        return state.version

    # --- jobs -------------------------------------------------------------------------------------------

    def submit_job(
        self,
        model: m.Model,
        path: str | os.PathLike[str],
        *,
        progress: m.Progress | None = None,
        timeout: float | None = None,
        **options: Unpack[m.JobOptions],
    ) -> jobs_service_pb2.Job:
        """Stream a CSV file to the server as a batch job over ``model`` (pinned to one version now). ``path``
        may instead be an ``s3://bucket/key`` URI that the server reads itself (under its allowed prefixes)."""
        if m.is_object_uri(path):
            request = m.job_spec_request(model, options, str(path), input_uri=str(path))
            return self._unary(self._jobs.CreateJob, iter([request]), timeout, idempotent=False).job
        spec = m.job_spec_request(model, options, str(path))
        source = Path(path)
        total = source.stat().st_size

        def requests() -> Iterator[jobs_service_pb2.CreateJobRequest]:
            yield spec
            for chunk in _file_chunks(source, total, progress):
                yield jobs_service_pb2.CreateJobRequest(chunk=chunk)

        return self._unary(self._jobs.CreateJob, requests(), timeout, idempotent=False, upload=True).job

    def get_job(self, job_id: str, *, timeout: float | None = None) -> jobs_service_pb2.Job:
        request = jobs_service_pb2.GetJobRequest(id=job_id)
        return self._unary(self._jobs.GetJob, request, timeout, idempotent=True).job

    def list_jobs(
        self, *, model: str | None = None, state: str | int | None = None, page_size: int = 0
    ) -> Iterator[jobs_service_pb2.Job]:
        """Jobs, newest first; ``state`` is a name such as "running" or "succeeded"."""
        request = jobs_service_pb2.ListJobsRequest(
            page_size=page_size, model_name=model or "", state=m.job_state(state)
        )
        return self._paged(self._jobs.ListJobs, request, "jobs")

    def watch_job(self, job_id: str, *, timeout: float | None = None) -> Iterator[jobs_service_pb2.Job]:
        """The job's state each time it changes, ending after a terminal state (SUCCEEDED, FAILED, CANCELLED)."""
        request = jobs_service_pb2.WatchJobRequest(id=job_id)
        for message in self._read_stream(self._jobs.WatchJob, lambda: request, timeout):
            yield message.job

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> jobs_service_pb2.Job:
        request = jobs_service_pb2.CancelJobRequest(id=job_id)
        return self._unary(self._jobs.CancelJob, request, timeout, idempotent=False).job

    def job_results(self, job_id: str, *, offset: int = 0, timeout: float | None = None) -> Iterator[bytes]:
        """A succeeded job's result file in chunks, from byte ``offset``; a retried stream resumes where it was."""
        for chunk, _total in self._results(job_id, offset, timeout):
            yield chunk

    def _results(self, job_id: str, offset: int, timeout: float | None) -> Iterator[tuple[bytes, int]]:
        cursor = m.ResultsCursor(offset)
        for message in self._read_stream(self._jobs.GetJobResults, cursor.request(job_id), timeout):
            yield cursor.chunk(message), cursor.total

    def download_job_results(
        self,
        job_id: str,
        dest: str | os.PathLike[str],
        *,
        progress: m.Progress | None = None,
        timeout: float | None = None,
    ) -> Path:
        """Save a succeeded job's results to ``dest``. An interrupted download leaves ``dest.part``, which the
        next call with the same ``dest`` resumes from its size."""
        target = Path(dest)
        partial = target.with_name(target.name + ".part")
        offset = partial.stat().st_size if partial.exists() else 0
        with partial.open("ab") as out:
            done = offset
            for chunk, total in self._results(job_id, offset, timeout):
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        partial.replace(target)
        return target

    # --- health -----------------------------------------------------------------------------------------

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The server's (or one service's) health: "SERVING", "NOT_SERVING", ... per grpc.health.v1."""
        return m.serving_status(self._unary(self._health, m.HEALTH_REQUEST(value=service), timeout, idempotent=True))
