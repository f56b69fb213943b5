"""`ctrlgan serve` on Ray Serve: the same HTTP app, one copy per replica, across a cluster.

    serve run ctrlgan.integrations.ray_serve:app                       # mnist, one replica
    serve run ctrlgan.integrations.ray_serve:app models=mnist,digits replicas=4
    ctrlgan serve mnist --ray --replicas 2                             # our CLI (--ray ADDRESS:
                                                                       # join a cluster)

    from ctrlgan.integrations import ray_serve                         # or from Python
    serve.run(ray_serve.build(["mnist"], replicas=2))

Each replica builds ``ctrlgan.serve.create_app(...)`` (the ASGI app of `ctrlgan serve`, with
its own micro-batcher per model) behind Ray Serve's ASGI ingress (``@serve.ingress()`` with
``__serve_build_asgi_app__``: the app is built in the replica, so its batcher threads and
backend sessions never cross a process boundary). Ray Serve's HTTP proxy routes each request
to one replica; every route, answer and error of the Open Inference Protocol and the /v1
endpoints is the app's own, so the same (model, class, seed, truncation, steer) gives the
same bytes as `ctrlgan serve` and in-process ``Generator.sample``. Not served here: our gRPC
service (Ray's gRPC proxy only takes services compiled into it), and the playground page
and PNG routes under a route prefix other than "/" (the page asks for absolute URLs).

Back-pressure, from the client inwards; every overload is 429 with ``Retry-After: 1``:

1. The replica's batcher: when ``max_queue`` images already wait in a model's queue, the
   request is refused at once with 429 and ``{"error": "... queue ..."}``, exactly as
   `ctrlgan serve` answers it.
2. Ray Serve's router: a replica takes at most ``max_ongoing_requests`` requests at a time
   (default 1024, or ``max_queue + max_batch_size`` if more: a request holds at least one
   image, so a replica's batcher is full before Ray stops sending it requests, and those it
   has no room for are refused in microseconds: clients see layer 1's JSON answer). Beyond
   that, requests wait in the proxy, at most ``max_queued_requests`` per proxy (default: as
   many as ``max_ongoing_requests``); past it the proxy answers 429 itself
   (``BackpressureConfig(status_code=429)``; Ray's default would be 503), with Ray's
   plain-text message instead of ``{"error": ...}``.
3. 503 still means what it means for `ctrlgan serve`: no replica can take requests (not yet
   deployed, failed, or shutting down), never "too busy".

Ray is the optional extra ``ctrlgan[ray]``; nothing else in ctrlgan imports this module.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

from ray import serve
from ray.serve.config import BackpressureConfig

from ctrlgan import validate
from ctrlgan.artifact import DEFAULT_MODEL
from ctrlgan.errors import InvalidRequest
from ctrlgan.runtime.batcher import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_DELAY_MS, DEFAULT_MAX_QUEUE
from ctrlgan.serve.app import DEFAULT_MAX_BODY, DEFAULT_MAX_IMAGES, DEFAULT_TIMEOUT, RETRY_AFTER

DEFAULT_NAME = "ctrlgan"
MAX_REPLICAS = 4096
# Requests one replica takes at once, at least: those its batcher has no room for are answered
# 429 in microseconds, so a high cap costs nothing and leaves the decision to the batcher
MIN_ONGOING = 1024
# the create_app options a replica is built with, and their defaults (those of `ctrlgan serve`)
APP_OPTIONS = {
    "backend": "auto",
    "max_batch_size": DEFAULT_MAX_BATCH_SIZE,
    "max_delay_ms": DEFAULT_MAX_DELAY_MS,
    "max_queue": DEFAULT_MAX_QUEUE,
    "max_images": DEFAULT_MAX_IMAGES,
    "max_body_bytes": DEFAULT_MAX_BODY,
    "request_timeout": DEFAULT_TIMEOUT,
    "api_key": None,
    "access_log": False,
    "threads": None,  # None: the replica's CPUs (num_cpus, at least 1), not every core of its node
}


@serve.deployment(name=DEFAULT_NAME)
@serve.ingress()
class CtrlganServer:
    """One replica: ``create_app(models, **options)`` built in the replica's process."""

    def __init__(self, models, options: Mapping):
        self._ctrlgan_models = list(models)
        self._ctrlgan_options = dict(options)

    def __serve_build_asgi_app__(self):
        from ctrlgan.serve import create_app

        return create_app(self._ctrlgan_models, **self._ctrlgan_options)

    def stats(self) -> dict:
        """This replica's identity and the requests its app answered (``ctrlgan_requests``),
        by status: ``handle.broadcast("stats")`` shows how the load was spread."""
        statuses: dict[str, int] = {}
        for family in self.app.metrics.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    status = sample.labels["status"]
                    statuses[status] = statuses.get(status, 0) + int(sample.value)
        context = serve.get_replica_context()
        return {
            "replica": context.replica_id.unique_id,
            "pid": os.getpid(),
            "requests": sum(statuses.values()),
            "statuses": statuses,
        }


