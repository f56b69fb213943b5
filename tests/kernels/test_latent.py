"""The fused latent prologue against its torch reference, on every device where the kernel runs
(tests/kernels/inputs.devices(): the interpreter on the CPU, compiled on CUDA)."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ctrlgan.kernels import latent
from ctrlgan.kernels import reference as ref
from tests.kernels.inputs import (
    device_params,
    make_inputs,
    row_relative_error,
    to_cpu,
    to_device,
)

pytestmark = pytest.mark.skipif(
    not latent.INTERPRET and not torch.cuda.is_available(),
    reason="needs TRITON_INTERPRET=1 (set by tests/conftest.py) or CUDA",
)
DEVICES = device_params()

# A covering grid: every B, Z, K, embedding, method, truncation and table kind appears, in
# varied combinations (the full product is ~1,000 interpreter runs).
CASES = [
    # B,   Z,   K, C,    embedding, method,  trunc, per_class
    (1, 8, 0, 10, "onehot", None, None, False),
    (1, 100, 5, 10, "learned", "slerp", 1.0, True),
    (3, 8, 1, 10, "soft", "lerp", None, False),
    (3, 128, 0, 1000, "onehot", "slerp", 0.7, False),
    (64, 64, 5, 10, "soft", "slerp", None, False),
    (64, 100, 1, 37, "learned", "lerp", 1.5, True),
    (64, 8, 5, 1000, "soft", None, 0.5, True),
    (257, 64, 0, 10, "learned", None, None, False),
    (257, 100, 5, 10, "soft", "slerp", 0.8, False),
    (257, 128, 1, 1000, "soft", "lerp", None, True),
    (257, 8, 5, 3, "onehot", "slerp", 2.0, True),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B, Z, K, C, embedding, method, truncation, per_class", CASES)
def test_prologue_matches_reference(B, Z, K, C, embedding, method, truncation, per_class, device):
    kw = make_inputs(B, Z, K, C, embedding, method, truncation, per_class, device=device)
    width = Z + (7 if embedding == "learned" else C)
    out = torch.full((B, width), float("nan"), device=device)  # poisoned: all must be written
    got = latent.latent_prologue(out=out, **kw)
    assert got is out
    want = ref.latent_prologue(**to_cpu(kw))
    assert torch.isfinite(got).all()
    assert row_relative_error(got.cpu(), want) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B, Z, tau", [(1, 8, 0.5), (257, 100, 1.0), (64, 128, 2.0)])
def test_truncated_noise_is_bounded_and_redrawn(B, Z, tau, device):
    kw = make_inputs(B, Z, C=4, truncation=tau)
    z = latent.latent_prologue(**to_device(kw, device))[:, :Z].cpu()
    assert z.abs().max() <= tau
    # redrawn from later counters before the clamp: far fewer values sit on the bound than the
    # share P(|z| > tau) that a plain clamp would put there
    outside = math.erfc(tau / math.sqrt(2))
    if B * Z >= 1000:  # enough values for the share to be stable (it is ~outside**4)
        assert (z.abs() == tau).float().mean() <= 0.5 * outside
    torch.testing.assert_close(z, ref.noise(kw["seed_a"], Z, truncation=tau), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("embedding", ["onehot", "soft", "learned"])
def test_given_noise_rows(embedding, device):
    kw = make_inputs(5, 33, 2, 10, embedding, "slerp", per_class=True, from_seeds=False)
    got = latent.latent_prologue(**to_device(kw, device)).cpu()
    assert row_relative_error(got, ref.latent_prologue(**kw)) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_reduced_precision_output(dtype, tol, device):
    kw = make_inputs(64, 64, 1, 10, "soft", "lerp")
    out = torch.full((64, 74), float("nan"), dtype=dtype, device=device)
    got = latent.latent_prologue(out_dtype=dtype, out=out, **to_device(kw, device))
    assert got is out
    got = got.cpu()
    assert got.dtype == dtype
    want = ref.latent_prologue(**kw)
    assert row_relative_error(got, want) <= tol
    # rounded once, from the float32 result: within one unit in the last place of rounding the
    # reference (the interpreter emulates bfloat16 by truncation; GPUs round to nearest)
    rounded = want.to(dtype).float()
    ulp = torch.finfo(dtype).eps * rounded.abs().clamp_min(torch.finfo(dtype).tiny)
    assert ((got.float() - rounded).abs() <= ulp).all()
    if dtype == torch.float16:
        assert (got == want.to(dtype)).float().mean() >= 0.99


@pytest.mark.parametrize("device", DEVICES)
def test_onehot_and_mix_values_exact(device):
    kw = make_inputs(9, 8, C=5, embedding="soft")
    kw["s"][:3] = 0.0
    kw["s"][3:6] = 1.0
    y = latent.latent_prologue(**to_device(kw, device))[:, 8:].cpu()
    a, b, s = kw["class_a"], kw["class_b"], kw["s"]
    for row in range(9):
        expected = torch.zeros(5)
        expected[a[row]] += 1 - s[row]
        expected[b[row]] += s[row]
        torch.testing.assert_close(y[row], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_rows_are_batch_invariant(device):
    """Bit-identical rows whatever shares the batch. Compiled, within one autotune batch bucket
    (latent.batch_bucket): another bucket may get another tile, and slerp's row sums then round
    differently. The interpreter's tile is fixed, so there a single row is checked too."""
    kw = make_inputs(100, 64, 5, 10, "soft", "slerp", 1.2, True, device=device)
    full = latent.latent_prologue(**kw)
    perm = torch.randperm(100, device=device)
    rows = lambda idx: {
        k: (v[idx] if isinstance(v, torch.Tensor) and v.shape[:1] == (100,) else v)
        for k, v in kw.items()
    }
    assert torch.equal(latent.latent_prologue(**rows(perm)), full[perm])
    some = perm[:65]  # 65 and 100 rows: the same bucket (128)
    assert latent.batch_bucket(65) == latent.batch_bucket(100)
    assert torch.equal(latent.latent_prologue(**rows(some)), full[some])
    if device == "cpu":
        assert torch.equal(latent.latent_prologue(**rows([17])), full[[17]])


