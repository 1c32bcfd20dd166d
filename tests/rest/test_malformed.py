"""Every HTTP route fed malformed input: a clear 4xx (or 413/501/503 where that is the answer) with the front's JSON
error body, naming the field at fault where there is one; never a 5xx, never a traceback; and the server still
answers and still serves what it stored afterwards.

The table is the audit: one row per (route, kind of bad input), run against one real server on loopback. Rows
whose request aiohttp's client cannot spell (non-UTF-8 bytes, lying framing, a 100 KiB request line) are sent as
raw bytes over a socket.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import struct
import tarfile
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import aiohttp
import numpy as np
import pytest
from yarl import URL

from tests.compat.helpers import Served, keras_outputs
from tests.rest.helpers import finished_job
from tests.serving import unique_name
from tt_server.app import Application
from tt_server.rest.tfaas import RowMessage

MISSING_JOB = "0" * 32
BOUNDARY = "XyZzYboundary"
HUGE = "99999999999999999999"  # over int64
SUPER2 = "%C2%B2"  # "²": str.isdigit() says yes, int() says no


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    path: str  # {mlp}, {named}, {vocab}, {job} are filled in; percent-encoding is sent as written
    status: int
    field: str | None = None  # a field_violations entry the answer must name
    body: bytes | None = None
    headers: dict[str, str] = dc_field(default_factory=dict)
    raw: bytes | None = None  # the whole request, sent as is over a socket (path and body are then unused)
    code: str | None = None  # the gRPC code name the body must carry, when the HTTP status is ambiguous


def j(value: Any) -> bytes:
    return json.dumps(value).encode()


def form(*parts: tuple[str, bytes, str | None]) -> bytes:
    """A multipart/form-data body: (name, content, filename) per part."""
    out = b""
    for name, content, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


FORM = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
JSON = {"Content-Type": "application/json"}


def tensor(**overrides: Any) -> dict[str, Any]:
    return {"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4], **overrides}


def infer(**overrides: Any) -> bytes:
    return j({"inputs": [tensor()], **overrides})


def binary(head: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    """An OIP binary request: the JSON header, then the raw tensor bytes."""
    raw = j(head)
    return raw + blob, {"Inference-Header-Content-Length": str(len(raw)), "Content-Type": "application/octet-stream"}


ROW = j({"keys": ["a", "b", "c", "d"], "values": [1, 2, 3, 4], "model": "{named}"})
FLOATS = np.array([1, 2, 3, 4], np.float32).tobytes()
BIN_HEAD = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4],
                        "parameters": {"binary_data_size": 1000}}]}  # fmt: skip
LIE_BODY, LIE_HEADERS = binary(BIN_HEAD, FLOATS)
BYTES_HEAD = {"inputs": [{"name": "color", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]}
BYTES_BODY, BYTES_HEADERS = binary(BYTES_HEAD, struct.pack("<I", 999) + b"red!")  # an element that overruns


def raw_request(method: str, target: bytes, headers: bytes = b"", body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n".encode() if body or method in ("POST", "PUT") else b""
    return (
        method.encode() + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + length + headers + b"\r\n"
    ) + body


def _gzip_tar(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


CASES = [
    # --- Open Inference Protocol ---------------------------------------------------------------------------------
    Case("oip-infer-invalid-json", "POST", "/v2/models/{mlp}/infer", 400, "body", b"{", JSON),
    Case("oip-infer-empty-body", "POST", "/v2/models/{mlp}/infer", 400, "body", b""),
    Case("oip-infer-not-utf8", "POST", "/v2/models/{mlp}/infer", 400, "body", b"\xff\xfe{}"),
    Case("oip-infer-list-body", "POST", "/v2/models/{mlp}/infer", 400, "body", b"[]", JSON),
    Case("oip-infer-null-body", "POST", "/v2/models/{mlp}/infer", 400, "body", b"null", JSON),
    Case("oip-infer-deep-json", "POST", "/v2/models/{mlp}/infer", 400, "body", b"[" * 100_000, JSON),
    Case("oip-infer-no-inputs", "POST", "/v2/models/{mlp}/infer", 400, "inputs", b"{}", JSON),
    Case("oip-infer-inputs-string", "POST", "/v2/models/{mlp}/infer", 400, "inputs", j({"inputs": "x"}), JSON),
    Case("oip-infer-input-null", "POST", "/v2/models/{mlp}/infer", 400, "inputs[0]", j({"inputs": [None]}), JSON),
    Case("oip-infer-name-number", "POST", "/v2/models/{mlp}/infer", 400, "inputs[0].name",
         j({"inputs": [tensor(name=5)]}), JSON),
    Case("oip-infer-datatype", "POST", "/v2/models/{mlp}/infer", 400, 'inputs["features"].datatype',
         j({"inputs": [tensor(datatype="FP128")]}), JSON),
    Case("oip-infer-shape-strings", "POST", "/v2/models/{mlp}/infer", 400, 'inputs["features"].shape',
         j({"inputs": [tensor(shape=["1", "4"])]}), JSON),
    Case("oip-infer-shape-negative", "POST", "/v2/models/{mlp}/infer", 400, None,
         j({"inputs": [tensor(shape=[-1, 4])]}), JSON),
    Case("oip-infer-shape-huge", "POST", "/v2/models/{mlp}/infer", 400, None,
         j({"inputs": [tensor(shape=[10**30, 4])]}), JSON),
    Case("oip-infer-data-strings", "POST", "/v2/models/{mlp}/infer", 400, 'inputs["features"].data',
         j({"inputs": [tensor(data=["a", "b", "c", "d"])]}), JSON),
    Case("oip-infer-data-null", "POST", "/v2/models/{mlp}/infer", 400, 'inputs["features"].data',
         j({"inputs": [tensor(data=None)]}), JSON),
    Case("oip-infer-data-too-deep", "POST", "/v2/models/{mlp}/infer", 400, 'inputs["features"].data',
         j({"inputs": [tensor(data=json.loads("[" * 70 + "1" + "]" * 70))]}), JSON),
    Case("oip-infer-twice", "POST", "/v2/models/{mlp}/infer", 400, 'inputs["features"]',
         j({"inputs": [tensor(), tensor()]}), JSON),
    Case("oip-infer-parameters-list", "POST", "/v2/models/{mlp}/infer", 400, "parameters",
         infer(parameters=[1]), JSON),
    Case("oip-infer-output-parameters-list", "POST", "/v2/models/{mlp}/infer", 400, "outputs[0].parameters",
         infer(outputs=[{"name": "score", "parameters": [1]}]), JSON),
    Case("oip-infer-output-name-number", "POST", "/v2/models/{mlp}/infer", 400, "outputs[0].name",
         infer(outputs=[{"name": 5}]), JSON),
    Case("oip-infer-outputs-string", "POST", "/v2/models/{mlp}/infer", 400, "outputs", infer(outputs="score"), JSON),
    Case("oip-infer-unknown-output", "POST", "/v2/models/{mlp}/infer", 400, None,
         infer(outputs=[{"name": "nope"}]), JSON),
    Case("oip-infer-id-object", "POST", "/v2/models/{mlp}/infer", 400, "id", infer(id={"a": [1]}), JSON),
    Case("oip-infer-header-length-lies", "POST", "/v2/models/{mlp}/infer", 400, "Inference-Header-Content-Length",
         infer(), {"Inference-Header-Content-Length": "99999"}),
    Case("oip-infer-header-length-negative", "POST", "/v2/models/{mlp}/infer", 400,
         "Inference-Header-Content-Length", infer(), {"Inference-Header-Content-Length": "-3"}),
    Case("oip-infer-header-length-superscript", "POST", "/v2/models/{mlp}/infer", 400,
         "Inference-Header-Content-Length", infer(), {"Inference-Header-Content-Length": "²"}),
    Case("oip-infer-binary-size-lies", "POST", "/v2/models/{mlp}/infer", 400,
         'inputs["features"].parameters.binary_data_size', LIE_BODY, LIE_HEADERS),
    Case("oip-infer-bytes-element-overruns", "POST", "/v2/models/{vocab}/infer", 400, 'inputs["color"]',
         BYTES_BODY, BYTES_HEADERS),
    Case("oip-infer-version-0", "POST", "/v2/models/{mlp}/versions/0/infer", 400, "version", infer(), JSON),
    Case("oip-infer-version-negative", "POST", "/v2/models/{mlp}/versions/-1/infer", 400, "version", infer(), JSON),
    Case("oip-infer-version-huge", "POST", f"/v2/models/{{mlp}}/versions/{HUGE}/infer", 400, "version", infer(), JSON),
    Case("oip-infer-version-superscript", "POST", f"/v2/models/{{mlp}}/versions/{SUPER2}/infer", 400, "version",
         infer(), JSON),
    Case("oip-infer-version-unknown", "POST", "/v2/models/{mlp}/versions/999/infer", 404, None, infer(), JSON),
    Case("oip-infer-model-unknown", "POST", "/v2/models/no-such-model/infer", 404, None, infer(), JSON),
    # A name no model can have is looked up like any other, as over gRPC: NOT_FOUND.
    Case("oip-infer-model-bad-name", "POST", "/v2/models/%FF%FE/infer", 404, None, infer(), JSON),
    Case("oip-infer-nulls-are-absent", "POST", "/v2/models/{mlp}/infer", 200, None,
         infer(id=None, parameters=None, outputs=None), JSON),
    Case("oip-infer-nan-and-huge-floats", "POST", "/v2/models/{mlp}/infer", 200, None,
         b'{"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [NaN, 1e400, -1e39, '
         + str(10**30).encode() + b"]}]}", JSON),
    Case("oip-infer-wrong-content-type", "POST", "/v2/models/{mlp}/infer", 200, None, infer(),
         {"Content-Type": "text/plain"}),
    Case("oip-metadata-unknown", "GET", "/v2/models/no-such-model", 404),
    Case("oip-metadata-version-0", "GET", "/v2/models/{mlp}/versions/0", 400, "version"),
    Case("oip-metadata-version-huge", "GET", f"/v2/models/{{mlp}}/versions/{HUGE}", 400, "version"),
    Case("oip-metadata-version-superscript", "GET", f"/v2/models/{{mlp}}/versions/{SUPER2}", 400, "version"),
    Case("oip-ready-unknown", "GET", "/v2/models/no-such-model/ready", 404),
    Case("oip-ready-version-huge", "GET", f"/v2/models/{{mlp}}/versions/{HUGE}/ready", 400, "version"),
    # --- TF Serving REST -----------------------------------------------------------------------------------------
    Case("tfs-predict-invalid-json", "POST", "/v1/models/{mlp}:predict", 400, "body", b'{"instances": [1,', JSON),
    Case("tfs-predict-empty-body", "POST", "/v1/models/{mlp}:predict", 400, "body", b""),
    Case("tfs-predict-not-utf8", "POST", "/v1/models/{mlp}:predict", 400, "body", b'{"instances": "\xff"}'),
    Case("tfs-predict-list-body", "POST", "/v1/models/{mlp}:predict", 400, "body", b"[[1, 2, 3, 4]]", JSON),
    Case("tfs-predict-deep-json", "POST", "/v1/models/{mlp}:predict", 400, "body",
         b'{"instances": ' + b"[" * 100_000, JSON),
    Case("tfs-predict-both-forms", "POST", "/v1/models/{mlp}:predict", 400, "body",
         j({"instances": [[1, 2, 3, 4]], "inputs": [[1, 2, 3, 4]]}), JSON),
    Case("tfs-predict-instances-string", "POST", "/v1/models/{mlp}:predict", 400, "instances",
         j({"instances": "1,2,3,4"}), JSON),
    Case("tfs-predict-instances-empty", "POST", "/v1/models/{mlp}:predict", 400, "instances",
         j({"instances": []}), JSON),
    Case("tfs-predict-ragged", "POST", "/v1/models/{mlp}:predict", 400, 'instances["features"]',
         j({"instances": [[1, 2, 3, 4], [1, 2]]}), JSON),
    Case("tfs-predict-null-values", "POST", "/v1/models/{mlp}:predict", 400, 'instances["features"]',
         j({"instances": [[None, 2, 3, 4]]}), JSON),
    Case("tfs-predict-string-values", "POST", "/v1/models/{mlp}:predict", 400, 'instances["features"]',
         j({"instances": [["1", "2", "3", "4"]]}), JSON),
    Case("tfs-predict-huge-for-int", "POST", "/v1/models/{mlp}:predict", 400, 'instances["features"]',
         j({"instances": [[10**400, 2, 3, 4]]}), JSON),
    Case("tfs-predict-mixed-instances", "POST", "/v1/models/{mlp}:predict", 400, "instances",
         j({"instances": [{"features": [1, 2, 3, 4]}, [1, 2, 3, 4]]}), JSON),
    Case("tfs-predict-unknown-input", "POST", "/v1/models/{mlp}:predict", 400, 'inputs["nope"]',
         j({"inputs": {"nope": [[1, 2, 3, 4]]}}), JSON),
    Case("tfs-predict-signature-number", "POST", "/v1/models/{mlp}:predict", 400, "signature_name",
         j({"signature_name": 5, "instances": [[1, 2, 3, 4]]}), JSON),
    Case("tfs-predict-signature-unknown", "POST", "/v1/models/{mlp}:predict", 400, None,
         j({"signature_name": "other", "instances": [[1, 2, 3, 4]]}), JSON, code="FAILED_PRECONDITION"),
    Case("tfs-predict-bad-b64", "POST", "/v1/models/{vocab}:predict", 400, 'instances["color"]',
         j({"instances": [{"b64": "!!not base64!!"}]}), JSON),
    Case("tfs-predict-b64-number", "POST", "/v1/models/{vocab}:predict", 400, 'instances["color"]',
         j({"instances": [{"b64": 5}]}), JSON),
    Case("tfs-predict-version-0", "POST", "/v1/models/{mlp}/versions/0:predict", 400, "version",
         j({"instances": [[1, 2, 3, 4]]}), JSON),
    Case("tfs-predict-version-huge", "POST", f"/v1/models/{{mlp}}/versions/{HUGE}:predict", 400, "version",
         j({"instances": [[1, 2, 3, 4]]}), JSON),
    Case("tfs-predict-version-superscript", "POST", f"/v1/models/{{mlp}}/versions/{SUPER2}:predict", 400,
         "version", j({"instances": [[1, 2, 3, 4]]}), JSON),
    Case("tfs-predict-version-unknown", "POST", "/v1/models/{mlp}/versions/999:predict", 404, None,
         j({"instances": [[1, 2, 3, 4]]}), JSON),
    Case("tfs-predict-label-bad", "POST", "/v1/models/{mlp}/labels/Not%20A%20Label:predict", 404, None,
         j({"instances": [[1, 2, 3, 4]]}), JSON),
    Case("tfs-predict-label-unknown", "POST", "/v1/models/{mlp}/labels/nope:predict", 404, None,
         j({"instances": [[1, 2, 3, 4]]}), JSON),
    Case("tfs-predict-model-unknown", "POST", "/v1/models/no-such-model:predict", 404, None,
         j({"instances": [[1, 2, 3, 4]]}), JSON),
    Case("tfs-status-unknown", "GET", "/v1/models/no-such-model", 404),
    Case("tfs-status-version-0", "GET", "/v1/models/{mlp}/versions/0", 400, "version"),
    Case("tfs-status-version-huge", "GET", f"/v1/models/{{mlp}}/versions/{HUGE}", 400, "version"),
    Case("tfs-status-version-superscript", "GET", f"/v1/models/{{mlp}}/versions/{SUPER2}", 400, "version"),
    Case("tfs-status-label-bad", "GET", "/v1/models/{mlp}/labels/Not%20A%20Label", 404),
    Case("tfs-status-bad-name", "GET", "/v1/models/Bad%20Name", 400, "model"),
    Case("tfs-metadata-unknown", "GET", "/v1/models/no-such-model/metadata", 404),
    Case("tfs-metadata-version-huge", "GET", f"/v1/models/{{mlp}}/versions/{HUGE}/metadata", 400, "version"),
    Case("tfs-metadata-label-bad", "GET", "/v1/models/{mlp}/labels/Not%20A%20Label/metadata", 404),
    Case("tfs-metadata-bad-name", "GET", "/v1/models/Bad%20Name/metadata", 400, "model"),
    Case("tfs-predict-gzip-encoding-lies", "POST", "/v1/models/{mlp}:predict", 400, "body", b"not gzip",
         {"Content-Encoding": "gzip", "Content-Type": "application/json"}),
    Case("tfs-predict-nan-ok", "POST", "/v1/models/{mlp}:predict", 200, None, b'{"instances": [[NaN, 1, 2, 3]]}',
         JSON),
    Case("tfs-classify-examples-missing", "POST", "/v1/models/{named}:classify", 400, "examples", b"{}", JSON),
    Case("tfs-classify-examples-numbers", "POST", "/v1/models/{named}:classify", 400, "examples",
         j({"examples": [1, 2]}), JSON),
    Case("tfs-classify-context-list", "POST", "/v1/models/{named}:classify", 400, "context",
         j({"examples": [{"a": 1}], "context": [1]}), JSON),
    Case("tfs-classify-feature-missing", "POST", "/v1/models/{named}:classify", 400, "examples[0]",
         j({"examples": [{"a": 1}]}), JSON),
    Case("tfs-classify-feature-string", "POST", "/v1/models/{named}:classify", 400, 'examples["features"]',
         j({"examples": [{"a": "x", "b": 1, "c": 1, "d": 1}]}), JSON),
    Case("tfs-classify-no-class-names", "POST", "/v1/models/{mlp}:classify", 400, None,
         j({"examples": [{"features": [1, 2, 3, 4]}]}), JSON, code="FAILED_PRECONDITION"),
    Case("tfs-regress-unknown", "POST", "/v1/models/no-such-model:regress", 404, None, b"{}", JSON),
    Case("tfs-regress-version-huge", "POST", f"/v1/models/{{mlp}}/versions/{HUGE}:regress", 400, "version",
         b"{}", JSON),
    # --- TFaaS ---------------------------------------------------------------------------------------------------
    Case("tfaas-json-invalid", "POST", "/json", 400, "body", b"{'keys': 1}", JSON),
    Case("tfaas-json-list", "POST", "/json", 400, "body", b"[1, 2]", JSON),
    Case("tfaas-json-model-number", "POST", "/json", 400, "model", j({"values": [1, 2, 3, 4], "model": 3}), JSON),
    Case("tfaas-json-model-unknown", "POST", "/predict/json", 404, None,
         j({"values": [1, 2, 3, 4], "model": "no-such-model"}), JSON),
    Case("tfaas-json-model-bad-name", "POST", "/json", 404, None,
         j({"values": [1, 2, 3, 4], "model": "Bad Name!"}), JSON),
    Case("tfaas-json-values-string", "POST", "/json", 400, "values", j({"values": "1,2", "model": "{mlp}"}), JSON),
    Case("tfaas-json-values-objects", "POST", "/json", 400, "values",
         j({"values": [{"a": 1}, 2, 3, 4], "model": "{mlp}"}), JSON),
    Case("tfaas-json-values-nan-strings", "POST", "/json", 400, "values",
         j({"values": ["NaN", "x", 3, 4], "model": "{mlp}"}), JSON),
    Case("tfaas-json-keys-unhashable", "POST", "/json", 400, "keys",
         j({"keys": [[1], [2], [3], [4]], "values": [1, 2, 3, 4], "model": "{named}"}), JSON),
    Case("tfaas-json-keys-missing-feature", "POST", "/json", 400, "keys",
         j({"keys": ["a", "b", "c", "z"], "values": [1, 2, 3, 4], "model": "{named}"}), JSON),
    Case("tfaas-json-keys-string", "POST", "/json", 400, "keys",
         j({"keys": "abcd", "values": [1, 2, 3, 4], "model": "{named}"}), JSON),
    Case("tfaas-proto-garbage", "POST", "/proto", 400, "body", b"\xff\xff\xff\xff\xff"),
    Case("tfaas-proto-model-unknown", "POST", "/predict/proto", 404, None,
         RowMessage(value=[1, 2, 3, 4], model="no-such-model").SerializeToString()),
    Case("tfaas-image-not-multipart", "POST", "/image", 400, "body", b"\x89PNG", {"Content-Type": "image/png"}),
    Case("tfaas-image-no-boundary", "POST", "/image", 400, "body", b"--x\r\n",
         {"Content-Type": "multipart/form-data"}),
    Case("tfaas-image-wrong-boundary", "POST", "/image", 400, "body", form(("model", b"m", None)),
         {"Content-Type": "multipart/form-data; boundary=other"}),
    Case("tfaas-image-truncated-form", "POST", "/image", 400, "body", form(("model", b"m", None))[:-20], FORM),
    Case("tfaas-image-no-image", "POST", "/image", 400, "image", form(("model", b"{mlp}", None)), FORM),
    Case("tfaas-image-no-model", "POST", "/image", 400, "model", form(("image", b"\x89PNG", "x.png")), FORM),
    Case("tfaas-image-model-not-utf8", "POST", "/image", 400, "model",
         form(("image", b"\x89PNG", "x.png"), ("model", b"\xff\xfe", None)), FORM),
    Case("tfaas-image-model-unknown", "POST", "/predict/image", 404, None,
         form(("image", b"\x89PNG", "x.png"), ("model", b"no-such-model", None)), FORM),
    Case("tfaas-upload-form-no-name", "POST", "/upload", 400, "name", form(("model", b"\x08\x01", "m.pb")), FORM),
    Case("tfaas-upload-form-no-model", "POST", "/upload", 400, "model", form(("name", b"m", None)), FORM),
    Case("tfaas-upload-form-name-not-utf8", "POST", "/upload", 400, "name",
         form(("name", b"\xff", None), ("model", b"x", "m.pb")), FORM),
    Case("tfaas-upload-form-name-bad", "POST", "/upload", 400, "name",
         form(("name", b"Bad Name!", None), ("model", b"x", "m.pb")), FORM),
    Case("tfaas-upload-form-params-invalid", "POST", "/upload", 400, "params",
         form(("name", b"m", None), ("params", b"{", None), ("model", b"x", "m.pb")), FORM),
    Case("tfaas-upload-form-params-list", "POST", "/upload", 400, "params",
         form(("name", b"m", None), ("params", b"[1]", None), ("model", b"x", "m.pb")), FORM),
    Case("tfaas-upload-form-garbage-model", "POST", "/upload", 400, "model",
         form(("name", b"m", None), ("model", b"\x00garbage", "m.pb")), FORM),
    Case("tfaas-upload-no-boundary", "POST", "/upload", 400, "body", b"--x\r\n",
         {"Content-Type": "multipart/form-data"}),
    Case("tfaas-upload-truncated-form", "POST", "/upload", 400, "body",
         form(("name", b"m", None), ("model", b"x" * 100, "m.pb"))[:-30], FORM),
    Case("tfaas-upload-bundle-garbage", "POST", "/upload", 400, "body", b"not a tarball"),
    Case("tfaas-upload-bundle-empty", "POST", "/upload", 400, "body", b""),
    Case("tfaas-upload-bundle-two-dirs", "POST", "/upload", 400, "body", _gzip_tar({"a/x": b"1", "b/y": b"2"})),
    Case("tfaas-upload-bundle-no-model", "POST", "/upload", 400, "body", _gzip_tar({"m/params.json": b"{}"})),
    Case("tfaas-upload-bundle-params-invalid", "POST", "/upload", 400, "params.json",
         _gzip_tar({"m/params.json": b"{", "m/saved_model.pb": b"x"})),
    Case("tfaas-upload-gzip-encoding-lies", "POST", "/upload", 400, None, b"this is not gzip",
         {"Content-Encoding": "gzip"}),
    Case("tfaas-delete-no-model", "DELETE", "/delete", 400, "model"),
    Case("tfaas-delete-unknown", "DELETE", "/delete?model=no-such-model", 404),
    Case("tfaas-delete-bad-name", "DELETE", "/delete?model=%FF%FE", 400, "model"),
    Case("tfaas-delete-form-no-boundary", "DELETE", "/delete", 400, None, b"--x\r\n",
         {"Content-Type": "multipart/form-data"}),
    Case("tfaas-delete-form-not-utf8", "DELETE", "/delete", 400, "model", b"model=%FF%FE",
         {"Content-Type": "application/x-www-form-urlencoded"}),
    # --- registry as JSON ----------------------------------------------------------------------------------------
    Case("native-list-page-size-word", "GET", "/api/v1/models?page_size=ten", 400, "page_size"),
    Case("native-list-page-size-negative", "GET", "/api/v1/models?page_size=-1", 400, "page_size"),
    Case("native-list-page-size-superscript", "GET", f"/api/v1/models?page_size={SUPER2}", 400, "page_size"),
    Case("native-list-page-size-huge", "GET", f"/api/v1/models?page_size={HUGE}", 400, "page_size"),
    Case("native-list-page-token-bad", "GET", "/api/v1/models?page_token=%FF%FEgarbage", 400, "page_token"),
    Case("native-list-page-size-repeated", "GET", "/api/v1/models?page_size=1&page_size=x", 200),
    Case("native-model-unknown", "GET", "/api/v1/models/no-such-model", 404),
    Case("native-model-bad-name", "GET", "/api/v1/models/%FF%FE", 400, "name"),
    Case("native-model-delete-unknown", "DELETE", "/api/v1/models/no-such-model", 404),
    Case("native-versions-unknown", "GET", "/api/v1/models/no-such-model/versions", 404),
    Case("native-versions-page-token-bad", "GET", "/api/v1/models/{mlp}/versions?page_token=zz", 400, "page_token"),
    Case("native-version-0", "GET", "/api/v1/models/{mlp}/versions/0", 400, "version"),
    Case("native-version-negative", "GET", "/api/v1/models/{mlp}/versions/-1", 400, "version"),
    Case("native-version-huge", "GET", f"/api/v1/models/{{mlp}}/versions/{HUGE}", 400, "version"),
    Case("native-version-superscript", "GET", f"/api/v1/models/{{mlp}}/versions/{SUPER2}", 400, "version"),
    Case("native-version-unknown", "GET", "/api/v1/models/{mlp}/versions/999", 404),
    Case("native-version-bad-name", "GET", "/api/v1/models/Bad%20Name/versions/1", 400, "name"),
    Case("native-artifact-bad-name", "GET", "/api/v1/models/Bad%20Name/versions/1/artifact", 400, "name"),
    Case("native-version-delete-huge", "DELETE", f"/api/v1/models/{{mlp}}/versions/{HUGE}", 400, "version"),
    Case("native-version-delete-superscript", "DELETE", f"/api/v1/models/{{mlp}}/versions/{SUPER2}", 400, "version"),
    Case("native-version-delete-force-word", "DELETE", "/api/v1/models/{mlp}/versions/1?force=yes", 400, "force"),
    Case("native-version-delete-unknown", "DELETE", "/api/v1/models/{mlp}/versions/999", 404),
    Case("native-artifact-huge", "GET", f"/api/v1/models/{{mlp}}/versions/{HUGE}/artifact", 400, "version"),
    Case("native-artifact-unknown", "GET", "/api/v1/models/{mlp}/versions/999/artifact", 404),
    Case("native-label-unknown", "GET", "/api/v1/models/{mlp}/labels/nope", 404),
    Case("native-label-bad", "GET", "/api/v1/models/{mlp}/labels/Not%20A%20Label", 404),
    Case("native-set-label-invalid-json", "PUT", "/api/v1/models/{mlp}/labels/x", 400, "body", b"{version: 1}", JSON),
    Case("native-set-label-empty", "PUT", "/api/v1/models/{mlp}/labels/x", 400, "body", b""),
    Case("native-set-label-list", "PUT", "/api/v1/models/{mlp}/labels/x", 400, "version", b"[1]", JSON),
    Case("native-set-label-null", "PUT", "/api/v1/models/{mlp}/labels/x", 400, "version", j({"version": None}), JSON),
    Case("native-set-label-string", "PUT", "/api/v1/models/{mlp}/labels/x", 400, "version", j({"version": "1"}),
         JSON),
    Case("native-set-label-float", "PUT", "/api/v1/models/{mlp}/labels/x", 400, "version", j({"version": 1.5}),
         JSON),
    Case("native-set-label-nan", "PUT", "/api/v1/models/{mlp}/labels/x", 400, "version", b'{"version": NaN}', JSON),
    Case("native-set-label-negative", "PUT", "/api/v1/models/{mlp}/labels/x", 400, "version", j({"version": -1}),
         JSON),
    Case("native-set-label-huge", "PUT", "/api/v1/models/{mlp}/labels/x", 400, "version", j({"version": 10**30}),
         JSON),
    Case("native-set-label-unknown-version", "PUT", "/api/v1/models/{mlp}/labels/x", 404, None,
         j({"version": 999}), JSON),
    Case("native-set-label-bad-name", "PUT", "/api/v1/models/{mlp}/labels/Not%20A%20Label", 400, "label",
         j({"version": 1}), JSON),
    Case("native-set-label-unknown-model", "PUT", "/api/v1/models/no-such-model/labels/x", 404, None,
         j({"version": 1}), JSON),
    Case("native-delete-label-unknown", "DELETE", "/api/v1/models/{mlp}/labels/nope", 404),
    Case("native-delete-label-bad", "DELETE", "/api/v1/models/{mlp}/labels/Not%20A%20Label", 400, "label"),
    Case("native-upload-bad-name", "POST", "/api/v1/models/%FF%FE/versions", 400, "name", b"x"),
    Case("native-upload-label-not-utf8", "POST", "/api/v1/models/m-x/versions?label=%FF%FE", 400, "label[0]", b"x"),
    Case("native-upload-format-superscript", "POST", f"/api/v1/models/m-x/versions?format={SUPER2}", 400,
         "format", b"x"),
    Case("native-upload-gzip-encoding-lies", "POST", "/api/v1/models/m-x/versions", 400, None, b"not gzip at all",
         {"Content-Encoding": "gzip"}),
    # --- jobs as JSON --------------------------------------------------------------------------------------------
    Case("job-create-no-model", "POST", "/api/v1/jobs", 400, "model", b"1,2,3,4\n"),
    Case("job-create-model-bad-version", "POST", "/api/v1/jobs?model={mlp}:abc", 400, "model", b"1,2,3,4\n"),
    Case("job-create-model-version-0", "POST", "/api/v1/jobs?model={mlp}:0", 400, "model", b"1,2,3,4\n"),
    Case("job-create-model-version-huge", "POST", f"/api/v1/jobs?model={{mlp}}:{HUGE}", 400, "model", b"1,2,3,4\n"),
    Case("job-create-model-not-utf8", "POST", "/api/v1/jobs?model=%FF%FE", 400, "model", b"1,2,3,4\n"),
    Case("job-create-model-unknown", "POST", "/api/v1/jobs?model=no-such-model", 404, None, b"1,2,3,4\n"),
    Case("job-create-index-superscript", "POST", f"/api/v1/jobs?model={{mlp}}&feature_column_index={SUPER2}", 400,
         "feature_column_index", b"1,2,3,4\n"),
    Case("job-create-index-huge", "POST", f"/api/v1/jobs?model={{mlp}}&feature_column_index={HUGE}", 400,
         "feature_column_index", b"1,2,3,4\n"),
    Case("job-create-header-word", "POST", "/api/v1/jobs?model={mlp}&has_header=maybe", 400, "has_header",
         b"1,2,3,4\n"),
    Case("job-create-format-xml", "POST", "/api/v1/jobs?model={mlp}&output_format=xml", 400, "output_format",
         b"1,2,3,4\n"),
    Case("job-create-empty", "POST", "/api/v1/jobs?model={mlp}", 400, "body", b""),
    Case("job-create-gzip-encoding-lies", "POST", "/api/v1/jobs?model={mlp}", 400, None, b"not gzip",
         {"Content-Encoding": "gzip"}),
    Case("job-list-state-word", "GET", "/api/v1/jobs?state=sleeping", 400, "state"),
    Case("job-list-model-bad", "GET", "/api/v1/jobs?model=Bad%20Name", 400, "model"),
    Case("job-list-page-size-superscript", "GET", f"/api/v1/jobs?page_size={SUPER2}", 400, "page_size"),
    Case("job-list-page-token-bad", "GET", "/api/v1/jobs?page_token=zz", 400, "page_token"),
    Case("job-get-bad-id", "GET", "/api/v1/jobs/not-a-job", 400, "id"),
    Case("job-get-unknown", "GET", f"/api/v1/jobs/{MISSING_JOB}", 404),
    Case("job-cancel-bad-id", "POST", "/api/v1/jobs/%FF:cancel", 400, "id"),
    Case("job-cancel-unknown", "POST", f"/api/v1/jobs/{MISSING_JOB}:cancel", 404),
    Case("job-results-unknown", "GET", f"/api/v1/jobs/{MISSING_JOB}/results", 404),
    Case("job-results-bad-id", "GET", "/api/v1/jobs/x/results", 400, "id"),
    Case("job-results-offset-past-end", "GET", "/api/v1/jobs/{job}/results?offset=1000000", 400, "offset"),
    Case("job-results-offset-negative", "GET", "/api/v1/jobs/{job}/results?offset=-1", 400, "offset"),
    Case("job-results-offset-huge", "GET", f"/api/v1/jobs/{{job}}/results?offset={HUGE}", 400, "offset"),
    Case("job-results-offset-superscript", "GET", f"/api/v1/jobs/{{job}}/results?offset={SUPER2}", 400, "offset"),
    Case("job-results-range-invalid", "GET", "/api/v1/jobs/{job}/results", 200, headers={"Range": "bytes=zz-"}),
    Case("job-results-range-backwards", "GET", "/api/v1/jobs/{job}/results", 200, headers={"Range": "bytes=9-2"}),
    # --- any route ------------------------------------------------------------------------------------------------
    Case("head-on-get-route", "HEAD", "/api/v1/models", 405),
    Case("options-on-route", "OPTIONS", "/v2", 405),
    Case("patch-on-route", "PATCH", "/api/v1/models/{mlp}", 405),
    # The path matches GET /v1/models/{model} with model "<name>:predict": a name no model can have.
    Case("get-on-post-route", "GET", "/v1/models/{mlp}:predict", 400, "model"),
    Case("put-on-post-route", "PUT", "/v2/models/{mlp}/infer", 405),
    Case("unknown-route", "GET", "/no/such/route", 404),
    Case("long-url", "GET", "/api/v1/models/" + "a" * 100_000, 400, code=None),
    Case("long-query", "GET", "/api/v1/models?page_token=" + "a" * 100_000, 400, code=None),
    Case("long-header", "GET", "/api/v1/models", 400, headers={"X-Junk": "a" * 100_000}),
    Case("long-request-id", "GET", "/api/v1/models", 200, headers={"X-Request-Id": "a" * 10_000}),
    Case("raw-path-not-utf8", "GET", "", 400, None, raw=raw_request("GET", b"/api/v1/models/\xff\xfe")),
    Case("raw-query-not-utf8", "GET", "", 400, None, raw=raw_request("GET", b"/api/v1/models?page_size=\xff")),
    Case("raw-header-not-utf8", "POST", "", 400, "Inference-Header-Content-Length",
         raw=raw_request("POST", b"/v2/models/{mlp}/infer", b"Inference-Header-Content-Length: \xb2\xff\r\n", infer())),
    Case("raw-chunked-garbage", "POST", "", 400, None,
         raw=raw_request("POST", b"/v1/models/{mlp}:predict", b"Transfer-Encoding: chunked\r\n")
         + b"zz\r\n{}\r\n0\r\n\r\n"),
    Case("raw-chunked-garbage-upload", "POST", "", 400, None,
         raw=raw_request("POST", b"/api/v1/models/m-x/versions", b"Transfer-Encoding: chunked\r\n")
         + b"4\r\nabcd\r\nzz\r\n"),
    Case("raw-content-length-word", "POST", "", 400, None,
         raw=b"POST /v1/models/m:predict HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\nConnection: close\r\n\r\n{}"),
]  # fmt: skip

# Answers that come from aiohttp's HTTP parser, before any route runs: a 4xx in plain text (no JSON body to
# check), closing the connection. Refusing them at the parser is right; they carry no field to name.
PARSER_REFUSALS = {"long-url", "long-query", "long-header", "raw-chunked-garbage", "raw-content-length-word",
                   "raw-chunked-garbage-upload", "raw-path-not-utf8", "raw-query-not-utf8"}  # fmt: skip


@dataclass(frozen=True)
class Stored:
    mlp: str
    named: str  # mlp_v1 uploaded with feature names a-d and class names
    vocab: str
    job: str  # a SUCCEEDED job's id


@pytest.fixture(scope="module")
async def stored(http: aiohttp.ClientSession, served: Served) -> Stored:
    named = unique_name("named")
    params = [*(("feature_name", c) for c in "abcd"), ("class_name", "stays"), ("class_name", "leaves")]
    async with http.post(
        f"/api/v1/models/{named}/versions", params=params, data=served.files["mlp_v1"].read_bytes()
    ) as response:
        assert response.status == 200, await response.text()
    async with http.post("/api/v1/jobs", params={"model": f"{served.mlp}:1"}, data=b"1,2,3,4\n0,0,0,0\n") as response:
        assert response.status == 200, await response.text()
        job = (await response.json())["job"]
    job = await finished_job(http, job["id"])
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    return Stored(served.mlp, named, served.vocab, job["id"])


def _fill(text: str, stored: Stored) -> str:
    for key in ("mlp", "named", "vocab", "job"):
        text = text.replace("{" + key + "}", getattr(stored, key))
    return text


async def _send(http: aiohttp.ClientSession, app: Application, case: Case, stored: Stored) -> tuple[int, bytes]:
    if case.raw is not None:
        host, port = app.http_url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(_fill(case.raw.decode("latin-1"), stored).encode("latin-1"))
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 60)
        finally:
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body
    body = _fill(case.body.decode("latin-1"), stored).encode("latin-1") if case.body is not None else None
    url = URL(app.http_url + _fill(case.path, stored), encoded=True)
    async with http.request(case.method, url, data=body, headers=case.headers) as response:
        return response.status, await response.read()


async def _alive(http: aiohttp.ClientSession) -> None:
    async with http.get("/v2/health/ready") as response:
        assert response.status == 200, await response.text()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_malformed_request_gets_a_clear_answer(
    app: Application, http: aiohttp.ClientSession, stored: Stored, case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    status, raw = await _send(http, app, case, stored)
    text = raw.decode("utf-8", "replace")
    assert status == case.status, (status, text[:500])
    assert "Traceback" not in text and 'File "' not in text, text[:2000]
    await _alive(http)
    if case.id in PARSER_REFUSALS:
        return  # aiohttp's parser logs these itself (at ERROR, with the parser's exception)
    # The caller's mistake is no server error: nothing logged as unexpected (an INTERNAL, or aiohttp's own
    # "Unhandled exception" for a body it could not drain).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    if 200 <= status < 300 or case.method == "HEAD":
        return
    body = json.loads(raw)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    assert body.get("code") and body.get("request_id"), body
    if case.code is not None:
        assert body["code"] == case.code, body
    if case.field is not None:
        fields = [v["field"] for v in body.get("field_violations", [])]
        assert case.field in fields, body


async def test_stored_models_still_serve_after_the_junk(
    http: aiohttp.ClientSession, stored: Stored, served: Served
) -> None:
    """Runs after the table (file order): nothing it sent changed or lost a stored version."""
    x = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    async with http.post(f"/v1/models/{stored.mlp}/versions/1:predict", json={"instances": x.tolist()}) as response:
        assert response.status == 200, await response.text()
        got = np.array((await response.json())["predictions"], np.float32)
    np.testing.assert_allclose(got, keras_outputs(served.files["mlp_v1"], x)["score"], atol=1e-5)
    async with http.get(f"/api/v1/models/{stored.mlp}") as response:
        model = (await response.json())["model"]
    assert (model["latestVersion"], model["labels"]) == ("2", {"stable": "1"})
    async with http.get(f"/api/v1/models/{stored.mlp}/versions/2/artifact") as response:
        assert (
            hashlib.sha256(await response.read()).hexdigest()
            == hashlib.sha256(served.files["mlp_v2"].read_bytes()).hexdigest()
        )
    async with http.get(f"/api/v1/jobs/{stored.job}/results") as response:
        assert response.status == 200 and len((await response.text()).splitlines()) == 3
    async with http.get("/api/v1/models", params={"page_size": "1000"}) as response:
        names = [m["name"] for m in (await response.json())["models"]]
    assert "m-x" not in names and "m" not in names  # no junk upload made a model
