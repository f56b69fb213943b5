"""The server through the clients people use, unchanged: tritonclient.http, tritonclient.grpc
(the OIP v2 gRPC service, ctrlgan/serve/grpc.py) and KServe's InferenceRESTClient.

KServe's package cannot share a process with tritonclient.grpc (both register `inference.*`
messages in protobuf's default descriptor pool), so its checks run in a subprocess.
"""

import json
import subprocess
import sys
import textwrap

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.serve.conftest import KEY, ROOT
from tests.serve.wire import reference

SEEDS = np.array([0, 7, 2**63, 2**64 - 1, 424242], np.uint64)
CLASSES = np.array([9, 0, 3, 3, 6], np.int64)
TAU = np.full(5, 0.75, np.float32)
STEER = np.array([[1, 0, 0], [0, -1.5, 0], [0, 0, 2], [0.5, 0.5, 0.5], [0, 0, 0]], np.float32)


def http_inputs(binary: bool, steer=True):
    arrays = [
        ("classes", CLASSES, "INT64"),
        ("seeds", SEEDS, "UINT64"),
        ("truncation", TAU, "FP32"),
    ]
    if steer:
        arrays.append(("steer", STEER, "FP32"))
    out = []
    for name, array, datatype in arrays:
        t = thttp.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array, binary_data=binary)
        out.append(t)
    return out


def grpc_inputs(classes=CLASSES, seeds=SEEDS, steer=STEER):
    out = []
    for name, array, datatype in [("classes", classes, "INT64"), ("seeds", seeds, "UINT64"),
                                  ("truncation", TAU[: len(classes)], "FP32"),
                                  ("steer", steer, "FP32")]:  # fmt: skip
        t = tgrpc.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array)
        out.append(t)
    return out


@pytest.fixture(scope="module")
def expected(generator):
    return reference(generator, CLASSES, SEEDS, TAU, STEER)


# tritonclient.http -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def th(server):
    client = thttp.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def test_http_health_and_metadata(th):
    assert th.is_server_live() and th.is_server_ready() and th.is_model_ready("digits")
    assert not th.is_model_ready("cats")
    meta = th.get_server_metadata()
    assert meta["name"] == "ctrlgan" and "binary_tensor_data" in meta["extensions"]
    model = th.get_model_metadata("digits", model_version="1")
    assert [i["name"] for i in model["inputs"]] == ["classes", "seeds", "truncation", "steer"]
    assert model["inputs"][3]["shape"] == [-1, 3]
    assert [(o["name"], o["datatype"], o["shape"]) for o in model["outputs"]] == [
        ("image", "FP32", [-1, 1, 16, 16]),
        ("image_uint8", "UINT8", [-1, 16, 16, 1]),
    ]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_http_infer(th, expected, generator, binary):
    outputs = [thttp.InferRequestedOutput("image_uint8", binary_data=binary),
               thttp.InferRequestedOutput("image", binary_data=binary)]  # fmt: skip
    result = th.infer("digits", http_inputs(binary), outputs=outputs, request_id=f"r-{binary}",
                      timeout=10_000_000)  # fmt: skip
    assert result.get_response()["id"] == f"r-{binary}"
    np.testing.assert_array_equal(result.as_numpy("image_uint8"), expected)
    assert result.as_numpy("image").dtype == np.float32
    assert result.as_numpy("image").shape == (5, 1, 16, 16)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_http_infer_compressed_subset(th, expected, algorithm):
    wanted = [thttp.InferRequestedOutput("image_uint8")]
    result = th.infer("digits", http_inputs(True), outputs=wanted,
                      request_compression_algorithm=algorithm)  # fmt: skip
    assert result.as_numpy("image") is None
    np.testing.assert_array_equal(result.as_numpy("image_uint8"), expected)


def test_http_errors(th):
    bad = http_inputs(False, steer=False)
    bad[0].set_data_from_numpy(np.array([1, 2, 3, 4, 10], np.int64), binary_data=False)
    with pytest.raises(InferenceServerException) as e:
        th.infer("digits", bad)
    assert e.value.status() == "400" and "classes" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        th.infer("cats", http_inputs(False))
    assert e.value.status() == "404" and "cats" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        th.get_model_metadata("digits", model_version="3")
    assert e.value.status() == "404"
    for timeout in (0, -1):  # the reserved timeout parameter: microseconds > 0
        with pytest.raises(InferenceServerException) as e:
            th.infer("digits", http_inputs(False), timeout=timeout)
        assert e.value.status() == "400" and "timeout" in e.value.message()


