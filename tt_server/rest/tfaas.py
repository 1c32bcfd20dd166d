"""TFaaS's HTTP routes, so its curl scripts run unchanged against Tensor Trigger (docs/tfaas.md shows each).

* ``GET /models``: TFaaS's model list (name, model, labels, options, inputNode, outputNode, description,
  timestamp), one entry per model, describing its newest version.
* ``POST /upload``: the multipart form (``name``, ``params`` = params.json, ``model`` = the .pb, ``labels``) makes
  a new version of a frozen graph, fed at ``inputNode`` and read at ``outputNode``; any other body is a bundle:
  a tarball (gzip, or sent with ``Content-Encoding: gzip``) of one directory named after the model, holding a
  SavedModel (or a params.json naming a .pb and its nodes) and optionally params.json and labels.txt.
* ``DELETE /delete?model=NAME`` (or a ``model`` form field): deletes the model and every version.
* ``POST /json`` (``{"keys", "values", "model"}``): one row; answers the first output's values for it.
* ``POST /image`` (form ``image``, ``model``): the five best classes, ``{"filename", "labels": [{label,
  probability}]}``.
* ``POST /proto``: ``tfaaspb.Row`` in, ``tfaaspb.Predictions`` out (TFaaS's protobuf messages).
* ``/predict/json``, ``/predict/image``, ``/predict/proto``: the same.

Uploads are spooled to the scratch folder as they arrive (never held in memory) and then go through the
registry like any upload: the same checks, and each upload is a new immutable version.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
import tarfile
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tt_server.api.convert import class_names
from tt_server.config import Settings
from tt_server.errors import InvalidArgument, ResourceExhausted, request_fields
from tt_server.registry.header import UploadSpec
from tt_server.registry.service import Registry
from tt_server.rest.core import Route, body_chunks, json_response, read_json
from tt_server.rest.tensors import wire_from_json
from tt_server.runtime.observe import RequestObservation
from tt_server.runtime.service import InferenceService
from tt_server.storage import scratch
from tt_server.types import ClassifyRequest, DType, FrozenGraphNodes, ModelFormat, ModelRef, WireTensor

_REGISTRY = "/tensortrigger.v1.ModelRegistryService/"
_PREDICT = "/tensortrigger.v1.InferenceService/Predict"
_GZIP_MAGIC = b"\x1f\x8b"
MAX_SMALL_PART = 1 << 20  # params.json, labels.txt and form fields: text files, never large
TOP_CLASSES = 5  # TFaaS's /image answers its five best labels
MAX_FORM_PARTS = 16  # TFaaS's forms have 2-5 fields; more is abuse, refused before it costs anything
# Where the TFaaS view of a version (file names, options) is kept: version metadata, shown by GetModelVersion.
META_MODEL, META_LABELS, META_OPTIONS = "tfaas.model", "tfaas.labels", "tfaas.options"


ROW_SCHEMA = {
    "type": "object",
    "required": ["values", "model"],
    "properties": {
        "keys": {"type": "array", "items": {"type": "string"}},
        "values": {"type": "array", "items": {"type": "number"}},
        "model": {"type": "string"},
    },
}


def _tfaas_messages() -> tuple[type, type]:
    """TFaaS's ``tfaaspb.Row`` and ``tfaaspb.Predictions`` (its tfaas.proto), built from a descriptor here."""
    f = descriptor_pb2.FileDescriptorProto(name="tensortrigger/tfaaspb.proto", package="tfaaspb", syntax="proto3")
    fd = descriptor_pb2.FieldDescriptorProto
    row = f.message_type.add(name="Row")
    row.field.add(name="key", number=1, type=fd.TYPE_STRING, label=fd.LABEL_REPEATED)
    row.field.add(name="value", number=2, type=fd.TYPE_FLOAT, label=fd.LABEL_REPEATED)
    row.field.add(name="model", number=3, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    cls = f.message_type.add(name="Class")
    cls.field.add(name="label", number=1, type=fd.TYPE_STRING, label=fd.LABEL_OPTIONAL)
    cls.field.add(name="probability", number=2, type=fd.TYPE_FLOAT, label=fd.LABEL_OPTIONAL)
    predictions = f.message_type.add(name="Predictions")
    predictions.field.add(
        name="prediction", number=1, type=fd.TYPE_MESSAGE, label=fd.LABEL_REPEATED, type_name=".tfaaspb.Class"
    )
    pool = descriptor_pool.DescriptorPool()  # a private pool: no clash with anything else named tfaaspb
    pool.Add(f)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("tfaaspb.Row")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("tfaaspb.Predictions")),
    )


