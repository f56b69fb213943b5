"""The micro-batcher against direct calls: many concurrent single-image clients, one generator.

    python benchmarks/bench_batcher.py                         # bundled digits, backend auto
    python benchmarks/bench_batcher.py --requests 500 --settings 32:1 --no-save
    python benchmarks/bench_batcher.py --clients 32,64 --drivers threads,asyncio --spinning

``--clients`` clients share ``--requests`` single-image requests (random class and seed, fixed
by the rng seed) and each sends its share one after another, waiting for every result. A
client is a thread (driver ``threads``) or a task on one asyncio event loop (driver
``asyncio``, the shape of ``ctrlgan serve``: the loop submits, a worker computes):

  unbatched   threads: each client calls ``Generator.sample`` directly, all on the one
              generator, unguarded (onnxruntime sessions and the torch backend are
              thread-safe); asyncio: each task awaits ``Generator.sample`` run in a
              ThreadPoolExecutor of --pool threads (asyncio's default size on 2 cores)
  batched     threads: each client calls ``BatchingGenerator.sample``; asyncio: each task
              awaits ``BatchingGenerator.asample``; one per --settings entry
              max_batch_size:max_delay_ms, each a fresh batcher around the same generator

``--spinning`` adds both kinds on a second generator whose onnxruntime threads spin between
calls (the default before 2026-11-29; runtime/ort.py ALLOW_SPINNING), as contenders
"... (spinning)".

Throughput is requests (= images) over the wall time from a barrier releasing all clients to
the last result. Contenders run interleaved, --repeats rounds after one warm-up round; the
figures are medians over rounds, the ratio is images/s over the unbatched (non-spinning)
contender's of the same driver and client count. Every image is checked bit-equal to the
unbatched thread-driven image of the same request.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import functools
import importlib
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

import ctrlgan
from ctrlgan.runtime.bench import save_json

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="digits", help="bundled name or path (%(default)s)")
    p.add_argument("--backend", default="auto", help="generator backend (%(default)s)")
    p.add_argument("--clients", default="32", help="client counts, comma-separated (%(default)s)")
    p.add_argument(
        "--drivers", default="threads", help="threads and/or asyncio, comma-separated (%(default)s)"
    )
    p.add_argument("--pool", type=int, default=6, help="asyncio unbatched executor (%(default)s)")
    p.add_argument(
        "--spinning",
        action="store_true",
        help="also the generator with spinning onnxruntime threads",
    )
    p.add_argument("--requests", type=int, default=2000, help="per round (%(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (%(default)s)")
    p.add_argument(
        "--settings",
        default="16:0,32:0,64:0,128:0,64:0.5,64:2",
        help="batcher max_batch_size:max_delay_ms, comma-separated (%(default)s)",
    )
    p.add_argument(
        "--noise",
        choices=("auto", "torch"),
        default="auto",
        help="host noise: auto (the C extension where built) or torch (force the eager "
        "reference, the fallback without a C compiler; ~0.3 ms per call)",
    )
    p.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    p.add_argument("--out", type=Path, help="JSON path (default: results/batcher-cpu-<date>.json)")
    args = p.parse_args(argv)
    try:
        args.configs = [
            (int(b), float(d)) for b, d in (s.split(":") for s in args.settings.split(","))
        ]
    except ValueError:
        p.error(f"--settings: e.g. 32:1,64:2, got {args.settings!r}")
    try:
        args.client_counts = [int(c) for c in args.clients.split(",")]
    except ValueError:
        p.error(f"--clients: e.g. 32,64, got {args.clients!r}")
    args.driver_names = args.drivers.split(",")
    if not set(args.driver_names) <= {"threads", "asyncio"}:
        p.error(f"--drivers: threads and/or asyncio, got {args.drivers!r}")
    if min(args.client_counts) < 1 or args.requests < max(args.client_counts) or args.repeats < 1:
        p.error("need --clients >= 1, --requests >= --clients and --repeats >= 1")
    return args


def drive(call, requests: list[tuple[int, int]], clients: int):
    """Send ``requests`` from ``clients`` threads -> (wall seconds, images, latencies)."""
    images: list[np.ndarray | None] = [None] * len(requests)
    latency = np.zeros(len(requests))
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def client(offset: int) -> None:
        start.wait()
        try:
            for i in range(offset, len(requests), clients):
                cls, seed = requests[i]
                t0 = time.perf_counter()
                images[i] = call(classes=cls, seeds=[seed])
                latency[i] = time.perf_counter() - t0
        except BaseException as e:  # reported after the join
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return wall, images, latency


def drive_async(acall, requests: list[tuple[int, int]], clients: int):
    """``drive`` with asyncio tasks on one event loop awaiting ``acall`` (a coroutine)."""
    images: list[np.ndarray | None] = [None] * len(requests)
    latency = np.zeros(len(requests))

    async def client(offset: int) -> None:
        for i in range(offset, len(requests), clients):
            cls, seed = requests[i]
            t0 = time.perf_counter()
            images[i] = await acall(classes=cls, seeds=[seed])
            latency[i] = time.perf_counter() - t0

    async def run() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        return time.perf_counter() - t0

    return asyncio.run(run()), images, latency


def in_pool(pool: ThreadPoolExecutor, call):
    """``call`` run in ``pool``, awaited from the running event loop."""

    async def acall(**kwargs):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, functools.partial(call, **kwargs))

    return acall


def main(argv=None) -> int:
    args = parse_args(argv)
    philox = importlib.import_module("ctrlgan.runtime.philox")
    ort = importlib.import_module("ctrlgan.runtime.ort") if args.spinning else None
    if args.noise == "torch":
        philox._philox = None  # what an install without a C compiler runs
    g = ctrlgan.load(args.model, backend=args.backend)
    generators = {"": g}
    if args.spinning:
        ort.ALLOW_SPINNING = True
        generators[" (spinning)"] = ctrlgan.load(args.model, backend=args.backend)
        ort.ALLOW_SPINNING = False
    rng = np.random.default_rng(0)
    classes = rng.integers(0, len(g.classes), args.requests)
    seeds = rng.integers(0, 2**62, args.requests)
    requests = [(int(c), int(s)) for c, s in zip(classes, seeds, strict=True)]
    pool = ThreadPoolExecutor(args.pool)
    # (driver, clients, contender, generator, batcher settings or None)
    cases = [
        (driver, clients, f"unbatched{tag}", gen, None)
        for driver in args.driver_names
        for clients in args.client_counts
        for tag, gen in generators.items()
    ] + [
        (driver, clients, f"batched {b}:{d:g}{tag}", gen, (b, d))
        for driver in args.driver_names
        for clients in args.client_counts
        for tag, gen in generators.items()
        for b, d in args.configs
    ]
    cases.sort(key=lambda c: (c[0], c[1]))
    times = {c[:3]: [] for c in cases}
    lat = {c[:3]: [] for c in cases}
    stats = {}
    reference = drive(g.sample, requests, max(args.client_counts))[1]
    identical = True
    print(f"{g!r}, host noise: {'torch' if philox._philox is None else 'c'}")
    print(f"clients {args.client_counts}, drivers {args.driver_names}, {args.requests} requests")
    for round_ in range(1 + args.repeats):  # round 0 warms up
        for driver, clients, name, gen, setting in cases:
            batcher = None
            if setting is None:
                call = gen.sample if driver == "threads" else in_pool(pool, gen.sample)
            else:
                size, delay = setting
                batcher = ctrlgan.BatchingGenerator(gen, max_batch_size=size, max_delay_ms=delay)
                call = batcher.sample if driver == "threads" else batcher.asample
            run = drive if driver == "threads" else drive_async
            try:
                wall, images, latency = run(call, requests, clients)
            finally:
                if batcher is not None:
                    batcher.close()
            identical &= all(np.array_equal(x, y) for x, y in zip(images, reference, strict=True))
            if round_:
                times[driver, clients, name].append(wall)
                lat[driver, clients, name].append(latency)
                if batcher is not None:
                    stats[driver, clients, name] = batcher.stats
        print(f"round {round_}{' (warm-up)' if not round_ else ''} done", flush=True)
    pool.shutdown()

    rows = []
    print(
        f"\n{'driver':<9}{'clients':>8}  {'contender':<26}{'images/s':>10}{'ratio':>8}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'calls':>7}{'mean batch':>12}"
    )
    for driver, clients, name in times:
        base = args.requests / statistics.median(times[driver, clients, "unbatched"])
        rate = args.requests / statistics.median(times[driver, clients, name])
        all_lat = np.concatenate(lat[driver, clients, name]) * 1e3
        row = {
            "driver": driver,
            "clients": clients,
            "contender": name,
            "images_per_s": rate,
            "ratio_vs_unbatched": rate / base,
            "latency_ms_p50": float(np.percentile(all_lat, 50)),
            "latency_ms_p99": float(np.percentile(all_lat, 99)),
            "wall_s": times[driver, clients, name],
        }
        s = stats.get((driver, clients, name))
        if s is not None:
            row |= {"backend_calls": s.backend_calls, "mean_batch_size": s.mean_batch_size}
        rows.append(row)
        print(
            f"{driver:<9}{clients:>8}  {name:<26}{rate:>10,.0f}{rate / base:>7.2f}x"
            f"{row['latency_ms_p50']:>9.2f}{row['latency_ms_p99']:>9.2f}"
            f"{row.get('backend_calls', args.requests):>7}{row.get('mean_batch_size', 1.0):>12.1f}"
        )
    print(f"all images bit-identical to unbatched: {identical}")

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions["numpy"] = np.__version__
    if g.backend == "onnxruntime":
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    result = {
        "benchmark": "batcher",
        "device": f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "model": args.model,
        "backend": g.backend,
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "host_noise": "torch" if philox._philox is None else "c",
        "clients": args.client_counts,
        "drivers": args.driver_names,
        "asyncio_pool": args.pool,
        "requests": args.requests,
        "repeats": args.repeats,
        "bit_identical": identical,
        "rows": rows,
    }
    if not args.no_save:
        out = args.out or RESULTS / f"batcher-cpu-{result['date'][:10]}.json"
        save_json(out, result)
        print(f"\nwrote {out}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
