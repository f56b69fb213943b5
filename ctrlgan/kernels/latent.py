"""The fused latent prologue: noise, truncation, interpolation, steering, class embedding and
concat (steps 1-5 of docs/model-format.md) in one Triton launch.

Eagerly the prologue is about ten small launches (per-seed randn, redraws, lerp or slerp, a
matmul with the direction table, one_hot, the mix, cat) with a round trip through memory after
each. Here every program owns a tile of BLOCK_B rows by all Z noise columns: it draws the noise
in registers (Triton's tl.randn, the Philox contract of reference.py), reduces each row for
slerp without leaving the tile, adds the steering directions, and writes z once; then it writes
the class embedding columns in BLOCK_E chunks. Rows are independent, so the result of a row
does not depend on which rows share its batch.

``latent_prologue`` is the launcher: it validates shapes, dtypes, devices and contiguity, then
runs the compiled kernel for CUDA tensors, the same kernel in Triton's interpreter for CPU
tensors when TRITON_INTERPRET=1 (how the tests run it), and the torch reference otherwise.
Class indices must lie in [0, C): they are not range-checked here (that would cost a device
synchronisation); the runtime validates requests before they reach a kernel.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ctrlgan.kernels import reference

# Read once, like @triton.jit itself: kernels defined under TRITON_INTERPRET=1 are interpreted.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
METHODS = ("lerp", "slerp")
INTERPRETER_BLOCK_B = 32  # rows per program in interpreter mode (fewer, larger programs)


# Shared device functions ---------------------------------------------------------------------


@triton.jit
def _acos(x):
    """acos by Abramowitz & Stegun 4.4.46 (|error| <= 2e-8; Triton has no portable acos)."""
    ax = tl.abs(x)
    p = -0.0012624911
    p = p * ax + 0.0066700901
    p = p * ax - 0.0170881256
    p = p * ax + 0.0308918810
    p = p * ax - 0.0501743046
    p = p * ax + 0.0889789874
    p = p * ax - 0.2145988016
    p = p * ax + 1.5707963050
    r = tl.sqrt_rn(1.0 - ax) * p
    return tl.where(x < 0, 3.141592653589793 - r, r)


@triton.jit
def _asin(x):
    """asin on [0, 1]: Taylor to x^7 below 0.125 (relative error < 2e-9), pi/2 - acos above."""
    x2 = x * x
    small = x * (1.0 + x2 * (0.16666666666666666 + x2 * (0.075 + x2 * 0.044642857142857144)))
    return tl.where(x < 0.125, small, 1.5707963267948966 - _acos(x))


@triton.jit
def _noise_tile(
    seed_ptr,
    rows,
    row_mask,
    cols,
    Z,
    tau,
    TRUNCATE: tl.constexpr,
    REDRAWS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_Z: tl.constexpr,
):
    """z[b, j] = randn(seed[b], j); with TRUNCATE, |z| > tau is redrawn at j + r Z, then clamped."""
    seed = tl.load(seed_ptr + rows, mask=row_mask, other=0)
    seeds = tl.broadcast_to(seed[:, None], (BLOCK_B, BLOCK_Z))
    offsets = tl.broadcast_to(cols[None, :], (BLOCK_B, BLOCK_Z))
    z = tl.randn(seeds, offsets)
    if TRUNCATE:
        # A rolled loop: unrolled, each redraw inlines another Philox tile, and the kernel
        # spills registers and takes minutes to compile (benchmarks/compile_kernels.py).
        for r in tl.range(1, REDRAWS, loop_unroll_factor=1):
            z = tl.where(tl.abs(z) > tau, tl.randn(seeds, offsets + r * Z), z)
        z = tl.minimum(tl.maximum(z, -tau), tau)
    return z


@triton.jit
def _z_tile(
    seed_a_ptr,
    seed_b_ptr,
    za_ptr,
    zb_ptr,
    t_ptr,
    alpha_ptr,
    dir_ptr,
    rows,
    row_mask,
    class_a,
    Z,
    K,
    tau,
    FROM_SEEDS: tl.constexpr,
    TRUNCATE: tl.constexpr,
    REDRAWS: tl.constexpr,
    INTERP: tl.constexpr,
    STEER: tl.constexpr,
    SLERP_EPS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_Z: tl.constexpr,
):
    """Steps 1-3 for a tile of rows: noise, interpolation (INTERP 0 none, 1 lerp, 2 slerp) and
    steering (STEER 0 none, 1 global D [K, Z], 2 per-class D [C, K, Z]). Padding columns are 0."""
    cols = tl.arange(0, BLOCK_Z)
    col_mask = cols < Z
    mask = row_mask[:, None] & col_mask[None, :]
    offs = rows[:, None] * Z + cols[None, :]
    if FROM_SEEDS:
        z = _noise_tile(
            seed_a_ptr, rows, row_mask, cols, Z, tau, TRUNCATE, REDRAWS, BLOCK_B, BLOCK_Z
        )
    else:
        z = tl.load(za_ptr + offs, mask=mask, other=0.0)
    z = tl.where(mask, z, 0.0)
    if INTERP > 0:
        if FROM_SEEDS:
            zb = _noise_tile(
                seed_b_ptr, rows, row_mask, cols, Z, tau, TRUNCATE, REDRAWS, BLOCK_B, BLOCK_Z
            )
        else:
            zb = tl.load(zb_ptr + offs, mask=mask, other=0.0)
        zb = tl.where(mask, zb, 0.0)
        t = tl.load(t_ptr + rows, mask=row_mask, other=0.0)[:, None]
        linear = (1 - t) * z + t * zb
        if INTERP == 2:
            # Slerp of directions, lerp of norms; lerp where the angle is degenerate.
            # The angle from the chords |a^ - b^| = 2 sin(w/2) and |a^ + b^| = 2 cos(w/2), the
            # smaller one through asin: accurate at both ends, where acos(cos) is not.
            # Row norms by IEEE sqrt (tl.sqrt compiles to sqrt.approx): a few per row, cheap.
            na = tl.sqrt_rn(tl.sum(z * z, axis=1))[:, None]
            nb = tl.sqrt_rn(tl.sum(zb * zb, axis=1))[:, None]
            ua = z / tl.where(na > 0, na, 1.0)
            ub = zb / tl.where(nb > 0, nb, 1.0)
            dm = tl.sqrt_rn(tl.sum((ua - ub) * (ua - ub), axis=1))[:, None]
            dp = tl.sqrt_rn(tl.sum((ua + ub) * (ua + ub), axis=1))[:, None]
            omega = tl.where(
                dm <= dp,
                2.0 * _asin(tl.minimum(0.5 * dm, 1.0)),
                3.141592653589793 - 2.0 * _asin(tl.minimum(0.5 * dp, 1.0)),
            )
            degenerate = (0.5 * dm * dp < SLERP_EPS) | (na == 0) | (nb == 0)
            safe_sin = tl.where(degenerate, 1.0, tl.sin(omega))
            n_t = (1 - t) * na + t * nb
            ca = tl.sin((1 - t) * omega) / safe_sin * (n_t / tl.where(na > 0, na, 1.0))
            cb = tl.sin(t * omega) / safe_sin * (n_t / tl.where(nb > 0, nb, 1.0))
            slerped = tl.where(degenerate, linear, ca * z + cb * zb)
            # Exact endpoints, also where compiled division and sqrt are approximate.
            z = tl.where(t == 0.0, z, tl.where(t == 1.0, zb, slerped))
        else:
            z = linear
    if STEER == 1:
        for k in range(K):
            a = tl.load(alpha_ptr + rows * K + k, mask=row_mask, other=0.0)
            d = tl.load(dir_ptr + k * Z + cols, mask=col_mask, other=0.0)
            z += a[:, None] * d[None, :]
    if STEER == 2:
        for k in range(K):
            a = tl.load(alpha_ptr + rows * K + k, mask=row_mask, other=0.0)
            d = tl.load(
                dir_ptr + (class_a[:, None] * K + k) * Z + cols[None, :], mask=mask, other=0.0
            )
            z += a[:, None] * d
    return z


# The prologue kernel -------------------------------------------------------------------------


# B and B_BUCKET are not specialised: Triton specialises integer arguments on == 1 and on
# divisibility by 16, so the batch buckets 1, 2-8 and >= 16 would compile each config three
# times (first calls took 5-21 s a variant on an H200, 2026-11-29); B only bounds the row mask.
@triton.jit(do_not_specialize=["B", "B_BUCKET"])
def _latent_kernel(
    out_ptr,
    seed_a_ptr,
    seed_b_ptr,
    za_ptr,
    zb_ptr,
    t_ptr,
    alpha_ptr,
    dir_ptr,
    ca_ptr,
    cb_ptr,
    s_ptr,
    table_ptr,
    B,
    Z,
    E,
    K,
    B_BUCKET,  # unused in the body: an autotune key (batch_bucket(B))
    tau,
    FROM_SEEDS: tl.constexpr,
    TRUNCATE: tl.constexpr,
    REDRAWS: tl.constexpr,
    INTERP: tl.constexpr,
    STEER: tl.constexpr,
    SLERP_EPS: tl.constexpr,
    MIX: tl.constexpr,
    LEARNED: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_Z: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_mask = rows < B
    class_a = tl.load(ca_ptr + rows, mask=row_mask, other=0)
    z = _z_tile(
        seed_a_ptr,
        seed_b_ptr,
        za_ptr,
        zb_ptr,
        t_ptr,
        alpha_ptr,
        dir_ptr,
        rows,
        row_mask,
        class_a,
        Z,
        K,
        tau,
        FROM_SEEDS,
        TRUNCATE,
        REDRAWS,
        INTERP,
        STEER,
        SLERP_EPS,
        BLOCK_B,
        BLOCK_Z,
    )
    width = Z + E
    cols = tl.arange(0, BLOCK_Z)
    z_mask = row_mask[:, None] & (cols < Z)[None, :]
    tl.store(
        out_ptr + rows[:, None] * width + cols[None, :], z.to(out_ptr.dtype.element_ty), mask=z_mask
    )

    # Steps 4-5: y = (1 - s) e(a) + s e(b), written after z in BLOCK_E-wide chunks.
    if MIX:
        class_b = tl.load(cb_ptr + rows, mask=row_mask, other=0)
        s = tl.load(s_ptr + rows, mask=row_mask, other=0.0)[:, None]
    for e0 in range(0, E, BLOCK_E):
        ecols = e0 + tl.arange(0, BLOCK_E)
        mask = row_mask[:, None] & (ecols < E)[None, :]
        if LEARNED:
            y = tl.load(table_ptr + class_a[:, None] * E + ecols[None, :], mask=mask, other=0.0)
        else:
            y = (ecols[None, :] == class_a[:, None]).to(tl.float32)
        if MIX:
            if LEARNED:
                yb = tl.load(
                    table_ptr + class_b[:, None] * E + ecols[None, :], mask=mask, other=0.0
                )
            else:
                yb = (ecols[None, :] == class_b[:, None]).to(tl.float32)
            y = (1 - s) * y + s * yb
        tl.store(
            out_ptr + rows[:, None] * width + Z + ecols[None, :],
            y.to(out_ptr.dtype.element_ty),
            mask=mask,
        )


# Autotuning. Every config is compiled on the first call of each key, one after the other: a
# config whose tile holds too many values per thread spills registers and compiles for tens of
# seconds (the noise tile with truncation and slerp; benchmarks/compile_kernels.py measures it),
# so configs above MAX_ELEMS_PER_THREAD of the BLOCK_B x BLOCK_Z tile are pruned before that.
MAX_ELEMS_PER_THREAD = 8
BATCH_BUCKET_CAP = 1 << 16
_CONFIGS = [
    triton.Config({"BLOCK_B": bb}, num_warps=w) for bb in (8, 16, 32, 64) for w in (2, 4, 8)
]
# The key: shapes, the variant flags (what the tile computes) and a batch-size bucket, so that
# a config tuned at B = 1 does not serve B = 256k. Pointer dtypes are added by the autotuner.
_KEY = ["Z", "E", "K", "B_BUCKET", "FROM_SEEDS", "TRUNCATE", "INTERP", "STEER", "MIX"]


def batch_bucket(batch: int) -> int:
    """The autotune key's batch size: the next power of two, capped at BATCH_BUCKET_CAP."""
    return min(triton.next_power_of_2(batch), BATCH_BUCKET_CAP)


