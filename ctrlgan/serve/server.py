"""`ctrlgan serve`: the HTTP app on uvicorn (uvloop, httptools) and the gRPC service on
grpc.aio, in one process and one event loop, with a graceful shutdown.

SIGTERM or SIGINT: readiness turns 503 at once and new requests are refused (HTTP 503, gRPC
UNAVAILABLE); every accepted request is answered; then the listeners close (new connections
are refused), requests already read on open connections are answered 503, the connections
close, and the process exits 0. ``drain_timeout`` seconds bound the wait: then what is still
queued is answered 503, the batch computing finishes, and the process exits 1 within about two
more seconds; a second signal does the same at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys

import uvicorn

from ctrlgan.serve.app import App

log = logging.getLogger("ctrlgan.serve")
LINGER = 0.25  # seconds between closing the listeners and closing the connections
SHUTDOWN_GRACE = 1.0  # seconds uvicorn and gRPC give what is left after the drain


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: ours drains first, then sets should_exit."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def serve(
    app: App,
    host: str = "127.0.0.1",
    port: int = 8000,
    grpc_port: int | None = 8001,
    drain_timeout: float = 30.0,
    announce=print,
) -> int:
    """Serve ``app`` until a signal; returns the exit status (0: drained cleanly)."""
    config = uvicorn.Config(
        app, host=host, port=port, loop="none", http="httptools", lifespan="off",
        access_log=False, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE,
        server_header=False,
    )  # fmt: skip
    http = _Uvicorn(config)
    sock = listen(host, port)  # bound here: a taken port is one clear error, before anything
    grpc_server = None
    if grpc_port is not None:
        from ctrlgan.serve.grpc import create_server

        try:
            if grpc_port:  # a taken port as one clear line (grpc's own error is a log dump)
                listen(host, grpc_port, "gRPC").close()
            grpc_server, grpc_port = create_server(app, f"{host}:{grpc_port}",
                                                   app.max_body_bytes)  # fmt: skip
        except BaseException:
            sock.close()
            raise
        await grpc_server.start()

    loop = asyncio.get_running_loop()
    stop, abort = asyncio.Event(), asyncio.Event()
    signals = {"count": 0}

    def on_signal(sig: int) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            abort.set()
            log.warning("second signal: stopping without draining")
        app.begin_drain()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    server_task = asyncio.create_task(http.serve(sockets=[sock]))
    while not http.started and not server_task.done():
        await asyncio.sleep(0.01)
    if server_task.done():  # uvicorn failed to start: it logged why
        if grpc_server is not None:
            await grpc_server.stop(None)
        app.close()
        return 1
    host_shown = f"[{host}]" if ":" in host else host
    names = ", ".join(f"{m.name} ({m.generator.backend})" for m in app.table)
    announce(f"ctrlgan serve: models {names}")
    port = sock.getsockname()[1]  # the real one, also for --port 0
    announce(f"  HTTP  http://{host_shown}:{port}/v2  (/v1/models, /openapi.json, /metrics)")
    if grpc_port is not None:
        announce(f"  gRPC  {host_shown}:{grpc_port}  (inference.GRPCInferenceService)")
    announce("  Ctrl-C or SIGTERM drains and stops")
    sys.stdout.flush()

    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({server_task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    app.begin_drain()
    drained = await app.drained(drain_timeout, abort)
    if not drained:
        log.warning("stopping with %d request(s) in flight", app.state.in_flight)
        # what is still queued fails now (answered 503); a batch already computing finishes
        await loop.run_in_executor(None, app.table.close, False)
    # Stop listening first (a new connection is then refused, which a client can retry), and
    # give connections already accepted a moment to have their requests read and answered
    # (503): closing one with an unread request would reset it, and a reset request may or
    # may not have run, as far as its client can tell.
    for listener in http.servers:
        listener.close()
    await asyncio.sleep(LINGER)
    http.should_exit = True
    if grpc_server is not None:
        await grpc_server.stop(grace=SHUTDOWN_GRACE if drained else 0.0)
    await server_task
    stopper.cancel()
    await loop.run_in_executor(None, app.close, drained)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    return 0 if drained and signals["count"] <= 1 else 1


def listen(host: str, port: int, what: str = "HTTP") -> socket.socket:
    """A TCP socket bound to (host, port) for uvicorn, or OSError saying which address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(
            e.errno, f"cannot listen on {host}:{port} for {what} ({e.strerror})"
        ) from None
    return sock


def run(app: App, **kwargs) -> int:
    """``serve`` on a uvloop event loop (asyncio's own where uvloop is missing)."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        runner = asyncio.run
    return runner(serve(app, **kwargs))
