"""`ctrlgan serve`: the inference server (ctrlgan/serve/)."""

from __future__ import annotations

import argparse
import os
import sys

from ctrlgan.artifact import DEFAULT_MODEL
from ctrlgan.cli import options
from ctrlgan.errors import InvalidRequest

KEY_ENV = "CTRLGAN_API_KEY"


def add_parsers(sub) -> None:
    s = options.command(
        sub,
        "serve",
        help="serve models over HTTP and gRPC (Open Inference Protocol v2)",
        description="Serve one or more models: the Open Inference Protocol v2 over HTTP (JSON "
        "and binary tensors; tritonclient.http, KServe's client, curl) and gRPC "
        "(tritonclient.grpc), PNG endpoints for people under /v1, Prometheus metrics at "
        "/metrics. Each model has its own micro-batching queue. SIGTERM or Ctrl-C drains: "
        "readiness turns 503, accepted requests are answered, then the server exits 0.",
    )
    add_listen(s)
    s.add_argument("--grpc-port", type=int, default=8001, help="gRPC port")
    s.add_argument("--no-grpc", action="store_true", help="serve HTTP only")
    s.add_argument("--max-batch-size", type=int, default=64, help="most images per backend call")
    s.add_argument(
        "--max-delay-ms", type=float, default=0.0,
        help="how long the first queued request waits for others to fill a batch",
    )  # fmt: skip
    s.add_argument(
        "--max-queue", type=int, default=1024,
        help="images that may wait per model; beyond it requests get 429 / RESOURCE_EXHAUSTED",
    )  # fmt: skip
    s.add_argument("--max-images", type=int, default=1024, help="most images per request")
    s.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body, in MiB")
    s.add_argument(
        "--request-timeout", type=float, default=60.0,
        help="seconds a request may wait in a queue before 504 / DEADLINE_EXCEEDED",
    )  # fmt: skip
    s.add_argument(
        "--drain-timeout", type=float, default=30.0,
        help="seconds to wait for accepted requests on shutdown",
    )  # fmt: skip
    s.add_argument(
        "--api-key-file", default=None,
        help=f"file holding the API key clients must send as 'Authorization: Bearer KEY' "
        f"(default: ${KEY_ENV} if set; else no key)",
    )  # fmt: skip
    s.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    s.add_argument("--access-log", action="store_true", help="one log line per request")
    s.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="serve on Ray Serve (needs ctrlgan[ray]): a new local Ray without ADDRESS, else join "
        "the cluster at ADDRESS (host:port, auto or ray://...); --replicas copies of this "
        "server, each with its own batcher, behind Ray's HTTP proxy on --host:--port; HTTP "
        "only; see docs/ray_serve.md",
    )  # fmt: skip
    s.add_argument("--replicas", type=int, default=None, help="with --ray: copies of the server "
                   "(default 1)")  # fmt: skip
    s.add_argument("--num-cpus", type=float, default=None, help="with --ray: CPUs Ray reserves "
                   "for each replica (default 1; also its onnxruntime threads)")  # fmt: skip
    s.add_argument("--num-gpus", type=float, default=None, help="with --ray: GPUs for each "
                   "replica (default 0; e.g. 1 or 0.5 with --backend triton)")  # fmt: skip
    s.set_defaults(func=run)

    p = options.command(
        sub,
        "play",
        help="the playground: a web page to steer a model, served locally",
        description="Serve the playground page (and the HTTP API) at http://HOST:PORT/: pick a "
        "class and a seed, move one slider per direction, view grids and interpolations, copy "
        "the image as Python, CLI or curl; the page's URL holds its whole state. Ctrl-C stops.",
    )
    add_listen(p)
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    # everything else as `serve` has it by default, but HTTP only, no key file, a short drain
    tuning = vars(s.parse_args([]))
    for name in ("models", "host", "port", "backend", "func"):
        del tuning[name]
    p.set_defaults(func=play, **{**tuning, "no_grpc": True, "drain_timeout": 5.0})


