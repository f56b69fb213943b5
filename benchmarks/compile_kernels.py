"""Compile every latent kernel variant x every kept autotune config for sm_90 and sm_80 on the CPU.

No GPU is needed: ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` runs the
whole pipeline (TTIR -> TTGIR -> LLVM -> PTX -> ptxas cubin). Each compile runs in its own worker
process, without TRITON_INTERPRET and with a fresh cache, under a timeout: a compile that takes
minutes is recorded as a timeout instead of hanging the sweep. Per (kernel, variant, config,
arch) it records compile seconds, PTX lines and bytes, and ptxas's registers and spill bytes
(from the ``-v`` log Triton's make_cubin writes when TRITON_DUMP_PTXAS_LOG=1).

    python benchmarks/compile_kernels.py                 # every variant x every kept config
    python benchmarks/compile_kernels.py --quick         # one config per variant
    python benchmarks/compile_kernels.py --all-configs   # the full config lists, kept or not
    python benchmarks/compile_kernels.py --check         # CI: each variant once, in-process

Writes benchmarks/results/compile-cpu-<date>.json (device, versions, date, command, rows).
tests/kernels/test_compile.py runs ``--check``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import multiprocessing as mp
import os
import platform
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

ARCHS = (90, 80)
Z_DIM = 64  # the bundled models' z_dim; BLOCK_Z = 64
OUT_DTYPES = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}


def variants(kernel: str) -> list[dict]:
    """The constexpr flag sets real launches use (latent.prepare + the launchers).

    The costly axes (noise source x truncation x interpolation) in full; steering kind, class
    mix, learned table and output dtype vary one at a time from a baseline, since they add a
    loop or a load each and do not multiply the z tile's cost."""
    noise = [
        {"FROM_SEEDS": True, "TRUNCATE": False},
        {"FROM_SEEDS": True, "TRUNCATE": True},
        {"FROM_SEEDS": False, "TRUNCATE": False},
    ]
    base = {"STEER": 1, "MIX": True, "out": "fp32", "LEARNED": False, "HAS_BIAS": True}
    out = []
    for n in noise:
        for interp in (0, 1, 2):
            out.append(base | n | {"INTERP": interp})
    heavy = base | noise[1] | {"INTERP": 2}
    extra = [{"STEER": 0}, {"STEER": 2}, {"MIX": False}]
    if kernel == "latent":
        extra += [{"LEARNED": True}, {"out": "fp16"}, {"out": "bf16"}]
    else:
        extra += [{"HAS_BIAS": False}]
    out += [heavy | e for e in extra]
    for v in out:
        if kernel == "latent":
            v.pop("HAS_BIAS")
        else:
            v.pop("LEARNED")
            v.pop("out")
    return out


def variant_name(v: dict) -> str:
    noise = "seeds" if v["FROM_SEEDS"] else "given"
    if v["TRUNCATE"]:
        noise += "+trunc"
    parts = [noise, ("none", "lerp", "slerp")[v["INTERP"]], f"steer{v['STEER']}"]
    parts += ["mix"] if v["MIX"] else []
    parts += ["learned"] if v.get("LEARNED") else []
    parts += [] if v.get("out", "fp32") == "fp32" else [v["out"]]
    parts += ["nobias"] if v.get("HAS_BIAS") is False else []
    return "/".join(parts)


def _configs(kernel: str, kept: bool) -> list[dict]:
    from ctrlgan.kernels import first_layer, latent

    module = latent if kernel == "latent" else first_layer
    rows = [{**c.kwargs, "num_warps": c.num_warps, "num_stages": c.num_stages}
            for c in module._CONFIGS]  # fmt: skip
    if kept:
        block_z = _next_pow2(Z_DIM) if kernel == "latent" else max(16, _next_pow2(Z_DIM))
        rows = [r for r in rows if module.keep_config(r, block_z)]
    return rows


