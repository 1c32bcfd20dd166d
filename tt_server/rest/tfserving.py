"""TF Serving's REST API (``/v1/models/...``) over the same domain as its gRPC API in ``compat.tfserving``.

Status and metadata are the JSON of the gRPC answers (TF Serving's REST server prints its protos the same way).
``:predict`` takes the row form (``instances``: one value per row, or one object of named inputs per row) and the
columnar form (``inputs``: one value, or an object of named values, each with its batch dimension), and answers in
the same form (``predictions`` / ``outputs``); strings may be ``{"b64": "..."}``. ``:classify`` takes
``examples`` (plus a shared ``context``) of named features: a version uploaded with feature names reads each
example's features in that order as one row of its input, others take features named after their inputs. It
answers every class, best first, as ``[name, score]`` pairs. ``:regress`` needs a regression signature, which no
version has: UNIMPLEMENTED (501) after the model is found, as over gRPC.
"""

from __future__ import annotations

from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from tt_server.compat.convert import MAX_VERSION, SERVING_DEFAULT
from tt_server.compat.tfserving import (
    ModelServicer,
    check_signature,
    response_spec,
    signature_def_map,
    spec_ref,
)
from tt_server.errors import InvalidArgument, request_fields
from tt_server.registry.service import Registry
from tt_server.rest.core import HttpError, Route, json_response, read_json, whole_number
from tt_server.rest.tensors import json_value, wire_from_json
from tt_server.runtime.classes import classified_output
from tt_server.runtime.observe import RequestObservation
from tt_server.runtime.service import InferenceService
from tt_server.types import ClassifyRequest, ModelRef, ModelVersion, WireTensor

_PREDICTION = "/tensorflow.serving.PredictionService/"
CLASSIFY_METHOD_NAME = "tensorflow/serving/classify"  # TF Serving's default classify signature key
_MODEL = "/tensorflow.serving.ModelService/GetModelStatus"
PREDICT_SCHEMA = {
    "type": "object",
    "properties": {
        "signature_name": {"type": "string"},
        "instances": {"type": "array", "description": "row form: one value, or one object of named inputs, per row"},
        "inputs": {"description": "columnar form: one value, or an object of named values"},
    },
}
CLASSIFY_SCHEMA = {
    "type": "object",
    "required": ["examples"],
    "properties": {
        "signature_name": {"type": "string"},
        "context": {"type": "object", "description": "features every example shares"},
        "examples": {"type": "array", "items": {"type": "object"}},
    },
}
# The gRPC API's field paths (and the domain's) -> the path's own segments, so a violation names what the HTTP
# caller sent.
PATH_FIELDS = {
    "model_spec.name": "model",
    "model_spec.version": "version",
    "model_spec.version_label": "label",
    "ref": "model",
    "ref.name": "model",
    "ref.version": "version",
    "ref.label": "label",
}
_SELECTORS = ("/v1/models/{model}", "/v1/models/{model}/versions/{version}", "/v1/models/{model}/labels/{label}")


def _is_named(value: Any) -> bool:
    """An object of named inputs (not a ``{"b64": ...}`` string value)."""
    return isinstance(value, dict) and set(value) != {"b64"}


def _spec(request: web.Request) -> model_pb2.ModelSpec:
    info = request.match_info
    spec = model_pb2.ModelSpec(name=info["model"])
    if "version" in info:
        spec.version.value = whole_number(info["version"], "version", MAX_VERSION, "a version number")
    if "label" in info:
        spec.version_label = info["label"]
    return spec


def _ref(request: web.Request) -> ModelRef:
    return spec_ref(_spec(request))


def _columns(instances: list[Any], version: ModelVersion) -> dict[str, Any]:
    """Row form -> one value per input (a list over rows)."""
    names = [s.name for s in version.signature.inputs]
    if not instances:
        raise InvalidArgument.field("instances", "at least one instance is required")
    if all(_is_named(i) for i in instances):
        keys = set(instances[0])
        for n, instance in enumerate(instances):
            if set(instance) != keys:
                raise InvalidArgument.field(f"instances[{n}]", "every instance must name the same inputs")
        return {key: [i[key] for i in instances] for key in instances[0]}
    if any(_is_named(i) for i in instances):
        raise InvalidArgument.field("instances", "mix of named (objects) and unnamed instances")
    if len(names) != 1:
        raise InvalidArgument.field(
            "instances", f"the model has {len(names)} inputs ({', '.join(names)}): name them in each instance"
        )
    return {names[0]: instances}


def _tensors(values: dict[str, Any], version: ModelVersion, field: str) -> dict[str, WireTensor]:
    specs = {s.name: s for s in version.signature.inputs}
    tensors: dict[str, WireTensor] = {}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            raise InvalidArgument.field(
                f'{field}["{name}"]', f"unknown input; the model's inputs are: {', '.join(specs)}"
            )
        tensors[name] = wire_from_json(value, spec.dtype, f'{field}["{name}"]')
    return tensors


