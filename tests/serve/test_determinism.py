"""Every image over every protocol equals in-process ``Generator.sample`` bit for bit, whatever
else shares its batch: fresh random classes, seeds over the whole uint64 range, odd batch sizes,
non-trivial steering and per-row truncation, sent concurrently over HTTP JSON, HTTP binary,
gRPC and the PNG endpoint, next to unrelated requests that the batcher may join to them."""

import secrets
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from tests.serve.wire import (
    FEATURES,
    binary_request,
    binary_response,
    infer_body,
    output,
    png_pixels,
    reference,
)

INFER = "/v2/models/digits/infer"
SIZES = (1, 7, 13)


def case(rng, size: int) -> dict:
    taus = rng.choice(np.array([0.7, 1.0, rng.uniform(0.3, 2.0)], np.float32), size)
    return {
        "classes": rng.integers(0, 10, size),
        "seeds": rng.integers(0, 2**64, size, dtype=np.uint64, endpoint=False),
        "truncation": taus.astype(np.float32),
        "steer": rng.uniform(-2.5, 2.5, (size, 3)).astype(np.float32),
    }


def over_json(http, c):
    body = infer_body(c["classes"], c["seeds"], truncation=c["truncation"], steer=c["steer"],
                      outputs=[{"name": "image_uint8"}])  # fmt: skip
    r = http.post(INFER, json=body)
    assert r.status_code == 200, r.text
    return output(r.json(), "image_uint8")


def over_binary(http, c):
    arrays = {"classes": c["classes"].astype(np.int64), "seeds": c["seeds"],
              "truncation": c["truncation"], "steer": c["steer"]}  # fmt: skip
    doc = infer_body(**arrays, parameters={"binary_data_output": True})
    body, headers = binary_request(doc, arrays)
    r = http.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    return binary_response(r)[1]["image_uint8"]


def over_grpc(client, c):
    inputs = []
    for name, datatype in (("classes", "INT64"), ("seeds", "UINT64"), ("truncation", "FP32"),
                           ("steer", "FP32")):  # fmt: skip
        array = c[name].astype(np.int64) if name == "classes" else c[name]
        t = tgrpc.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array)
        inputs.append(t)
    return client.infer("digits", inputs, client_timeout=30).as_numpy("image_uint8")


def over_png(http, c):
    out = []
    for i in range(len(c["classes"])):
        steer = ",".join(f"{f}:{float(c['steer'][i, k])!r}" for k, f in enumerate(FEATURES))
        params = {"class": int(c["classes"][i]), "seed": int(c["seeds"][i]), "steer": steer,
                  "truncation": repr(float(c["truncation"][i]))}  # fmt: skip
        r = http.get("/v1/models/digits/image.png", params=params)
        assert r.status_code == 200, r.text
        out.append(png_pixels(r.content)[None, :, :, None])
    return np.concatenate(out)


def noise(http, rng):
    """Unrelated requests, at the truncations the cases use, for the batcher to mix in."""
    c = case(rng, int(rng.integers(1, 20)))
    c["truncation"][:] = rng.choice([0.7, 1.0])
    return over_json(http, c)


@pytest.fixture(scope="module")
def grpc_client(server):
    client = tgrpc.InferenceServerClient(server.grpc)
    yield client
    client.close()


def test_every_protocol_gives_the_in_process_bytes(http, grpc_client, generator):
    seed = secrets.randbits(32)
    rng = np.random.default_rng(seed)
    cases = [case(rng, size) for size in SIZES for _ in range(2)]
    calls = []
    for c in cases:
        calls += [(over_json, http, c), (over_binary, http, c), (over_grpc, grpc_client, c),
                  (over_png, http, c)]  # fmt: skip
    calls += [(noise, http, np.random.default_rng(seed + i)) for i in range(24)]
    order = rng.permutation(len(calls))
    with ThreadPoolExecutor(8) as pool:
        futures = {i: pool.submit(calls[i][0], *calls[i][1:]) for i in order}
        results = {i: f.result(timeout=60) for i, f in futures.items()}
    for n, c in enumerate(cases):
        expected = reference(generator, c["classes"], c["seeds"], c["truncation"], c["steer"])
        for k, protocol in enumerate(("json", "binary", "grpc", "png")):
            got = results[4 * n + k]
            assert got.dtype == np.uint8 and got.shape == expected.shape, protocol
            assert np.array_equal(got, expected), f"{protocol} differs (rng seed {seed})"


@pytest.mark.parametrize("size", SIZES)
def test_float_output_equals_sample(http, generator, size):
    rng = np.random.default_rng(secrets.randbits(32))
    c = case(rng, size)
    c["truncation"][:] = 0.625  # one truncation: the whole request is one batcher call
    body = infer_body(c["classes"], c["seeds"], truncation=c["truncation"], steer=c["steer"],
                      outputs=[{"name": "image"}])  # fmt: skip
    got = output(http.post(INFER, json=body).json(), "image")
    steer = {f: c["steer"][:, k].tolist() for k, f in enumerate(FEATURES)}
    expected = generator.sample(c["classes"].tolist(), c["seeds"].tolist(), steer=steer,
                                truncation=0.625)  # fmt: skip
    assert got.dtype == np.float32 and np.array_equal(got, expected)
