"""The OpenAPI 3.1 description of the HTTP routes (GET /openapi.json), written by hand from
app.py and people.py; tests check that every route it lists answers as it says."""

from __future__ import annotations

from ctrlgan import __version__

ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict:
    text = {
        400: "invalid request (the message names the field)",
        401: "missing or wrong key",
        404: "unknown model or route",
        413: "body too large",
        429: "queue full (Retry-After)",
        405: "method not allowed (see Allow)",
        415: "content-encoding other than gzip or deflate",
        503: "not ready or shutting down",
        504: "the request waited past its timeout",
    }
    return {
        str(c): {"description": text[c], "content": {"application/json": {"schema": ERROR}}}
        for c in codes
    }


def _json(schema: dict, description: str = "OK") -> dict:
    content = {"application/json": {"schema": schema}}
    return {"200": {"description": description, "content": content}}


def _param(name: str, schema: dict, description: str, where: str = "query") -> dict:
    required = where == "path"
    return {"name": name, "in": where, "required": required, "schema": schema,
            "description": description}  # fmt: skip


def schema(models: list[str]) -> dict:
    model = _param("model", {"type": "string", "enum": models}, "a served model", "path")
    version = _param("version", {"type": "string", "enum": ["1"]}, "the model version", "path")
    text = {"type": "string", "maxLength": 200}
    png_response = {
        "200": {"description": "a PNG (ETag, Cache-Control)",
                "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        "304": {"description": "not modified (If-None-Match)"},
        **_errors(400, 401, 404, 429, 503, 504),
    }  # fmt: skip
    common = [
        _param("truncation", {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
               "truncation of the noise"),
        _param("steer", text, "feature:alpha pairs, e.g. thickness:1.5,slant:-1"),
        _param("scale", {"type": "integer", "minimum": 1, "maximum": 32}, "pixel scale"),
    ]  # fmt: skip
    infer = {
        "post": {
            "summary": "Open Inference Protocol v2 inference (JSON or binary tensors)",
            "parameters": [model, {
                "name": "Inference-Header-Content-Length", "in": "header", "required": False,
                "schema": {"type": "integer", "minimum": 0},
                "description": "binary tensor extension: the length of the JSON header that "
                               "starts the body; the tensors' bytes follow it"}],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            }},
            "responses": {**_json({"$ref": "#/components/schemas/InferResponse"}),
                          **_errors(400, 401, 404, 405, 413, 415, 429, 503, 504)},
        }
    }  # fmt: skip
    obj = {"type": "object"}
    metadata = {"get": {"summary": "model metadata", "parameters": [model],
                        "responses": {**_json(obj), **_errors(401, 404)}}}  # fmt: skip
    ready = {"get": {"summary": "model readiness", "parameters": [model],
                     "responses": {**_json(obj), **_errors(401, 404, 503)}}}  # fmt: skip
    with_version = lambda op: {k: {**v, "parameters": [model, version]} for k, v in op.items()}
    tensor = {
        "type": "object", "required": ["name", "datatype", "shape"],
        "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                       "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                       "parameters": {"type": "object"}, "data": {"type": "array"}},
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "ctrlgan", "version": __version__,
                 "description": "Conditional, controllable GAN sampling: Open Inference Protocol "
                                "v2 under /v2, endpoints for people under /v1."},
        "paths": {
            "/v2": {"get": {"summary": "server metadata",
                            "responses": {**_json({"type": "object"}), **_errors(401)}}},
            "/v2/health/live": {"get": {"summary": "liveness", "security": [],
                                        "responses": _json({"type": "object", "properties": {
                                            "live": {"type": "boolean"}}})}},
            "/v2/health/ready": {"get": {"summary": "readiness", "security": [],
                                         "responses": {**_json(
                {"type": "object", "properties": {"ready": {"type": "boolean"}}}),
                **_errors(503)}}},
            "/v2/models/{model}": metadata,
            "/v2/models/{model}/versions/{version}": with_version(metadata),
            "/v2/models/{model}/ready": ready,
            "/v2/models/{model}/versions/{version}/ready": with_version(ready),
            "/v2/models/{model}/infer": infer,
            "/v2/models/{model}/versions/{version}/infer": with_version(infer),
            "/v1/models": {"get": {"summary": "the served models",
                                   "responses": {**_json({"type": "object"}), **_errors(401)}}},
            "/v1/models/{model}/image.png": {"get": {
                "summary": "one image",
                "parameters": [model, _param("class", text, "class index or name"),
                               _param("seed", {"type": "integer", "minimum": 0,
                                               "maximum": 2**64 - 1}, "noise seed"), *common],
                "responses": png_response}},
            "/v1/models/{model}/grid.png": {"get": {
                "summary": "a grid: one row per class, one column per seed",
                "parameters": [model, _param("classes", text, "e.g. 0-9, all, or names"),
                               _param("seeds", text, "e.g. 0-7 or 1,4,7-9"), *common,
                               _param("padding", {"type": "integer", "minimum": 0,
                                                  "maximum": 64}, "pixels between images")],
                "responses": png_response}},
            "/v1/models/{model}/interpolate.png": {"get": {
                "summary": "a strip between two (seed, class) points",
                "parameters": [model, _param("from", text, "SEED:CLASS, e.g. 5:3"),
                               _param("to", text, "SEED:CLASS, e.g. 9:7"),
                               _param("steps", {"type": "integer", "minimum": 2,
                                                "maximum": 256}, "images in the strip"),
                               _param("method", {"type": "string", "enum": ["lerp", "slerp"]},
                                      "noise interpolation"),
                               _param("vary", {"type": "string",
                                               "enum": ["both", "noise", "class"]},
                                      "what moves"), *common[:1], *common[2:],
                               _param("padding", {"type": "integer", "minimum": 0,
                                                  "maximum": 64}, "pixels between images")],
                "responses": png_response}},
            "/v1/models/{model}/sample": {"post": {
                "summary": "the fields of Generator.sample in, images out",
                "parameters": [model],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SampleRequest"}}}},
                "responses": {**_json({"type": "object"}),
                              **_errors(400, 401, 404, 413, 429, 503, 504)}}},
            "/openapi.json": {"get": {"summary": "this document",
                                      "responses": {**_json({"type": "object"}),
                                                    **_errors(401)}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (text format)",
                                 "responses": {"200": {"description": "metrics"},
                                               **_errors(401)}}},
        },
        # with --api-key-file (or CTRLGAN_API_KEY) every route but the health checks needs it
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"],
                          "properties": {"error": {"type": "string"}}},
                "Tensor": tensor,
                "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
                    "id": {"type": "string"}, "parameters": {"type": "object"},
                    "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
                    "outputs": {"type": "array", "items": {"type": "object"}}}},
                "InferResponse": {"type": "object", "properties": {
                    "model_name": {"type": "string"}, "model_version": {"type": "string"},
                    "id": {"type": "string"},
                    "outputs": {"type": "array",
                                "items": {"$ref": "#/components/schemas/Tensor"}}}},
                "SampleRequest": {"type": "object", "properties": {
                    "classes": {}, "seeds": {}, "n": {"type": "integer", "minimum": 1},
                    "seed": {"type": "integer", "minimum": 0},
                    "steer": {"type": "object", "additionalProperties": {}},
                    "truncation": {"type": "number"},
                    "format": {"type": "string", "enum": ["png", "uint8"]},
                    "scale": {"type": "integer", "minimum": 1, "maximum": 32}},
                    "additionalProperties": False},
            },
        },
    }  # fmt: skip
