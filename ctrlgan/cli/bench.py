"""`ctrlgan bench`: latency and throughput per backend and batch size (runtime/bench.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ctrlgan.cli import options
from ctrlgan.errors import InvalidRequest


def add_parsers(sub) -> None:
    b = options.command(
        sub,
        "bench",
        help="latency and throughput per backend and batch size",
        description="Time Generator.sample per backend and batch size side by side in one run, "
        "with the raw backend calls (onnxruntime session.run, the eager torch module) and "
        "torch.compile where it works: p50/p90/p99 latency and images/s, as a table, and "
        "optionally JSON and a PNG plot.",
    )
    options.add_model(b)
    b.add_argument(
        "--backends",
        type=options.name_tuple,
        default=None,
        metavar="A,B",
        help="backends to time (unusable ones are skipped with a note; default: torch, "
        "onnxruntime, and triton where CUDA is usable)",
    )
    b.add_argument(
        "--batch-sizes",
        type=options.batch_sizes,
        default=(1, 8, 64, 256),
        metavar="B,B",
        help="batch sizes",
    )
    b.add_argument("--rounds", type=int, default=100, help="timed rounds per batch size")
    b.add_argument("--warmup", type=int, default=10, help="untimed rounds first")
    b.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    b.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    b.add_argument("--plot", type=Path, default=None, help="also write a PNG plot (matplotlib)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ctrlgan.artifact import Artifact
    from ctrlgan.runtime import bench, cuda

    if args.backends is None:
        args.backends = ("torch", "onnxruntime") + (("triton",) if cuda.available() else ())
    artifact = Artifact.open(args.model)
    if args.json is not None:
        options.output_file(args.json, "json", ".json")
    if args.plot is not None:
        options.output_file(args.plot, "plot")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InvalidRequest("plot", "needs matplotlib: pip install 'ctrlgan[plot]'") from None
    bench.check(list(args.backends), list(args.batch_sizes), args.rounds, args.warmup)
    total = len(args.batch_sizes) * (args.rounds + args.warmup)
    with tqdm(total=total, desc="bench", unit="round", disable=args.quiet, leave=False) as bar:
        results, notes = bench.run(
            artifact,
            list(args.backends),
            list(args.batch_sizes),
            rounds=args.rounds,
            warmup=args.warmup,
            compile_=not args.no_compile,
            progress=lambda *_: bar.update(1),
        )
    print(bench.table(results))
    for note in notes:
        print(f"note: {note}")
    if args.json is not None:
        bench.write_json(args.json, results, notes, str(artifact.path))
        print(f"wrote {args.json}")
    if args.plot is not None:
        bench.plot(args.plot, results)
        print(f"wrote {args.plot}")
    return 0
