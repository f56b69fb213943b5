"""Batch generation on Ray Data against the local `ctrlgan generate`, on this machine.

    python benchmarks/bench_ray.py                       # mnist, 20,000 images, npz
    python benchmarks/bench_ray.py --per-class 500 --rounds 1 --no-save
    python benchmarks/bench_ray.py --backend triton --actors 1,8,16   # on a GPU node

Measured, side by side in one run (same model, backend, job and machine):

  local        jobs.run_job, the local `ctrlgan generate`: images/s of the whole job
  ray N        integrations.ray.generate with an actor pool of N (1 and 2), on a local Ray of
               this machine's cores started once beforehand: images/s of the whole job, the
               fixed cost of a job (a job of one image per actor: actors start, import torch,
               load the model; Ray Data plans and tears down) and the steady rate once it
               runs, (images - N) / (t_job - t_tiny); every Ray job's files are compared with
               the local job's, byte for byte
  ray start    ray.init of a local Ray (no dashboard): paid once per `--ray` run without ADDRESS
  formats      per format, one 1,000-image shard encoded and written by one thread (the work an
               actor does besides the generator): µs per image
  job.json     one rewrite of job.json (fsync'd) listing 1,000 / 10,000 / 100,000 shards: what
               bounds the rate at which the driver can record shards

Each Ray and local figure is the median of --rounds runs, the contenders interleaved. Results:
results/ray-cpu-<date>.json (or ray-gpu-...), with the device, versions, date and command.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def tree(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_formats(g, image_shape) -> dict:
    """µs per image to encode and write one 1,000-image shard, per format (one thread)."""
    from ctrlgan.runtime import shards

    n = 1000
    images = g.sample(list(range(10)) * (n // 10), range(n), output="uint8")
    labels = np.repeat(np.arange(10, dtype=np.int64), n // 10)
    seeds = np.arange(n, dtype=np.uint64)
    meta = {"class_names": g.classes, "steer": {}, "truncation": None}
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for fmt in shards.FORMATS:
            times = []
            for r in range(3):
                name = shards.shard_name(r, fmt)
                t0 = time.perf_counter()
                shards.write_shard(Path(d), name, fmt, images, labels, seeds, meta)
                times.append(time.perf_counter() - t0)
            size = _size(Path(d) / shards.shard_name(0, fmt))
            out[fmt] = {"us_per_image": round(min(times) / n * 1e6, 2), "bytes_per_image": size / n}
    return out


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir())
    return path.stat().st_size


def bench_job_json() -> dict:
    from ctrlgan.runtime.jobs import _write_json

    out = {}
    with tempfile.TemporaryDirectory() as d:
        for n in (1000, 10_000, 100_000):
            record = {"shards": {f"shard_{k:05d}.npz": hashlib.sha256(b"%d" % k).hexdigest()
                                 for k in range(n)}}  # fmt: skip
            times = [timed(lambda r=record: _write_json(Path(d) / "job.json", r)) for _ in range(3)]
            out[str(n)] = {"ms": round(statistics.median(times) * 1e3, 2),
                           "bytes": (Path(d) / "job.json").stat().st_size}  # fmt: skip
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist")
    p.add_argument("--backend", default="auto")
    p.add_argument("--per-class", type=int, default=2000, help="images per class (10 classes)")
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--format", default="npz")
    p.add_argument("--actors", default="1,2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args(argv)

    import ray

    import ctrlgan
    from ctrlgan.integrations import ray as ray_jobs
    from ctrlgan.runtime.bench import environment, save_json
    from ctrlgan.runtime.jobs import JobSpec, run_job

    env = environment(" ".join(["python", "benchmarks/bench_ray.py", *sys.argv[1:]]))
    env["versions"]["ray"] = ray.__version__
    g = ctrlgan.load(args.model, backend=args.backend)
    spec = JobSpec(classes=list(range(10)), per_class=args.per_class,
                   shard_size=args.shard_size, format=args.format)  # fmt: skip
    total = 10 * args.per_class
    actor_counts = [int(a) for a in args.actors.split(",")]
    print(f"{env['device']}; {args.model} on {g.backend}; {total:,} images, {args.format}")

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        local_dir = work / "local"
        t_local = [timed(lambda: run_job(g, spec, local_dir, progress=False))]
        reference = tree(local_dir)

        t0 = time.perf_counter()
        ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        ray_start = time.perf_counter() - t0
        cpus = int(ray.cluster_resources()["CPU"])
        print(f"ray.init: {ray_start:.2f} s ({cpus} CPUs)")

        times = {n: [] for n in actor_counts}
        fixed = {n: [] for n in actor_counts}
        identical = {n: True for n in actor_counts}
        for r in range(args.rounds):
            if r:  # the local job again, interleaved with the Ray ones
                shutil.rmtree(local_dir)
                t_local.append(timed(lambda: run_job(g, spec, local_dir, progress=False)))
            for n in actor_counts:
                out = work / f"ray{n}-{r}"
                # one image per actor: each actor starts and makes one shard
                tiny = JobSpec(classes=[0], per_class=n, shard_size=1, format=args.format)
                fixed[n].append(timed(lambda n=n, r=r, tiny=tiny: ray_jobs.generate(
                    g, tiny, work / f"tiny{n}-{r}", actors=n, progress=False)))  # fmt: skip
                times[n].append(timed(lambda n=n, out=out: ray_jobs.generate(
                    g, spec, out, actors=n, progress=False)))  # fmt: skip
                identical[n] &= tree(out) == reference
                shutil.rmtree(out)
                print(
                    f"round {r}: ray {n} actor(s) {times[n][-1]:.2f} s (one image per actor "
                    f"{fixed[n][-1]:.2f} s); local {t_local[-1]:.2f} s"
                )
        ray.shutdown()

        local_s = statistics.median(t_local)
        results = {"local": {"seconds": [round(t, 3) for t in t_local],
                             "images_per_s": round(total / local_s, 1)}}  # fmt: skip
        for n in actor_counts:
            job_s, fixed_s = statistics.median(times[n]), statistics.median(fixed[n])
            results[f"ray_{n}"] = {
                "actors": n,
                "seconds": [round(t, 3) for t in times[n]],
                "images_per_s": round(total / job_s, 1),
                "vs_local": round(local_s / job_s, 3),
                "one_image_per_actor_job_seconds": [round(t, 3) for t in fixed[n]],
                "steady_images_per_s": round((total - n) / max(job_s - fixed_s, 1e-9), 1),
                "byte_identical_to_local": identical[n],
            }
        record = {
            "benchmark": "ray",
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
            **env,
            "model": args.model,
            "backend": g.backend,
            "job": {
                "images": total,
                "classes": 10,
                "per_class": args.per_class,
                "shard_size": args.shard_size,
                "format": args.format,
            },
            "ray_init_seconds": round(ray_start, 3),
            "ray_cpus": cpus,
            "results": results,
            "formats_one_thread": bench_formats(g, g.image_shape),
            "job_json_rewrite": bench_job_json(),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: record[k] for k in ("ray_init_seconds", "results", "formats_one_thread",
                                             "job_json_rewrite")}, indent=1))  # fmt: skip
    if not args.no_save:
        kind = "gpu" if "CPU" not in env["device"] else "cpu"
        date = datetime.date.today().isoformat()
        path = RESULTS / f"ray-{kind}-{date}.json"
        save_json(path, record)
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