def kept_configs(kernel: str) -> list[dict]:
    return _configs(kernel, kept=True)


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _signature(kernel: str, v: dict, cfg: dict):
    """(fn, signature, constexprs) for triton.compile; pointer types as the launchers pass them."""
    from ctrlgan.kernels import first_layer, latent, reference

    ptrs = {
        "seed_a_ptr": "*i64",
        "seed_b_ptr": "*i64",
        "za_ptr": "*fp32",
        "zb_ptr": "*fp32",
        "t_ptr": "*fp32",
        "alpha_ptr": "*fp32",
        "dir_ptr": "*fp32",
        "ca_ptr": "*i64",
        "cb_ptr": "*i64",
        "s_ptr": "*fp32",
    }
    flags = {
        "FROM_SEEDS": v["FROM_SEEDS"],
        "TRUNCATE": v["TRUNCATE"],
        "REDRAWS": reference.TRUNCATION_REDRAWS,
        "INTERP": v["INTERP"],
        "STEER": v["STEER"],
        "SLERP_EPS": reference.SLERP_EPS,
        "MIX": v["MIX"],
    }
    if kernel == "latent":
        fn = latent._latent_kernel
        sig = {"out_ptr": OUT_DTYPES[v["out"]], **ptrs, "table_ptr": "*fp32"}
        scalars = ["B", "Z", "E", "K", "B_BUCKET"]
        flags |= {"LEARNED": v["LEARNED"], "BLOCK_Z": _next_pow2(Z_DIM), "BLOCK_E": 16}
    else:
        fn = first_layer._first_layer_kernel
        sig = {"h_ptr": "*fp32", **ptrs, "wz_ptr": "*fp32", "cols_ptr": "*fp32"}
        sig["bias_ptr"] = "*fp32"
        scalars = ["B", "Z", "H", "K", "B_BUCKET"]
        flags |= {"HAS_BIAS": v["HAS_BIAS"], "BLOCK_Z": max(16, _next_pow2(Z_DIM))}
    sig |= {name: "i32" for name in scalars if name in fn.arg_names}  # B_BUCKET: not before
    sig["tau"] = "fp32"
    flags |= {k: cfg[k] for k in cfg if k.startswith("BLOCK_")}
    for name in fn.arg_names:
        if name not in sig and name not in flags:
            raise KeyError(f"{fn.__name__}: no value for parameter {name}")
    sig |= {name: "constexpr" for name in flags}
    return fn, sig, flags


