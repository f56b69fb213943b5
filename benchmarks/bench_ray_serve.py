"""Request latency through Ray Serve against `ctrlgan serve`, on this machine.

    python benchmarks/bench_ray_serve.py                 # digits, 300 requests of 1 image
    python benchmarks/bench_ray_serve.py --requests 100 --no-save

One httpx client sends --requests sequential Open Inference Protocol JSON requests of one
image (after --warmup ones) to each server in turn, all on 127.0.0.1, the digits model on
onnxruntime with one thread per server process:

  ctrlgan serve      `python -m ctrlgan serve` (HTTP only), the baseline
  ray serve 1 | 2    ctrlgan.integrations.ray_serve.build(replicas=1 | 2) behind Ray Serve's
                     HTTP proxy, on a local Ray (each replica half a CPU)

Reported: p50 and p99 latency (ms) per server, and each Ray figure's p50 minus the baseline's
(the cost of the hop through Ray's proxy). Throughput is not measured: on a small machine the
proxy, the replicas and the client share the same cores. Results:
results/ray-serve-cpu-<date>.json, with the device, versions, date and command.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"
MODEL = "digits"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def body(seed: int) -> dict:
    """One image: class seed % 10, the given seed."""
    return {
        "inputs": [
            {"name": "classes", "shape": [1], "datatype": "INT64", "data": [seed % 10]},
            {"name": "seeds", "shape": [1], "datatype": "INT64", "data": [seed]},
        ]
    }


def latencies(url: str, requests: int, warmup: int) -> list[float]:
    """Seconds per request of ``requests`` sequential ones, after ``warmup``."""
    import httpx

    path = f"/v2/models/{MODEL}/infer"
    with httpx.Client(base_url=url, timeout=60.0) as client:
        deadline = time.monotonic() + 120
        while True:  # ready?
            try:
                if client.get("/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no server at {url}")
            time.sleep(0.2)
        times = []
        for i in range(warmup + requests):
            t0 = time.perf_counter()
            r = client.post(path, json=body(i))
            dt = time.perf_counter() - t0
            r.raise_for_status()
            if i >= warmup:
                times.append(dt)
    return times


def summary(times: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times)
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
        "requests": len(ms),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)

    # a local Ray on 127.0.0.1 only (Ray's switch for single-machine sessions)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from ctrlgan.integrations import ray_serve
    from ctrlgan.runtime.bench import environment, save_json

    env = environment(" ".join(["python", "benchmarks/bench_ray_serve.py", *sys.argv[1:]]))
    env["versions"]["ray"] = ray.__version__
    results = {}

    port = free_port()
    argv = [sys.executable, "-m", "ctrlgan", "serve", MODEL, "--backend", "onnxruntime",
            "--threads", "1", "--no-grpc", "--host", HOST, "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        results["ctrlgan_serve"] = summary(latencies(f"http://{HOST}:{port}", args.requests,
                                                     args.warmup))  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(60)
    print("ctrlgan serve", results["ctrlgan_serve"])

    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": HOST, "port": port})
        for replicas in (1, 2):
            app = ray_serve.build([MODEL], replicas=replicas, num_cpus=0.5, backend="onnxruntime",
                                  threads=1)  # fmt: skip
            serve.run(app, name="bench", route_prefix="/")
            key = f"ray_serve_{replicas}"
            results[key] = summary(latencies(f"http://{HOST}:{port}", args.requests, args.warmup))
            results[key]["p50_minus_ctrlgan_serve_ms"] = round(
                results[key]["p50_ms"] - results["ctrlgan_serve"]["p50_ms"], 2
            )
            serve.delete("bench")
            print(f"ray serve, {replicas} replica(s)", results[key])
        serve.shutdown()
    finally:
        ray.shutdown()

    record = {
        "benchmark": "ray_serve",
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        **env,
        "model": MODEL,
        "backend": "onnxruntime",
        "request": "OIP v2 JSON, 1 image, sequential, one httpx client",
        "results": results,
    }
    if not args.no_save:
        date = datetime.date.today().isoformat()
        path = RESULTS / f"ray-serve-cpu-{date}.json"
        save_json(path, record)
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
