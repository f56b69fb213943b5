"""The fused latent-prologue kernels against eager torch and torch.compile, side by side.

    python benchmarks/bench_kernels.py                      # default sizes, JSON to results/
    python benchmarks/bench_kernels.py --batch-sizes 1,64 --no-save

Workload (the sampling hot path with every control on): noise from two seeds per row, lerp
interpolation, steering along K directions, a soft mix of two one-hot classes, concat; shapes of
the bundled digits model (Z = 64, C = 10, first layer H = 2048). Contenders per batch size B:

  prologue     fused          ctrlgan.kernels.latent.latent_prologue (one Triton launch)
               fused fp16     the same, fp16 output (what the GPU generator body consumes)
               eager ref      kernels.reference.latent_prologue: vectorised Philox in torch ops
               compiled ref   torch.compile of that reference
               eager seq      what an eager user writes: per-seed torch.randn with a seeded
                              Generator, lerp, alpha @ D, one_hot, mix, cat (B <= --seq-max)
  first layer  fused          kernels.first_layer.first_layer (prologue + tl.dot, class gathers)
               fused + mm     the fused prologue, then torch.addmm with the whole weight
               eager ref + mm the eager reference prologue, then torch.addmm

On CUDA every time is the median of triton.testing.do_bench (warm-up 25 ms, 100 ms of repeats)
and launchers are timed as users call them (argument validation included). GB/s counts the bytes
a row must touch (inputs read once, output written once); "copy %" divides it by the measured
bandwidth of a large device-to-device copy. On a CPU the Triton kernels cannot run (the
launchers fall back to the torch reference), so the script times the reference paths with
time.perf_counter medians and says that the GPU figures need a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ctrlgan.cli.options import batch_sizes
from ctrlgan.kernels import first_layer as fl
from ctrlgan.kernels import latent
from ctrlgan.kernels import reference as ref
from ctrlgan.runtime.bench import save_json

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_SIZES = "1,64,1024,16384,262144"
CPU_SIZES = "1,64,1024,16384"  # the torch reference takes seconds per call beyond these


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--batch-sizes",
        type=batch_sizes,
        help=f"comma-separated (default: {DEFAULT_SIZES} on CUDA, {CPU_SIZES} on a CPU)",
    )
    p.add_argument("--z-dim", type=int, default=64, help="noise width Z (%(default)s)")
    p.add_argument("--classes", type=int, default=10, help="one-hot width C (%(default)s)")
    p.add_argument("--directions", type=int, default=4, help="steering directions K (%(default)s)")
    p.add_argument("--hidden", type=int, default=2048, help="first-layer width H (%(default)s)")
    p.add_argument(
        "--seq-max", type=int, default=16384, help="largest B for the per-seed eager sequence"
    )
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    p.add_argument("--out", type=Path, help="JSON path (default: results/kernels-<device>-<date>)")
    args = p.parse_args(argv)
    if args.batch_sizes is None:
        args.batch_sizes = batch_sizes(DEFAULT_SIZES if torch.cuda.is_available() else CPU_SIZES)
    args.sizes = list(args.batch_sizes)
    for name in ("z_dim", "classes", "directions", "hidden"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be >= 1")
    return args


# Timing ------------------------------------------------------------------------------------------


def time_cuda(fn) -> float:
    """Median µs of fn on the GPU (triton.testing.do_bench, after its warm-up)."""
    import triton.testing

    return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def time_cpu(fn, budget_s: float = 0.5, max_runs: int = 200) -> float:
    """Median µs of fn over up to max_runs calls within about budget_s, after two warm-ups."""
    fn(), fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < 5 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def copy_bandwidth(device: torch.device, timer) -> float:
    """GB/s of a large same-device copy (bytes read + written), the roofline for the kernels."""
    n = (256 << 20) // 4 if device.type == "cuda" else (64 << 20) // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (timer(lambda: dst.copy_(src)) * 1e-6) / 1e9


# Workloads --------------------------------------------------------------------------------------


def make_batch(B: int, args, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(B)
    rand = lambda *s: torch.rand(*s, generator=g)
    ints = lambda high: torch.randint(0, high, (B,), generator=g)
    kw = {
        "seed_a": ints(2**62),
        "seed_b": ints(2**62),
        "z_dim": args.z_dim,
        "t": rand(B),
        "method": "lerp",
        "alpha": 4 * rand(B, args.directions) - 2,
        "directions": torch.randn(args.directions, args.z_dim, generator=g),
        "class_a": ints(args.classes),
        "class_b": ints(args.classes),
        "s": rand(B),
    }
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


def eager_sequence(kw: dict, seeds_a: list[int], seeds_b: list[int], n_classes: int):
    """The prologue as an eager user writes it: one seeded randn per request, then ~8 ops."""
    device = kw["class_a"].device
    gen = torch.Generator(device)
    z_a = torch.stack([torch.randn(kw["z_dim"], generator=gen.manual_seed(s), device=device)
                       for s in seeds_a])  # fmt: skip
    z_b = torch.stack([torch.randn(kw["z_dim"], generator=gen.manual_seed(s), device=device)
                       for s in seeds_b])  # fmt: skip
    t = kw["t"][:, None]
    z = torch.lerp(z_a, z_b, t) + kw["alpha"] @ kw["directions"]
    onehot = torch.nn.functional.one_hot
    s = kw["s"][:, None]
    y = (1 - s) * onehot(kw["class_a"], n_classes) + s * onehot(kw["class_b"], n_classes)
    return torch.cat([z, y], dim=1)


def build_contenders(kw: dict, args, weights: tuple, compiled) -> dict:
    """(stage, name) -> a no-argument callable, for one batch."""
    weight, bias, wz_t, columns = weights
    C, B = args.classes, kw["class_a"].shape[0]
    seeds_a, seeds_b = kw["seed_a"].tolist(), kw["seed_b"].tolist()
    contenders = {
        ("prologue", "fused"): lambda: latent.latent_prologue(n_classes=C, **kw),
        ("prologue", "eager ref"): lambda: ref.latent_prologue(n_classes=C, **kw),
    }
    if kw["class_a"].is_cuda:
        contenders[("prologue", "fused fp16")] = lambda: latent.latent_prologue(
            n_classes=C, out_dtype=torch.float16, **kw
        )
    if compiled is not None:
        contenders[("prologue", "compiled ref")] = lambda: compiled(n_classes=C, **kw)
    if args.seq_max >= B:
        contenders[("prologue", "eager seq")] = lambda: eager_sequence(kw, seeds_a, seeds_b, C)
    return contenders | {
        ("first layer", "fused"): lambda: fl.first_layer(
            wz_t=wz_t, columns=columns, bias=bias, **kw
        ),
        ("first layer", "fused + mm"): lambda: torch.addmm(
            bias, latent.latent_prologue(n_classes=C, **kw), weight.t()
        ),
        ("first layer", "eager ref + mm"): lambda: torch.addmm(
            bias, ref.latent_prologue(n_classes=C, **kw), weight.t()
        ),
    }


def prologue_bytes(B: int, args, out_bytes: int) -> int:
    per_row = 8 + 8 + 4 + 4 * args.directions + 8 + 8 + 4  # seeds, t, alpha, classes, s
    table = 4 * args.directions * args.z_dim
    return B * per_row + table + B * (args.z_dim + args.classes) * out_bytes


def first_layer_bytes(B: int, args) -> int:
    per_row = 8 + 8 + 4 + 4 * args.directions + 8 + 8 + 4 + 4 * args.hidden
    weights = 4 * (args.z_dim + args.classes + 1) * args.hidden + 4 * args.directions * args.z_dim
    return B * per_row + weights


def run(args) -> dict:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    timer = time_cuda if cuda else time_cpu
    if not cuda:
        print(
            "No CUDA device: the Triton kernels cannot run here (the launchers fall back to the "
            "torch reference).\nGPU figures need a GPU; this run times the reference paths only.",
            flush=True,
        )
    copy_gbs = copy_bandwidth(device, timer)
    print(f"device: {device_name(device)}; copy bandwidth {copy_gbs:.1f} GB/s", flush=True)

    weight = torch.randn(args.hidden, args.z_dim + args.classes, device=device) / args.z_dim**0.5
    bias = torch.randn(args.hidden, device=device)
    wz_t, columns = fl.pack_weights(weight, args.z_dim)
    compiled = None
    if not args.no_compile:
        compiled = torch.compile(ref.latent_prologue, dynamic=False)

    rows = []
    for B in args.sizes:
        kw = make_batch(B, args, device)
        contenders = build_contenders(kw, args, (weight, bias, wz_t, columns), compiled)
        for (stage, name), fn in contenders.items():
            try:
                us = timer(fn)
            except Exception as e:  # torch.compile may be unavailable; record why
                print(f"B={B} {stage} {name}: skipped ({type(e).__name__}: {e})", flush=True)
                rows.append({"B": B, "stage": stage, "name": name, "error": str(e)[:200]})
                continue
            if stage == "prologue":
                nbytes = prologue_bytes(B, args, 2 if "fp16" in name else 4)
            else:
                nbytes = first_layer_bytes(B, args)
            gbs = nbytes / (us * 1e-6) / 1e9
            rows.append({"B": B, "stage": stage, "name": name, "us": us, "GB/s": gbs,
                         "copy_share": gbs / copy_gbs})  # fmt: skip
        print_rows([r for r in rows if r["B"] == B], cuda)
    return {
        "benchmark": "kernels",
        "device": device_name(device),
        "kernels_ran": cuda,
        "copy_GB/s": copy_gbs,
        "workload": {
            "z_dim": args.z_dim,
            "classes": args.classes,
            "directions": args.directions,
            "hidden": args.hidden,
            "controls": "seeds a and b, lerp, global steering, soft one-hot mix",
        },
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
        "rows": rows,
    }


def print_rows(rows: list[dict], cuda: bool) -> None:
    """One block per batch size: µs, GB/s, copy share, and how many times faster 'fused' is."""
    fused = {r["stage"]: r["us"] for r in rows if r["name"] == "fused" and "us" in r}
    label = "fused" if cuda else "launcher (reference fallback)"
    print(f"\nB = {rows[0]['B']:,}")
    print(f"  {'stage':<12}{'contender':<16}{'µs':>11}{'GB/s':>9}{'copy %':>8}  {label} speed-up")
    for r in rows:
        if "us" not in r:
            print(f"  {r['stage']:<12}{r['name']:<16}{'skipped':>11}")
            continue
        speedup = fused[r["stage"]] and r["us"] / fused[r["stage"]]
        print(
            f"  {r['stage']:<12}{r['name']:<16}{r['us']:>11.1f}{r['GB/s']:>9.2f}"
            f"{100 * r['copy_share']:>7.1f}%  {speedup:>6.2f}x"
        )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def versions() -> dict:
    import triton

    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "numpy": np.__version__,
    }
    if torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
    return v


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    if not args.no_save:
        out = args.out
        if out is None:
            kind = "gpu" if result["kernels_ran"] else "cpu-reference"
            out = RESULTS / f"kernels-{kind}-{result['date'][:10]}.json"
        save_json(out, result)
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