# tritonclient.grpc -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tg(server):
    client = tgrpc.InferenceServerClient(server.grpc)
    yield client
    client.close()


def test_grpc_health_and_metadata(tg):
    assert tg.is_server_live() and tg.is_server_ready() and tg.is_model_ready("digits")
    meta = tg.get_server_metadata(as_json=True)
    assert meta["name"] == "ctrlgan" and meta["extensions"] == ["binary_tensor_data"]
    model = tg.get_model_metadata("digits", as_json=True)
    assert model["versions"] == ["1"]
    assert [(i["name"], i["datatype"], i["shape"]) for i in model["inputs"]] == [
        ("classes", "INT64", ["-1"]), ("seeds", "INT64", ["-1"]),
        ("truncation", "FP32", ["-1"]), ("steer", "FP32", ["-1", "3"])]  # fmt: skip
    assert [(o["name"], o["datatype"], o["shape"]) for o in model["outputs"]] == [
        ("image", "FP32", ["-1", "1", "16", "16"]),
        ("image_uint8", "UINT8", ["-1", "16", "16", "1"]),
    ]


def test_grpc_infer(tg, expected, th, generator):
    result = tg.infer("digits", grpc_inputs(), request_id="g-1", timeout=5_000_000,
                      client_timeout=30.0)  # fmt: skip
    assert result.get_response().id == "g-1"
    np.testing.assert_array_equal(result.as_numpy("image_uint8"), expected)
    over_http = th.infer("digits", http_inputs(True)).as_numpy("image")
    np.testing.assert_array_equal(result.as_numpy("image"), over_http)
    subset = tg.infer("digits", grpc_inputs(), outputs=[tgrpc.InferRequestedOutput("image")])
    assert subset.as_numpy("image_uint8") is None
    np.testing.assert_array_equal(subset.as_numpy("image"), over_http)


def test_grpc_errors(tg):
    cases = [
        (dict(model_name="digits", inputs=grpc_inputs(classes=np.array([1, 2, 3, 4, 11]))),
         grpc.StatusCode.INVALID_ARGUMENT, "classes"),
        (dict(model_name="digits", inputs=grpc_inputs(steer=STEER[:, :2])),
         grpc.StatusCode.INVALID_ARGUMENT, "steer"),
        (dict(model_name="digits", inputs=grpc_inputs(), timeout=-5),
         grpc.StatusCode.INVALID_ARGUMENT, "timeout"),
        (dict(model_name="digits", inputs=grpc_inputs(),
              outputs=[tgrpc.InferRequestedOutput("latent")]),
         grpc.StatusCode.INVALID_ARGUMENT, "latent"),
        (dict(model_name="cats", inputs=grpc_inputs()), grpc.StatusCode.NOT_FOUND, "cats"),
        (dict(model_name="digits", model_version="2", inputs=grpc_inputs()),
         grpc.StatusCode.NOT_FOUND, "version"),
    ]  # fmt: skip
    for kwargs, code, word in cases:
        with pytest.raises(InferenceServerException) as e:
            tg.infer(**kwargs)
        assert e.value.status() == str(code), (kwargs, e.value)
        assert word in e.value.message() and "Traceback" not in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        tg.get_model_metadata("cats")
    assert e.value.status() == str(grpc.StatusCode.NOT_FOUND)
    assert tg.is_server_ready()


def test_grpc_tiny_timeout_is_deadline_exceeded(tg):
    many = np.arange(100)
    inputs = grpc_inputs(classes=many % 10, seeds=many.astype(np.uint64),
                         steer=np.zeros((100, 3), np.float32))  # fmt: skip
    inputs[2] = tgrpc.InferInput("truncation", [100], "FP32")
    inputs[2].set_data_from_numpy(np.full(100, 0.75, np.float32))
    with pytest.raises(InferenceServerException) as e:
        tg.infer("digits", inputs, timeout=1)  # one microsecond in the queue
    assert e.value.status() == str(grpc.StatusCode.DEADLINE_EXCEEDED)