class TfServingRoutes:
    def __init__(self, inference: InferenceService, registry: Registry) -> None:
        self._inference = inference
        self._registry = registry
        self._status = ModelServicer(registry)

    def routes(self) -> list[Route]:
        tag = "TF Serving REST"
        routes: list[Route] = []
        for prefix in _SELECTORS:
            routes += [
                Route("GET", prefix, self.status, _MODEL, tag, "Model version status."),
                Route("GET", prefix + "/metadata", self.metadata, _PREDICTION + "GetModelMetadata", tag, "Signature."),
                Route(
                    "POST",
                    prefix + ":predict",
                    self.predict,
                    _PREDICTION + "Predict",
                    tag,
                    "Predict: row (instances) or columnar (inputs) form.",
                    body="application/json",
                    schema=PREDICT_SCHEMA,
                ),
                Route(
                    "POST",
                    prefix + ":classify",
                    self.classify,
                    _PREDICTION + "Classify",
                    tag,
                    "Classify examples (models uploaded with class names).",
                    body="application/json",
                    schema=CLASSIFY_SCHEMA,
                ),
                Route(
                    "POST",
                    prefix + ":regress",
                    self.regress,
                    _PREDICTION + "Regress",
                    tag,
                    "Regress (no version has a regression signature).",
                    body="application/json",
                ),
            ]
        return routes

    async def status(self, request: web.Request) -> web.Response:
        # The gRPC servicer's answer is TF Serving's REST answer as JSON; it reads nothing from its context.
        with request_fields(PATH_FIELDS):
            status_request = get_model_status_pb2.GetModelStatusRequest(model_spec=_spec(request))
            answer = await self._status.GetModelStatus(status_request, None)
        return json_response(
            json_format.MessageToDict(
                answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
        )

    async def metadata(self, request: web.Request) -> web.Response:
        with request_fields(PATH_FIELDS):
            version = await self._registry.select_version(_ref(request))
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signature_def_map(version.signature).Unpack(signatures)
        return json_response(
            {
                "model_spec": json_format.MessageToDict(
                    response_spec(version.model_name, version.version), preserving_proto_field_name=True
                ),
                "metadata": {"signature_def": json_format.MessageToDict(signatures, preserving_proto_field_name=True)},
            }
        )

    async def _version(
        self, request: web.Request, body: Any, aliases: tuple[str, ...] = ()
    ) -> tuple[ModelRef, ModelVersion]:
        if not isinstance(body, dict):
            raise InvalidArgument.field("body", "a JSON object is required")
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise InvalidArgument.field("signature_name", "must be a string")
        if signature_name not in aliases:
            check_signature(model_pb2.ModelSpec(signature_name=signature_name))
        with request_fields(PATH_FIELDS):
            version = await self._inference.load_version(_ref(request))
        # Pinned: the version whose signature shaped the tensors is the one that runs.
        return ModelRef(version.model_name, version=version.version), version

    async def predict(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        ref, version = await self._version(request, body)
        if ("instances" in body) == ("inputs" in body):
            raise InvalidArgument.field("body", 'send exactly one of "instances" (row form) or "inputs" (columnar)')
        if "instances" in body:
            if not isinstance(body["instances"], list):
                raise InvalidArgument.field("instances", "a list is required")
            tensors = _tensors(_columns(body["instances"], version), version, "instances")
        else:
            inputs = body["inputs"]
            if not _is_named(inputs):
                names = [s.name for s in version.signature.inputs]
                if len(names) != 1:
                    raise InvalidArgument.field("inputs", f"the model has {len(names)} inputs: name them")
                inputs = {names[0]: inputs}
            tensors = _tensors(inputs, version, "inputs")
        with RequestObservation(ref.name) as observation:
            result = await self._inference.predict(ref, tensors, [], None, observation=observation)
        outputs = result.outputs
        if "instances" in body:
            if len(outputs) == 1:
                return json_response({"predictions": json_value(next(iter(outputs.values())))})
            rows = len(body["instances"])
            values = {name: json_value(array) for name, array in outputs.items()}
            return json_response({"predictions": [{n: v[i] for n, v in values.items()} for i in range(rows)]})
        if len(outputs) == 1:
            return json_response({"outputs": json_value(next(iter(outputs.values())))})
        return json_response({"outputs": {name: json_value(array) for name, array in outputs.items()}})

    async def classify(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        ref, version = await self._version(request, body, aliases=(CLASSIFY_METHOD_NAME,))
        examples = body.get("examples")
        context = body.get("context", {})
        if not isinstance(examples, list) or not examples or not all(isinstance(e, dict) for e in examples):
            raise InvalidArgument.field("examples", "a non-empty list of objects of named features is required")
        if not isinstance(context, dict):
            raise InvalidArgument.field("context", "an object of named features is required")
        classify = ClassifyRequest(top_k=len(version.class_names), omit_outputs=True)
        classified_output(version, classify)  # FAILED_PRECONDITION without class names, before any tensor work
        rows = [{**context, **e} for e in examples]
        if version.feature_names and len(version.signature.inputs) == 1:
            name = version.signature.inputs[0].name
            missing = [f for f in version.feature_names if f not in rows[0]]
            if missing:
                raise InvalidArgument.field(
                    "examples[0]", f"missing features {', '.join(missing)} (the model reads {version.feature_names})"
                )
            try:
                values = {name: [[row[f] for f in version.feature_names] for row in rows]}
            except KeyError as e:
                raise InvalidArgument.field("examples", f"an example lacks feature {e.args[0]!r}") from None
        else:
            values = _columns(rows, version)
        tensors = _tensors(values, version, "examples")
        with RequestObservation(ref.name) as observation:
            result = await self._inference.predict(ref, tensors, [], None, classify, observation=observation)
        return json_response({"results": [[[c.name, c.score] for c in row] for row in result.classifications or []]})

    async def regress(self, request: web.Request) -> web.Response:
        with request_fields(PATH_FIELDS):
            version = await self._registry.select_version(_ref(request))
        raise HttpError(
            grpc.StatusCode.UNIMPLEMENTED,
            f"Regress needs a regression signature; version {version.version} of model {version.model_name!r} has "
            f"only {SERVING_DEFAULT}, a predict signature: call :predict",
        )
