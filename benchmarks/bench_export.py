"""ONNX Runtime (CPU) against torch eager for the exported generator, side by side.

    python benchmarks/bench_export.py                       # bundled digits + a 28x28 generator
    python benchmarks/bench_export.py --runs 200 --batch-sizes 1,64 --no-save

Both contenders get the same feeds (noise rows, classes, mixes, t, alpha) and compute the same
thing, latent prologue (steps 2-5) and generator body:

  torch eager   kernels.reference.latent_prologue + the generator body, under inference_mode
  ort           ctrlgan.runtime.ort.OrtSession.run (the plain session.run on the CPU provider)
  ort bound     OrtSession.run_bound: the same session through an IOBinding

Calls are interleaved (one of each per round) after a warm-up, so drift hits all alike; the
figures are medians over --runs rounds, and the ratio is torch eager / ort. Models: the bundled
digits model (16x16) and a 28x28 generator of the same architecture with random weights (the
source's image size), exported to a temporary artifact.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from ctrlgan.artifact import GENERATOR_WEIGHTS, Artifact, Manifest, write_artifact
from ctrlgan.cli.options import batch_sizes
from ctrlgan.export import onnx as export
from ctrlgan.kernels import reference as ref
from ctrlgan.network import ConditionalGenerator, GeneratorConfig
from ctrlgan.runtime.bench import save_json
from ctrlgan.runtime.ort import OrtSession

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--batch-sizes", type=batch_sizes, default="1,64,256", help="comma-separated (%(default)s)"
    )
    p.add_argument("--runs", type=int, default=100, help="timed rounds, >= 50 (%(default)s)")
    p.add_argument("--warmup", type=int, default=10, help="untimed rounds first (%(default)s)")
    p.add_argument("--threads", type=int, default=0, help="threads for both (0: all cores)")
    p.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    p.add_argument("--out", type=Path, help="JSON path (default: results/export-cpu-<date>.json)")
    args = p.parse_args(argv)
    args.sizes = list(args.batch_sizes)
    if args.runs < 50:
        p.error("--runs: at least 50 (medians of fewer are noise)")
    if args.warmup < 1 or args.threads < 0:
        p.error("--warmup must be >= 1 and --threads >= 0")
    return args


def random_28px_model(tmp: Path) -> Artifact:
    """A 28x28 generator with random weights and non-trivial BatchNorm statistics, exported."""
    torch.manual_seed(0)
    config = GeneratorConfig(z_dim=64, n_classes=10, image_size=28)
    g = ConditionalGenerator(config)
    for module in g.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    manifest = Manifest(
        z_dim=64, classes=[str(i) for i in range(10)], image_shape=[1, 28, 28],
        generator=config.to_dict(), provenance={"note": "random weights, for benchmarking"},
    )  # fmt: skip
    write_artifact(tmp / "g28", manifest, tensors={GENERATOR_WEIGHTS: g.state_dict()})
    return export.export(tmp / "g28")


def bench_model(artifact: Artifact, args) -> list[dict]:
    g = artifact.build_generator()
    table = export.steering_table(artifact)
    session = OrtSession.open(artifact, intra_op_threads=args.threads)
    class_table = g.class_table().detach().float()
    rows = []
    for batch in args.sizes:
        feeds = export.random_inputs(artifact, batch, np.random.default_rng(batch))
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
        steer = {"alpha": tensors["alpha"], "directions": table} if table is not None else {}
        prologue = {k: v for k, v in tensors.items() if k != "alpha"}

        def torch_eager(prologue=prologue, steer=steer):
            with torch.inference_mode():
                x = ref.latent_prologue(table=class_table, **prologue, **steer)
                return g.body(x).numpy()

        contenders = {
            "torch eager": torch_eager,
            "ort": lambda feeds=feeds: session.run(feeds),
            "ort bound": lambda feeds=feeds: session.run_bound(feeds),
        }
        outputs = {name: fn() for name, fn in contenders.items()}
        err = max(float(np.abs(o - outputs["torch eager"]).max()) for o in outputs.values())
        times = {name: [] for name in contenders}
        for i in range(args.warmup + args.runs):
            for name, fn in contenders.items():
                t0 = time.perf_counter()
                fn()
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        med = {name: 1e6 * statistics.median(ts) for name, ts in times.items()}
        row = {
            "model": artifact.path.name,
            "image": artifact.manifest.image_shape,
            "batch": batch,
            "median_us": med,
            "torch_over_ort": med["torch eager"] / med["ort"],
            "bound_over_ort": med["ort bound"] / med["ort"],
            "images_per_s_ort": batch / (med["ort"] * 1e-6),
            "max_abs_diff": err,
        }
        rows.append(row)
        print(
            f"{row['model']:<8}{'x'.join(map(str, row['image'][1:])):>6}{batch:>6}"
            f"{med['torch eager']:>12.1f}{med['ort']:>11.1f}{med['ort bound']:>11.1f}"
            f"{row['torch_over_ort']:>9.2f}x{row['images_per_s_ort']:>12,.0f}{err:>10.1e}",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{'model':<8}{'image':>6}{'batch':>6}{'torch µs':>12}{'ort µs':>11}{'bound µs':>11}"
        f"{'speed-up':>10}{'ort img/s':>12}{'max diff':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = bench_model(Artifact.open("digits"), args)
        rows += bench_model(random_28px_model(Path(tmp)), args)
    result = {
        "benchmark": "export",
        "device": f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": args.threads or torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "runs": args.runs,
        "warmup": args.warmup,
        "rows": rows,
    }
    if not args.no_save:
        out = args.out or RESULTS / f"export-cpu-{result['date'][:10]}.json"
        save_json(out, result)
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
