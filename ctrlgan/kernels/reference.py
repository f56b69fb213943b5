"""Torch references that *define* the latent prologue's results (see docs/model-format.md).

Noise contract (step 1 of the prologue): z[b, j] = randn(seed[b], j) for j < Z, where randn is
Triton's ``tl.randn(seed, offset)`` with 32-bit offsets:

* Philox-4x32-10. Counter (c0, c1, c2, c3) = (offset, 0, 0, 0); key (k0, k1) = the low and high
  32-bit halves of the 64-bit seed. Each of the 10 rounds computes
  ``c0' = mulhi(B, c2) ^ c1 ^ k0``, ``c2' = mulhi(A, c0) ^ c3 ^ k1``, ``c1' = lo(B * c2)``,
  ``c3' = lo(A * c0)``, then bumps the key by (0x9E3779B9, 0xBB67AE85);
  A = 0xD2511F53, B = 0xCD9E8D57.
* Uniforms from the first two outputs: reinterpret as int32, map negatives x to ~x, and scale
  by 4.6566127342e-10 (the largest float32 with (2**31 - 1) * scale < 1), giving [0, 1).
* Box-Muller, keeping the cosine branch: u1 = max(u1, 1e-7);
  z = sqrt(-2 ln u1) * cos(2 pi u2).

Truncation tau: a value with |z| > tau is redrawn from counter offset j + r * Z for
r = 1 .. TRUNCATION_REDRAWS - 1 (the first draw within tau wins), and clamped to [-tau, tau]
if none is. Every row depends only on its own seed, so noise is batch-invariant by construction.

The uint32 stage is computed exactly in int64 arithmetic (the 32x32 -> 64-bit high product is
split into 16-bit halves so that nothing overflows), so it is bit-exact with Triton's.

The rest of the prologue, per row b (``latent_prologue``):

2. Interpolation between noise rows z_a and z_b at t[b]:
   lerp   z = (1 - t) z_a + t z_b                      (exact at t = 0 and t = 1)
   slerp  the angle omega between z_a and z_b is swept while the norm moves linearly:
          z = n_t [sin((1-t) omega) z_a / |z_a| + sin(t omega) z_b / |z_b|] / sin omega,
          n_t = (1 - t) |z_a| + t |z_b|. Exact at both ends, |z| = n_t between the two norms.
          omega = 2 asin(|a^ - b^| / 2) (or pi - 2 asin(|a^ + b^| / 2), whichever chord is
          shorter; a^, b^ the unit directions): accurate at both ends, unlike acos(a^ . b^).
          Falls back to lerp where sin omega = |a^ - b^| |a^ + b^| / 2 < SLERP_EPS (within about
          1e-3 rad of parallel or anti-parallel, where slerp is ill-conditioned) or a norm is 0.
3. Steering: z = z + sum_k alpha[b, k] D[k]  (global D [K, Z]), or D[class_a[b], k] (D [C, K, Z]),
   accumulated in order of k.
4. Class embedding: y = (1 - s[b]) e(class_a[b]) + s[b] e(class_b[b]), e = one-hot rows of
   width C, or rows of a learned table [C, E].
5. Output x = concat(z, y) [B, Z + E], float32 (or float16 / bfloat16, rounded once at the end).

The fused first layer (``first_layer``) maps x through the generator's linear first layer
W = [W_z | W_e] [H, Z + E] without building the concat: a one-hot (or table-row) mix followed by
a linear map is a mix of precomputed class columns, G = W_e e^T [H, C]:
   h = W_z z + (1 - s) G[:, class_a] + s G[:, class_b] + bias.
"""

from __future__ import annotations

import math

import torch

from ctrlgan.kernels.contract import (
    PHILOX_KEY_A,
    PHILOX_KEY_B,
    PHILOX_ROUND_A,
    PHILOX_ROUND_B,
    PHILOX_ROUNDS,
    SLERP_EPS,
    TRUNCATION_REDRAWS,
    TWO_PI,
    UNIFORM_SCALE,
)

