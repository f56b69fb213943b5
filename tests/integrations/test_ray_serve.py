"""The server on Ray Serve (ctrlgan/integrations/ray_serve.py), driven by the client tests of
tests/serve: the same test functions, imported here, run against Ray Serve's HTTP proxy on
127.0.0.1, in front of a 2-replica deployment (tritonclient.http JSON and binary, gzip and
deflate bodies, errors, the API key, KServe's client; every image equal to in-process
Generator.sample). Then: both replicas answered, and overload is 429 + Retry-After at both
layers, the replica's batcher (JSON, as `ctrlgan serve`) and Ray's proxy.

One Ray (tests/integrations/conftest.py) and one Serve instance for the module; the four
applications deploy once, side by side (about 10 s on 2 cores), each replica with a quarter
of a CPU.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections import Counter

import httpx
import numpy as np
import pytest

pytest.importorskip("ray.serve")

from ctrlgan.errors import InvalidRequest
from tests.serve.conftest import HOST, KEY, free_ports

# The client tests themselves and the fixtures they use, imported so that they run here too,
# against the `server` and `busy_server` fixtures of this module (Ray Serve's URL).
from tests.serve.test_clients import (  # noqa: F401
    expected,
    test_auth_tritonclient_http,
    test_http_errors,
    test_http_health_and_metadata,
    test_http_infer,
    test_http_infer_compressed_subset,
    test_kserve_rest_client,
    th,
)
from tests.serve.test_limits import test_bearer_scheme_in_any_case  # noqa: F401
from tests.serve.test_server import (  # noqa: F401
    INFER,
    storm,
    test_queue_full_is_429_and_accepted_requests_are_exact,
    test_tiny_timeout_is_504,
)
from tests.serve.wire import assert_error, infer_body, output

WAIT = 60.0
REPLICA = {"backend": "onnxruntime", "threads": "1", "num_cpus": "0.25"}


class Endpoint:
    """What the tests of tests/serve need of a server: its HTTP ``url``."""

    def __init__(self, url: str, handle):
        self.url = url
        self.handle = handle

    def stats(self) -> list[dict]:
        return self.handle.broadcast("stats").results()


@pytest.fixture(scope="module")
def ray_serve(ray_local, tmp_path_factory):
    """Serve's proxy on a free 127.0.0.1 port and three applications on it:

    /       2 replicas, max_images 100 (as tests/serve's `server`), deployed from the string
            arguments `serve run ctrlgan.integrations.ray_serve:app ...` passes
    /busy   1 replica, max_queue 2, max_batch_size 1 and Ray's limits left at their defaults
            (as tests/serve's `busy_server`): overload is the batcher's 429
    /tight  1 replica, max_ongoing_requests 2, max_queued_requests 1: Ray's proxy answers 429
    /auth   1 replica with an API key file (as tests/serve's `auth_server`)
    """
    from ray import serve

    from ctrlgan.integrations import ray_serve

    key_file = tmp_path_factory.mktemp("ray_serve") / "key"
    key_file.write_text(KEY + "\n")
    (port,) = free_ports(1)
    serve.start(http_options={"host": HOST, "port": port})
    url = f"http://{HOST}:{port}"
    try:
        targets = {}
        for prefix, args in (
            ("/", {"models": "digits", "replicas": "2", "max_images": "100",
                   "max_body_mb": "1", **REPLICA}),
            ("/busy", {"models": "digits", "max_queue": "2", "max_batch_size": "1",
                       "name": "busy", **REPLICA}),
            ("/tight", {"models": "digits", "max_ongoing_requests": "2",
                        "max_queued_requests": "1", "name": "tight", **REPLICA}),
            ("/auth", {"models": "digits", "api_key_file": str(key_file), "name": "auth",
                       **REPLICA}),
        ):  # fmt: skip
            name = prefix.strip("/") or "main"
            targets[name] = serve.RunTarget(ray_serve.app(args), name=name, route_prefix=prefix)
        # deployed side by side: their replicas start at once (one after another took longer)
        handles = serve.run_many(list(targets.values()))
        yield {
            name: Endpoint(url + target.route_prefix.rstrip("/"), handle)
            for (name, target), handle in zip(targets.items(), handles, strict=True)
        }
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def server(ray_serve):
    return ray_serve["main"]


@pytest.fixture(scope="module")
def busy_server(ray_serve):
    return ray_serve["busy"]


@pytest.fixture(scope="module")
def auth_server(ray_serve):
    return ray_serve["auth"]


@pytest.fixture(scope="module")
def generator():
    import ctrlgan

    return ctrlgan.load("digits", backend="onnxruntime")


def test_both_replicas_answer_and_every_image_is_exact(server, generator):
    """A burst of concurrent requests spreads over both replicas (each replica's own request
    counter grows), and every answer is its own images, bit for bit."""
    before = {s["replica"]: s["requests"] for s in server.stats()}
    assert len(before) == 2, before
    rng = np.random.default_rng(secrets.randbits(32))
    requests = [(rng.integers(0, 10, 3).tolist(), rng.integers(0, 2**63, 3).tolist())
                for _ in range(48)]  # fmt: skip
    answers = asyncio.run(storm(server.url, requests))
    for (classes, seeds), r in zip(requests, answers, strict=True):
        assert r.status_code == 200, r.text[:200]
        want = generator.sample(classes, seeds, output="uint8")
        np.testing.assert_array_equal(output(r.json(), "image_uint8"), want)
    after = server.stats()
    assert {s["replica"] for s in after} == set(before)
    assert len({s["pid"] for s in after}) == 2  # two processes, each with its own batcher
    grown = {s["replica"]: s["requests"] - before[s["replica"]] for s in after}
    assert all(n > 0 for n in grown.values()), grown
    assert sum(grown.values()) == len(requests), grown


def test_ray_proxy_overload_is_429_with_retry_after(ray_serve, generator):
    """Past max_ongoing_requests per replica and max_queued_requests in the proxy, Ray Serve
    itself refuses: 429 (not Ray's default 503) with Retry-After, as ours; what it accepted
    is exact."""
    tight = ray_serve["tight"]
    rng = np.random.default_rng(secrets.randbits(32))
    seen: Counter = Counter()
    for _ in range(5):  # rounds until the proxy refused at least once
        requests = [(rng.integers(0, 10, 4).tolist(), rng.integers(0, 2**63, 4).tolist())
                    for _ in range(32)]  # fmt: skip
        answers = asyncio.run(storm(tight.url, requests))
        for (classes, seeds), r in zip(requests, answers, strict=True):
            if r.status_code == 200:
                seen["ok"] += 1
                want = generator.sample(classes, seeds, output="uint8")
                np.testing.assert_array_equal(output(r.json(), "image_uint8"), want)
                continue
            assert r.status_code == 429, (r.status_code, r.text[:200])
            assert r.headers["retry-after"] == "1"
            if r.headers["content-type"] == "application/json":  # the replica's batcher
                assert_error(r, 429, "queue")
                seen["batcher"] += 1
            else:  # Ray's proxy: its own plain-text message
                assert "backpressure" in r.text.lower(), r.text[:200]
                seen["proxy"] += 1
        if seen["proxy"]:
            break
    assert seen["proxy"] and seen["ok"], seen
    with httpx.Client(base_url=tight.url, timeout=WAIT) as client:  # and it recovers
        assert client.get("/v2/health/ready").status_code == 200
        assert client.post(INFER, json=infer_body([1], [1])).status_code == 200


def test_route_prefix_serves_the_same_app(ray_serve):
    """Mounted under /busy, the app answers its own routes there (ASGI root_path)."""
    busy = ray_serve["busy"]
    with httpx.Client(base_url=busy.url, timeout=WAIT) as client:
        assert client.get("/v2").json()["name"] == "ctrlgan"
        assert client.get("/v2/models/digits").json()["name"] == "digits"
        assert_error(client.get("/v2/models/cats"), 404, "cats")
        assert_error(client.get("/v3"), 404, "'/v3'")


# The application builder (`serve run ...:app key=value`), without a cluster ---------------
def test_builder_takes_serve_run_strings():
    from ctrlgan.integrations import ray_serve

    application = ray_serve.app({"models": "digits,mnist", "replicas": "3", "num_cpus": "2",
                                 "max_queue": "256", "access_log": "true"})  # fmt: skip
    deployment = application._bound_deployment
    assert deployment.num_replicas == 3
    assert deployment.max_ongoing_requests == deployment.max_queued_requests == 1024
    assert deployment.ray_actor_options["num_cpus"] == 2
    models, options = deployment.init_args
    assert models == ["digits", "mnist"]
    assert options["max_queue"] == 256 and options["threads"] == 2 and options["access_log"]
    big = ray_serve.app({"max_queue": "4000", "max_batch_size": "100"})._bound_deployment
    assert big.max_ongoing_requests == big.max_queued_requests == 4100


@pytest.mark.parametrize(
    "args, field",
    [({"replicas": "0"}, "replicas"), ({"replicas": "two"}, "replicas"),
     ({"max_queue": "0"}, "max_queue"), ({"backend": "tpu"}, "backend"),
     ({"max_queued_requests": "0"}, "max_queued_requests"), ({"colour": "red"}, "colour"),
     ({"num_cpus": "-1"}, "num_cpus"), ({"max_body_mb": "0"}, "max_body_mb"),
     ({"access_log": "maybe"}, "access_log"), ({"models": ""}, "models")],
)  # fmt: skip
def test_builder_refuses_bad_arguments(args, field):
    from ctrlgan.integrations import ray_serve

    with pytest.raises(InvalidRequest) as e:
        ray_serve.app(args)
    assert e.value.field == field, e.value


# `ctrlgan serve --ray` --------------------------------------------------------------------
def test_cli_ray_without_ray_is_one_line_naming_the_extra(capsys, monkeypatch):
    from tests.test_cli import assert_one_line_error, run

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.delitem(sys.modules, "ctrlgan.integrations.ray_serve", raising=False)
    code, _, err = run(capsys, "serve", "--ray")
    assert_one_line_error(code, err, "ctrlgan serve: error:", "ctrlgan[ray]")


def test_cli_help_names_ray(capsys):
    from tests.test_cli import run

    code, out, _ = run(capsys, "serve", "--help")
    assert code == 0
    for word in ("--ray", "--replicas", "ctrlgan[ray]", "ADDRESS"):
        assert word in out


@pytest.mark.parametrize(
    "argv, words",
    [(["--ray", "--replicas", "0"], ["replicas"]), (["--replicas", "2"], ["replicas", "--ray"]),
     (["--ray", "--max-queue", "0"], ["max-queue"]), (["--ray", "--port", "0"], ["port"]),
     (["--ray", "--", "cats"], ["cats"]), (["--num-gpus", "1"], ["num-gpus", "--ray"]),
     (["--ray", "--num-cpus", "-1"], ["num-cpus"]), (["--ray", "--num-gpus", "100"],
                                                     ["num-gpus"])],
)  # fmt: skip
def test_cli_ray_bad_flags(capsys, argv, words):
    from tests.test_cli import assert_one_line_error, run

    code, _, err = run(capsys, "serve", *argv)
    assert_one_line_error(code, err, "ctrlgan serve: error:", *words)


@pytest.mark.parametrize(
    "address, words",
    [("127.0.0.1:1", ["no Ray cluster answers at 127.0.0.1:1"]),
     ("ray://127.0.0.1:1", ["no Ray cluster answers at ray://127.0.0.1:1"]),
     ("no-port", ["'no-port' is not a Ray address"])],
)  # fmt: skip
def test_cli_ray_bad_address_is_one_line_within_seconds(capsys, monkeypatch, address, words):
    """As `generate --ray`: an address that does not answer is refused before ray.init (whose
    retries take minutes for host:port and print Ray's log lines)."""
    import time

    import ray

    from ctrlgan.integrations.ray import CONNECT_TIMEOUT_S
    from tests.test_cli import assert_one_line_error, run

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as a fresh process would be
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init must not be reached"))
    t0 = time.monotonic()
    code, _, err = run(capsys, "serve", "digits", "--ray", address, "--port", "1")
    assert_one_line_error(code, err, "ctrlgan serve: error:", "ray", *words)
    assert time.monotonic() - t0 < CONNECT_TIMEOUT_S + 5


def test_cli_serves_on_its_own_ray_and_drains_on_sigterm(tmp_path, generator):
    """`ctrlgan serve digits --ray`: a local Ray of its own, the API on the given
    127.0.0.1 port (images exact), then SIGTERM: the application is deleted, Ray stops, exit 0.
    (Ray's own handler would abort the process on SIGTERM: ours is installed after it.)"""
    import signal
    import subprocess
    import time

    from tests.serve.conftest import ROOT

    (port,) = free_ports(1)
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "ctrlgan", "serve", "digits", "--ray", "--replicas", "1",
            "--backend", "onnxruntime", "--host", HOST, "--port", str(port), "--threads", "1",
            "--drain-timeout", "10"]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while b"SIGTERM drains" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert f"http://{HOST}:{port}/v2" in log.read_text()
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=WAIT) as client:
            assert client.get("/v2/health/ready").json() == {"ready": True}
            r = client.post(INFER, json=infer_body([4, 8], [3, 2**64 - 1]))
            want = generator.sample([4, 8], [3, 2**64 - 1], output="uint8")
            np.testing.assert_array_equal(output(r.json(), "image_uint8"), want)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        with pytest.raises(httpx.ConnectError):  # Ray's proxy went with it
            httpx.get(f"http://{HOST}:{port}/v2", timeout=5.0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
