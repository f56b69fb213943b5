"""`ctrlgan generate`: a sharded, resumable batch job (runtime/jobs.py)."""

from __future__ import annotations

import argparse

from ctrlgan.cli import options

FORMATS = ("npz", "png", "parquet", "webdataset")  # runtime/shards.py's, without importing it


def add_parsers(sub) -> None:
    j = options.command(
        sub,
        "generate",
        help="write many seeded images to a directory as shards (resumable)",
        description="A batch job: PER_CLASS images of each class in shards of SHARD_SIZE "
        "(npz: images uint8 NHWC, labels, seeds; png: one folder of PNGs and labels.csv per "
        "shard; parquet: one row per image with its PNG; webdataset: tar shards) plus "
        "OUT/job.json. Image i of the class at position p in --classes gets seed "
        "SEED + p * PER_CLASS + i. Rerun the same command to continue an interrupted job; the "
        "result is byte-identical to an uninterrupted run. Limits (checked before anything is "
        "written): 10^9 images, 100,000 shards, 1 GiB of images per shard, and the job must "
        "fit in the free disk space. --ray runs the same job on Ray Data (pip install "
        "'ctrlgan[ray]'), with byte-identical output.",
    )
    options.add_model(j)
    j.add_argument("--classes", default="all", help="classes: all, 3, 0-9, 1,4,7 or class names")
    j.add_argument("--per-class", type=int, required=True, help="images per class")
    j.add_argument("--out", required=True, help="job directory (created if missing)")
    j.add_argument("--seed", type=int, default=0, help="first seed")
    j.add_argument("--truncation", type=float, default=None, help="truncate noise to |z| <= T")
    options.add_steer(j, help="move every image along a direction")
    j.add_argument("--format", choices=FORMATS, default="npz", help="shard format")
    j.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    j.add_argument(
        "--batch-size", type=int, default=1024, help="images per backend call (output unchanged)"
    )
    options.add_backend(j)
    j.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on Ray Data: a new local Ray without ADDRESS, else join the cluster at "
        "ADDRESS (host:port, auto or ray://...); needs ctrlgan[ray]",
    )
    j.add_argument(
        "--actors",
        type=int,
        default=None,
        help="with --ray: generator actors (default: one per GPU, else one per node)",
    )
    j.add_argument("--quiet", action="store_true", help="no progress bar")
    j.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import ctrlgan
    from ctrlgan.errors import InvalidRequest
    from ctrlgan.runtime.jobs import JobSpec, run_job

    if args.actors is not None and args.ray is None:
        raise InvalidRequest("--actors", "applies to --ray jobs only")
    if args.ray is not None:
        from ctrlgan.integrations import ray as ray_jobs

        ray_jobs.require_ray()  # before the model loads: a missing extra is one line, at once
    steer = options.steer(args.steer)
    if args.ray is None:
        g = ctrlgan.load(args.model, backend=args.backend)
    else:
        g, backend = ray_jobs.load(args.model, args.backend)
    spec = JobSpec(
        classes=options.class_spec(args.classes, g.classes, field="classes"),
        per_class=args.per_class,
        seed=args.seed,
        steer=steer,
        truncation=args.truncation,
        format=args.format,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
    )
    if args.ray is None:
        r = run_job(g, spec, args.out, progress=not args.quiet)
    else:
        r = ray_jobs.generate(
            g,
            spec,
            args.out,
            backend=backend,
            address=args.ray,
            actors=args.actors,
            progress=not args.quiet,
        )
    done = f"{r.total_images} images in {r.n_shards} shard(s)"
    if r.repaired:
        print(
            f"rewrote {len(r.repaired)} shard(s) that no longer matched job.json: "
            f"{', '.join(r.repaired)}"
        )
    if not r.written:
        print(f"{r.out_dir}: job already complete ({done}, verified); nothing to do")
        return 0
    rate = r.images_written / r.seconds if r.seconds > 0 else float("inf")
    resumed = f", resumed after {r.done_before} done" if r.done_before else ""
    print(
        f"wrote {len(r.written)} shard(s){resumed} to {r.out_dir}: {r.images_written} images "
        f"in {r.seconds:.1f} s ({rate:.0f} images/s); job complete: {done}"
    )
    return 0