def test_autotune_prunes_spilling_tiles_and_keys_on_batch_bucket_and_variant():
    kept = latent.prune_configs(latent._CONFIGS, {}, BLOCK_Z=64)
    limit = latent.MAX_ELEMS_PER_THREAD * 32
    assert 0 < len(kept) < len(latent._CONFIGS)
    assert all(c.kwargs["BLOCK_B"] * 64 <= limit * c.num_warps for c in kept)
    assert len(latent.prune_configs(latent._CONFIGS, {}, BLOCK_Z=1 << 14)) == 1  # never empty
    assert [latent.batch_bucket(b) for b in (1, 2, 3, 100, 1 << 20)] == [1, 2, 4, 128, 1 << 16]
    want = {"Z", "E", "K", "B_BUCKET", "FROM_SEEDS", "TRUNCATE", "INTERP", "STEER", "MIX"}
    assert want <= set(latent._latent_kernel_tuned.keys)


def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    monkeypatch.setattr(latent, "INTERPRET", False)
    kw = make_inputs(7, 20, 2, 10, "soft", "slerp", 1.0)
    out = torch.full((7, 30), float("nan"))
    assert torch.equal(latent.latent_prologue(out=out, **kw), ref.latent_prologue(**kw))


# Slerp properties, on the reference and the kernel ---------------------------------------------

vectors = st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=12, max_size=12).map(
    lambda v: torch.tensor(v, dtype=torch.float32)
)


@settings(max_examples=60, deadline=None)
@given(a=vectors, b=vectors, t=st.floats(0, 1, width=32))
def test_slerp_endpoints_exact_and_norms_between(a, b, t):
    na, nb = float(a.norm()), float(b.norm())
    assume(na > 1e-3 and nb > 1e-3)
    za, zb = a[None], b[None]
    assert torch.equal(ref.slerp(za, zb, torch.tensor([0.0])), za)
    assert torch.equal(ref.slerp(za, zb, torch.tensor([1.0])), zb)
    cos = float(a @ b) / (na * nb)
    assume(abs(cos) < 1 - 1e-3)  # away from the parallel / anti-parallel fallback
    n = float(ref.slerp(za, zb, torch.tensor([t])).norm())
    assert min(na, nb) * (1 - 1e-5) <= n <= max(na, nb) * (1 + 1e-5)
    assert n == pytest.approx((1 - t) * na + t * nb, rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=15, deadline=None)