RowMessage, PredictionsMessage = _tfaas_messages()


@dataclass
class _Bundle:
    """What a bundle's directory holds, read in a worker thread."""

    name: str
    params: dict[str, Any]
    labels_file: str  # "" when the bundle has none
    labels_text: str
    frozen_graph: Path | None  # set when the directory holds a .pb named by params.json, not a SavedModel


def _params(raw: bytes, field: str) -> dict[str, Any]:
    try:
        params = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InvalidArgument.field(field, f"not valid JSON: {e}") from None
    if not isinstance(params, dict):
        raise InvalidArgument.field(field, "a JSON object is required")
    return params


def _node(params: dict[str, Any], camel: str, snake: str) -> str | None:
    value = params.get(camel) or params.get(snake)  # TFaaS has used both spellings over the years
    return value if isinstance(value, str) and value else None


def _text(raw: bytes, field: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidArgument.field(field, "must be UTF-8 text") from None


def _spec(name: str, params: dict[str, Any], labels_text: str, model_file: str, labels_file: str) -> UploadSpec:
    inputs, outputs = _node(params, "inputNode", "input_node"), _node(params, "outputNode", "output_node")
    options = params.get("options")
    description = params.get("description")
    return UploadSpec(
        model_name=name,
        description=description if isinstance(description, str) else "",
        metadata={
            META_MODEL: model_file,
            META_LABELS: labels_file,
            META_OPTIONS: json.dumps(options if isinstance(options, list) else []),
        },
        frozen_graph=FrozenGraphNodes((inputs,), (outputs,)) if inputs and outputs else None,
        class_names=class_names(labels_text),
    )


def upload_fields(name: str, params: str, model: str, labels: str) -> dict[str, str]:
    """The upload's domain paths -> where a TFaaS caller gave each: a form field, or a file in the bundle."""
    return {
        "spec.model_name": name,
        "spec.description": f"{params}.description",
        "spec.metadata": params,
        "spec.frozen_graph": params,
        "spec.frozen_graph.inputs[0]": f"{params}.inputNode",  # TFaaS names one node of each
        "spec.frozen_graph.outputs[0]": f"{params}.outputNode",
        "spec.class_names": labels,
        "spec.format": model,
        "artifact": model,
    }


FORM_FIELDS = upload_fields("name", "params", "model", "labels")


async def _file_chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, size):
            yield chunk