def keep_config(config: dict, block_z: int) -> bool:
    """Whether a config's BLOCK_B x BLOCK_Z tile has at most MAX_ELEMS_PER_THREAD per thread."""
    return config["BLOCK_B"] * block_z <= MAX_ELEMS_PER_THREAD * 32 * config["num_warps"]


def prune_configs(configs, named_args, **kwargs):
    """Autotuner early_config_prune: the kept configs, or the one with the smallest tile/thread."""
    as_dict = lambda c: {**c.kwargs, "num_warps": c.num_warps}
    kept = [c for c in configs if keep_config(as_dict(c), kwargs["BLOCK_Z"])]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_B"] / c.num_warps)]


_latent_kernel_tuned = triton.autotune(
    configs=_CONFIGS,
    key=[*_KEY, "LEARNED"],
    prune_configs_by={"early_config_prune": prune_configs},
)(_latent_kernel)


# Launchers -----------------------------------------------------------------------------------


@dataclass
class PrologueArgs:
    """Validated kernel arguments; unused pointers are filled with a dummy tensor."""

    batch: int
    z_dim: int
    device: torch.device
    tensors: dict
    tau: float
    flags: dict


def _check(x, name: str, dtype, ndim: int, device, rows: int | None = None):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name}: on {x.device}, but class_a is on {device}")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name}: expected {rows} rows, got shape {tuple(x.shape)}")
    if not x.is_contiguous():
        raise ValueError(f"{name}: must be contiguous")
    return x