@given(a=vectors, b=vectors, t=st.floats(0, 1, width=32))
def test_kernel_slerp_endpoints_and_norms(a, b, t, device):
    na, nb = float(a.norm()), float(b.norm())
    assume(na > 1e-3 and nb > 1e-3 and abs(float(a @ b)) / (na * nb) < 1 - 1e-3)
    kw = {
        "z_a": torch.stack([a, a, a]),
        "z_b": torch.stack([b, b, b]),
        "t": torch.tensor([0.0, 1.0, t]),
        "method": "slerp",
        "class_a": torch.zeros(3, dtype=torch.int64),
        "n_classes": 1,
    }
    x = latent.latent_prologue(**to_device(kw, device))[:, :12].cpu()
    assert torch.equal(x[0], a) and torch.equal(x[1], b)  # exact, also compiled
    assert float(x[2].norm()) == pytest.approx((1 - t) * na + t * nb, rel=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("Z", [16, 100])
def test_slerp_falls_back_to_lerp_when_degenerate(Z, device):
    a = torch.randn(12, Z)
    scale = torch.rand(12, 1) * 4 + 0.1
    t = torch.rand(12)
    for b in (scale * a, -scale * a, torch.zeros_like(a)):
        torch.testing.assert_close(ref.slerp(a, b, t), ref.lerp(a, b, t))
        kw = {
            "z_a": a,
            "z_b": b,
            "t": t,
            "method": "slerp",
            "class_a": torch.zeros(12, dtype=torch.int64),
            "n_classes": 2,
        }
        got = latent.latent_prologue(**to_device(kw, device))[:, :Z].cpu()
        torch.testing.assert_close(got, ref.lerp(a, b, t))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("angle", [2e-3, 0.05, 1.0, math.pi - 0.05, math.pi - 2e-3])
def test_slerp_near_parallel_and_anti_parallel(angle, device):
    """Just outside the fallback the angle is still accurate: kernel = reference = geometry."""
    Z = 40
    u = torch.nn.functional.normalize(torch.randn(8, Z), dim=1)
    v = torch.randn(8, Z)
    v = torch.nn.functional.normalize(v - (v * u).sum(1, keepdim=True) * u, dim=1)  # v _|_ u
    a = 2.0 * u
    b = 3.0 * (math.cos(angle) * u + math.sin(angle) * v)
    t = torch.rand(8)
    want_dir = torch.cos(t * angle)[:, None] * u + torch.sin(t * angle)[:, None] * v
    want = ((1 - t) * 2.0 + t * 3.0)[:, None] * want_dir
    got_ref = ref.slerp(a, b, t)
    kw = {"z_a": a, "z_b": b, "t": t, "method": "slerp", "n_classes": 1,
          "class_a": torch.zeros(8, dtype=torch.int64)}  # fmt: skip
    got = latent.latent_prologue(**to_device(kw, device))[:, :Z].cpu()
    tol = 2e-4 if min(angle, math.pi - angle) < 1e-2 else 1e-5
    assert row_relative_error(got_ref, want) <= tol
    assert row_relative_error(got, want) <= tol


def test_slerp_is_spherical_for_unit_vectors():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    mid = ref.slerp(a, b, torch.tensor([0.5]))
    torch.testing.assert_close(mid, torch.tensor([[math.sqrt(0.5), math.sqrt(0.5)]]))


# Validation ------------------------------------------------------------------------------------


def _valid():
    return make_inputs(4, 8, 2, 5, "soft", "lerp", 1.0)


@pytest.mark.parametrize(
    "change, error, words",
    [
        (lambda k: k.update(class_a=k["class_a"].int()), TypeError, "class_a"),
        (lambda k: k.update(class_a=torch.zeros(0, dtype=torch.int64)), ValueError, "empty"),
        (lambda k: k.update(seed_a=k["seed_a"][:3]), ValueError, "seed_a"),
        (lambda k: k.update(z_a=torch.randn(4, 8)), ValueError, "exactly one"),
        (lambda k: k.update(z_dim=0), ValueError, "z_dim"),
        (lambda k: k.update(truncation=float("nan")), ValueError, "truncation"),
        (lambda k: k.update(method="cubic"), ValueError, "method"),
        (lambda k: k.pop("seed_b"), ValueError, "seed_b"),
        (lambda k: k.update(t=k["t"].double()), TypeError, "t"),
        (lambda k: k.pop("directions"), ValueError, "alpha / directions"),
        (lambda k: k.update(directions=torch.randn(3, 8)), ValueError, "directions"),
        (
            lambda k: k.update(alpha=torch.randn(4, 2).t().contiguous().t()),
            ValueError,
            "contiguous",
        ),
        (lambda k: k.pop("s"), ValueError, "class_b / s"),
        (lambda k: k.update(table=torch.randn(5, 3)), ValueError, "n_classes / table"),
        (lambda k: k.update(n_classes=0), ValueError, "n_classes"),
        (lambda k: k.update(out_dtype=torch.int32), ValueError, "out_dtype"),
        (lambda k: k.update(out=torch.empty(4, 12)), ValueError, "out"),
        (lambda k: k.update(class_a=[0, 1, 2, 3]), TypeError, "class_a"),
    ],
)
def test_launcher_rejects_bad_arguments(change, error, words):
    kw = _valid()
    change(kw)
    with pytest.raises(error, match=words):
        latent.latent_prologue(**kw)


def test_truncation_needs_seeds():
    kw = make_inputs(2, 8, from_seeds=False)
    with pytest.raises(ValueError, match="truncation"):
        latent.latent_prologue(truncation=1.0, **kw)