# Auth --------------------------------------------------------------------------------------
def test_auth_grpc(auth_server):
    client = tgrpc.InferenceServerClient(auth_server.grpc)
    try:
        assert client.is_server_live() and client.is_server_ready()  # open without a key
        for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": KEY}):
            with pytest.raises(InferenceServerException) as e:
                client.infer("digits", grpc_inputs(), headers=headers)
            assert e.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
            with pytest.raises(InferenceServerException) as e:
                client.get_model_metadata("digits", headers=headers)
            assert e.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
        good = {"authorization": f"Bearer {KEY}"}
        result = client.infer("digits", grpc_inputs(), headers=good)
        assert result.as_numpy("image_uint8").shape == (5, 16, 16, 1)
        assert client.get_model_metadata("digits", headers=good).name == "digits"
    finally:
        client.close()


def test_auth_tritonclient_http(auth_server):
    client = thttp.InferenceServerClient(auth_server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        with pytest.raises(InferenceServerException) as e:
            client.infer("digits", http_inputs(True))
        assert e.value.status() == "401"
        result = client.infer("digits", http_inputs(True), headers={
            "Authorization": f"Bearer {KEY}"})  # fmt: skip
        assert result.as_numpy("image_uint8").shape == (5, 16, 16, 1)
    finally:
        client.close()


# KServe ----------------------------------------------------------------------------------
KSERVE = textwrap.dedent(
    """
    import asyncio, json, sys
    import numpy as np
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    url = sys.argv[1]
    CLASSES, SEEDS = np.array(json.loads(sys.argv[2]), np.int64), json.loads(sys.argv[3])

    async def main():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        out = {"live": await client.is_server_live(url),
               "ready": await client.is_server_ready(url),
               "model_ready": await client.is_model_ready(url, "digits"),
               "cats_ready": await client.is_model_ready(url, "cats")}
        meta = await client._client.get(f"{url}/v2/models/digits")
        out["metadata"] = meta.json()
        for binary in (False, True):
            out["binary" if binary else "json"] = await infer(client, binary)
        try:
            await client.infer(url, {"inputs": []}, model_name="digits")
        except Exception as e:
            out["error"] = [type(e).__name__, e.response.status_code, e.response.json()]
        await client.close()
        print(json.dumps(out))

    async def infer(client, binary):
        out = {}
        classes = InferInput("classes", [len(CLASSES)], "INT64")
        seeds = InferInput("seeds", [len(SEEDS)], "UINT64")
        if binary:
            classes.set_data_from_numpy(CLASSES, binary_data=True)
            seeds.set_data_from_numpy(np.array(SEEDS, np.uint64), binary_data=True)
            wanted = [RequestedOutput("image_uint8", {"binary_data": True})]
        else:
            classes.data = CLASSES.tolist()
            seeds.data = SEEDS
            wanted = None
        request = InferRequest("digits", [classes, seeds], request_id="kserve-1",
                               request_outputs=wanted)
        response = await client.infer(url, request, model_name="digits")
        out["id"] = response.id
        images = {o.name: o.as_numpy() for o in response.outputs}
        out["outputs"] = sorted(images)
        out["image_uint8"] = images["image_uint8"].tolist()
        out["dtype"] = str(images["image_uint8"].dtype)
        return out

    asyncio.run(main())
    """
)


def test_kserve_rest_client(server, generator):
    classes, seeds = [4, 8, 1], [3, 2**64 - 1, 77]
    proc = subprocess.run(
        [sys.executable, "-c", KSERVE, server.url, json.dumps(classes), json.dumps(seeds)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["live"] and out["ready"] and out["model_ready"] and not out["cats_ready"]
    assert out["metadata"]["name"] == "digits"
    expected = reference(generator, classes, seeds)
    for mode, names in (("json", ["image", "image_uint8"]), ("binary", ["image_uint8"])):
        got = out[mode]
        assert got["id"] == "kserve-1" and got["outputs"] == names and got["dtype"] == "uint8"
        np.testing.assert_array_equal(np.array(got["image_uint8"], np.uint8), expected)
    kind, status, body = out["error"]
    assert kind == "HTTPStatusError" and status == 400 and "inputs" in body["error"]
