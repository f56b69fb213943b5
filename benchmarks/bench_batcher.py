"""The micro-batcher against direct calls: many concurrent single-image clients, one generator.

    python benchmarks/bench_batcher.py                         # bundled digits, backend auto
    python benchmarks/bench_batcher.py --requests 500 --settings 32:1 --no-save

``--clients`` threads share ``--requests`` single-image requests (random class and seed, fixed
by the rng seed) and each sends its share one after another, waiting for every result:

  unbatched   each client calls ``Generator.sample`` directly, all on the one generator,
              unguarded (onnxruntime sessions and the torch backend are thread-safe)
  batched     each client calls ``BatchingGenerator.sample``; one per --settings entry
              max_batch_size:max_delay_ms, each a fresh batcher around the same generator

Throughput is requests (= images) over the wall time from a barrier releasing all clients to
the last result. Contenders run interleaved, --repeats rounds after one warm-up round; the
figures are medians over rounds, the ratio is batched / unbatched images/s. Every batched
image is checked bit-equal to the unbatched image of the same request.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import statistics
import sys
import threading
import time
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
    p.add_argument("--clients", type=int, default=32, help="client threads (%(default)s)")
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
    if args.clients < 1 or args.requests < args.clients or args.repeats < 1:
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


def main(argv=None) -> int:
    args = parse_args(argv)
    philox = importlib.import_module("ctrlgan.runtime.philox")
    if args.noise == "torch":
        philox._philox = None  # what an install without a C compiler runs
    g = ctrlgan.load(args.model, backend=args.backend)
    rng = np.random.default_rng(0)
    classes = rng.integers(0, len(g.classes), args.requests)
    seeds = rng.integers(0, 2**62, args.requests)
    requests = [(int(c), int(s)) for c, s in zip(classes, seeds, strict=True)]
    names = ["unbatched"] + [f"batched {b}:{d:g}" for b, d in args.configs]
    times = {name: [] for name in names}
    lat = {name: [] for name in names}
    stats = {}
    reference = None
    identical = True
    print(f"{g!r}, host noise: {'torch' if philox._philox is None else 'c'}")
    print(f"{args.clients} clients, {args.requests} single-image requests per round")
    for round_ in range(1 + args.repeats):  # round 0 warms up
        wall, images, latency = drive(g.sample, requests, args.clients)
        reference = images if reference is None else reference
        if round_:
            times["unbatched"].append(wall)
            lat["unbatched"].append(latency)
        for name, (size, delay) in zip(names[1:], args.configs, strict=True):
            with ctrlgan.BatchingGenerator(g, max_batch_size=size, max_delay_ms=delay) as b:
                wall, images, latency = drive(b.sample, requests, args.clients)
            identical &= all(np.array_equal(x, y) for x, y in zip(images, reference, strict=True))
            if round_:
                times[name].append(wall)
                lat[name].append(latency)
                stats[name] = b.stats
        print(f"round {round_}{' (warm-up)' if not round_ else ''} done", flush=True)

    base = args.requests / statistics.median(times["unbatched"])
    rows = []
    print(
        f"\n{'contender':<18}{'images/s':>10}{'ratio':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'calls':>7}{'mean batch':>12}"
    )
    for name in names:
        rate = args.requests / statistics.median(times[name])
        all_lat = np.concatenate(lat[name]) * 1e3
        row = {
            "contender": name,
            "images_per_s": rate,
            "ratio_vs_unbatched": rate / base,
            "latency_ms_p50": float(np.percentile(all_lat, 50)),
            "latency_ms_p99": float(np.percentile(all_lat, 99)),
            "wall_s": times[name],
        }
        if name in stats:
            s = stats[name]
            row |= {"backend_calls": s.backend_calls, "mean_batch_size": s.mean_batch_size}
        rows.append(row)
        print(
            f"{name:<18}{rate:>10,.0f}{rate / base:>7.2f}x{row['latency_ms_p50']:>9.2f}"
            f"{row['latency_ms_p99']:>9.2f}{row.get('backend_calls', args.requests):>7}"
            f"{row.get('mean_batch_size', 1.0):>12.1f}"
        )
    print(f"batched images bit-identical to unbatched: {identical}")

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
        "clients": args.clients,
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
