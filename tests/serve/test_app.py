"""The HTTP side of the Open Inference Protocol v2 (ctrlgan/serve/app.py, protocol.py), driven
with plain httpx: every route, the binary tensor extension both ways, compressed bodies, and
every error status with a JSON body that names the field."""

import gzip
import json
import zlib

import numpy as np
import pytest

from tests.serve.wire import (
    assert_error,
    binary_request,
    binary_response,
    dumps,
    infer_body,
    output,
    reference,
    tensor,
)

INFER = "/v2/models/digits/infer"


# Routes that answer ------------------------------------------------------------------------
def test_health_and_metadata(http):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    meta = http.get("/v2").json()
    assert meta["name"] == "ctrlgan" and "binary_tensor_data" in meta["extensions"]
    for path in ("/v2/models/digits", "/v2/models/digits/versions/1"):
        model = http.get(path).json()
        assert model["name"] == "digits" and model["versions"] == ["1"]
        assert [(t["name"], t["datatype"], t["shape"]) for t in model["inputs"]] == [
            ("classes", "INT64", [-1]), ("seeds", "INT64", [-1]), ("truncation", "FP32", [-1]),
            ("steer", "FP32", [-1, 3]),
        ]  # fmt: skip
        assert [(t["name"], t["datatype"], t["shape"]) for t in model["outputs"]] == [
            ("image", "FP32", [-1, 1, 16, 16]),
            ("image_uint8", "UINT8", [-1, 16, 16, 1]),
        ]
        assert json.loads(model["parameters"]["features"]) == ["thickness", "slant", "size"]
        assert model["parameters"]["max_images"] == "100"
    for path in ("/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"):
        r = http.get(path)
        assert r.status_code == 200 and r.json()["ready"] is True


def test_head_is_get_without_a_body(http):
    r = http.head("/v2/health/live")
    assert r.status_code == 200 and r.content == b""


