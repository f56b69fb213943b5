"""The process around the app (ctrlgan/serve/server.py): overload answered 429 with Retry-After
and timeouts 504 while every accepted request gets exactly its own images; a SIGTERM under load
drains (readiness 503 at once, accepted requests answered, exit 0 within the drain timeout);
the API key over HTTP."""

import asyncio
import secrets
import threading
import time

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.conftest import KEY
from tests.serve.wire import assert_error, infer_body, output

INFER = "/v2/models/digits/infer"
WAIT = 60.0  # seconds: a bound that only a hung server reaches


# Overload ----------------------------------------------------------------------------------
async def storm(url: str, requests: list[tuple[list, list]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(requests))
    async with httpx.AsyncClient(base_url=url, timeout=WAIT, limits=limits) as client:
        calls = [client.post(INFER, json=infer_body(c, s, outputs=[{"name": "image_uint8"}]))
                 for c, s in requests]  # fmt: skip
        return await asyncio.wait_for(asyncio.gather(*calls), WAIT)


def test_queue_full_is_429_and_accepted_requests_are_exact(busy_server, generator):
    rng = np.random.default_rng(secrets.randbits(32))
    statuses: dict[int, int] = {}
    for _ in range(5):  # rounds until the 2-image queue overflowed at least once
        requests = [(rng.integers(0, 10, 2).tolist(), rng.integers(0, 2**64, 2, np.uint64).tolist())
                    for _ in range(48)]  # fmt: skip
        answers = asyncio.run(storm(busy_server.url, requests))
        for (classes, seeds), r in zip(requests, answers, strict=True):
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                expected = generator.sample(classes, seeds, output="uint8")
                assert np.array_equal(output(r.json(), "image_uint8"), expected)
            else:
                assert_error(r, 429, "queue")
                assert r.headers["retry-after"].isdigit()
        if statuses.get(429):
            break
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.get(429) and statuses.get(200), statuses
    with httpx.Client(base_url=busy_server.url) as client:
        assert client.get("/v2/health/ready").status_code == 200
        r = client.post(INFER, json=infer_body([1, 2, 3], [1, 2, 3]))  # > --max-queue images
        assert_error(r, 400, "queue limit")


def test_tiny_timeout_is_504(busy_server):
    body = infer_body([5], [5], parameters={"timeout": 1})  # one microsecond in the queue
    with httpx.Client(base_url=busy_server.url, timeout=WAIT) as client:
        seen = set()
        for _ in range(50):
            r = client.post(INFER, json=body)
            seen.add(r.status_code)
            if r.status_code == 504:
                assert_error(r, 504, "timed out")
                break
        assert 504 in seen and seen <= {200, 429, 504}, seen
        assert client.post(INFER, json=infer_body([5], [5])).status_code == 200


# Drain -------------------------------------------------------------------------------------
def test_sigterm_drains_under_load(start_server, generator):
    server = start_server(
        "--drain-timeout", "20", "--max-batch-size", "256", "--max-queue", "16384", "--no-grpc"
    )
    rng = np.random.default_rng(secrets.randbits(32))
    payloads = [(rng.integers(0, 10, 600).tolist(), rng.integers(0, 2**63, 600).tolist())
                for _ in range(16)]  # fmt: skip
    expected = [generator.sample(c, s, output="uint8") for c, s in payloads]
    outcomes: list[list[str]] = [[] for _ in payloads]
    loaded = threading.Barrier(len(payloads) + 1)
    deadline = time.monotonic() + WAIT

    def client(i: int) -> None:
        classes, seeds = payloads[i]
        body = infer_body(classes, seeds, outputs=[{"name": "image_uint8"}])
        # a new connection per request: a closed listener is then "refused", never a reset of
        # a request the server read (keep-alive would race the close of an idle connection)
        with httpx.Client(base_url=server.url, timeout=WAIT,
                          headers={"Connection": "close"}) as http:  # fmt: skip
            first = True
            while time.monotonic() < deadline:
                try:
                    r = http.post(INFER, json=body)
                except httpx.ConnectError:
                    outcomes[i].append("refused")
                    return
                except httpx.HTTPError as e:
                    outcomes[i].append(f"lost: {e!r}")
                    return
                finally:
                    if first:
                        first = False
                        loaded.wait(WAIT)
                if r.status_code == 200:
                    same = np.array_equal(output(r.json(), "image_uint8"), expected[i])
                    outcomes[i].append("ok" if same else "WRONG IMAGES")
                else:
                    outcomes[i].append(f"{r.status_code} {r.text[:100]}")
                    return

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(16)]
    for t in threads:
        t.start()
    loaded.wait(WAIT)  # every client has had one answer
    until = time.monotonic() + WAIT
    while queued_images(server.url) == 0:  # signal only with requests surely accepted
        assert time.monotonic() < until, "the load never queued a request"
    server.terminate()
    signalled = time.monotonic()
    try:
        ready = httpx.get(f"{server.url}/v2/health/ready", timeout=5.0)
        assert_error(ready, 503, "draining")
        assert ready.json()["ready"] is False
        model = httpx.get(f"{server.url}/v2/models/digits/ready", timeout=5.0)
        assert_error(model, 503, "draining")
        assert model.json()["ready"] is False
    except httpx.ConnectError:
        pytest.fail("the listener closed at once instead of draining")
    for t in threads:
        t.join(WAIT)
    code = server.stop(timeout=25.0)
    assert code == 0, server.output()
    assert time.monotonic() - signalled < 21.0
    assert "Traceback" not in server.output()
    flat = [o for out in outcomes for o in out]
    unexpected = [o for o in flat if not (o in ("ok", "refused") or o.startswith("503"))]
    assert not unexpected, unexpected
    assert flat.count("ok") >= 16, flat
    assert any(o.startswith("503") for o in flat), flat  # requests arrived while draining
    for out in outcomes:  # each client ended on a refusal, never on a lost request
        assert out and out[-1] != "ok", outcomes


