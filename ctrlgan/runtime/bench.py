"""`ctrlgan bench`: latency and throughput per backend and batch size, side by side in one run.

For every batch size, each contender is called BLOCK (+1 untimed) times per round, in an order
that rotates from round to round (so drift and noise hit all of them alike), after warm-up
rounds; latencies are wall-clock per call, reported as
p50 / p90 / p99, and throughput as images / p50. Contenders:

    <backend>            Generator.sample through the public API (validation, noise, backend)
    onnxruntime raw      session.run on prepared feeds (what the runtime wraps)
    triton raw           the triton backend on prepared rows (seeds, classes, controls), images
                         left on the GPU: upload, fused prologue (noise from the seeds on the
                         device), CUDA-graph replay; no request parsing, no float32 host copy
    torch raw            the generator module on prepared noise, under inference_mode
    torch.compile        torch.compile of that module (mode "reduce-overhead" on CUDA); skipped
                         with the reason where it does not work here

Same seeds and classes for everyone; seeds change every round (so nothing is cached). On CUDA the
raw and compiled modules get one batch of noise rows per batch size, rolled by one row per call.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ctrlgan import validate
from ctrlgan._fs import write_atomic
from ctrlgan.errors import BackendUnavailable, InvalidRequest
from ctrlgan.runtime.generator import BACKENDS, Generator

BLOCK = 5  # consecutive calls of one contender per round


MAX_ROUNDS = 100_000  # per batch size and contender: a bound on the time a bench may take
MAX_BATCH_SIZE = 65_536


@dataclass
class Result:
    contender: str
    batch: int
    p50_us: float
    p90_us: float
    p99_us: float
    images_per_s: float
    calls: int


@dataclass
class _Setup:
    """What every batch size shares: generators, the module, its compiled form."""

    gens: dict
    net: torch.nn.Module
    compiled: object
    compiled_name: str
    device: torch.device


def _setup(artifact, backends: list[str], compile_: bool, notes: list[str]) -> _Setup:
    gens = {}
    for name in backends:
        try:
            gens[name] = Generator(artifact, backend=name)
        except BackendUnavailable as e:
            notes.append(f"{name}: skipped ({e})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = artifact.build_generator().to(device)
    compiled, mode = None, "reduce-overhead" if device.type == "cuda" else "default"
    if compile_:
        try:
            compiled = torch.compile(net, mode=mode)
        except Exception as e:
            notes.append(f"torch.compile: skipped ({type(e).__name__}: {str(e)[:120]})")
    return _Setup(gens, net, compiled, f"torch.compile ({mode})", device)


def _contenders(artifact, setup: _Setup, batch: int, notes: list[str]) -> dict:
    """name -> (prepare(round) -> args, call(args)) for one batch size."""
    from ctrlgan.runtime import philox

    classes = [i % len(artifact.manifest.classes) for i in range(batch)]
    z_dim, device = artifact.manifest.z_dim, setup.device

    def seeds(r):
        return list(range(r * batch, (r + 1) * batch))

    out = {}
    for name, g in setup.gens.items():
        out[name] = (seeds, lambda s, g=g: g.sample(classes=classes, seeds=s))
    ort = setup.gens.get("onnxruntime")
    if ort is not None:
        be = ort._backend
        out["onnxruntime raw"] = (
            lambda r: be.feeds(ort.prepare(classes=classes, seeds=seeds(r))),
            lambda f: be.session.session.run([be.session.output], f),
        )
    tri = setup.gens.get("triton")
    if tri is not None:
        out["triton raw"] = (
            lambda r: tri.prepare(classes=classes, seeds=seeds(r)),
            tri._backend.on_device,
        )
    labels = torch.tensor(classes, device=device)

    def host_noise(r):
        return torch.from_numpy(philox.normal(np.array(seeds(r), np.uint64), z_dim)).to(device)

    if device.type == "cuda":
        # The rows are drawn on the host once per batch size and rolled by the call's index on
        # the device: host noise takes ~1 s a call at 64k rows where the C extension is not
        # built (torch fallback), which would swamp the bench's wall time, not its timings.
        base = host_noise(0)

        def noise(r):
            z = torch.roll(base, shifts=r % batch, dims=0)
            torch.cuda.synchronize()  # as the host path's copy does: not in the timed call
            return z

    else:
        noise = host_noise

    def raw(z, module=setup.net):
        with torch.inference_mode():
            y = module(z, labels)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return y

    out["torch raw"] = (noise, raw)
    if setup.compiled is not None:
        try:
            raw(noise(0), setup.compiled)  # compiles for this shape; failures are reported
            out[setup.compiled_name] = (noise, lambda z: raw(z, setup.compiled))
        except Exception as e:
            notes.append(f"torch.compile: skipped ({type(e).__name__}: {str(e)[:120]})")
            setup.compiled = None
    return out


def check(backends: list[str], batch_sizes: list[int], rounds: int, warmup: int) -> None:
    """Refuse bad arguments before any work (InvalidRequest naming the field)."""
    for b in backends:
        if b not in BACKENDS or b == "auto":
            known = ", ".join(BACKENDS[1:])
            raise InvalidRequest("backends", f"unknown backend {b!r}; one of {known}")
    if not batch_sizes or min(batch_sizes) < 1:
        raise InvalidRequest("batch_sizes", "give one or more sizes >= 1")
    if max(batch_sizes) > MAX_BATCH_SIZE:
        raise InvalidRequest("batch_sizes", f"at most {MAX_BATCH_SIZE}, got {max(batch_sizes)}")
    validate.integer(rounds, "rounds", 10, MAX_ROUNDS)
    validate.integer(warmup, "warmup", 1, MAX_ROUNDS)


def run(
    artifact,
    backends: list[str],
    batch_sizes: list[int],
    rounds: int = 200,
    warmup: int = 20,
    compile_: bool = True,
    progress=None,
) -> tuple[list[Result], list[str]]:
    check(backends, batch_sizes, rounds, warmup)
    results, notes = [], []
    setup = _setup(artifact, backends, compile_, notes)
    for batch in batch_sizes:
        contenders = _contenders(artifact, setup, batch, notes)
        times = {name: [] for name in contenders}
        names = list(contenders)
        for r in range(warmup + rounds):
            # A short block of calls per contender per round, the order rotating from round to
            # round: interleaved against drift, but not call by call, and the first call of a
            # block is not timed (a torch call leaves its OpenMP threads spinning for a while,
            # which taxes whatever runs right after it; rotation spreads that evenly).
            for name in names[r % len(names) :] + names[: r % len(names)]:
                prep, call = contenders[name]
                for i in range(BLOCK + 1):
                    args = prep(r * (BLOCK + 1) + i)
                    t0 = time.perf_counter()
                    call(args)
                    if r >= warmup and i > 0:
                        times[name].append(time.perf_counter() - t0)
            if progress:
                progress(batch, r + 1, warmup + rounds)
        for name, ts in times.items():
            p50, p90, p99 = np.percentile(np.array(ts) * 1e6, [50, 90, 99])
            results.append(Result(name, batch, p50, p90, p99, batch / (p50 * 1e-6), len(ts)))
    return results, sorted(set(notes))


def table(results: list[Result]) -> str:
    lines = [
        f"{'contender':<30}{'batch':>7}{'p50 µs':>11}{'p90 µs':>11}{'p99 µs':>11}{'images/s':>13}"
    ]
    for r in results:
        lines.append(
            f"{r.contender:<30}{r.batch:>7}{r.p50_us:>11.1f}{r.p90_us:>11.1f}{r.p99_us:>11.1f}"
            f"{r.images_per_s:>13,.0f}"
        )
    return "\n".join(lines)


def environment(command: str | None = None) -> dict:
    """Where and when a benchmark ran: device, library versions, torch threads, date and the
    command (default: this `ctrlgan` invocation; scripts pass their own)."""
    import onnxruntime

    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    return {
        "device": device,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
        "torch_threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join(["ctrlgan", *sys.argv[1:]]),
    }


def write_json(path: Path, results: list[Result], notes: list[str], model: str) -> None:
    data = {"benchmark": "runtime", "model": model, **environment(), "notes": notes,
            "results": [asdict(r) for r in results]}  # fmt: skip
    save_json(path, data)


def save_json(path: Path, data: dict) -> None:
    """Write a benchmark record atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode(), durable=False)


def plot(path: Path, results: list[Result]) -> None:
    """p50 latency and images/s against batch size, one line per contender (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InvalidRequest("plot", "needs matplotlib: pip install 'ctrlgan[plot]'") from None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r.contender for r in results):
        rs = [r for r in results if r.contender == name]
        ax1.plot([r.batch for r in rs], [r.p50_us for r in rs], marker="o", label=name)
        ax2.plot([r.batch for r in rs], [r.images_per_s for r in rs], marker="o", label=name)
    for ax, label in ((ax1, "p50 latency (µs)"), (ax2, "images / s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
