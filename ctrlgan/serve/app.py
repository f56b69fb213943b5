"""The HTTP side of the server: one ASGI app, no framework.

    app = ctrlgan.serve.create_app(["digits"])          # an ASGI app; embed it, or:
    uvicorn.run(app, host="127.0.0.1", port=8000)        # `ctrlgan serve` does this and gRPC

Routes (OIP v2 for programs, /v1 for people and pages):

    GET  /v2                                   server metadata (extensions: binary_tensor_data)
    GET  /v2/health/live | /v2/health/ready    200 {"live"|"ready": true}, 503 when not ready
    GET  /v2/models/{m}[/versions/{v}]         model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready   model readiness
    POST /v2/models/{m}[/versions/{v}]/infer   inference: JSON tensors or the binary extension
    GET  /v1/models                            names, classes, features, image shape, backend
    GET  /v1/models/{m}/image.png | grid.png | interpolate.png     PNGs, cached by ETag
    POST /v1/models/{m}/sample                 JSON in, JSON out (base64 PNGs or uint8 lists)
    GET  /openapi.json | /metrics

Paths are routed below the ASGI ``root_path``: mounted under a prefix (Ray Serve's
route_prefix, ctrlgan/integrations/ray_serve.py), the API answers there.

Every error is ``{"error": "<message naming the field>"}`` with its status: 400 invalid, 401
auth, 404 unknown model or path, 405 method, 413 too large, 415 encoding, 429 (+ Retry-After)
queue full, 503 not ready or draining, 504 queue timeout; 500 is a bug, logged here and
answered without its trace. With an API key, every route but the health checks asks for
``Authorization: Bearer <key>`` (compared in constant time).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

from ctrlgan import __version__
from ctrlgan.artifact import DEFAULT_MODEL
from ctrlgan.errors import CtrlganError, InvalidRequest, Overloaded
from ctrlgan.runtime.generator import Generator
from ctrlgan.serve import people, protocol
from ctrlgan.serve.metrics import CONTENT_TYPE as METRICS_TYPE
from ctrlgan.serve.metrics import Metrics
from ctrlgan.serve.models import (
    OUTPUTS,
    VERSION,
    ModelTable,
    NotFound,
    ServedModel,
    check_outputs,
    outputs,
)
from ctrlgan.serve.openapi import schema
from ctrlgan.serve.protocol import ProtocolError

log = logging.getLogger("ctrlgan.serve")
access = logging.getLogger("ctrlgan.serve.access")

SERVER_NAME = "ctrlgan"
EXTENSIONS = ["binary_tensor_data"]
DEFAULT_MAX_BODY = 64 << 20  # bytes: a 1,024-image request in JSON is ~3 MB
DEFAULT_MAX_IMAGES = 1024
DEFAULT_TIMEOUT = 60.0  # seconds a request may wait in a queue
RETRY_AFTER = "1"
# Beyond these, a request's JSON is parsed / its answer encoded on a worker thread (~1 ms of work)
OFFLOAD_BYTES = 64 << 10
OFFLOAD_VALUES = 16384
JSON = [(b"content-type", b"application/json")]
# the playground (static/, served at / and /static/...): a fixed table read at start, open
# without the API key (it holds no data; its requests for images carry the key)
PAGE_FILES = {"index.html": b"text/html; charset=utf-8",
              "app.js": b"text/javascript; charset=utf-8",
              "style.css": b"text/css; charset=utf-8"}  # fmt: skip
OPEN_ENDPOINTS = ("health_live", "health_ready", "page")


class State:
    """What the server is doing: serving, draining, and how many requests are in flight."""

    def __init__(self):
        self.ready = True
        self.draining = False
        self.in_flight = 0

    @property
    def serving(self) -> bool:
        """Ready for new requests: what the readiness checks answer."""
        return self.ready and not self.draining

    @property
    def why_not(self) -> str:
        return "draining" if self.draining else "not ready"

    @contextlib.contextmanager
    def accepted(self):
        """One request accepted (503 while not serving), counted in flight until it leaves:
        the count a drain waits for, over every protocol."""
        if self.draining:
            raise ProtocolError(503, "the server is shutting down; retry on another replica")
        if not self.ready:
            raise ProtocolError(503, "the server is not ready")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


class App:
    """The ASGI app of a model table. Build it with ``create_app``."""

    def __init__(
        self,
        table: ModelTable,
        *,
        api_key: str | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        request_timeout: float = DEFAULT_TIMEOUT,
        access_log: bool = False,
        workers: int = 2,
    ):
        self.table = table
        self.state = State()
        self.metrics = Metrics()
        for model in table:
            self.metrics.watch(model)
        self.key = None if not api_key else api_key.encode()
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.access_log = access_log
        # Verbs the batcher does not take (interpolate, PNG encoding) run here, never on the loop
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="ctrlgan-serve")
        self.pool_limit = 4 * workers
        self.pool_busy = 0
        # GET /v2 and gRPC ServerMetadata
        self.metadata = {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}
        self.page = load_page()

    # ASGI entry ---------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.get_running_loop().run_in_executor(None, self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope, receive, send) -> None:
        start = time.perf_counter()
        method, path = scope["method"], routed_path(scope)
        headers = dict(scope["headers"])  # lower-case names (ASGI)
        model, endpoint, status = "", "other", 500
        try:
            route = self.route(method, path)
            endpoint = route[0]
            model = route[1] or ""
            if self.key is not None and endpoint not in OPEN_ENDPOINTS:
                self.authorize(headers)
            status = await self.dispatch(route, scope, headers, receive, send)
        except Exception as error:  # every failure is an answer, never a trace
            status, body, extra = self.error_response(error)
            await respond(send, status, body, JSON + extra)
        except asyncio.CancelledError:  # the drain timed out and the server stops now
            status = 503
            with contextlib.suppress(Exception):
                await respond(send, 503, error_body("the server stopped before this request ran"),
                              JSON)  # fmt: skip
            raise
        finally:
            seconds = time.perf_counter() - start
            label = model if model in self.table.models else ""
            self.metrics.request(label, "http", endpoint, status, seconds)
            if self.access_log:
                access.info('%s "%s %s" %s %.2fms', client(scope), method, path, status,
                            seconds * 1e3)  # fmt: skip

    def error_response(self, error: Exception) -> tuple[int, bytes, list]:
        extra = []
        if isinstance(error, ProtocolError):
            status, message = error.status, error.message
            if status == 405:
                extra = [(b"allow", error.allow.encode())]
            elif status == 401:
                extra = [(b"www-authenticate", b"Bearer")]
        elif isinstance(error, InvalidRequest):
            status, message = 400, str(error)
        elif isinstance(error, Overloaded) and self.state.draining:
            status, message = 503, "the server is shutting down; retry on another replica"
        elif isinstance(error, Overloaded):
            status, message = 429, str(error)
            extra = [(b"retry-after", RETRY_AFTER.encode())]
        elif isinstance(error, TimeoutError):
            status, message = 504, str(error) or "the request timed out before it ran"
        elif isinstance(error, CtrlganError):
            status, message = 500, str(error)
        else:
            log.exception("internal error")
            status, message = 500, f"internal error ({type(error).__name__}); see the server log"
        return status, error_body(message), extra

    # Routing ------------------------------------------------------------------------------
    def route(self, method: str, path: str) -> tuple[str, str | None, tuple]:
        """(endpoint, model name, extra) or ProtocolError 404/405."""
        parts = path.strip("/").split("/")
        n = len(parts)
        if parts[0] == "v2":
            if n == 1:
                return allow(method, "GET", ("server", None, ()))
            if n == 3 and parts[1] == "health" and parts[2] in ("live", "ready"):
                return allow(method, "GET", ("health_" + parts[2], None, ()))
            if n >= 3 and parts[1] == "models":
                name = unquote(parts[2])
                rest = parts[3:]
                version = None
                if len(rest) >= 2 and rest[0] == "versions":
                    version, rest = unquote(rest[1]), rest[2:]
                if rest == []:
                    return allow(method, "GET", ("model_metadata", name, (version,)))
                if rest == ["ready"]:
                    return allow(method, "GET", ("model_ready", name, (version,)))
                if rest == ["infer"]:
                    return allow(method, "POST", ("infer", name, (version,)))
        elif parts[0] == "v1" and n >= 2 and parts[1] == "models":
            if n == 2:
                return allow(method, "GET", ("v1_models", None, ()))
            if n == 4:
                name, leaf = unquote(parts[2]), parts[3]
                if leaf in people.PNG_ROUTES:
                    return allow(method, "GET", ("v1_" + leaf, name, ()))
                if leaf == "sample":
                    return allow(method, "POST", ("v1_sample", name, ()))
        elif path == "/" or path == "/index.html":
            return allow(method, "GET", ("page", None, ("index.html",)))
        elif n == 2 and parts[0] == "static" and parts[1] in PAGE_FILES:
            return allow(method, "GET", ("page", None, (parts[1],)))
        elif n == 1 and parts[0] == "openapi.json":
            return allow(method, "GET", ("openapi", None, ()))
        elif n == 1 and parts[0] == "metrics":
            return allow(method, "GET", ("metrics", None, ()))
        raise ProtocolError(404, f"no route {path[:80]!r}; see /openapi.json")

    def authorize(self, headers: Mapping[bytes, bytes]) -> None:
        check_key(headers.get(b"authorization"), self.key)

    async def dispatch(self, route, scope, headers, receive, send) -> int:
        endpoint, name, extra = route
        if endpoint == "infer":
            return await self.infer(self.model(name, extra[0]), headers, receive, send)
        if endpoint == "page":
            body, kind = self.page[extra[0]]
            await respond(
                send, 200, body, [(b"content-type", kind), (b"cache-control", b"no-cache")]
            )
            return 200
        if endpoint == "health_live":
            return await respond_json(send, 200, {"live": True})
        if endpoint == "health_ready":
            if not self.state.serving:
                return await respond_json(send, 503, {"ready": False, "error": self.state.why_not})
            return await respond_json(send, 200, {"ready": True})
        if endpoint == "server":
            return await respond_json(send, 200, self.metadata)
        if endpoint == "model_metadata":
            return await respond_json(send, 200, self.model(name, extra[0]).metadata())
        if endpoint == "model_ready":
            self.model(name, extra[0])
            ready = self.state.serving
            doc = {"name": name, "ready": ready}
            if not ready:  # an error answer, like every other: {"error": ...}
                doc["error"] = self.state.why_not
            return await respond_json(send, 200 if ready else 503, doc)
        if endpoint == "v1_models":
            return await respond_json(send, 200, {"models": [m.describe() for m in self.table]})
        if endpoint == "openapi":
            return await respond_json(send, 200, schema([m.name for m in self.table]))
        if endpoint == "metrics":
            body = self.metrics.exposition()
            await respond(send, 200, body, [(b"content-type", METRICS_TYPE.encode())])
            return 200
        model = self.model(name, None)
        if endpoint == "v1_sample":
            body = await self.read_body(headers, receive, model.max_request_bytes)
            return await self.guarded(lambda: people.sample_json(self, model, body), send)
        return await self.guarded(
            lambda: people.png(self, model, endpoint[3:], scope, headers), send
        )

    def model(self, name: str, version: str | None) -> ServedModel:
        model = self.table.get(name)
        if version is not None and version != VERSION:
            raise NotFound(f"model {name!r} has no version {version[:20]!r}; it has {VERSION}")
        return model

    async def guarded(self, work, send) -> int:
        """Run a /v1 handler, ``work()`` -> (status, body, headers), as an accepted request."""
        with self.state.accepted():
            status, body, headers = await work()
        await respond(send, status, body, headers)
        return status

    # Inference ----------------------------------------------------------------------------
    async def infer(self, model: ServedModel, headers, receive, send) -> int:
        with self.state.accepted():
            body = await self.read_body(headers, receive, model.max_request_bytes)
            header = headers.get(b"inference-header-content-length")
            request = await self.offload(
                len(body) > OFFLOAD_BYTES, protocol.parse_http, body,
                None if header is None else header.decode("latin-1"), model.max_elements,
            )  # fmt: skip
            check_outputs(request.outputs)
            timeout = self.timeout(request.parameters)
            images = await model.infer(request.inputs, timeout)
            binary = request.binary_outputs
            if request.binary_default and request.outputs is None:
                binary = set(OUTPUTS)
            json_values = sum(
                images.size for name in request.outputs or OUTPUTS if name not in binary
            )  # an upper bound of the values the answer spells out in JSON
            payload, head = await self.offload(
                json_values > OFFLOAD_VALUES or len(images) > OFFLOAD_VALUES // 64,
                self.answer, model.name, request, images, binary,
            )  # fmt: skip
        if head is None:
            await respond(send, 200, payload, JSON)
        else:
            await respond(send, 200, payload, [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(head).encode()),
            ])  # fmt: skip
        return 200

    @staticmethod
    def answer(name: str, request, images, binary: set) -> tuple[bytes, int | None]:
        result = outputs(images, request.outputs)
        return protocol.response_json(name, VERSION, request.id, result, binary)

    async def offload(self, big: bool, work, *args):
        """``work(*args)``: on a worker thread when ``big`` (the loop stays free for the other
        requests while megabytes of JSON are parsed or written), else here."""
        if not big:
            return work(*args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, work, *args)

    def timeout(self, parameters: Mapping, deadline: float | None = None) -> float | None:
        """Seconds a request may wait in a queue: its ``timeout`` parameter (microseconds, as
        Triton's), the server's --request-timeout and a gRPC deadline (seconds left), whichever
        is least; None: no limit at all."""
        limits = [t for t in (self.request_timeout, deadline) if t is not None]
        value = parameters.get("timeout")
        if value is not None:
            if type(value) is not int or not 0 < value <= protocol.MAX_TIMEOUT_US:
                raise protocol.bad(
                    f"parameters.timeout: microseconds, an int in 1..{protocol.MAX_TIMEOUT_US}"
                )
            limits.append(value / 1e6)
        seconds = min(limits, default=None)
        if seconds is not None and seconds <= 0:  # a gRPC deadline already past
            raise TimeoutError("the request's deadline passed before it was queued")
        return seconds

    async def read_body(self, headers, receive, largest: int) -> bytes:
        """The request body, at most the server's limit and ``largest`` (what a valid request
        to the model can hold), compressed or not: a 413 before more is read or inflated."""
        limit = min(self.max_body_bytes, largest)
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ProtocolError(413, f"body: more than the limit of {limit} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ProtocolError(400, "body: the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ProtocolError(413, f"body: more than the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = headers.get(b"content-encoding")
        if encoding is not None:
            body = protocol.decompress(body, encoding.decode("latin-1"), limit)
        return body

    # Lifecycle ----------------------------------------------------------------------------
    def begin_drain(self) -> None:
        """Readiness turns 503 and new requests are refused; accepted ones still complete, at
        once (no batcher waits out its max_delay_ms any more)."""
        self.state.draining = True
        for model in self.table:
            model.batcher.flush()

    async def drained(self, timeout: float, abort: asyncio.Event | None = None) -> bool:
        """Wait until no request is in flight (True), or ``timeout`` seconds pass or ``abort``
        is set (False)."""
        deadline = time.monotonic() + timeout
        while self.state.in_flight and time.monotonic() < deadline:
            if abort is not None and abort.is_set():
                break
            await asyncio.sleep(0.01)
        return not self.state.in_flight

    def close(self, wait: bool = True) -> None:
        """Stop the batchers (wait=True: run what is queued first; False: fail it with
        Overloaded, answered 503 while draining) and the worker threads."""
        self.table.close(wait=wait)
        self.pool.shutdown(wait=wait, cancel_futures=not wait)


def load_page() -> dict[str, tuple[bytes, bytes]]:
    from importlib import resources

    folder = resources.files("ctrlgan.serve").joinpath("static")
    return {name: (folder.joinpath(name).read_bytes(), kind) for name, kind in PAGE_FILES.items()}


def check_key(given: bytes | None, key: bytes) -> None:
    """``Authorization: Bearer <key>`` (the scheme in any case, RFC 7235), the key compared in
    constant time; ProtocolError 401 otherwise."""
    if given is None:
        raise ProtocolError(401, "authorization: missing; send 'Authorization: Bearer <key>'")
    scheme, _, token = given.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        raise ProtocolError(401, "authorization: expected 'Bearer <key>'")
    if not hmac.compare_digest(token.strip(), key):
        raise ProtocolError(401, "authorization: wrong API key")


def allow(method: str, allowed: str, route):
    if method == allowed or (allowed == "GET" and method == "HEAD"):
        return route
    error = ProtocolError(405, f"method {method[:10]} not allowed here; use {allowed}")
    error.allow = allowed
    raise error


def routed_path(scope) -> str:
    """The request's path below the app's mount point: ASGI servers that mount an app under a
    prefix (Ray Serve's route_prefix, a root_path) keep the prefix in both "root_path" and
    "path"."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


def client(scope) -> str:
    peer = scope.get("client")
    return f"{peer[0]}:{peer[1]}" if peer else "-"


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def respond(send, status: int, body: bytes, headers: Iterable) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        *headers, (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


async def respond_json(send, status: int, doc) -> int:
    await respond(send, status, json.dumps(doc).encode(), JSON)
    return status


def create_app(
    models: Iterable | Mapping = (DEFAULT_MODEL,),
    *,
    backend: str = "auto",
    max_batch_size: int = 64,
    max_delay_ms: float = 0.0,
    max_queue: int = 1024,
    max_images: int = DEFAULT_MAX_IMAGES,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    request_timeout: float | None = DEFAULT_TIMEOUT,
    api_key: str | None = None,
    access_log: bool = False,
    threads: int = 0,
) -> App:
    """The ASGI app serving ``models``: bundled names or artifact directories (each served
    under its name or directory name), or a {name: Generator} mapping. Each model gets its
    own BatchingGenerator (max_batch_size images per backend call, max_delay_ms to fill one,
    max_queue images waiting before 429). max_images: the most images one request may ask
    for; request_timeout: seconds a request may wait in a queue (None: no limit)."""
    from ctrlgan import validate
    from ctrlgan.artifact import resolve
    from ctrlgan.runtime.generator import load

    max_images = validate.integer(max_images, "max_images", 1, validate.MAX_BATCH)
    max_body_bytes = validate.integer(max_body_bytes, "max_body_bytes", 1024, 1 << 31)
    if request_timeout is not None:
        request_timeout = validate.real(request_timeout, "request_timeout", hi=1e6, above=0.0)
    if isinstance(models, (str, bytes)) or not isinstance(models, (Iterable, Mapping)):
        raise InvalidRequest("models", "expected a list of model names or paths, or a mapping")
    if isinstance(models, Mapping):
        named = dict(models)
    else:
        named = {}
        for item in models:
            if isinstance(item, Generator):
                raise InvalidRequest("models", "name a Generator: pass {name: generator}")
            path = resolve(item)
            name = path.name
            if name in named:
                raise InvalidRequest("models", f"two models are named {name!r}")
            named[name] = load(item, backend=backend, threads=threads)
    if not named:
        raise InvalidRequest("models", "no model to serve")
    table = {}
    for name, generator in named.items():
        if not isinstance(generator, Generator):
            raise InvalidRequest("models", f"{name!r}: expected a Generator")
        table[name] = ServedModel(
            name, generator, max_batch_size=max_batch_size, max_delay_ms=max_delay_ms,
            max_queue=max_queue, max_images=max_images,
        )  # fmt: skip
    return App(
        ModelTable(table), api_key=api_key, max_body_bytes=max_body_bytes,
        request_timeout=request_timeout, access_log=access_log,
    )  # fmt: skip
