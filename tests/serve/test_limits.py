"""What a hostile review of the server found, each now a test: compressed or plain bodies bounded
by what a valid request can hold, per-row truncations bounded, numbers beyond any range refused
(never a 500), PNG caching behind a key kept private, conditional requests by RFC 9110, the
Bearer scheme in any case, ModelReady behind the key on gRPC as over HTTP, a drain that does not
wait out a batching delay, and the real ports printed for port 0."""

import gzip
import re
import signal
import subprocess
import sys
import time
import zlib

import grpc
import httpx
import numpy as np
import pytest

from ctrlgan.serve.grpc import MESSAGES
from tests.serve.conftest import KEY
from tests.serve.wire import assert_error, dumps, infer_body, output, reference

INFER = "/v2/models/digits/infer"
PNG = "/v1/models/digits"
WAIT = 30.0


def test_compressed_bodies_are_bounded_by_a_valid_request(server, http):
    """A 65 KB gzip body that inflates to 64 MB is refused (413) quickly, and the loop stays
    free: the limit is what a valid request to the model can hold (here ~100 KB), not the
    server's body limit."""
    bomb = gzip.compress(b"[" + b"0," * (32 << 20) + b"0]")
    start = time.monotonic()
    r = http.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"})
    assert_error(r, 413, "body")
    raw = zlib.compress(b" " * (8 << 20))
    assert_error(http.post(INFER, content=raw, headers={"Content-Encoding": "deflate"}), 413)
    assert time.monotonic() - start < 5.0
    # a plain body beyond what a valid request needs is refused before it is parsed
    assert_error(http.post(INFER, content=b" " * 900_000), 413, "body")
    # and a valid request at the server's image limit still fits, compressed or not
    classes, seeds = list(np.arange(100) % 10), list(range(100))
    body = dumps(infer_body(classes, seeds, steer=np.ones((100, 3)).tolist(),
                            truncation=[0.5] * 100))  # fmt: skip
    for content, headers in ((body, {}), (gzip.compress(body), {"Content-Encoding": "gzip"})):
        r = http.post(INFER, content=content, headers=headers)
        assert r.status_code == 200, r.text[:200]


def test_distinct_truncations_are_bounded(http, generator):
    rng = np.random.default_rng()
    classes, seeds = rng.integers(0, 10, 9).tolist(), rng.integers(0, 2**63, 9).tolist()
    taus = np.linspace(0.5, 1.3, 9).tolist()
    r = http.post(INFER, content=dumps(infer_body(classes, seeds, truncation=taus)))
    assert_error(r, 400, "truncation", "8")
    taus[-1] = taus[0]  # eight different values: fine, and each row has its own
    r = http.post(INFER, content=dumps(infer_body(classes, seeds, truncation=taus)))
    assert r.status_code == 200, r.text[:200]
    want = reference(generator, classes, seeds, truncation=taus)
    np.testing.assert_array_equal(output(r.json(), "image_uint8"), want)


@pytest.mark.parametrize("timeout", [10**400, 10**30, 0, -5, 1.5, "1"])
def test_timeouts_beyond_any_range_are_400(http, timeout):
    body = infer_body([1], [1], parameters={"timeout": timeout})
    assert_error(http.post(INFER, content=dumps(body)), 400, "timeout")


def test_grpc_typed_contents_out_of_range_are_invalid_argument(server):
    request_type, response_type = MESSAGES["ModelInfer"]  # the server's own, private pool
    with grpc.insecure_channel(server.grpc) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        for datatype, field, value in (("INT8", "int_contents", 1000),
                                       ("UINT8", "uint_contents", 300)):  # fmt: skip
            request = request_type(model_name="digits")
            t = request.inputs.add(name="classes", datatype=datatype, shape=[1])
            getattr(t.contents, field).append(value)
            s = request.inputs.add(name="seeds", datatype="INT64", shape=[1])
            s.contents.int64_contents.append(1)
            with pytest.raises(grpc.RpcError) as e:
                call(request, timeout=WAIT)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
            assert "classes" in e.value.details()


def test_png_cache_is_private_behind_a_key(auth_server, http):
    assert "public" in http.get(f"{PNG}/image.png?class=2").headers["cache-control"]
    headers = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(f"{auth_server.url}{PNG}/image.png?class=2", headers=headers, timeout=WAIT)
    assert r.status_code == 200
    assert r.headers["cache-control"].startswith("private")


