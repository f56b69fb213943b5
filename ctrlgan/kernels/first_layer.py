"""The latent prologue fused with the generator's linear first layer, in one Triton launch.

The generator's first layer maps x = concat(z, y) through W = [W_z | W_e] [H, Z + E]. With y a
(mix of) one-hot or table rows, W_e y is a mix of precomputed class columns G = W_e e^T [H, C]:

    h = W_z z + (1 - s) G[:, class_a] + s G[:, class_b] + bias          [B, H]

so the concat is never built and the class part costs two row gathers instead of a matmul.
Each program computes the z tile of its BLOCK_B rows once (steps 1-3, shared with latent.py),
then sweeps H in BLOCK_H chunks: one tl.dot of z [BLOCK_B, Z] with W_z^T [Z, BLOCK_H] (IEEE
float32, no TF32, so the result matches the float32 reference), plus the gathered columns and
the bias. The weights are passed as W_z^T [Z, H] and G^T [C, H] (``pack_weights``), so every
load is a contiguous row segment.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ctrlgan.kernels import reference
from ctrlgan.kernels.latent import (
    _KEY,
    INTERPRETER_BLOCK_B,
    MAX_ELEMS_PER_THREAD,
    _check,
    _z_tile,
    batch_bucket,
    prepare,
    use_triton,
)


# B and B_BUCKET are not specialised: Triton specialises integer arguments on == 1 and on
# divisibility by 16, so the batch buckets 1, 2-8 and >= 16 would compile each config three
# times (first calls took 5-21 s a variant on an H200, 2026-11-29); B only bounds the row mask.
@triton.jit(do_not_specialize=["B", "B_BUCKET"])
def _first_layer_kernel(
    h_ptr,
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
    wz_ptr,
    cols_ptr,
    bias_ptr,
    B,
    Z,
    H,
    K,
    B_BUCKET,  # unused in the body: an autotune key (latent.batch_bucket(B))
    tau,
    FROM_SEEDS: tl.constexpr,
    TRUNCATE: tl.constexpr,
    REDRAWS: tl.constexpr,
    INTERP: tl.constexpr,
    STEER: tl.constexpr,
    SLERP_EPS: tl.constexpr,
    MIX: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_Z: tl.constexpr,
    BLOCK_H: tl.constexpr,
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
    if MIX:
        class_b = tl.load(cb_ptr + rows, mask=row_mask, other=0)
        s = tl.load(s_ptr + rows, mask=row_mask, other=0.0)[:, None]
    zcols = tl.arange(0, BLOCK_Z)
    for h0 in range(0, H, BLOCK_H):
        hcols = h0 + tl.arange(0, BLOCK_H)
        hmask = hcols < H
        w = tl.load(
            wz_ptr + zcols[:, None] * H + hcols[None, :],
            mask=(zcols < Z)[:, None] & hmask[None, :],
            other=0.0,
        )
        acc = tl.dot(z, w, input_precision="ieee")
        mask = row_mask[:, None] & hmask[None, :]
        g = tl.load(cols_ptr + class_a[:, None] * H + hcols[None, :], mask=mask, other=0.0)
        if MIX:
            gb = tl.load(cols_ptr + class_b[:, None] * H + hcols[None, :], mask=mask, other=0.0)
            g = (1 - s) * g + s * gb
        acc += g
        if HAS_BIAS:
            acc += tl.load(bias_ptr + hcols, mask=hmask, other=0.0)[None, :]
        tl.store(h_ptr + rows[:, None] * H + hcols[None, :], acc, mask=mask)


# tl.dot needs every tile dimension >= 16.
_CONFIGS = [
    triton.Config({"BLOCK_B": bb, "BLOCK_H": bh}, num_warps=w)
    for bb in (16, 32, 64)
    for bh in (32, 64, 128)
    for w in (4, 8)
]


def keep_config(config: dict, block_z: int) -> bool:
    """At most MAX_ELEMS_PER_THREAD values per thread in the z tile [BLOCK_B, BLOCK_Z] and in
    the weight tile [BLOCK_Z, BLOCK_H] (see latent.keep_config)."""
    per_thread = MAX_ELEMS_PER_THREAD * 32 * config["num_warps"]
    return max(config["BLOCK_B"], config["BLOCK_H"]) * block_z <= per_thread


def prune_configs(configs, named_args, **kwargs):
    """Autotuner early_config_prune: the kept configs, or the one with the smallest tiles."""
    as_dict = lambda c: {**c.kwargs, "num_warps": c.num_warps}
    kept = [c for c in configs if keep_config(as_dict(c), kwargs["BLOCK_Z"])]
    size = lambda c: max(c.kwargs["BLOCK_B"], c.kwargs["BLOCK_H"]) / c.num_warps
    return kept or [min(configs, key=size)]


_first_layer_kernel_tuned = triton.autotune(
    configs=_CONFIGS,
    key=["H" if k == "E" else k for k in _KEY] + ["HAS_BIAS"],
    prune_configs_by={"early_config_prune": prune_configs},
)(_first_layer_kernel)
INTERPRETER_BLOCK_H = 64


def pack_weights(
    weight: torch.Tensor, z_dim: int, table: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first layer's weight [H, Z + E] -> (W_z^T [Z, H], G^T [C, H]), both contiguous.

    ``table`` [C, E] is a learned class embedding; without it the embedding is one-hot (E = C).
    Done once per model, not per call.
    """
    weight = weight.detach().float()
    w_z, w_e = weight[:, :z_dim], weight[:, z_dim:]
    if table is not None and table.shape[1] != w_e.shape[1]:
        raise ValueError(f"table: {table.shape[1]} columns, the weight has {w_e.shape[1]}")
    columns = reference.class_columns(w_e, None if table is None else table.detach().float())
    return w_z.t().contiguous(), columns


