"""Requests to the server and the checks of its answers, shared by the tests of tests/serve."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np

FEATURES = ("thickness", "slant", "size")


def tensor(name: str, datatype: str, data, shape=None) -> dict:
    """A JSON input tensor; ``data`` is converted to the datatype's dtype first."""
    from ctrlgan.serve.protocol import DTYPES

    array = np.asarray(data, DTYPES[datatype])
    return {"name": name, "datatype": datatype,
            "shape": list(array.shape if shape is None else shape),
            "data": array.ravel().tolist()}  # fmt: skip


def infer_body(classes, seeds, *, truncation=None, steer=None, seed_type="UINT64", **extra):
    inputs = [tensor("classes", "INT64", classes), tensor("seeds", seed_type, seeds)]
    if truncation is not None:
        inputs.append(tensor("truncation", "FP32", truncation))
    if steer is not None:
        inputs.append(tensor("steer", "FP32", steer))
    return {"inputs": inputs, **extra}


def output(doc: dict, name: str) -> np.ndarray:
    """A JSON output tensor as an array of its datatype and shape."""
    from ctrlgan.serve.protocol import DTYPES

    (spec,) = [o for o in doc["outputs"] if o["name"] == name]
    return np.array(spec["data"], DTYPES[spec["datatype"]]).reshape(spec["shape"])


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    """A JSON error answer: ``status``, {"error": message} naming ``words``, no trace."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json", response.headers
    assert "Traceback" not in response.text
    doc = response.json()
    assert isinstance(doc.get("error"), str) and doc["error"], doc
    for word in words:
        assert word in doc["error"], (word, doc)
    return doc["error"]


def reference(generator, classes, seeds, truncation=None, steer=None) -> np.ndarray:
    """uint8 NHWC images computed in-process one row at a time (no batch to share)."""
    rows = []
    for i, (c, s) in enumerate(zip(classes, seeds, strict=True)):
        tau = None if truncation is None else float(np.float32(np.ravel(truncation)[i]))
        alpha = None
        if steer is not None:
            alpha = {f: float(np.float32(steer[i][k])) for k, f in enumerate(FEATURES)}
        rows.append(generator.sample([int(c)], [int(s)], steer=alpha, truncation=tau,
                                     output="uint8"))  # fmt: skip
    return np.concatenate(rows)


def png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image)


def b64_png(text: str) -> np.ndarray:
    return png_pixels(base64.b64decode(text))


def dumps(doc) -> bytes:
    return json.dumps(doc).encode()


def binary_request(doc: dict, arrays: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """The binary tensor extension: each input in ``arrays`` travels as raw bytes."""
    blobs = []
    for spec in doc["inputs"]:
        if spec["name"] in arrays:
            blob = np.ascontiguousarray(arrays[spec["name"]]).tobytes()
            spec.pop("data", None)
            spec["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
    head = dumps(doc)
    headers = {"Inference-Header-Content-Length": str(len(head)),
               "Content-Type": "application/octet-stream"}  # fmt: skip
    return head + b"".join(blobs), headers


def binary_response(response) -> tuple[dict, dict[str, np.ndarray]]:
    from ctrlgan.serve.protocol import DTYPES

    n = int(response.headers["inference-header-content-length"])
    doc = json.loads(response.content[:n])
    arrays, offset = {}, n
    for spec in doc["outputs"]:
        if "data" in spec:
            arrays[spec["name"]] = output(doc, spec["name"])
            continue
        size = spec["parameters"]["binary_data_size"]
        raw = response.content[offset : offset + size]
        arrays[spec["name"]] = np.frombuffer(raw, DTYPES[spec["datatype"]]).reshape(spec["shape"])
        offset += size
    assert offset == len(response.content)
    return doc, arrays