_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def compile_one(kernel: str, v: dict, cfg: dict, arch: int) -> dict:
    """Compile one (kernel, variant, config) for sm_<arch> in this process; a result row."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="ctrlgan-compile-"))
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, sig, constexprs = _signature(kernel, v, cfg)
    log = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(log):
        compiled = triton.compile(
            ASTSource(fn, sig, constexprs),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]},
        )
    seconds = time.perf_counter() - t0
    ptx = compiled.asm["ptx"]
    text = log.getvalue()
    regs = [int(m) for m in _REGS.findall(text)]
    spills = _SPILL.findall(text)
    return {
        "seconds": round(seconds, 2),
        "ptx_lines": ptx.count("\n"),
        "ptx_bytes": len(ptx),
        "registers": max(regs) if regs else None,
        "spill_stores": sum(int(a) for a, _ in spills) if spills else None,
        "spill_loads": sum(int(b) for _, b in spills) if spills else None,
    }


def _worker(conn, kernel, v, cfg, arch):
    try:
        conn.send({"status": "ok", **compile_one(kernel, v, cfg, arch)})
    except Exception as e:  # a compile error: the row says which
        conn.send({"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]})
    conn.close()


def run_isolated(kernel: str, v: dict, cfg: dict, arch: int, timeout: float) -> dict:
    """compile_one in a fresh process (spawned: no interpreter state), killed after timeout."""
    ctx = mp.get_context("spawn")
    env_interp = os.environ.pop("TRITON_INTERPRET", None)  # the child must not inherit it
    try:
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_worker, args=(send, kernel, v, cfg, arch), daemon=True)
        proc.start()
        send.close()
        if recv.poll(timeout):
            try:
                result = recv.recv()
            except EOFError:
                result = {"status": "error", "error": f"worker died, exit code {proc.exitcode}"}
        else:
            proc.kill()
            result = {"status": "timeout", "seconds": timeout}
        proc.join()
        return result
    finally:
        if env_interp is not None:
            os.environ["TRITON_INTERPRET"] = env_interp


def check() -> int:
    """The CI check (tests/kernels/test_compile.py): every variant of both kernels compiles, in
    this process, with its cheapest kept config, for sm_90 and sm_80 in turn (the heaviest
    variant, truncated slerp, for both); exit status 1 on any compile error."""
    failed = 0
    for kernel in ("latent", "first_layer"):
        cfg = min(kept_configs(kernel), key=lambda c: c["BLOCK_B"] / c["num_warps"])
        for i, v in enumerate(variants(kernel)):
            name = variant_name(v)
            archs = ARCHS if name.startswith("seeds+trunc/slerp/steer1/mix") else ARCHS[i % 2 :][:1]
            for arch in archs:
                try:
                    r = compile_one(kernel, v, cfg, arch)
                    status = f"ok {r['seconds']}s ptx={r['ptx_lines']} spill={r['spill_stores']}"
                except Exception as e:
                    failed += 1
                    status = f"ERROR {type(e).__name__}: {e}"
                print(f"{kernel} sm_{arch} {name} {cfg}: {status}", flush=True)
    return 1 if failed else 0


def _write(out: Path, a, rows: list) -> None:
    import torch
    import triton

    result = {
        "benchmark": "compile_kernels",
        "device": f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        " compiling for sm_90 / sm_80; no GPU",
        "versions": {
            "triton": triton.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "timeout_s": a.timeout,
        "z_dim": Z_DIM,
        "max_elems_per_thread": _max_elems(),
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


def _max_elems():
    from ctrlgan.kernels import latent

    return getattr(latent, "MAX_ELEMS_PER_THREAD", None)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="the CI check: see check()")
    p.add_argument("--quick", action="store_true", help="one config (the largest kept) a variant")
    p.add_argument("--all-configs", action="store_true", help="every config, kept or pruned")
    p.add_argument("--kernels", default="latent,first_layer")
    p.add_argument("--archs", default=",".join(map(str, ARCHS)))
    p.add_argument("--variants", default="", help="comma-separated variant names")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per compile")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    # exit cleanly on SIGTERM so that multiprocessing's exit handler ends a running worker
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ctrlgan
    if a.check:
        return check()

    date = datetime.datetime.now(datetime.UTC)
    out = Path(a.out or Path(__file__).parent / f"results/compile-cpu-{date:%Y-%m-%d}.json")
    rows = []
    for kernel in a.kernels.split(","):
        cfgs = _configs(kernel, kept=not a.all_configs)
        if a.quick:
            cfgs = cfgs[-1:]
        for v in variants(kernel):
            name = variant_name(v)
            if a.variants and name not in a.variants.split(","):
                continue
            for cfg in cfgs:
                for arch in map(int, a.archs.split(",")):
                    r = run_isolated(kernel, v, cfg, arch, a.timeout)
                    row = {"kernel": kernel, "variant": name, "config": cfg, "arch": arch} | r
                    rows.append(row)
                    _write(out, a, rows)  # after each row: a stopped sweep keeps its rows
                    c = " ".join(f"{k}={x}" for k, x in cfg.items() if k != "num_stages")
                    print(
                        f"{kernel:11s} sm_{arch} {name:34s} {c:30s} {r['status']:7s} "
                        f"{r.get('seconds', '-'):>7}s ptx={r.get('ptx_lines', '-')} "
                        f"regs={r.get('registers', '-')} spill={r.get('spill_stores', '-')}"
                        + (f" {r['error'][:200]}" if "error" in r else ""),
                        flush=True,
                    )
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, a, rows)
    print(f"wrote {out}")
    bad = [r for r in rows if r["status"] == "error"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