def prepare(
    *,
    class_a,
    class_b=None,
    s=None,
    seed_a=None,
    seed_b=None,
    z_a=None,
    z_b=None,
    z_dim=None,
    truncation=None,
    t=None,
    method="lerp",
    alpha=None,
    directions=None,
) -> PrologueArgs:
    """Validate the arguments of steps 1-3 and the class indices (shared by both kernels)."""
    _check(class_a, "class_a", torch.int64, 1, None)
    device, batch = class_a.device, class_a.shape[0]
    if batch == 0:
        raise ValueError("class_a: empty batch")
    dummy = torch.empty(1, dtype=torch.float32, device=device)
    if (seed_a is None) == (z_a is None):
        raise ValueError("seed_a / z_a: give exactly one (noise from seeds, or noise rows)")
    from_seeds = seed_a is not None
    if from_seeds:
        _check(seed_a, "seed_a", torch.int64, 1, device, batch)
        if not isinstance(z_dim, int) or isinstance(z_dim, bool) or z_dim < 1:
            raise ValueError(f"z_dim: an int >= 1 is needed with seeds, got {z_dim!r}")
    else:
        _check(z_a, "z_a", torch.float32, 2, device, batch)
        if z_dim is not None and z_dim != z_a.shape[1]:
            raise ValueError(f"z_dim: {z_dim} disagrees with z_a's {z_a.shape[1]} columns")
        z_dim = z_a.shape[1]
        if truncation is not None:
            raise ValueError("truncation: applies to noise drawn from seeds, not to given z_a")
    tau = 0.0
    if truncation is not None:
        tau = float(truncation)
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(f"truncation: must be finite and > 0, got {truncation!r}")
    if method not in METHODS:
        raise ValueError(f"method: must be one of {METHODS}, got {method!r}")
    interp = 0
    if t is not None:
        _check(t, "t", torch.float32, 1, device, batch)
        interp = METHODS.index(method) + 1
        if from_seeds:
            if seed_b is None:
                raise ValueError("seed_b: needed to interpolate noise drawn from seeds")
            _check(seed_b, "seed_b", torch.int64, 1, device, batch)
        else:
            if z_b is None:
                raise ValueError("z_b: needed to interpolate given noise rows")
            _check(z_b, "z_b", torch.float32, 2, device, batch)
            if z_b.shape != z_a.shape:
                raise ValueError(f"z_b: shape {tuple(z_b.shape)} != z_a's {tuple(z_a.shape)}")
    elif seed_b is not None or z_b is not None:
        raise ValueError("t: needed when seed_b or z_b is given")
    steer, k = 0, 0
    if (alpha is None) != (directions is None):
        raise ValueError("alpha / directions: give both or neither")
    if alpha is not None:
        _check(alpha, "alpha", torch.float32, 2, device, batch)
        if directions.dim() not in (2, 3):
            raise ValueError("directions: expected [K, Z] or [C, K, Z]")
        _check(directions, "directions", torch.float32, directions.dim(), device)
        k = alpha.shape[1]
        if directions.shape[-2:] != (k, z_dim):
            raise ValueError(
                f"directions: shape {tuple(directions.shape)} does not end in "
                f"(K, Z) = ({k}, {z_dim})"
            )
        steer = 0 if k == 0 else directions.dim() - 1
    if (class_b is None) != (s is None):
        raise ValueError("class_b / s: give both or neither")
    if class_b is not None:
        _check(class_b, "class_b", torch.int64, 1, device, batch)
        _check(s, "s", torch.float32, 1, device, batch)
    tensors = {
        "seed_a": seed_a,
        "seed_b": seed_b,
        "z_a": z_a,
        "z_b": z_b,
        "t": t,
        "alpha": alpha,
        "directions": directions,
        "class_a": class_a,
        "class_b": class_b,
        "s": s,
    }
    tensors = {name: dummy if v is None else v for name, v in tensors.items()}
    flags = {
        "FROM_SEEDS": from_seeds,
        "TRUNCATE": truncation is not None,
        "REDRAWS": reference.TRUNCATION_REDRAWS,
        "INTERP": interp,
        "STEER": steer,
        "SLERP_EPS": reference.SLERP_EPS,
        "MIX": class_b is not None,
    }
    return PrologueArgs(batch, z_dim, device, tensors, tau, flags | {"K": k})


