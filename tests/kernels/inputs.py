"""Random inputs for the latent-prologue kernels, shared by their tests."""

from __future__ import annotations

import pytest
import torch


def devices() -> list[str]:
    """Where the Triton kernels themselves run: the CPU in Triton's interpreter (conftest sets
    TRITON_INTERPRET=1 on machines without CUDA) and CUDA, compiled. On a CUDA machine CPU
    tensors take the torch reference, which a test must not compare with itself."""
    from ctrlgan.kernels import latent

    return (["cpu"] if latent.INTERPRET else []) + (["cuda"] if torch.cuda.is_available() else [])


def device_params() -> list:
    """devices() for pytest.mark.parametrize; the CUDA case carries the `gpu` marker."""
    return [pytest.param(d, marks=pytest.mark.gpu) if d == "cuda" else d for d in devices()]


def to_device(kw: dict, device: str) -> dict:
    """The same keyword arguments with every tensor on ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}


def to_cpu(kw: dict) -> dict:
    """The same keyword arguments with every tensor on the CPU (for the torch reference)."""
    return to_device(kw, "cpu")


def make_inputs(
    B: int,
    Z: int,
    K: int = 0,
    C: int = 10,
    embedding: str = "onehot",  # onehot | soft | learned
    method: str | None = None,  # None | lerp | slerp
    truncation: float | None = None,
    per_class: bool = False,
    from_seeds: bool = True,
    E: int = 7,
    device: str = "cpu",
    generator: torch.Generator | None = None,
) -> dict:
    """Keyword arguments of latent_prologue: fresh random values (never zeros) every call."""
    g = generator
    randn = lambda *shape: torch.randn(*shape, generator=g).to(device)
    rand = lambda *shape: torch.rand(*shape, generator=g).to(device)
    ints = lambda high, n: torch.randint(0, high, (n,), generator=g).to(device)
    # 64-bit seeds as the runtime passes them: uint64 viewed as int64 (so half are negative)
    seeds = lambda n: torch.randint(-(2**63), 2**63 - 1, (n,), generator=g).to(device)
    kw: dict = {"class_a": ints(C, B)}
    if from_seeds:
        kw["seed_a"] = seeds(B)
        kw["z_dim"] = Z
        if truncation is not None:
            kw["truncation"] = truncation
    else:
        kw["z_a"] = randn(B, Z)
    if method is not None:
        kw["t"] = rand(B)
        kw["method"] = method
        if from_seeds:
            kw["seed_b"] = seeds(B)
        else:
            kw["z_b"] = randn(B, Z)
    if K or per_class:
        kw["alpha"] = randn(B, K) * 2
        kw["directions"] = randn(C, K, Z) if per_class else randn(K, Z)
    if embedding in ("soft", "learned"):
        kw["class_b"] = ints(C, B)
        kw["s"] = rand(B)
    if embedding == "learned":
        kw["table"] = randn(C, E)
    else:
        kw["n_classes"] = C
    return kw


def row_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max over rows of ||got - want|| / ||want|| (float32 row norms)."""
    got, want = got.float(), want.float()
    return float(((got - want).norm(dim=1) / want.norm(dim=1)).max())