def build(
    models: Iterable[str] | str = (DEFAULT_MODEL,),
    *,
    replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_ongoing_requests: int | None = None,
    max_queued_requests: int | None = None,
    drain_timeout: float = 20.0,
    name: str = DEFAULT_NAME,
    **options,
) -> serve.Application:
    """The Ray Serve application: ``replicas`` copies of ``create_app(models, **options)``
    (options: those of ``ctrlgan.serve.create_app``), each with ``num_cpus`` / ``num_gpus``.
    ``max_ongoing_requests``: requests one replica takes at a time (default: 1024, or
    max_queue + max_batch_size if more); ``max_queued_requests``: requests each proxy holds
    while every replica has that many (default: max_ongoing_requests), beyond which the proxy
    answers 429; ``drain_timeout``: seconds a stopping replica waits for its requests (Ray's
    graceful_shutdown_timeout_s). Everything is checked here, before anything is deployed:
    InvalidRequest names the field. An API key travels to the replicas with the deployment's
    arguments (stored by Ray's control plane)."""
    if isinstance(models, str):
        models = [m for m in models.split(",") if m]
    models = list(models)
    if not models or not all(isinstance(m, str) and m for m in models):
        raise InvalidRequest("models", "expected model names or artifact directories")
    unknown = sorted(set(options) - set(APP_OPTIONS))
    if unknown:
        raise InvalidRequest(unknown[0], f"unknown option; known: {', '.join(APP_OPTIONS)}")
    opts = {**APP_OPTIONS, **options}
    replicas = validate.integer(replicas, "replicas", 1, MAX_REPLICAS)
    num_cpus = validate.real(num_cpus, "num_cpus", 0.0, 1024.0)
    num_gpus = validate.real(num_gpus, "num_gpus", 0.0, 64.0)
    validate.choice(opts["backend"], "backend", ("auto", "torch", "onnxruntime", "triton"))
    max_batch_size = validate.integer(opts["max_batch_size"], "max_batch_size", 1,
                                      validate.MAX_BATCH)  # fmt: skip
    max_queue = validate.integer(opts["max_queue"], "max_queue", 1, validate.MAX_BATCH)
    validate.real(opts["max_delay_ms"], "max_delay_ms", 0.0, 60_000.0)
    validate.integer(opts["max_images"], "max_images", 1, validate.MAX_BATCH)
    validate.integer(opts["max_body_bytes"], "max_body_bytes", 1024, 1 << 31)
    if opts["request_timeout"] is not None:
        validate.real(opts["request_timeout"], "request_timeout", hi=1e6, above=0.0)
    if opts["threads"] is None:  # onnxruntime's pool sized to the replica, not to its node
        opts["threads"] = max(1, math.floor(num_cpus))
    else:
        validate.integer(opts["threads"], "threads", 0, 1024)
    if max_ongoing_requests is None:
        max_ongoing_requests = max(MIN_ONGOING, max_queue + max_batch_size)
    max_ongoing_requests = validate.integer(max_ongoing_requests, "max_ongoing_requests", 1,
                                            1 << 20)  # fmt: skip
    if max_queued_requests is None:
        max_queued_requests = max_ongoing_requests
    max_queued_requests = validate.integer(max_queued_requests, "max_queued_requests", -1,
                                           1 << 20)  # fmt: skip
    if max_queued_requests == 0:
        raise InvalidRequest("max_queued_requests", "-1 (no limit) or at least 1")
    drain_timeout = validate.real(drain_timeout, "drain_timeout", 0.0, 3600.0)
    if not isinstance(name, str) or not name:
        raise InvalidRequest("name", "expected the deployment's name")
    actor = {"num_cpus": num_cpus}
    if num_gpus:
        actor["num_gpus"] = num_gpus
    deployment = CtrlganServer.options(
        name=name,
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing_requests,
        max_queued_requests=max_queued_requests,
        backpressure_config=BackpressureConfig(status_code=429, retry_after_s=int(RETRY_AFTER)),
        ray_actor_options=actor,
        graceful_shutdown_timeout_s=drain_timeout,
    )
    return deployment.bind(models, opts)


