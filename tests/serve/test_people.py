"""The /v1 endpoints for people (ctrlgan/serve/people.py): PNGs from a URL with ETag caching,
the JSON sample call; and the documents around them: /openapi.json and /metrics."""

import io
import re

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.wire import assert_error, b64_png, dumps, infer_body, png_pixels, reference

PNG = "/v1/models/digits"


def test_models(http):
    (model,) = http.get("/v1/models").json()["models"]
    assert model["name"] == "digits" and model["classes"] == list("0123456789")
    assert model["features"] == ["thickness", "slant", "size"]
    assert model["image_shape"] == [1, 16, 16] and model["backend"] == "onnxruntime"
    assert model["max_images"] == 100 and re.fullmatch("[0-9a-f]{64}", model["checksum"])


def test_image_png_equals_image_uint8(http, generator):
    seed = 2**64 - 3
    r = http.get(f"{PNG}/image.png",
                 params={"class": "7", "seed": seed, "truncation": "0.5",
                         "steer": "thickness:1.5,slant:-1"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    pixels = png_pixels(r.content)
    expected = generator.sample([7], [seed], truncation=0.5, output="uint8",
                                steer={"thickness": 1.5, "slant": -1.0})  # fmt: skip
    np.testing.assert_array_equal(pixels, expected[0, :, :, 0])
    body = infer_body([7], [seed], truncation=[0.5], steer=[[1.5, -1, 0]],
                      outputs=[{"name": "image_uint8"}])  # fmt: skip
    over_v2 = http.post("/v2/models/digits/infer", json=body).json()["outputs"][0]["data"]
    assert pixels.ravel().tolist() == over_v2


def test_image_png_scale(http):
    small = png_pixels(http.get(f"{PNG}/image.png?class=3&seed=9").content)
    big = png_pixels(http.get(f"{PNG}/image.png?class=3&seed=9&scale=4").content)
    assert small.shape == (16, 16) and big.shape == (64, 64)
    np.testing.assert_array_equal(big[::4, ::4], small)


def test_grid_png(http, generator):
    r = http.get(f"{PNG}/grid.png?classes=0-9&seeds=0-7&scale=2")
    assert r.status_code == 200, r.text
    grid = png_pixels(r.content)
    pad = 2
    assert grid.shape == (2 * (10 * (16 + pad) + pad), 2 * (8 * (16 + pad) + pad))
    images = reference(generator, np.repeat(range(10), 8), list(range(8)) * 10)
    for i in (0, 13, 79):  # row i // 8 is class i // 8, column i % 8 is seed i % 8
        top, left = 2 * (pad + (i // 8) * (16 + pad)), 2 * (pad + (i % 8) * (16 + pad))
        np.testing.assert_array_equal(grid[top : top + 32 : 2, left : left + 32 : 2],
                                      images[i, :, :, 0])  # fmt: skip
    r = http.get(f"{PNG}/grid.png?classes=all&seeds=0-10")  # 110 images > --max-images 100
    assert_error(r, 400, "seeds", "110")


def test_interpolate_png(http, generator):
    r = http.get(f"{PNG}/interpolate.png?from=5:3&to=9:7&steps=5&padding=0&method=lerp")
    assert r.status_code == 200, r.text
    strip = png_pixels(r.content)
    assert strip.shape == (16, 5 * 16)
    expected = generator.interpolate((5, 3), (9, 7), 5, method="lerp", output="uint8")
    np.testing.assert_array_equal(strip, np.concatenate(list(expected[..., 0]), axis=1))


def test_etag_and_304(http):
    url = f"{PNG}/image.png?class=2&seed=11&scale=2"
    r = http.get(url)
    tag = r.headers["etag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', tag)
    assert "max-age" in r.headers["cache-control"]
    again = http.get(url, headers={"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    other = http.get(f"{PNG}/image.png?class=2&seed=12&scale=2", headers={"If-None-Match": tag})
    assert other.status_code == 200 and other.headers["etag"] != tag
    reordered = http.get(f"{PNG}/image.png?scale=2&seed=11&class=2")
    assert reordered.headers["etag"] == tag and reordered.content == r.content


@pytest.mark.parametrize(
    "query, words",
    [("image.png?colour=red", ["colour", "unknown"]), ("image.png?class=10", ["class"]),
     ("image.png?class=1&class=2", ["class", "twice"]), ("image.png?seed=-1", ["seed"]),
     ("image.png?seed=x", ["seed"]), ("image.png?truncation=nan", ["truncation"]),
     ("image.png?truncation=0", ["truncation"]), ("image.png?steer=weight:1", ["steer"]),
     ("image.png?steer=thickness", ["steer"]), ("image.png?steer=thickness:inf", ["steer"]),
     ("image.png?scale=0", ["scale"]), ("image.png?scale=33", ["scale"]),
     ("image.png?class=0-3", ["class"]), ("grid.png?seeds=5-1", ["seeds"]),
     ("grid.png?class=1", ["class", "unknown"]), ("grid.png?padding=65", ["padding"]),
     ("interpolate.png?steps=1", ["steps"]), ("interpolate.png?method=cubic", ["method"]),
     ("interpolate.png?from=3", ["from"]), ("interpolate.png?vary=all", ["vary"]),
     ("image.png?" + "a" * 9000, ["query"])],
)  # fmt: skip
def test_png_400(http, query, words):
    assert_error(http.get(f"{PNG}/{query}"), 400, *words)


def test_png_size_bomb_is_refused(http):
    """A few bytes of URL must not ask for gigapixels: the scaled size is checked first."""
    url = f"{PNG}/grid.png?classes=all&seeds=0-9&scale=32&padding=64"  # 26k x 26k pixels
    assert_error(http.get(url), 400, "scale")
    strip = f"{PNG}/interpolate.png?steps=100&scale=32&padding=64"
    assert_error(http.get(strip), 400, "scale")
    # the server's cap is 4096 x 4096 pixels: 2336 x 2912 passes, 4672 x 5824 does not
    ok = http.get(f"{PNG}/grid.png?classes=all&seeds=0-7&scale=16")
    assert ok.status_code == 200 and Image.open(io.BytesIO(ok.content)).size == (2336, 2912)
    assert_error(http.get(f"{PNG}/grid.png?classes=all&seeds=0-7&scale=32"), 400, "scale")


def test_sample_json(http, generator):
    body = {"classes": [1, 5, 9], "seeds": [3, 2**64 - 1, 0], "truncation": 0.75,
            "steer": {"size": [1, 0, -2]}}  # fmt: skip
    doc = http.post(f"{PNG}/sample", json={**body, "format": "uint8"}).json()
    expected = generator.sample(**body, output="uint8")
    assert doc["shape"] == [3, 16, 16, 1] and doc["format"] == "uint8"
    np.testing.assert_array_equal(np.array(doc["images"], np.uint8), expected)
    doc = http.post(f"{PNG}/sample", content=dumps({**body, "scale": 2})).json()
    assert doc["format"] == "png" and len(doc["images"]) == 3
    for text, image in zip(doc["images"], expected, strict=True):
        np.testing.assert_array_equal(b64_png(text)[::2, ::2], image[:, :, 0])
    doc = http.post(f"{PNG}/sample", json={"classes": 4, "n": 3, "seed": 10, "format": "uint8"})
    np.testing.assert_array_equal(np.array(doc.json()["images"], np.uint8),
                                  generator.sample(4, n=3, seed=10, output="uint8"))  # fmt: skip


@pytest.mark.parametrize(
    "body, words",
    [({"classes": [1], "seeds": [1], "colour": 1}, ["colour", "unknown"]),
     ({"classes": [10], "seeds": [1]}, ["class"]), ({"classes": [1], "seeds": [-1]}, ["seed"]),
     ({"classes": [1], "seeds": [1, 2]}, ["seeds"]),
     ({"classes": 1, "n": 101}, ["100"]), ({"classes": 1, "n": 10**9}, ["n"]),
     ({"classes": [1], "seeds": [1], "format": "jpeg"}, ["format"]),
     ({"classes": [1], "seeds": [1], "scale": 99}, ["scale"]),
     ({"classes": [1], "seeds": [1], "truncation": "NaN"}, ["truncation"]),
     ({"classes": [1], "seeds": [1], "steer": {"slant": [1, 2]}}, ["slant"]),
     ([1, 2], ["body"])],
)  # fmt: skip
def test_sample_400(http, body, words):
    assert_error(http.post(f"{PNG}/sample", content=dumps(body)), 400, *words)
    assert_error(http.post(f"{PNG}/sample", content=b"{oops"), 400, "JSON")


# /openapi.json -----------------------------------------------------------------------------
def test_openapi_lists_routes_that_answer(http):
    doc = http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"] and doc["paths"]
    assert {"Error", "InferRequest"} <= set(doc["components"]["schemas"])
    values = {"model": "digits", "version": "1"}
    sample = {"/v2/models/{model}/infer": dumps(infer_body([1], [1])),
              "/v2/models/{model}/versions/{version}/infer": dumps(infer_body([1], [1])),
              "/v1/models/{model}/sample": dumps({"classes": [1], "seeds": [1]})}  # fmt: skip
    for path, item in doc["paths"].items():
        assert path.startswith("/")
        url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
        for method, op in item.items():
            assert method in ("get", "post") and "200" in op["responses"], (path, method)
            for p in op.get("parameters", []):
                assert p["in"] in ("path", "query", "header") and "schema" in p
            r = http.request(method.upper(), url, content=sample.get(path))
            assert r.status_code == 200, (method, path, r.status_code, r.text[:200])
            if method == "get":  # the other methods are refused with 405 and an Allow header
                assert http.delete(url).status_code == 405


# /metrics ----------------------------------------------------------------------------------
def metrics(http) -> dict:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def total(family, suffix: str, **labels) -> float:
    return sum(s.value for s in family.samples if s.name == family.name + suffix
               and all(s.labels.get(k) == v for k, v in labels.items()))  # fmt: skip


def test_metrics(http):
    before = metrics(http)
    for name in ("ctrlgan_request_duration_seconds", "ctrlgan_queue_wait_seconds",
                 "ctrlgan_compute_seconds", "ctrlgan_batch_size"):  # fmt: skip
        assert before[name].type == "histogram", name
    assert before["ctrlgan_requests"].type == "counter"
    assert before["ctrlgan_queued_images"].type == "gauge"
    assert total(before["ctrlgan_queued_images"], "", model="digits") == 0
    for _ in range(3):
        assert http.post("/v2/models/digits/infer", json=infer_body([1, 2], [3, 4])).is_success
    assert http.get("/v2/models/cats").status_code == 404
    after = metrics(http)
    grew = lambda name, suffix, **labels: (total(after[name], suffix, **labels)
                                           - total(before[name], suffix, **labels))  # fmt: skip
    assert grew("ctrlgan_request_duration_seconds", "_count", model="digits", endpoint="infer") == 3
    assert grew("ctrlgan_requests", "_total", model="digits", protocol="http", status="200") >= 3
    assert grew("ctrlgan_requests", "_total", status="404") >= 1
    assert grew("ctrlgan_images", "_total", model="digits") >= 6
    assert grew("ctrlgan_queue_wait_seconds", "_count", model="digits") >= 3
    assert 1 <= grew("ctrlgan_compute_seconds", "_count", model="digits") <= 3
    assert grew("ctrlgan_batch_size", "_sum", model="digits") >= 6
    buckets = [s for s in after["ctrlgan_request_duration_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["endpoint"] == "infer"]  # fmt: skip
    assert buckets and any(s.labels["le"] == "+Inf" for s in buckets)