_MASK32 = 0xFFFFFFFF


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of the 64-bit product of the constant ``a`` and uint32 values ``b``."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    lo_part = a_lo * b  # < 2**48
    hi = (a_hi * b + (lo_part >> 16)) >> 16
    lo = (a * b) & _MASK32  # int64 wraps modulo 2**64, and we keep the low 32 bits only
    return hi, lo


def philox(seed: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Philox-4x32-10 of Triton's ``randint4x(seed, offset)``: four uint32 outputs as int64.

    ``seed`` holds 64-bit seeds as int64 (two's complement for seeds >= 2**63); ``offset``
    holds 32-bit counters. Both broadcast against each other.
    """
    seed = seed.to(torch.int64)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    c0 = offset.to(torch.int64) & _MASK32
    c0, k0, k1 = torch.broadcast_tensors(c0, k0, k1)
    c1 = torch.zeros_like(c0)
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(PHILOX_ROUNDS):
        hi_b, lo_b = _mulhilo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    """uint32 values (held in int64) to float32 uniforms in [0, 1), as Triton does it."""
    signed = torch.where(x >= 2**31, x - 2**32, x)
    signed = torch.where(signed < 0, -signed - 1, signed)  # ~x for negatives
    return signed.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def randn(seed: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Triton's ``tl.randn(seed, offset)``: one standard normal float32 per (seed, offset)."""
    i1, i2, _, _ = philox(seed, offset)
    u1 = torch.clamp_min(uint_to_uniform(i1), 1.0e-7)
    u2 = uint_to_uniform(i2)
    theta = torch.tensor(TWO_PI, dtype=torch.float32) * u2
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(theta)


def seeds_to_int64(seeds) -> torch.Tensor:
    """64-bit seeds (Python ints in [0, 2**64)) as an int64 tensor of the same bits."""
    if isinstance(seeds, torch.Tensor):
        return seeds.to(torch.int64)
    return torch.tensor([s - 2**64 if s >= 2**63 else s for s in seeds], dtype=torch.int64)


def noise(seeds: torch.Tensor, z_dim: int, truncation: float | None = None) -> torch.Tensor:
    """Noise rows z[b, j] = randn(seeds[b], j), optionally truncated: float32 [B, z_dim]."""
    seed = seeds.to(torch.int64).reshape(-1, 1)
    offsets = torch.arange(z_dim, dtype=torch.int64, device=seed.device).reshape(1, -1)
    z = randn(seed, offsets)
    if truncation is None:
        return z
    tau = float(truncation)
    for r in range(1, TRUNCATION_REDRAWS):
        outside = z.abs() > tau
        if not bool(outside.any()):
            break
        z = torch.where(outside, randn(seed, offsets + r * z_dim), z)
    return z.clamp(-tau, tau)


# Steps 2-5 ---------------------------------------------------------------------------------


def lerp(z_a: torch.Tensor, z_b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, 1)
    return (1 - t) * z_a + t * z_b


def slerp(z_a: torch.Tensor, z_b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of directions with linear interpolation of norms (see above)."""
    t = t.reshape(-1, 1)
    na = torch.linalg.vector_norm(z_a, dim=1, keepdim=True)
    nb = torch.linalg.vector_norm(z_b, dim=1, keepdim=True)
    # The angle from the chords |a^ - b^| = 2 sin(w/2) and |a^ + b^| = 2 cos(w/2), the smaller
    # one through asin: accurate near parallel and anti-parallel, where acos(cos) is not.
    ua = z_a / torch.where(na > 0, na, 1.0)
    ub = z_b / torch.where(nb > 0, nb, 1.0)
    dm = torch.linalg.vector_norm(ua - ub, dim=1, keepdim=True)
    dp = torch.linalg.vector_norm(ua + ub, dim=1, keepdim=True)
    omega = torch.where(
        dm <= dp,
        2 * torch.asin(torch.clamp_max(dm / 2, 1.0)),
        math.pi - 2 * torch.asin(torch.clamp_max(dp / 2, 1.0)),
    )
    degenerate = (dm * dp / 2 < SLERP_EPS) | (na == 0) | (nb == 0)  # dm dp / 2 = sin omega
    safe_sin = torch.where(degenerate, 1.0, torch.sin(omega))
    n_t = (1 - t) * na + t * nb
    ca = torch.sin((1 - t) * omega) / safe_sin * (n_t / torch.where(na > 0, na, 1.0))
    cb = torch.sin(t * omega) / safe_sin * (n_t / torch.where(nb > 0, nb, 1.0))
    return torch.where(degenerate, (1 - t) * z_a + t * z_b, ca * z_a + cb * z_b)


def steer(
    z: torch.Tensor,
    alpha: torch.Tensor | None,
    directions: torch.Tensor | None,
    class_a: torch.Tensor | None = None,
) -> torch.Tensor:
    """z + sum_k alpha[:, k] D[k], with D [K, Z] global or [C, K, Z] per class (rows picked by
    class_a), accumulated one direction at a time as the kernel does: elementwise, so a row's
    result does not depend on the batch (a matmul's blocking would)."""
    if alpha is None or directions is None or directions.shape[-2] == 0:
        return z
    rows = directions if directions.dim() == 2 else directions[class_a]  # [K, Z] or [B, K, Z]
    for k in range(directions.shape[-2]):
        z = z + alpha[:, k : k + 1] * rows[..., k, :]
    return z


def embed_classes(
    class_a: torch.Tensor,
    class_b: torch.Tensor | None = None,
    s: torch.Tensor | None = None,
    n_classes: int | None = None,
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = (1 - s) e(a) + s e(b); e = one-hot of width n_classes, or rows of ``table`` [C, E]."""
    if table is None:
        table = torch.eye(n_classes, dtype=torch.float32, device=class_a.device)
    y = table[class_a]
    if class_b is not None and s is not None:
        s = s.reshape(-1, 1)
        y = (1 - s) * y + s * table[class_b]
    return y


def prologue_z(
    *,
    seed_a: torch.Tensor | None = None,
    seed_b: torch.Tensor | None = None,
    z_a: torch.Tensor | None = None,
    z_b: torch.Tensor | None = None,
    z_dim: int | None = None,
    truncation: float | None = None,
    t: torch.Tensor | None = None,
    method: str = "lerp",
    alpha: torch.Tensor | None = None,
    directions: torch.Tensor | None = None,
    class_a: torch.Tensor | None = None,
) -> torch.Tensor:
    """Steps 1-3: the (interpolated, steered) noise rows z [B, Z], float32."""
    if z_a is None:
        z_a = noise(seed_a, z_dim, truncation)
    if t is not None:
        if z_b is None:
            z_b = noise(seed_b, z_a.shape[1], truncation)
        z_a = (slerp if method == "slerp" else lerp)(z_a, z_b, t)
    return steer(z_a, alpha, directions, class_a)


def latent_prologue(
    *,
    class_a: torch.Tensor,
    class_b: torch.Tensor | None = None,
    s: torch.Tensor | None = None,
    n_classes: int | None = None,
    table: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    **noise_and_controls,
) -> torch.Tensor:
    """Steps 1-5: x = concat(z, y) [B, Z + E] (keyword arguments as in ``prologue_z``)."""
    z = prologue_z(class_a=class_a, **noise_and_controls)
    y = embed_classes(class_a, class_b, s, n_classes, table)
    return torch.cat([z, y], dim=1).to(out_dtype)


def class_columns(w_e: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """G^T [C, H]: the first layer's response to each class embedding row (W_e e^T, transposed)."""
    return w_e.t().contiguous() if table is None else (table @ w_e.t()).contiguous()


def first_layer(
    *,
    w_z: torch.Tensor,
    columns: torch.Tensor,
    bias: torch.Tensor | None,
    class_a: torch.Tensor,
    class_b: torch.Tensor | None = None,
    s: torch.Tensor | None = None,
    **noise_and_controls,
) -> torch.Tensor:
    """h = W_z z + (1 - s) G[:, a] + s G[:, b] + bias  [B, H], float32.

    ``w_z`` [H, Z] is the noise part of the first layer's weight, ``columns`` = G^T [C, H]
    (see ``class_columns``) and ``bias`` [H].
    """
    z = prologue_z(class_a=class_a, **noise_and_controls)
    h = z @ w_z.t() + embed_classes(class_a, class_b, s, table=columns)
    return h if bias is None else h + bias