# `serve run MODULE:app key=value ...` and Serve config files: their names, as strings or JSON
INTEGERS = ("replicas", "max_batch_size", "max_queue", "max_images", "threads",
            "max_ongoing_requests", "max_queued_requests")  # fmt: skip
REALS = ("num_cpus", "num_gpus", "max_delay_ms", "max_body_mb", "request_timeout",
         "drain_timeout")  # fmt: skip
STRINGS = ("models", "backend", "name", "api_key_file")
FLAGS = ("access_log",)


def app(args: Mapping) -> serve.Application:
    """Ray Serve's application builder: ``serve run ctrlgan.integrations.ray_serve:app
    models=mnist,digits replicas=2 max_queue=512`` (or ``args:`` in a Serve config file).
    Keys: models, replicas, num_cpus, num_gpus, max_ongoing_requests, max_queued_requests,
    name, and `ctrlgan serve`'s options with underscores (backend, max_batch_size,
    max_delay_ms, max_queue, max_images, max_body_mb, request_timeout, threads, access_log,
    api_key_file; the key is also read from $CTRLGAN_API_KEY)."""
    from ctrlgan.cli.serve import api_key

    if not isinstance(args, Mapping):
        raise InvalidRequest("args", "expected key=value arguments")
    values = dict(args)
    known = (*INTEGERS, *REALS, *STRINGS, *FLAGS)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InvalidRequest(str(unknown[0])[:40], f"unknown argument; known: {', '.join(known)}")
    kwargs = {}
    for key, value in values.items():
        if key in INTEGERS:
            kwargs[key] = _number(value, key, int)
        elif key in REALS:
            kwargs[key] = _number(value, key, float)
        elif key in FLAGS:
            kwargs[key] = _flag(value, key)
        elif not isinstance(value, str) and not (key == "models" and isinstance(value, list)):
            raise InvalidRequest(key, "expected a string")
        else:
            kwargs[key] = value
    if "max_body_mb" in kwargs:
        mb = validate.real(kwargs.pop("max_body_mb"), "max_body_mb", 1 / 1024, 2048.0)
        kwargs["max_body_bytes"] = int(mb * (1 << 20))
    kwargs["api_key"] = api_key(kwargs.pop("api_key_file", None))
    return build(kwargs.pop("models", [DEFAULT_MODEL]), **kwargs)


def _number(value, key: str, kind: type):
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            raise InvalidRequest(key, f"expected {'an integer' if kind is int else 'a number'}, "
                                      f"got {validate.show(value)}") from None  # fmt: skip
    return value  # checked by build() with the rest


def _flag(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes")
    raise InvalidRequest(key, "expected true or false")


__all__ = ["CtrlganServer", "app", "build"]