def use_triton(device: torch.device) -> bool:
    """Compiled Triton on CUDA; Triton's interpreter on the CPU under TRITON_INTERPRET=1."""
    return device.type == "cuda" or (device.type == "cpu" and INTERPRET)


def latent_prologue(
    *,
    class_a: torch.Tensor,
    class_b: torch.Tensor | None = None,
    s: torch.Tensor | None = None,
    n_classes: int | None = None,
    table: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
    **noise_and_controls,
) -> torch.Tensor:
    """x = concat(z, y) [B, Z + E] in one launch (arguments as in reference.latent_prologue).

    Noise: ``seed_a`` (int64 [B], with ``z_dim``; optional ``truncation``) or ``z_a`` (float32
    [B, Z]). Interpolation: ``t`` (float32 [B]) with ``seed_b`` or ``z_b``, ``method`` lerp or
    slerp. Steering: ``alpha`` (float32 [B, K]) with ``directions`` ([K, Z] or [C, K, Z]).
    Classes: ``class_a`` (int64 [B]), optionally ``class_b`` and ``s`` for a mix; one-hot of
    width ``n_classes`` or rows of ``table`` (float32 [C, E]). ``out``: a preallocated
    contiguous [B, Z + E] tensor of ``out_dtype`` to write into (e.g. a CUDA-graph buffer).
    """
    args = prepare(class_a=class_a, class_b=class_b, s=s, **noise_and_controls)
    if (n_classes is None) == (table is None):
        raise ValueError("n_classes / table: give exactly one (one-hot width or learned table)")
    if table is not None:
        _check(table, "table", torch.float32, 2, args.device)
        width = table.shape[1]
    else:
        if not isinstance(n_classes, int) or isinstance(n_classes, bool) or n_classes < 1:
            raise ValueError(f"n_classes: must be an int >= 1, got {n_classes!r}")
        width = n_classes
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype: must be one of {OUT_DTYPES}, got {out_dtype}")
    shape = (args.batch, args.z_dim + width)
    if out is None:
        out = torch.empty(shape, dtype=out_dtype, device=args.device)
    else:
        _check(out, "out", out_dtype, 2, args.device, args.batch)
        if tuple(out.shape) != shape:
            raise ValueError(f"out: shape {tuple(out.shape)}, expected {shape}")
    if not use_triton(args.device):
        want = reference.latent_prologue(
            class_a=class_a,
            class_b=class_b,
            s=s,
            n_classes=n_classes,
            table=table,
            out_dtype=out_dtype,
            **noise_and_controls,
        )
        return out.copy_(want)
    ts = args.tensors
    params = (
        out,
        ts["seed_a"],
        ts["seed_b"],
        ts["z_a"],
        ts["z_b"],
        ts["t"],
        ts["alpha"],
        ts["directions"],
        ts["class_a"],
        ts["class_b"],
        ts["s"],
        table if table is not None else ts["t"],
        args.batch,
        args.z_dim,
        width,
        args.flags["K"],
        batch_bucket(args.batch),
        args.tau,
    )
    meta = {name: v for name, v in args.flags.items() if name != "K"}
    meta |= {
        "LEARNED": table is not None,
        "BLOCK_Z": triton.next_power_of_2(args.z_dim),
        "BLOCK_E": min(128, triton.next_power_of_2(width)),
    }
    if args.device.type == "cuda":
        grid = lambda cfg: (triton.cdiv(args.batch, cfg["BLOCK_B"]),)
        _latent_kernel_tuned[grid](*params, **meta)
    else:
        grid = (triton.cdiv(args.batch, INTERPRETER_BLOCK_B),)
        _latent_kernel[grid](*params, **meta, BLOCK_B=INTERPRETER_BLOCK_B)
    return out
