"""Serving under closed-loop load: `ctrlgan serve` (batched, unbatched) against LitServe.

    python benchmarks/bench_serve.py                       # full sweep, ~7 min, records the JSON
    python benchmarks/bench_serve.py --quick --no-save     # a smoke run, ~1 min

Every contender serves the bundled digits model on onnxruntime, in its own process group on
127.0.0.1 free ports, started once:

  ctrlgan          ctrlgan serve --max-batch-size 64 --max-delay-ms 0 (the defaults)
  ctrlgan-nobatch  ctrlgan serve --max-batch-size 1 (every request is its own backend call)
  litserve         a litserve.LitAPI around the same Generator (this file, --litserve-port):
                   setup() loads ctrlgan.load("digits", backend="onnxruntime"), decode_request
                   reads {"classes": [...], "seeds": [...]}, batch() joins up to 64 requests
                   (LitServe counts requests, not images), predict() is one
                   Generator.sample(output="uint8"), unbatch() splits it, encode_response returns
                   the uint8 bytes as a raw octet-stream Response (the fastest LitServe allows:
                   no JSON or base64 on the way out). 1 worker, accelerator "cpu", 1 API server
                   process, uvicorn on uvloop + httptools like ours, no access log, no client.py

Protocols (ctrlgan): ``binary`` is OIP v2 HTTP with the binary tensor extension (inputs by
binary_data_size, binary_data_output=true), ``json`` OIP v2 HTTP JSON, ``grpc``
inference.GRPCInferenceService/ModelInfer with raw_input_contents. LitServe speaks its own JSON
at /predict (``litjson``). Inputs are classes and seeds, INT64 [B]; the one output asked for is
``image_uint8`` [B, 16, 16, 1] (256 bytes an image: what LitServe returns too, and what a client
shows; the float32 ``image`` would be 4x the bytes).

The load generator is this process: one asyncio loop on uvloop. HTTP clients are raw HTTP/1.1
keep-alive connections (an asyncio.Protocol each) sending pre-encoded request bytes and
reading responses by Content-Length; gRPC clients are tasks on one grpc.aio channel calling a
generic unary-unary method with pre-serialized requests and no response parsing. Each cell
(contender x protocol x clients x images) runs closed-loop: every client sends its next
request when its last one returns, for --warmup seconds (not counted) and then --seconds
(measured: requests completed in the window, latency from send to last byte). While a cell
runs, every other server is paused (SIGSTOP to its process group): LitServe's batch loop
polls its queue without sleeping when batch_timeout is 0, and would take a core from the
others. Server CPU is utime + stime of the server's processes (/proc) over the window, the
load generator's is its own process CPU time. Cells run --repeats rounds, interleaved (the
contender order rotates each round); figures are medians over rounds, latency percentiles
are over all rounds' requests. In-process ``Generator.sample`` (1 and 64 images) is timed in
this process in every round, between cells, to give the server's added latency. Before
timing, one request of each kind is checked byte-equal to in-process ``sample``.

Targets: at 64 clients x 1 image, ctrlgan (batched) >= 1.5x LitServe's images/s with a p99 no
worse, and >= 1.5x ctrlgan with batching off; at 1 client, HTTP binary p50 minus the in-process
sample p50 <= 250 us.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "digits"
CONTENDERS = ("ctrlgan", "ctrlgan-nobatch", "litserve")
PROTOCOLS = ("binary", "json", "grpc")  # ctrlgan's; litserve always speaks its own JSON
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"
SETTINGS = ("clients", "images", "protocols", "contenders", "seconds", "warmup", "repeats",
            "threads", "max_queue", "litserve_batch_timeout", "litserve_queue")  # fmt: skip
KINDS = 8  # distinct pre-encoded requests per cell, cycled by the clients


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", default="1,16,64", help="concurrent clients (%(default)s)")
    p.add_argument("--images", default="1,64", help="images per request (%(default)s)")
    p.add_argument("--protocols", default=",".join(PROTOCOLS), help="ctrlgan's (%(default)s)")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="(%(default)s)")
    p.add_argument("--seconds", type=float, default=2.0, help="measured per cell (%(default)s)")
    p.add_argument("--warmup", type=float, default=0.5, help="per cell, uncounted (%(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (%(default)s)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    p.add_argument(
        "--max-queue",
        type=int,
        default=4096,
        help="ctrlgan serve --max-queue, images (%(default)s: 64 clients x 64 images fit; "
        "the default 1024 answers 429 there)",
    )
    p.add_argument(
        "--litserve-batch-timeout",
        type=float,
        default=0.0,
        help="LitServe's batch_timeout in seconds (%(default)s: like our --max-delay-ms 0)",
    )
    p.add_argument(
        "--litserve-queue",
        choices=("zmq", "mp"),
        default="zmq",
        help="LitServe's response transport: zmq (fast_queue=True, its faster one: 2.6x the "
        "requests/s of mp at 64 clients here) or mp (multiprocessing queues) (%(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="1 round, 0.5 s cells: a smoke run")
    p.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    p.add_argument("--json", type=Path, help="JSON path (default: results/serve-cpu-<date>.json)")
    p.add_argument("--litserve-port", type=int, help=argparse.SUPPRESS)  # the LitServe child
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.repeats = 0.5, 0.2, 1
    try:
        args.clients = [int(c) for c in args.clients.split(",")]
        args.images = [int(c) for c in args.images.split(",")]
    except ValueError:
        p.error("--clients and --images: comma-separated ints")
    args.protocols = args.protocols.split(",")
    args.contenders = args.contenders.split(",")
    if not set(args.protocols) <= set(PROTOCOLS) or not set(args.contenders) <= set(CONTENDERS):
        p.error(f"--protocols from {PROTOCOLS}, --contenders from {CONTENDERS}")
    if min(args.clients + args.images) < 1 or args.seconds <= 0 or args.repeats < 1:
        p.error("need clients, images >= 1, --seconds > 0 and --repeats >= 1")
    return args


# The LitServe contender ------------------------------------------------------------------------
try:  # module level: LitServe spawns its worker, which unpickles the API by name
    import litserve as ls
    from starlette.responses import Response
except ImportError:  # only the litserve contender needs it
    ls = None

if ls is not None:

    class GeneratorAPI(ls.LitAPI):
        def __init__(self, threads: int = 0, **kwargs):
            super().__init__(**kwargs)
            self.threads = threads

        def setup(self, device):
            import ctrlgan

            self.generator = ctrlgan.load(MODEL, backend="onnxruntime", threads=self.threads)

        def decode_request(self, request):
            return request["classes"], request["seeds"]

        def batch(self, inputs):
            sizes = [len(c) for c, _ in inputs]
            classes = [c for cs, _ in inputs for c in cs]
            seeds = [s for _, ss in inputs for s in ss]
            return classes, seeds, sizes

        def predict(self, x):
            classes, seeds, sizes = x
            images = self.generator.sample(classes=classes, seeds=seeds, output="uint8")
            return np.split(images, np.cumsum(sizes)[:-1])

        def unbatch(self, output):
            return output

        def encode_response(self, output) -> Response:
            return Response(output.tobytes(), media_type="application/octet-stream")


def run_litserve(port: int, batch_timeout: float, fast_queue: bool, threads: int) -> None:
    """Serve the LitServe contender on 127.0.0.1:port until SIGTERM (a child process)."""
    api = GeneratorAPI(threads, max_batch_size=64, batch_timeout=batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1,
                          fast_queue=fast_queue)  # fmt: skip
    server.run(
        host="127.0.0.1", port=port, log_level="warning", generate_client_file=False,
        num_api_servers=1, access_log=False, loop="uvloop", http="httptools",
    )  # fmt: skip


# Servers --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One contender's server process group: start, wait until ready, pause, resume, stop."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.port = free_port()
        self.grpc_port = free_port()
        py = sys.executable
        if name == "litserve":
            cmd = [py, __file__, "--litserve-port", str(self.port), "--threads",
                   str(args.threads), "--litserve-batch-timeout",
                   str(args.litserve_batch_timeout)]  # fmt: skip
            cmd += ["--litserve-queue", args.litserve_queue]
        else:
            cmd = [py, "-m", "ctrlgan", "serve", MODEL, "--backend", "onnxruntime", "--port",
                   str(self.port), "--grpc-port", str(self.grpc_port), "--max-batch-size",
                   "64" if name == "ctrlgan" else "1", "--max-delay-ms", "0", "--max-queue",
                   str(args.max_queue), "--threads", str(args.threads)]  # fmt: skip
        shown = ["python", "benchmarks/bench_serve.py"] if name == "litserve" else ["ctrlgan"]
        self.command = " ".join(shown + cmd[2 if name == "litserve" else 3 :])
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop); never blocks
        self.proc = subprocess.Popen(
            cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=self.log
        )
        self.pids: list[int] = [self.proc.pid]

    def wait_ready(self, timeout: float = 60.0) -> None:
        path = "/health" if self.name == "litserve" else "/v2/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited: {self.proc.stderr.read().decode()[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{self.name} not ready after {timeout} s")
        time.sleep(0.3)  # LitServe forks its API server after its workers report ready
        self.pids = descendants(self.proc.pid)

    def cpu_seconds(self) -> float:
        return sum(cpu_of(pid) for pid in self.pids)

    def pause(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5)


def descendants(root: int) -> list[int]:
    """root and every process below it."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    parent[int(entry)] = int(f.read().rsplit(b")", 1)[1].split()[1])
            except OSError:
                continue
    out, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        out += frontier
    return out