def test_infer_json(http, generator):
    classes, seeds = [3, 0, 9], [5, 2**64 - 1, 2**63]
    body = infer_body(classes, seeds, truncation=[0.5, 0.5, 0.5], id="req-17")
    r = http.post(INFER, json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-17" and doc["model_name"] == "digits" and doc["model_version"] == "1"
    u8, image = output(doc, "image_uint8"), output(doc, "image")
    assert u8.shape == (3, 16, 16, 1) and image.shape == (3, 1, 16, 16)
    np.testing.assert_array_equal(u8, reference(generator, classes, seeds, [0.5] * 3))
    expected = generator.sample(classes, seeds, truncation=0.5)
    np.testing.assert_array_equal(image, expected)


def test_infer_outputs_subset_and_no_id(http):
    body = infer_body([1], [1], outputs=[{"name": "image_uint8"}])
    doc = http.post(INFER, json=body).json()
    assert [o["name"] for o in doc["outputs"]] == ["image_uint8"] and "id" not in doc


def test_infer_binary_both_ways(http, generator):
    classes = np.array([7, 1, 4, 4, 2], np.int64)
    seeds = np.array([2**64 - 2, 0, 99, 100, 12345678901234567890], np.uint64)
    steer = np.random.default_rng(0).uniform(-2, 2, (5, 3)).astype(np.float32)
    doc = infer_body(classes, seeds, steer=steer, id="bin",
                     parameters={"binary_data_output": True})  # fmt: skip
    body, headers = binary_request(doc, {"classes": classes, "seeds": seeds, "steer": steer})
    r = http.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    head, arrays = binary_response(r)
    assert head["id"] == "bin"
    np.testing.assert_array_equal(arrays["image_uint8"],
                                  reference(generator, classes, seeds, steer=steer))  # fmt: skip
    # one output binary, the other JSON, chosen per output
    doc = infer_body(
        classes,
        seeds,
        steer=steer,
        outputs=[{"name": "image", "parameters": {"binary_data": True}}, {"name": "image_uint8"}],
    )
    r2 = http.post(INFER, json=doc)
    head2, arrays2 = binary_response(r2)
    assert "data" in head2["outputs"][1] and "data" not in head2["outputs"][0]
    np.testing.assert_array_equal(arrays2["image"], arrays["image"])
    np.testing.assert_array_equal(arrays2["image_uint8"], arrays["image_uint8"])


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_compressed_bodies_and_no_content_type(http, encoding):
    raw = dumps(infer_body([2, 3], [4, 5], outputs=[{"name": "image_uint8"}]))
    if encoding == "gzip":
        body = gzip.compress(raw)
    elif encoding == "deflate":
        body = zlib.compress(raw)
    else:
        c = zlib.compressobj(wbits=-15)
        body = c.compress(raw) + c.flush()
    name = encoding.removeprefix("raw-")
    r = http.post(INFER, content=body, headers={"Content-Encoding": name})
    assert "content-type" not in r.request.headers
    assert r.status_code == 200, r.text
    plain = http.post(INFER, content=raw)
    assert plain.status_code == 200 and plain.json() == r.json()


# Errors: 400 -------------------------------------------------------------------------------
def with_input(name, datatype, data, shape=None, base=None):
    doc = base or infer_body([1, 2], [3, 4])
    doc["inputs"] = [t for t in doc["inputs"] if t["name"] != name]
    doc["inputs"].append(tensor(name, datatype, data, shape))
    return doc


NAN = float("nan")
BAD_400 = {
    "unknown class": (with_input("classes", "INT64", [1, 10]), ["classes", "0..9"]),
    "negative class": (with_input("classes", "INT64", [-1, 0]), ["classes"]),
    "bad shape": (with_input("classes", "INT64", [[1], [2]]), ["classes", "shape"]),
    "shape vs data": (with_input("classes", "INT64", [1, 2], shape=[3]), ["classes", "3"]),
    "wrong datatype": (with_input("classes", "FP32", [1, 2]), ["classes", "datatype"]),
    "unknown datatype": (
        {"inputs": [{"name": "classes", "datatype": "INT128", "shape": [1], "data": [1]}]},
        ["classes", "datatype"],
    ),
    "datatype a list": (
        {"inputs": [{"name": "classes", "datatype": [], "shape": [1], "data": [1]}]},
        ["classes", "datatype"],
    ),
    "float for int": (
        {"inputs": [{"name": "seeds", "datatype": "INT64", "shape": [1], "data": [1.5]}]},
        ["seeds", "integers"],
    ),
    "huge int for a float": (
        {
            "inputs": [
                *infer_body([1, 2], [3, 4])["inputs"],
                {"name": "truncation", "datatype": "FP32", "shape": [2], "data": [10**400, 1]},
            ]
        },
        ["truncation", "range"],
    ),
    "negative seed": (with_input("seeds", "INT64", [-5, 1]), ["seeds"]),
    "seed beyond int64": (
        {"inputs": [{"name": "seeds", "datatype": "INT64", "shape": [1], "data": [2**63]}]},
        ["seeds", "range"],
    ),
    "seeds count": (with_input("seeds", "INT64", [1, 2, 3]), ["seeds"]),
    "NaN truncation": (with_input("truncation", "FP32", [NAN, NAN]), ["truncation"]),
    "NaN in one truncation": (with_input("truncation", "FP32", [0.5, NAN]), ["truncation"]),
    "zero truncation": (with_input("truncation", "FP32", [0.0, 0.0]), ["truncation"]),
    "NaN steer": (with_input("steer", "FP32", [[NAN, 0, 0], [0, 0, 0]]), ["steer"]),
    "inf steer": (with_input("steer", "FP32", [[float("inf"), 0, 0], [0, 0, 0]]), ["steer"]),
    "steer shape": (with_input("steer", "FP32", [[1, 0], [0, 0]]), ["steer", "shape"]),
    "too many images": (
        infer_body(list(range(10)) * 11, list(range(110))),
        ["classes", "110", "100"],
    ),
    "no images": (infer_body([], []), ["classes"]),
    "unknown input": (with_input("noise", "FP32", [1, 2]), ["noise", "unknown input"]),
    "missing input": ({"inputs": [tensor("classes", "INT64", [1])]}, ["seeds", "required"]),
    "no inputs": ({"inputs": []}, ["inputs"]),
    "not an object": ([1, 2], ["body"]),
    "id not a string": (infer_body([1], [1], id=5), ["id"]),
    "unknown output": (infer_body([1], [1], outputs=[{"name": "latent"}]), ["latent", "output"]),
    "binary_data_output yes": (
        infer_body([1], [1], parameters={"binary_data_output": "yes"}),
        ["binary_data_output"],
    ),
    "binary_data yes": (
        infer_body([1], [1], outputs=[{"name": "image", "parameters": {"binary_data": 1}}]),
        ["binary_data"],
    ),
    "timeout negative": (infer_body([1], [1], parameters={"timeout": -1}), ["timeout"]),
    "timeout float": (infer_body([1], [1], parameters={"timeout": 1.5}), ["timeout"]),
    "timeout bool": (infer_body([1], [1], parameters={"timeout": True}), ["timeout"]),
    "parameter object": (infer_body([1], [1], parameters={"x": {"y": 1}}), ["parameters.x"]),
    "classification": (
        infer_body([1], [1], outputs=[{"name": "image", "parameters": {"classification": 2}}]),
        ["classification"],
    ),
    "duplicate input": (
        {"inputs": [tensor("classes", "INT64", [1]), tensor("classes", "INT64", [1])]},
        ["classes", "twice"],
    ),
    "deep data": (
        {
            "inputs": [
                {
                    "name": "seeds",
                    "datatype": "INT64",
                    "shape": [1],
                    "data": json.loads("[" * 50 + "1" + "]" * 50),
                }
            ]
        },
        ["seeds", "nested"],
    ),
}


@pytest.mark.parametrize("case", BAD_400, ids=list(BAD_400))
def test_400_names_the_field(http, case):
    doc, words = BAD_400[case]
    assert_error(http.post(INFER, content=dumps(doc)), 400, *words)


@pytest.mark.parametrize(
    "body, words",
    [(b"{not json", ["JSON"]), (b"\xff\xfe", ["JSON"]), (b"", ["JSON"]),
     (b'{"inputs": [' * 2000, ["JSON"]), (b"[" * 10_000, ["JSON"]),
     (b'{"inputs": [{"name": "seeds", "datatype": "INT64", "shape": [1], "data": [NaN]}]}',
      ["seeds", "integers"])],
)  # fmt: skip
def test_400_bad_json(http, body, words):
    assert_error(http.post(INFER, content=body), 400, *words)


def test_400_binary_sizes_that_do_not_add_up(http):
    classes, seeds = np.array([1, 2], np.int64), np.array([3, 4], np.uint64)
    body, headers = binary_request(infer_body(classes, seeds), {"classes": classes, "seeds": seeds})
    n = int(headers["Inference-Header-Content-Length"])
    assert_error(http.post(INFER, content=body[:-1], headers=headers), 400, "seeds")  # short
    assert_error(http.post(INFER, content=body + b"x", headers=headers), 400, "binary bytes")
    for length in ("-1", str(len(body) + 1), "abc", str(n - 1)):
        r = http.post(INFER, content=body, headers={**headers,
                      "Inference-Header-Content-Length": length})  # fmt: skip
        assert_error(r, 400)
    doc = infer_body(classes, seeds)
    doc["inputs"][1]["parameters"] = {"binary_data_size": 15}
    del doc["inputs"][1]["data"]
    head = dumps(doc)
    r = http.post(INFER, content=head + seeds.tobytes()[:15],
                  headers={"Inference-Header-Content-Length": str(len(head))})  # fmt: skip
    assert_error(r, 400, "seeds", "15 bytes")
    doc["inputs"][1]["parameters"] = {"binary_data_size": -16}
    assert_error(
        http.post(
            INFER,
            content=dumps(doc),
            headers={"Inference-Header-Content-Length": str(len(dumps(doc)))},
        ),
        400,
        "binary_data_size",
    )


def test_400_bad_compressed_body(http):
    assert_error(http.post(INFER, content=b"not gzip", headers={"Content-Encoding": "gzip"}),
                 400, "gzip")  # fmt: skip
    assert_error(http.post(INFER, content=b"not zlib", headers={"Content-Encoding": "deflate"}),
                 400, "deflate")  # fmt: skip
    assert_error(http.post(INFER, content=b"{}", headers={"Content-Encoding": "br"}), 415, "br")


# Errors: 404, 405, 413 -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, words",
    [("/v2/models/cats", ["cats", "digits"]), ("/v2/models/cats/ready", ["cats"]),
     ("/v2/models/digits/versions/2", ["version"]), ("/v2/models/digits/versions/2/ready", []),
     ("/static/secret.txt", []), ("/static/../app.py", []), ("/v3", []),
     ("/v2/models/digits/stats", []), ("/v2/health", []),
     ("/v1/models/digits/image.jpg", []), ("/v1/models/cats/image.png", ["cats"]),
     ("/v2/models/" + "x" * 500, ["..."]), ("/metrics/extra", [])],
)  # fmt: skip
def test_404(http, path, words):
    assert_error(http.get(path), 404, *words)