class TfaasRoutes:
    def __init__(self, inference: InferenceService, registry: Registry, settings: Settings) -> None:
        self._inference = inference
        self._registry = registry
        self._settings = settings

    def routes(self) -> list[Route]:
        tag = "TFaaS"
        routes = [
            Route("GET", "/models", self.models, _REGISTRY + "ListModels", tag, "TFaaS's model list."),
            Route(
                "POST",
                "/upload",
                self.upload,
                _REGISTRY + "UploadModelVersion",
                tag,
                "Upload: multipart form (name, params, model, labels) or a gzip SavedModel bundle.",
                body="multipart/form-data",
            ),
            Route(
                "DELETE",
                "/delete",
                self.delete,
                _REGISTRY + "DeleteModel",
                tag,
                "Delete a model and all its versions.",
                query=("model",),
            ),
        ]
        for prefix in ("", "/predict"):
            routes += [
                Route(
                    "POST",
                    prefix + "/json",
                    self.json,
                    _PREDICT,
                    tag,
                    "One row of values.",
                    body="application/json",
                    schema=ROW_SCHEMA,
                ),
                Route(
                    "POST",
                    prefix + "/image",
                    self.image,
                    _PREDICT,
                    tag,
                    "Classify an image.",
                    body="multipart/form-data",
                ),
                Route(
                    "POST",
                    prefix + "/proto",
                    self.proto,
                    _PREDICT,
                    tag,
                    "tfaaspb.Row in, tfaaspb.Predictions out.",
                    body="application/octet-stream",
                    response="application/octet-stream",
                ),
            ]
        return routes

    # --- registry ----------------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        entries: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await self._registry.list_models(1000, token)
            for model in page.items:
                if model.latest_version is None:
                    continue
                v = await self._registry.select_version(ModelRef(model.name, version=model.latest_version))
                nodes = v.frozen_graph
                entries.append(
                    {
                        "name": v.model_name,
                        "model": v.metadata.get(META_MODEL) or f"{v.model_name}:{v.version} ({v.format.value})",
                        "labels": v.metadata.get(META_LABELS, ""),
                        "options": _options(v.metadata.get(META_OPTIONS)),
                        "inputNode": ",".join(nodes.inputs if nodes else [s.name for s in v.signature.inputs]),
                        "outputNode": ",".join(nodes.outputs if nodes else [s.name for s in v.signature.outputs]),
                        "description": v.description,
                        "timestamp": v.created_at.isoformat(),
                        "version": v.version,
                    }
                )
            token = page.next_page_token
            if not token:
                return json_response(entries)

    async def delete(self, request: web.Request) -> web.Response:
        name = request.query.get("model")
        if name is None and request.can_read_body:
            with _form_errors():
                form = await request.post()
            value = form.get("model")
            name = value if isinstance(value, str) else None
        if not name:
            raise InvalidArgument.field("model", "name the model to delete (?model=NAME or a model form field)")
        with request_fields({"name": "model"}):
            deleted = await self._registry.delete_model(name)
        return json_response({"name": name, "deleted_versions": deleted})

    async def upload(self, request: web.Request) -> web.Response:
        claimed = scratch.claim(self._settings.scratch_dir / f"{scratch.HTTP_UPLOAD_PREFIX}{uuid.uuid4().hex}")
        work = claimed.path
        try:
            if request.content_type == "multipart/form-data":
                spec, artifact, fields = await self._form(request, work)
            else:
                spec, artifact, fields = await self._bundle(request, work)
            with request_fields(fields):
                version, created = await self._registry.upload(spec, _file_chunks(artifact))
        finally:
            await asyncio.to_thread(claimed.release)
        return json_response({"name": version.model_name, "version": version.version, "model_created": created})

    async def _spool(self, chunks: AsyncIterator[bytes], target: Path) -> int:
        """Write ``chunks`` to ``target``, refusing more than TT_MAX_UPLOAD_BYTES as they arrive."""
        written = 0
        with target.open("wb") as out:
            async for chunk in chunks:
                written += len(chunk)
                if written > self._settings.max_upload_bytes:
                    raise ResourceExhausted(
                        f"the upload is over the limit of {self._settings.max_upload_bytes} bytes (TT_MAX_UPLOAD_BYTES)"
                    )
                await asyncio.to_thread(out.write, chunk)
        return written

    async def _form(self, request: web.Request, work: Path) -> tuple[UploadSpec, Path, dict[str, str]]:
        small: dict[str, bytes] = {}
        filenames: dict[str, str] = {}
        artifact = work / "model"
        seen_model = False
        parts = 0
        with _form_errors():
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                parts = _count_part(parts)
                if not isinstance(part, BodyPartReader) or not part.name:
                    continue
                filenames[part.name] = posixpath.basename(part.filename or "")
                if part.name == "model":
                    await self._spool(_part_chunks(part), artifact)
                    seen_model = True
                else:
                    small[part.name] = await _read_small(part)
        missing = [
            n for n in ("name", "model") if (n == "model" and not seen_model) or (n == "name" and n not in small)
        ]
        if missing:
            raise InvalidArgument.field(missing[0], f"the upload form has no {missing[0]} field")
        name = _text(small["name"], "name").strip()
        params = _params(small["params"], "params") if "params" in small else {}
        if "name" in params and params["name"] != name:
            raise InvalidArgument.field("params", f"params.json names model {params['name']!r}, the form {name!r}")
        labels = _text(small.get("labels", b""), "labels")
        spec = _spec(name, params, labels, filenames.get("model", ""), filenames.get("labels", ""))
        return spec, artifact, FORM_FIELDS

    async def _bundle(self, request: web.Request, work: Path) -> tuple[UploadSpec, Path, dict[str, str]]:
        archive = work / "bundle.tar.gz"
        # A body sent with Content-Encoding: gzip arrives decompressed; the registry takes gzip archives only.
        await self._spool(_gzipped(body_chunks(request)), archive)
        bundle = await asyncio.to_thread(_read_bundle, archive, work)
        params = bundle.params
        named = params.get("name")
        name = named if isinstance(named, str) and named else bundle.name
        model_file = bundle.frozen_graph.name if bundle.frozen_graph else ""
        spec = _spec(name, params, bundle.labels_text, model_file, bundle.labels_file)
        fields = upload_fields("body", "params.json", "body", bundle.labels_file or "labels.txt")
        if bundle.frozen_graph is not None:
            return spec, bundle.frozen_graph, fields
        saved_model = UploadSpec(
            model_name=spec.model_name,
            format=ModelFormat.SAVED_MODEL_TAR_GZ,
            description=spec.description,
            metadata={**spec.metadata, META_MODEL: f"{bundle.name}/saved_model.pb"},
            class_names=spec.class_names,
        )
        return saved_model, archive, fields

    # --- inference ---------------------------------------------------------------------------------------
    async def _single_input(self, name: str) -> tuple[ModelRef, Any]:
        version = await self._inference.load_version(ModelRef(name))
        if len(version.signature.inputs) != 1:
            raise InvalidArgument.field(
                "model", f"model {name!r} has {len(version.signature.inputs)} inputs; TFaaS routes feed one"
            )
        return ModelRef(version.model_name, version=version.version), version

    async def _row(self, model: Any, keys: Any, values: Any) -> list[float]:
        if not isinstance(model, str) or not model:
            raise InvalidArgument.field("model", "name the model to use")
        if not isinstance(values, list):
            raise InvalidArgument.field("values", "a list of numbers is required")
        ref, version = await self._single_input(model)
        if version.feature_names and keys:
            if not isinstance(keys, list) or len(keys) != len(values) or not all(isinstance(k, str) for k in keys):
                raise InvalidArgument.field("keys", "one key (a feature name) per value is required")
            named = dict(zip(keys, values, strict=True))
            missing = [f for f in version.feature_names if f not in named]
            if missing:
                raise InvalidArgument.field(
                    "keys", f"missing {', '.join(missing)}; the model reads {version.feature_names}"
                )
            values = [named[f] for f in version.feature_names]
        spec = version.signature.inputs[0]
        tensors = {spec.name: wire_from_json([values], spec.dtype, "values")}
        with RequestObservation(ref.name) as observation:
            result = await self._inference.predict(ref, tensors, [], None, observation=observation)
        first = next(iter(result.outputs.values()))
        return [float(v) for v in first[0].ravel()]

    async def json(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidArgument.field("body", '{"keys": [...], "values": [...], "model": "..."} is required')
        return json_response(await self._row(body.get("model"), body.get("keys"), body.get("values")))

    async def proto(self, request: web.Request) -> web.Response:
        row = RowMessage()
        try:
            row.ParseFromString(await request.read())
        except Exception:  # protobuf's DecodeError and friends
            raise InvalidArgument.field("body", "not a serialized tfaaspb.Row") from None
        probabilities = await self._row(row.model, list(row.key), list(row.value))
        answer = PredictionsMessage()
        for p in probabilities:
            answer.prediction.add(probability=p)
        return web.Response(body=answer.SerializeToString(), content_type="application/octet-stream")

    async def image(self, request: web.Request) -> web.Response:
        if request.content_type != "multipart/form-data":
            raise InvalidArgument.field("body", "send a multipart form with image and model fields (curl -F)")
        fields: dict[str, bytes] = {}
        filename = "input"
        parts = 0
        with _form_errors():
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                parts = _count_part(parts)
                if not isinstance(part, BodyPartReader) or part.name not in ("image", "model"):
                    continue
                limit = self._settings.max_message_bytes if part.name == "image" else MAX_SMALL_PART
                fields[part.name] = await _read_small(part, limit)
                if part.name == "image" and part.filename:
                    filename = posixpath.basename(part.filename)
        for needed in ("image", "model"):
            if needed not in fields:
                raise InvalidArgument.field(needed, f"the form has no {needed} field")
        ref, version = await self._single_input(_text(fields["model"], "model").strip())
        spec = version.signature.inputs[0]
        tensor = WireTensor(DType.STRING, (1,), values=[fields["image"]])
        with RequestObservation(ref.name) as observation:
            result = await self._inference.predict(
                ref,
                {spec.name: tensor},
                [],
                None,
                ClassifyRequest(top_k=TOP_CLASSES, omit_outputs=True),
                observation=observation,
            )
        [row] = result.classifications or [()]
        return json_response({"filename": filename, "labels": [{"label": c.name, "probability": c.score} for c in row]})


def _options(stored: str | None) -> Any:
    """TFaaS's options as stored at upload (JSON); null when absent or not ours (metadata is free-form)."""
    try:
        return json.loads(stored) if stored else None
    except ValueError:
        return None


@contextlib.contextmanager
def _form_errors() -> Iterator[None]:
    """Around reading a form: aiohttp's multipart reader refuses a broken form (no or wrong boundary, cut short)
    with ValueError; that is the caller's body at fault."""
    try:
        yield
    except ValueError as e:
        raise InvalidArgument.field("body", f"not a readable form: {e}") from None


def _count_part(seen: int) -> int:
    if seen >= MAX_FORM_PARTS:
        raise InvalidArgument.field("body", f"the form has more than {MAX_FORM_PARTS} fields")
    return seen + 1


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(1 << 20):
        yield chunk


async def _read_small(part: BodyPartReader, limit: int = MAX_SMALL_PART) -> bytes:
    data = bytearray()
    async for chunk in _part_chunks(part):
        data += chunk
        if len(data) > limit:
            raise ResourceExhausted(f"form field {part.name!r} is over {limit} bytes")
    return bytes(data)


async def _gzipped(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks`` as gzip: passed on as they are when they already are, else compressed (fast level)."""
    compressor = None
    async for chunk in chunks:
        if compressor is None:
            if chunk[:2] == _GZIP_MAGIC:
                yield chunk
                async for rest in chunks:
                    yield rest
                return
            compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        yield await asyncio.to_thread(compressor.compress, chunk)
    if compressor is not None:
        yield compressor.flush()


def _read_bundle(archive: Path, work: Path) -> _Bundle:
    """The bundle's directory name, its params.json and labels.txt, and the .pb params.json names (extracted to
    ``work``) when the directory is not a SavedModel. The archive's safety checks are the registry's."""
    small: dict[str, bytes] = {}
    top: set[str] = set()
    names: list[str] = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                path = posixpath.normpath(member.name.lstrip("./")) if member.name not in (".", "./") else ""
                if not path or path.startswith(".."):
                    continue
                top.add(path.split("/", 1)[0])
                names.append(path)
                base = posixpath.basename(path)
                # params.json and the labels file, directly in the model's directory
                small_text = path.count("/") == 1 and (base == "params.json" or base.endswith(".txt"))
                if member.isfile() and small_text and member.size <= MAX_SMALL_PART and len(small) < MAX_FORM_PARTS:
                    f = tar.extractfile(member)
                    if f is not None:
                        small[base] = f.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise InvalidArgument.field("body", f"not a gzip tarball of a model directory: {e}") from None
    if len(top) != 1:
        raise InvalidArgument.field("body", "the bundle must hold one directory, named after the model")
    [name] = top
    params = _params(small["params.json"], "params.json") if "params.json" in small else {}
    named = params.get("labels")
    labels_file = posixpath.basename(named) if isinstance(named, str) and named else "labels.txt"
    if labels_file not in small:
        labels_file = ""
    frozen: Path | None = None
    if f"{name}/saved_model.pb" not in names:
        model_file = params.get("model")
        if not isinstance(model_file, str) or f"{name}/{posixpath.basename(model_file)}" not in names:
            raise InvalidArgument.field(
                "body", f'{name}/ holds neither saved_model.pb nor the .pb its params.json names ("model")'
            )
        frozen = work / posixpath.basename(model_file)
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.getmember(_member_name(tar, f"{name}/{posixpath.basename(model_file)}"))
            source = tar.extractfile(member)
            if source is None:
                raise InvalidArgument.field("body", f"{member.name} is not a regular file")
            with source, frozen.open("wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
    return _Bundle(name, params, labels_file, _text(small.get(labels_file, b""), labels_file or "labels"), frozen)


def _member_name(tar: tarfile.TarFile, path: str) -> str:
    for member in tar.getmembers():
        if posixpath.normpath(member.name.lstrip("./")) == path:
            return member.name
    raise InvalidArgument.field("body", f"{path} is missing")