# Requests -------------------------------------------------------------------------------------
def payloads(protocol: str, images: int, rng: np.random.Generator):
    """KINDS pre-encoded requests: (wire bytes, classes, seeds) each."""
    out = []
    for _ in range(KINDS):
        classes = rng.integers(0, 10, images)
        seeds = rng.integers(0, 2**62, images)
        out.append((encode(protocol, classes, seeds), classes, seeds))
    return out


def encode(protocol: str, classes: np.ndarray, seeds: np.ndarray) -> bytes:
    b = len(classes)
    if protocol == "grpc":
        from ctrlgan.serve.grpc import MESSAGES

        request = MESSAGES["ModelInfer"][0](model_name=MODEL)
        for name in ("classes", "seeds"):
            request.inputs.add(name=name, datatype="INT64", shape=[b])
        request.outputs.add(name="image_uint8")
        request.raw_input_contents.extend([classes.astype("<i8").tobytes(),
                                           seeds.astype("<i8").tobytes()])  # fmt: skip
        return request.SerializeToString()
    path = f"/v2/models/{MODEL}/infer"
    extra = ""
    if protocol == "litjson":
        path = "/predict"
        body = json.dumps({"classes": classes.tolist(), "seeds": seeds.tolist()}).encode()
    elif protocol == "json":
        tensors = [{"name": n, "datatype": "INT64", "shape": [b], "data": v.tolist()}
                   for n, v in (("classes", classes), ("seeds", seeds))]  # fmt: skip
        doc = {"inputs": tensors, "outputs": [{"name": "image_uint8"}]}
        body = json.dumps(doc).encode()
    else:  # binary
        tensors = [
            {
                "name": n,
                "datatype": "INT64",
                "shape": [b],
                "parameters": {"binary_data_size": 8 * b},
            }
            for n in ("classes", "seeds")
        ]
        doc = {"inputs": tensors, "outputs": [{"name": "image_uint8"}],
               "parameters": {"binary_data_output": True}}  # fmt: skip
        head = json.dumps(doc).encode()
        body = head + classes.astype("<i8").tobytes() + seeds.astype("<i8").tobytes()
        extra = f"Inference-Header-Content-Length: {len(head)}\r\n"
    kind = "octet-stream" if protocol == "binary" else "json"
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/{kind}\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def decode(protocol: str, headers: bytes, body: bytes, images: int) -> np.ndarray:
    """A response's image_uint8, [B, 16, 16, 1], for the correctness check."""
    if protocol == "grpc":
        from ctrlgan.serve.grpc import MESSAGES

        response = MESSAGES["ModelInfer"][1].FromString(body)
        raw = response.raw_output_contents[0]
    elif protocol == "litjson":
        raw = body
    elif protocol == "json":
        raw = bytes(json.loads(body)["outputs"][0]["data"])
    else:
        n = int(header(headers, b"inference-header-content-length"))
        raw = body[n:]
    if len(raw) != images * 256:
        raise AssertionError(
            f"{protocol}: {len(raw)} image bytes for {images} images: {body[:200]!r}"
        )
    return np.frombuffer(raw, np.uint8).reshape(images, 16, 16, 1)