def add_listen(parser: argparse.ArgumentParser) -> None:
    """What `serve` and `play` share: the models, the address, the backend."""
    parser.add_argument(
        "models", nargs="*", default=[DEFAULT_MODEL], metavar="MODEL",
        help="bundled model names or artifact directories, each served under its name",
    )  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free one)")
    options.add_backend(parser)


def api_key(path: str | None) -> str | None:
    if path is None:
        return os.environ.get(KEY_ENV) or None
    try:
        with open(path, "rb") as f:
            raw = f.read(4097)
    except OSError as e:
        raise InvalidRequest("api-key-file", f"cannot read {path!r} ({e.strerror})") from None
    try:
        key = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        key = ""
    if not key or len(key) > 4096 or not key.isprintable() or " " in key:
        raise InvalidRequest(
            "api-key-file", f"{path!r} must hold one printable ASCII key without spaces"
        )
    return key


def play(args: argparse.Namespace) -> int:
    """`ctrlgan serve` without gRPC, announcing the page (and opening it with --open)."""

    def announce(line: str) -> None:
        if line.startswith("  HTTP"):
            url = line.split()[1].removesuffix("v2")
            print(f"  page  {url}   (the API: {url}v2, {url}openapi.json)")
            if args.open:
                import webbrowser

                webbrowser.open(url)
        elif not line.startswith("  gRPC"):
            print(line)

    return run(args, announce=announce)


