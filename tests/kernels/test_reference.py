"""The noise reference against Triton's own tl.randn, on every device where a Triton kernel runs
(the interpreter on the CPU, compiled on CUDA)."""

import numpy as np
import pytest
import torch

from ctrlgan.kernels import reference as ref
from tests.kernels.inputs import device_params

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")


@triton.jit
def _triton_noise(seed_ptr, out_ptr, bits_ptr, B, Z, BLOCK_B: tl.constexpr, BLOCK_Z: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_Z)
    mask = (rows[:, None] < B) & (cols[None, :] < Z)
    seed = tl.load(seed_ptr + rows, mask=rows < B, other=0)
    offs = tl.broadcast_to(cols[None, :], (BLOCK_B, BLOCK_Z))
    seeds = tl.broadcast_to(seed[:, None], (BLOCK_B, BLOCK_Z))
    value = tl.randn(seeds, offs)
    bits, _, _, _ = tl.randint4x(seeds, offs)
    tl.store(out_ptr + rows[:, None] * Z + cols[None, :], value, mask=mask)
    tl.store(bits_ptr + rows[:, None] * Z + cols[None, :], bits.to(tl.int64), mask=mask)


def _run_triton(seeds: torch.Tensor, z_dim: int, device: str):
    b = len(seeds)
    seeds = seeds.to(device)
    out = torch.full((b, z_dim), float("nan"), device=device)  # poisoned: all must be written
    bits = torch.full((b, z_dim), -1, dtype=torch.int64, device=device)
    block_z = triton.next_power_of_2(z_dim)
    _triton_noise[(triton.cdiv(b, 8),)](seeds, out, bits, b, z_dim, BLOCK_B=8, BLOCK_Z=block_z)
    return out.cpu(), bits.cpu() & 0xFFFFFFFF


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("z_dim", [8, 100])
def test_philox_matches_triton(z_dim, device):
    rng = np.random.default_rng()
    seeds = [0, 1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
    seeds += [int(s) for s in rng.integers(0, 2**63, size=5, dtype=np.int64)]
    st = ref.seeds_to_int64(seeds)
    triton_z, triton_bits = _run_triton(st, z_dim, device)
    bits, _, _, _ = ref.philox(st.reshape(-1, 1), torch.arange(z_dim).reshape(1, -1))
    assert torch.equal(bits, triton_bits)  # uint32 stage: bit-exact
    torch.testing.assert_close(ref.noise(st, z_dim), triton_z, rtol=0, atol=1e-6)


def test_noise_is_standard_normal_and_batch_invariant():
    seeds = torch.arange(1000, 1400)
    z = ref.noise(seeds, 64)
    assert abs(z.mean().item()) < 0.02
    assert abs(z.std().item() - 1.0) < 0.02
    assert torch.isfinite(z).all()
    # a row depends only on its own seed
    torch.testing.assert_close(ref.noise(seeds[[5]], 64), z[[5]], rtol=0, atol=0)
    torch.testing.assert_close(ref.noise(seeds.flip(0), 64).flip(0), z, rtol=0, atol=0)


def test_truncation_redraws_then_clamps():
    seeds = torch.arange(300)
    plain = ref.noise(seeds, 50)
    tau = 0.5
    z = ref.noise(seeds, 50, truncation=tau)
    assert z.abs().max() <= tau
    inside = plain.abs() <= tau
    assert torch.equal(z[inside], plain[inside])  # values within tau are kept
    redrawn = ref.randn(seeds.reshape(-1, 1), torch.arange(50).reshape(1, -1) + 50)
    first_redraw = ~inside & (redrawn.abs() <= tau)
    assert torch.equal(z[first_redraw], redrawn[first_redraw])
    # some values exhaust every redraw and are clamped to the bound
    assert (z.abs() == tau).any()


def test_reference_prologue_stays_on_the_inputs_device():
    """Every tensor the reference makes lives on its inputs' device (a CPU-made counter beside
    CUDA seeds failed bench_kernels on an H200). The meta device checks that without a GPU."""
    seeds = ref.seeds_to_int64([1, 2**63, 7]).to("meta")
    assert ref.noise(seeds, 13).device.type == "meta"
    z = ref.latent_prologue(
        seed_a=seeds, z_dim=13, class_a=torch.tensor([0, 3, 9], device="meta"), n_classes=10
    )
    assert z.device.type == "meta" and z.shape == (3, 23)