def first_layer(
    *,
    wz_t: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    class_a: torch.Tensor,
    class_b: torch.Tensor | None = None,
    s: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    **noise_and_controls,
) -> torch.Tensor:
    """h [B, H] = W_z z + (1 - s) G[:, a] + s G[:, b] + bias, float32, in one launch.

    ``wz_t`` = W_z^T [Z, H] and ``columns`` = G^T [C, H] from ``pack_weights``; ``bias`` [H] or
    None; ``out`` an optional preallocated float32 [B, H] tensor. Noise and control arguments
    as in latent.latent_prologue.
    """
    args = prepare(class_a=class_a, class_b=class_b, s=s, **noise_and_controls)
    _check(wz_t, "wz_t", torch.float32, 2, args.device)
    hidden = wz_t.shape[1]
    if wz_t.shape[0] != args.z_dim:
        raise ValueError(f"wz_t: {wz_t.shape[0]} rows, expected Z = {args.z_dim}")
    _check(columns, "columns", torch.float32, 2, args.device)
    if columns.shape[1] != hidden:
        raise ValueError(f"columns: {columns.shape[1]} columns, expected H = {hidden}")
    if bias is not None:
        _check(bias, "bias", torch.float32, 1, args.device, hidden)
    if out is None:
        h = torch.empty(args.batch, hidden, dtype=torch.float32, device=args.device)
    else:
        h = _check(out, "out", torch.float32, 2, args.device, args.batch)
        if out.shape[1] != hidden:
            raise ValueError(f"out: shape {tuple(out.shape)}, expected ({args.batch}, {hidden})")
    if not use_triton(args.device):
        want = reference.first_layer(
            w_z=wz_t.t(),
            columns=columns,
            bias=bias,
            class_a=class_a,
            class_b=class_b,
            s=s,
            **noise_and_controls,
        )
        return h.copy_(want)
    ts = args.tensors
    params = (
        h,
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
        wz_t,
        columns,
        bias if bias is not None else ts["t"],
        args.batch,
        args.z_dim,
        hidden,
        args.flags["K"],
        batch_bucket(args.batch),
        args.tau,
    )
    meta = {name: v for name, v in args.flags.items() if name != "K"}
    meta |= {"HAS_BIAS": bias is not None, "BLOCK_Z": max(16, triton.next_power_of_2(args.z_dim))}
    if args.device.type == "cuda":
        grid = lambda cfg: (triton.cdiv(args.batch, cfg["BLOCK_B"]),)
        _first_layer_kernel_tuned[grid](*params, **meta)
    else:
        grid = (triton.cdiv(args.batch, INTERPRETER_BLOCK_B),)
        _first_layer_kernel[grid](
            *params, **meta, BLOCK_B=INTERPRETER_BLOCK_B, BLOCK_H=INTERPRETER_BLOCK_H
        )
    return h