def header(headers: bytes, name: bytes) -> bytes:
    lower = headers.lower()  # the status line first, so every header follows a CRLF
    i = lower.index(b"\r\n" + name + b":") + len(name) + 3
    return headers[i : lower.index(b"\r\n", i)].strip()


# The load generator ---------------------------------------------------------------------------
class HttpClient(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; responses by Content-Length."""

    def __init__(self):
        self.buf = bytearray()
        self.need = -1  # bytes of the whole response, once its head is in
        self.head = 0
        self.waiter: asyncio.Future | None = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def request(self, data: bytes) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter

    def data_received(self, data):
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = end + 4
            self.need = self.head + int(header(bytes(buf[: end + 2]), b"content-length"))
        if len(buf) >= self.need:
            response = bytes(buf[: self.need])
            del buf[: self.need]
            self.need = -1
            if not response.startswith(b"HTTP/1.1 200"):
                self.waiter.set_exception(RuntimeError(response[:300].decode("latin-1")))
            else:
                self.waiter.set_result((response[: self.head], response[self.head :]))

    def connection_lost(self, exc):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))


async def open_clients(server: Server, protocol: str, n: int):
    """n ``call(bytes) -> awaitable (headers, body)`` functions and a closer."""
    loop = asyncio.get_running_loop()
    if protocol == "grpc":
        import grpc

        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{server.grpc_port}",
            options=[("grpc.max_receive_message_length", 64 << 20)],
        )
        await channel.channel_ready()
        method = channel.unary_unary(GRPC_METHOD)  # no serializers: bytes in, bytes out

        async def call(data):
            try:
                return b"", await method(data)
            except grpc.aio.AioRpcError as e:  # counted like an HTTP error status
                raise RuntimeError(f"gRPC {e.code().name}: {e.details()}") from None

        return [call] * n, channel.close
    conns = []
    for _ in range(n):
        _, conn = await loop.create_connection(HttpClient, "127.0.0.1", server.port)
        conn.transport.get_extra_info("socket").setsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
        )
        conns.append(conn)

    async def close():
        for c in conns:
            c.transport.close()

    return [c.request for c in conns], close


async def cell(server: Server, protocol: str, clients: int, requests, warmup: float,
               seconds: float) -> dict:  # fmt: skip
    """Closed-loop load for warmup + seconds; what the measured window saw."""
    calls, close = await open_clients(server, protocol, clients)
    latencies: list[float] = []
    errors: list[str] = []
    t_start = time.perf_counter() + 0.01
    t_window, t_end = t_start + warmup, t_start + warmup + seconds
    mark = {}

    def snapshot(key):
        mark[key] = (time.perf_counter(), server.cpu_seconds(), time.process_time())

    loop = asyncio.get_running_loop()
    now_loop, now = loop.time(), time.perf_counter()
    loop.call_at(now_loop + (t_window - now), snapshot, "start")
    loop.call_at(now_loop + (t_end - now), snapshot, "end")

    async def client(k: int, call):
        perf = time.perf_counter
        i = k
        while True:
            t0 = perf()
            if t0 >= t_end:
                return
            try:
                await call(requests[i % KINDS][0])
            except RuntimeError as e:  # an HTTP error status: counted, not timed
                errors.append(str(e).split("\r\n")[0])
                i += 1
                continue
            t1 = perf()
            if t0 >= t_window and t1 <= t_end:
                latencies.append(t1 - t0)
            i += 1

    await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
    await asyncio.gather(*(client(k, c) for k, c in enumerate(calls)))
    await close()
    (w0, s0, l0), (w1, s1, l1) = mark["start"], mark["end"]
    return {
        "window_s": w1 - w0,
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "latencies": latencies,
        "server_cpu_s": s1 - s0,
        "loadgen_cpu_s": l1 - l0,
    }


async def check(server: Server, protocol: str, images: int, generator, rng) -> None:
    """One request, its images byte-equal to in-process sample."""
    data, classes, seeds = payloads(protocol, images, rng)[0]
    calls, close = await open_clients(server, protocol, 1)
    headers, body = await calls[0](data)
    await close()
    got = decode(protocol, headers, body, images)
    want = generator.sample(classes=classes.tolist(), seeds=seeds.tolist(), output="uint8")
    if not np.array_equal(got, want):
        raise AssertionError(f"{server.name} {protocol}: images differ from in-process sample")


def in_process(generator, images: int, seconds: float, rng) -> list[float]:
    """Latencies of back-to-back Generator.sample calls for ``seconds``."""
    classes = rng.integers(0, 10, images).tolist()
    seeds = rng.integers(0, 2**62, images).tolist()
    out = []
    perf = time.perf_counter
    end = perf() + seconds
    while True:
        t0 = perf()
        if t0 >= end:
            return out
        generator.sample(classes=classes, seeds=seeds, output="uint8")
        out.append(perf() - t0)


async def sweep(args, servers: dict[str, Server], generator) -> tuple[dict, dict]:
    rng = np.random.default_rng(0)
    cells = [
        (name, protocol, c, b)
        for c in args.clients
        for b in args.images
        for name in servers
        for protocol in (["litjson"] if name == "litserve" else args.protocols)
    ]
    requests = {(n, p, c, b): payloads(p, b, rng) for n, p, c, b in cells}
    for s in servers.values():
        s.pause()
    for name, protocol in {(n, p) for n, p, _, _ in cells}:  # answers equal in-process ones
        servers[name].resume()
        for b in args.images:
            await check(servers[name], protocol, b, generator, rng)
        servers[name].pause()
    print("every contender's images equal in-process sample", flush=True)

    runs = {key: [] for key in cells}
    local = {b: [] for b in args.images}
    for r in range(args.repeats):
        for b in args.images:
            generator.sample(classes=[0] * b, seeds=list(range(b)))  # warm
            local[b].append(in_process(generator, b, min(args.seconds, 1.0), rng))
        for c in args.clients:
            for b in args.images:
                group = [key for key in cells if key[2:] == (c, b)]
                shift = r % len(group)
                for key in group[shift:] + group[:shift]:  # rotate the order each round
                    server = servers[key[0]]
                    server.resume()
                    try:
                        runs[key].append(await cell(server, key[1], c, requests[key],
                                                    args.warmup, args.seconds))  # fmt: skip
                    finally:
                        server.pause()
        print(f"round {r + 1}/{args.repeats} done", flush=True)
    return runs, local


def summarize(runs: dict, local: dict) -> tuple[list[dict], dict]:
    rows = []
    for (name, protocol, c, b), rs in runs.items():
        lat = np.concatenate([r["latencies"] for r in rs]) * 1e3
        lat = lat if lat.size else np.array([np.nan])  # nothing completed in the window
        rps = statistics.median(r["requests"] / r["window_s"] for r in rs)
        rows.append(
            {
                "contender": name,
                "protocol": protocol,
                "clients": c,
                "images_per_request": b,
                "requests_per_s": rps,
                "images_per_s": rps * b,
                "latency_ms_p50": float(np.percentile(lat, 50)),
                "latency_ms_p99": float(np.percentile(lat, 99)),
                "server_cpu_s": statistics.median(r["server_cpu_s"] for r in rs),
                "loadgen_cpu_s": statistics.median(r["loadgen_cpu_s"] for r in rs),
                "window_s": statistics.median(r["window_s"] for r in rs),
                "requests_per_round": [r["requests"] for r in rs],
                "errors": sum(r["errors"] for r in rs),
                "error_kinds": sorted({k for r in rs for k in r["error_kinds"]}),
            }
        )
    inproc = {}
    for b, rounds in local.items():
        lat = np.concatenate(rounds) * 1e6
        inproc[b] = {
            "images": b,
            "latency_us_p50": float(np.percentile(lat, 50)),
            "latency_us_p99": float(np.percentile(lat, 99)),
            "calls": int(lat.size),
        }
    return rows, inproc


def ratios(rows: list[dict], inproc: dict) -> dict:
    def row(name, protocol, c, b):
        for x in rows:
            if (x["contender"], x["protocol"], x["clients"], x["images_per_request"]) == (
                name, protocol, c, b
            ):  # fmt: skip
                return x
        return None

    out = {}
    best = row("ctrlgan", "binary", 64, 1)
    lit, nob = row("litserve", "litjson", 64, 1), row("ctrlgan-nobatch", "binary", 64, 1)
    if best and lit:
        for protocol in ("binary", "json"):
            ours = row("ctrlgan", protocol, 64, 1)
            if ours:
                ratio = ours["images_per_s"] / lit["images_per_s"]
                out[f"ctrlgan_{protocol}_vs_litserve_64x1"] = {
                    "ratio": ratio,
                    "p99_ms": [ours["latency_ms_p99"], lit["latency_ms_p99"]],
                    "target": ">= 1.5x, p99 no worse",
                    "met": ratio >= 1.5 and ours["latency_ms_p99"] <= lit["latency_ms_p99"],
                }
    if best and nob:
        ratio = best["images_per_s"] / nob["images_per_s"]
        out["ctrlgan_batched_vs_nobatch_64x1_binary"] = {
            "ratio": ratio, "target": ">= 1.5x", "met": ratio >= 1.5,
        }  # fmt: skip
    one = row("ctrlgan", "binary", 1, 1)
    if one and 1 in inproc:
        added = one["latency_ms_p50"] * 1e3 - inproc[1]["latency_us_p50"]
        out["added_latency_us_1_client_binary"] = {
            "us": added, "target": "<= 250 us", "met": added <= 250,
        }  # fmt: skip
    return out


def print_table(rows: list[dict], inproc: dict) -> None:
    print(
        f"\n{'contender':<16}{'protocol':<9}{'clients':>8}{'images':>7}{'req/s':>9}"
        f"{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'srv cpu s':>10}{'gen cpu s':>10}"
    )
    order = {n: i for i, n in enumerate(CONTENDERS)}
    for x in sorted(rows, key=lambda x: (x["clients"], x["images_per_request"],
                                         order[x["contender"]], x["protocol"])):  # fmt: skip
        print(
            f"{x['contender']:<16}{x['protocol']:<9}{x['clients']:>8}{x['images_per_request']:>7}"
            f"{x['requests_per_s']:>9,.0f}{x['images_per_s']:>10,.0f}{x['latency_ms_p50']:>9.3f}"
            f"{x['latency_ms_p99']:>9.3f}{x['server_cpu_s']:>10.2f}{x['loadgen_cpu_s']:>10.2f}"
            + (f"  {x['errors']} errors: {x['error_kinds']}" if x["errors"] else "")
        )
    for b, x in inproc.items():
        print(f"in-process sample, {b} image(s): p50 {x['latency_us_p50']:.1f} us, "
              f"p99 {x['latency_us_p99']:.1f} us")  # fmt: skip


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    import onnxruntime

    out["onnxruntime"] = onnxruntime.__version__
    for pkg in ("ctrlgan", "numpy", "uvicorn", "uvloop", "httptools", "grpcio",
                "protobuf", "litserve", "fastapi"):  # fmt: skip
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def git(*argv: str) -> str | None:
    try:
        out = subprocess.run(["git", *argv], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.litserve_port is not None:
        run_litserve(args.litserve_port, args.litserve_batch_timeout, args.litserve_queue == "zmq",
                     args.threads)  # fmt: skip
        return 0
    import uvloop

    import ctrlgan

    generator = ctrlgan.load(MODEL, backend="onnxruntime", threads=args.threads)
    commit = (git("log", "-1", "--format=%h %s") or "")[:120] or None  # what the servers run
    dirty = git("status", "--short", "--", "ctrlgan")
    started = time.perf_counter()
    servers = {name: Server(name, args) for name in args.contenders}
    try:
        for s in servers.values():
            s.wait_ready()
        runs, local = uvloop.run(sweep(args, servers, generator))
    finally:
        for s in servers.values():
            s.stop()
    rows, inproc = summarize(runs, local)
    print_table(rows, inproc)
    found = ratios(rows, inproc)
    for key, value in found.items():
        print(f"{key}: {json.dumps(value)}")
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.no_save:
        return 0
    from ctrlgan.runtime.bench import save_json

    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    out = args.json or RESULTS / f"serve-cpu-{date[:10]}.json"
    save_json(
        out,
        {
            "benchmark": "serve",
            "device": f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "versions": versions(),
            "commit": commit,
            "uncommitted_in_ctrlgan": dirty,
            "date": date,
            "command": " ".join(["python", "benchmarks/bench_serve.py", *sys.argv[1:]]),
            "servers": {name: s.command for name, s in servers.items()},
            "settings": {k: getattr(args, k) for k in SETTINGS},
            "output": "image_uint8 [B, 16, 16, 1]",
            "in_process_sample": list(inproc.values()),
            "rows": rows,
            "ratios": found,
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