def run(args: argparse.Namespace, announce=print) -> int:
    import logging

    from ctrlgan import validate
    from ctrlgan.serve import create_app
    from ctrlgan.serve.server import run as run_server

    for port, name in ((args.port, "port"), (args.grpc_port, "grpc-port")):
        validate.integer(port, name, 0, 65535)
    if not args.no_grpc and args.port == args.grpc_port and args.port != 0:
        raise InvalidRequest("grpc-port", "must differ from --port")
    # every flag checked under its own name before anything loads
    validate.real(args.max_body_mb, "max-body-mb", 1 / 1024, 2048.0)
    validate.real(args.drain_timeout, "drain-timeout", 0.0, 3600.0)
    validate.real(args.request_timeout, "request-timeout", hi=1e6, above=0.0)
    validate.real(args.max_delay_ms, "max-delay-ms", 0.0, 60_000.0)
    validate.integer(args.max_batch_size, "max-batch-size", 1, validate.MAX_BATCH)
    validate.integer(args.max_queue, "max-queue", 1, validate.MAX_BATCH)
    validate.integer(args.max_images, "max-images", 1, validate.MAX_BATCH)
    validate.threads(args.threads, "threads")
    on_ray = getattr(args, "ray", None) is not None
    for name in ("replicas", "num_cpus", "num_gpus"):
        if getattr(args, name, None) is not None and not on_ray:
            raise InvalidRequest(name.replace("_", "-"), "only with --ray")
    replicas = validate.integer(1 if args.replicas is None else args.replicas, "replicas", 1,
                                4096)  # fmt: skip
    key = api_key(args.api_key_file)
    if on_ray:
        if args.port == 0:
            raise InvalidRequest("port", "give a port with --ray (Ray's proxies listen on it)")
        return run_on_ray(args, key, replicas, announce)
    logging.basicConfig(level=logging.INFO if args.access_log else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    app = create_app(
        args.models, backend=args.backend, max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms, max_queue=args.max_queue, max_images=args.max_images,
        max_body_bytes=int(args.max_body_mb * (1 << 20)), request_timeout=args.request_timeout,
        api_key=key, access_log=args.access_log, threads=args.threads,
    )  # fmt: skip
    return run_server(
        app, host=args.host, port=args.port, grpc_port=None if args.no_grpc else args.grpc_port,
        drain_timeout=args.drain_timeout, announce=announce,
    )  # fmt: skip


def run_on_ray(args: argparse.Namespace, key: str | None, replicas: int, announce=print) -> int:
    """`ctrlgan serve --ray`: join (or start) a Ray cluster, deploy the server on Ray Serve,
    wait for SIGINT or SIGTERM, then delete the application (Ray drains each replica within
    --drain-timeout) and exit 0."""
    import signal
    import threading

    from ctrlgan import validate
    from ctrlgan.errors import summary

    try:
        import ray
        from ray import serve
        from ray.exceptions import RayError
        from ray.serve.exceptions import RayServeException

        from ctrlgan.integrations import ray as ray_jobs
        from ctrlgan.integrations import ray_serve
    except ImportError as e:
        raise InvalidRequest("ray", f"needs Ray Serve: pip install 'ctrlgan[ray]' ({e})") from None
    # checked (and the models resolved) before Ray starts: a typo costs no cluster
    from ctrlgan.artifact import resolve

    for model in args.models:
        resolve(model)
    resources = {"num_cpus": 1.0 if args.num_cpus is None else args.num_cpus,
                 "num_gpus": 0.0 if args.num_gpus is None else args.num_gpus}  # fmt: skip
    validate.real(resources["num_cpus"], "num-cpus", 0.0, 1024.0)
    validate.real(resources["num_gpus"], "num-gpus", 0.0, 64.0)
    application = ray_serve.build(
        args.models, replicas=replicas, **resources, backend=args.backend,
        max_batch_size=args.max_batch_size,
        max_delay_ms=args.max_delay_ms, max_queue=args.max_queue, max_images=args.max_images,
        max_body_bytes=int(args.max_body_mb * (1 << 20)), request_timeout=args.request_timeout,
        api_key=key, access_log=args.access_log, threads=args.threads or None,
        drain_timeout=args.drain_timeout,
    )  # fmt: skip
    address = args.ray
    stop = threading.Event()
    previous = {}
    started = False
    try:
        # a new local Ray, or the cluster at ADDRESS (one that does not answer: one line, fast)
        started = ray_jobs.connect(ray, address)
        try:
            serve.start(http_options={"host": args.host, "port": args.port})
            serve.run(application, name=ray_serve.DEFAULT_NAME, route_prefix="/")
        except (RuntimeError, ValueError, TimeoutError, RayError, RayServeException) as e:
            # e.g. a replica that cannot load its model, or "/" taken by another application
            raise InvalidRequest("ray", f"the deployment failed: {summary(e)}") from None
        # ours after Ray's: ray.init installs a handler that aborts the process on SIGTERM
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
        host = f"[{args.host}]" if ":" in args.host else args.host
        plural = "s" if replicas > 1 else ""
        announce(f"ctrlgan serve: models {', '.join(args.models)} on Ray Serve "
                 f"({replicas} replica{plural}, Ray at {address})")  # fmt: skip
        if _proxy_answers(args.host, args.port):
            announce(f"  HTTP  http://{host}:{args.port}/v2  (/v1/models, /openapi.json; the "
                     "Ray proxy of every node)")  # fmt: skip
        else:  # Serve already ran on this cluster: its HTTP options stay as they were
            announce(f"  HTTP  on the port Ray Serve already listens on in this cluster, not "
                     f"{args.port} (see `serve status`)")  # fmt: skip
        announce("  gRPC  not served on Ray (HTTP only)")
        announce("  Ctrl-C or SIGTERM drains and stops")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
        # returns once Ray has drained the replicas; bounded, since it never returns if Ray
        # itself went away (Ctrl-C reaches a local Ray's processes too)
        drained = _bounded(lambda: serve.delete(ray_serve.DEFAULT_NAME), args.drain_timeout + 10)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started and address == "local":
            _bounded(serve.shutdown, 10.0)
            ray.shutdown()
    return 0 if drained else 1


def _proxy_answers(host: str, port: int) -> bool:
    """Whether Ray's proxy answers on (host, port) (its /-/routes)."""
    import urllib.request

    near = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    near = f"[{near}]" if ":" in near else near
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no $http_proxy
        opener.open(f"http://{near}:{port}/-/routes", timeout=5.0).close()
    except OSError:
        return False
    return True


def _bounded(work, seconds: float) -> bool:
    """``work()`` on a daemon thread; False if it has not returned within ``seconds``."""
    import threading

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()