def test_if_none_match_star_and_weak_tags(http):
    first = http.get(f"{PNG}/image.png?class=4&seed=9")
    tag = first.headers["etag"]
    for header in ("*", f"W/{tag}", f'"other", {tag}'):
        r = http.get(f"{PNG}/image.png?class=4&seed=9", headers={"If-None-Match": header})
        assert r.status_code == 304 and r.content == b"", header
    r = http.get(f"{PNG}/image.png?class=4&seed=9", headers={"If-None-Match": '"other"'})
    assert r.status_code == 200


def test_bearer_scheme_in_any_case(auth_server):
    for scheme in ("Bearer", "bearer", "BEARER"):
        r = httpx.get(f"{auth_server.url}/v2", headers={"Authorization": f"{scheme} {KEY}"})
        assert r.status_code == 200, scheme
    r = httpx.get(f"{auth_server.url}/v2", headers={"Authorization": f"Basic {KEY}"})
    assert_error(r, 401, "authorization")


def test_grpc_model_ready_needs_the_key(auth_server):
    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    client = tgrpc.InferenceServerClient(auth_server.grpc)
    try:
        with pytest.raises(InferenceServerException) as e:
            client.is_model_ready("nope")
        assert e.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
        assert "digits" not in str(e.value)  # no model names to a caller without the key
        assert client.is_model_ready("digits", headers={"authorization": f"bearer {KEY}"})
    finally:
        client.close()


def test_drain_flushes_a_batching_delay(start_server, generator):
    """SIGTERM with a request held by a one-minute batching delay: it is answered at once
    and the server exits 0 well within the drain timeout."""
    server = start_server("--max-delay-ms", "60000", "--drain-timeout", "30", "--no-grpc")
    with httpx.Client(base_url=server.url, timeout=WAIT) as http:
        import threading

        result = {}
        body = dumps(infer_body([7], [123]))
        waiter = threading.Thread(target=lambda: result.update(r=http.post(INFER, content=body)))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive()  # held by the delay
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.signalled = True
        waiter.join(WAIT)
    assert result["r"].status_code == 200
    np.testing.assert_array_equal(output(result["r"].json(), "image_uint8"),
                                  reference(generator, [7], [123]))  # fmt: skip
    assert server.stop(timeout=WAIT) == 0
    assert time.monotonic() - start < 10.0


def test_port_zero_prints_the_real_ports(tmp_path):
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "ctrlgan", "serve", "digits", "--backend", "onnxruntime",
            "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0"]  # fmt: skip
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "SIGTERM" not in log.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        out = log.read_text()
        http_port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v2", out).group(1))
        grpc_port = int(re.search(r"gRPC  127\.0\.0\.1:(\d+)", out).group(1))
        assert http_port and grpc_port and http_port != grpc_port
        assert httpx.get(f"http://127.0.0.1:{http_port}/v2/health/live").json() == {"live": True}
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=WAIT)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@pytest.mark.parametrize("second_signal", [False, True])
def test_drain_timeout_bounds_the_shutdown(start_server, second_signal):
    """A backlog far longer than --drain-timeout: after the timeout (or at a second signal)
    what is still queued is answered 503, the batch computing finishes (200), nothing gets a
    500 or a trace, and the process exits 1 within a few seconds."""
    import threading

    server = start_server("--max-images", "1024", "--max-batch-size", "1024", "--max-queue",
                          "100000", "--drain-timeout", "1", "--no-grpc")  # fmt: skip
    body = dumps(infer_body([1] * 1024, list(range(1024)), outputs=[{"name": "image_uint8"}]))
    codes = []

    def client() -> None:
        try:
            codes.append(httpx.post(f"{server.url}{INFER}", content=body, timeout=WAIT)
                         .status_code)  # fmt: skip
        except httpx.ConnectError:
            codes.append("refused")

    clients = [threading.Thread(target=client) for _ in range(40)]
    for c in clients:
        c.start()
    time.sleep(1.0)
    start = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.signalled = True
    if second_signal:
        time.sleep(0.2)
        server.proc.send_signal(signal.SIGINT)
    code = server.stop(timeout=WAIT)
    elapsed = time.monotonic() - start
    for c in clients:
        c.join(WAIT)
    assert code == 1 and elapsed < (3.0 if second_signal else 4.0), (code, elapsed)
    assert set(codes) <= {200, 503, "refused"} and 503 in codes, codes
    assert "Traceback" not in server.output()