def queued_images(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=WAIT).text
    for family in text_string_to_metric_families(text):
        if family.name == "ctrlgan_queued_images":
            return sum(sample.value for sample in family.samples)
    raise AssertionError("no ctrlgan_queued_images gauge")


# Auth over HTTP ----------------------------------------------------------------------------
def test_api_key_over_http(auth_server):
    good = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=auth_server.url, timeout=WAIT) as http:
        for path in ("/v2/health/live", "/v2/health/ready"):
            assert http.get(path).status_code == 200  # open for probes
        routes = [("GET", "/v2"), ("GET", "/v2/models/digits"), ("GET", "/v1/models"),
                  ("GET", "/v2/models/digits/ready"), ("GET", "/metrics"),
                  ("GET", "/openapi.json"), ("GET", "/v1/models/digits/image.png"),
                  ("POST", INFER), ("POST", "/v1/models/digits/sample")]  # fmt: skip
        bodies = {INFER: infer_body([1], [1]), "/v1/models/digits/sample": {"classes": 1}}
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY},
                            {"Authorization": f"bearer {KEY}x"}):  # fmt: skip
                r = http.request(method, path, json=bodies.get(path), headers=headers)
                assert_error(r, 401, "authorization")
                assert r.headers["www-authenticate"] == "Bearer"
            r = http.request(method, path, json=bodies.get(path), headers=good)
            assert r.status_code == 200, (path, r.text[:200])


def test_no_key_no_auth(http):
    assert http.get("/v2/models/digits", headers={"Authorization": "Bearer anything"}).is_success


def test_queue_full_over_grpc_is_resource_exhausted(busy_server, generator):
    import queue

    import tritonclient.grpc as tgrpc
    from tritonclient.utils import InferenceServerException

    rng = np.random.default_rng(secrets.randbits(32))
    client = tgrpc.InferenceServerClient(busy_server.grpc)
    try:
        answers = queue.Queue()
        sent = []
        for i in range(48):
            classes = rng.integers(0, 10, 2)
            seeds = rng.integers(0, 2**64, 2, np.uint64)
            inputs = [tgrpc.InferInput("classes", [2], "INT64"),
                      tgrpc.InferInput("seeds", [2], "UINT64")]  # fmt: skip
            inputs[0].set_data_from_numpy(classes)
            inputs[1].set_data_from_numpy(seeds)
            sent.append((classes, seeds))
            client.async_infer("digits", inputs, lambda result, error, i=i: answers.put(
                (i, result, error)), client_timeout=WAIT)  # fmt: skip
        codes = []
        for _ in sent:
            i, result, error = answers.get(timeout=WAIT)
            if error is None:
                codes.append("OK")
                expected = generator.sample(*(a.tolist() for a in sent[i]), output="uint8")
                assert np.array_equal(result.as_numpy("image_uint8"), expected)
            else:
                assert isinstance(error, InferenceServerException)
                codes.append(error.status())
        assert set(codes) == {"OK", "StatusCode.RESOURCE_EXHAUSTED"}, codes  # 48 at once, 2 fit
    finally:
        client.close()