def test_404_infer(http):
    body = dumps(infer_body([1], [1]))
    assert_error(http.post("/v2/models/cats/infer", content=body), 404, "cats")
    assert_error(http.post("/v2/models/digits/versions/0/infer", content=body), 404, "version")


@pytest.mark.parametrize(
    "method, path, allowed",
    [("GET", INFER, "POST"), ("PUT", INFER, "POST"), ("POST", "/v2/health/ready", "GET"),
     ("DELETE", "/v2/models/digits", "GET"), ("POST", "/v1/models/digits/image.png", "GET"),
     ("GET", "/v1/models/digits/sample", "POST"), ("PATCH", "/metrics", "GET")],
)  # fmt: skip
def test_405(http, method, path, allowed):
    r = http.request(method, path)
    assert_error(r, 405, allowed)
    assert r.headers["allow"] == allowed


def test_413_body_over_the_limit(http):
    big = b" " * (1 << 20) + dumps(infer_body([1], [1]))  # valid JSON, 1 MiB of spaces first
    assert_error(http.post(INFER, content=big), 413, "body")

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for _ in range(20):
            yield b" " * (64 << 10)

    assert_error(http.post(INFER, content=chunks()), 413, "body")
    assert_error(http.post("/v1/models/digits/sample", content=big), 413, "body")


def test_413_gzip_bomb(http):
    bomb = gzip.compress(b" " * (16 << 20))  # 16 KB that inflate to 16 MiB
    assert len(bomb) < 100_000
    assert_error(http.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"}),
                 413, "decompressed")  # fmt: skip


def test_400_shape_beyond_any_request(http):
    doc = {"inputs": [{"name": "seeds", "datatype": "INT64", "shape": [10**9, 10**9], "data": []}]}
    assert_error(http.post(INFER, content=dumps(doc)), 400, "seeds", "shape")
    # a zero-size tensor with a huge side: refused by its side, not a reshape's ValueError
    for shape in ([10**30, 0], [2**62, 2**62, 0]):
        doc = {"inputs": [{"name": "seeds", "datatype": "INT64", "shape": shape, "data": []}]}
        assert_error(http.post(INFER, content=dumps(doc)), 400, "seeds", "shape")


def test_server_still_healthy(http):
    assert http.get("/v2/health/ready").status_code == 200
