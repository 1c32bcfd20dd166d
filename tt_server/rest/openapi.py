"""``/openapi.json`` (OpenAPI 3.1, made from the route table, so it cannot drift from what is served) and
``/docs``, a self-contained page that renders it: no CDN, so it works on an air-gapped cluster.

Both follow ``TT_AUTH_PUBLIC_REFLECTION``: describing the API is what server reflection does for gRPC.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from tt_server.compat.kserve import server_version
from tt_server.rest.core import DOCS_RPC, Route, json_response

_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")


def openapi_document(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        path = _PARAM.sub(r"{\1}", route.path)
        operation: dict[str, Any] = {
            "tags": [route.tag],
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_')}",
            "x-grpc-method": route.rpc,
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _PARAM.findall(route.path)
            ]
            + [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}} for name in route.query],
            "responses": {
                "200": {"description": "Success", "content": {route.response: {}}},
                "default": {
                    "description": "Error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                },
            },
        }
        if route.body is not None:
            media = {"schema": route.schema} if route.schema else {}
            operation["requestBody"] = {"required": True, "content": {route.body: media}}
        paths.setdefault(path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tensor Trigger HTTP API",
            "version": server_version(),
            "description": "Open Inference Protocol v2, TF Serving's REST API, TFaaS's routes and Tensor "
            "Trigger's own registry and jobs API, over the same services as gRPC. Send "
            "'Authorization: Bearer <token>' when the server has a token file.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "code"],
                    "properties": {
                        "error": {"type": "string"},
                        "code": {"type": "string", "description": "The gRPC status code name"},
                        "request_id": {"type": "string"},
                        "field_violations": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {"field": {"type": "string"}, "description": {"type": "string"}},
                            },
                        },
                    },
                }
            },
        },
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tensor Trigger HTTP API</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.5em}
.op{display:flex;gap:.8em;align-items:baseline;padding:.35em .5em;border-radius:4px;margin:.2em 0;background:#f6f8fa}
.m{font-weight:bold;width:4.5em;text-align:center;color:#fff;border-radius:3px;padding:.1em 0;font-size:.85em}
.GET{background:#2b7bb9}.POST{background:#3a9b52}.DELETE{background:#c4453b}.PUT{background:#b8860b}
code{font-size:.95em}.rpc{color:#777;font-size:.85em;margin-left:auto}
</style></head>
<body><h1 id="title">Tensor Trigger HTTP API</h1><p id="description"></p><div id="api">Loading /openapi.json ...</div>
<script>
fetch("openapi.json").then(r => r.json()).then(doc => {
  document.getElementById("title").textContent = doc.info.title + " " + doc.info.version;
  document.getElementById("description").textContent = doc.info.description;
  const byTag = {};
  for (const [path, ops] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(ops))
      (byTag[op.tags[0]] = byTag[op.tags[0]] || []).push([method.toUpperCase(), path, op]);
  const root = document.getElementById("api");
  root.textContent = "";
  for (const [tag, ops] of Object.entries(byTag)) {
    const h = document.createElement("h2"); h.textContent = tag; root.appendChild(h);
    for (const [method, path, op] of ops) {
      const row = document.createElement("div"); row.className = "op";
      const m = document.createElement("span"); m.className = "m " + method; m.textContent = method;
      const p = document.createElement("code"); p.textContent = path;
      const s = document.createElement("span"); s.textContent = op.summary;
      const g = document.createElement("span"); g.className = "rpc"; g.textContent = op["x-grpc-method"];
      row.append(m, p, s, g); root.appendChild(row);
    }
  }
  document.body.dataset.rendered = String(Object.keys(doc.paths).length);
}).catch(e => { document.getElementById("api").textContent = "cannot load openapi.json: " + e; });
</script></body></html>
"""


def docs_routes(routes: list[Route]) -> list[Route]:
    document: dict[str, Any] = {}

    async def openapi(request: web.Request) -> web.Response:
        if not document:
            document.update(openapi_document(all_routes))
        return json_response(document)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=_PAGE, content_type="text/html")

    all_routes = [
        *routes,
        Route("GET", "/openapi.json", openapi, DOCS_RPC, "Documentation", "This document."),
        Route(
            "GET", "/docs", page, DOCS_RPC, "Documentation", "A page that renders this document.", response="text/html"
        ),
    ]
    return all_routes[len(routes) :]
