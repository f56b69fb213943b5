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
"""

from __future__ import annotations

import torch

PHILOX_ROUNDS = 10
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
UNIFORM_SCALE = 4.6566127342e-10
TWO_PI = 6.283185307179586
TRUNCATION_REDRAWS = 4

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
    offsets = torch.arange(z_dim, dtype=torch.int64).reshape(1, -1)
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
