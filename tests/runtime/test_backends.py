"""Backends: batch invariance (bit-identical on the CPU), agreement across backends, the
interpolate / traverse verbs, output forms, and backend selection."""

import shutil

import numpy as np
import pytest
import torch

import ctrlgan
from ctrlgan.artifact import DIRECTIONS, Artifact, write_artifact
from ctrlgan.errors import BackendUnavailable, InvalidRequest
from ctrlgan.export import onnx as export
from ctrlgan.kernels import reference as ref

CPU_BACKENDS = ["torch", "onnxruntime"]


@pytest.fixture(scope="module")
def gens(model):
    return {b: ctrlgan.load(model, backend=b) for b in CPU_BACKENDS}


def _random_request(rng, n):
    classes = [
        (int(a), int(b), float(s)) if s > 0.5 else int(a)
        for a, b, s in zip(
            rng.integers(0, 10, n), rng.integers(0, 10, n), rng.random(n), strict=True
        )
    ]
    seeds = [int(s) for s in rng.integers(0, 2**64 - 1, n, dtype=np.uint64)]
    steer = {"up": rng.normal(size=n).tolist(), "left": float(rng.normal())}
    return {"classes": classes, "seeds": seeds, "steer": steer}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rows_are_bit_identical_whatever_shares_the_batch(gens, backend):
    g = gens[backend]
    rng = np.random.default_rng()
    req = _random_request(rng, 300)
    full = g.sample(**req, truncation=2.0)
    for start, size in [(0, 1), (17, 1), (5, 2), (40, 3), (99, 7), (3, 16), (150, 64), (1, 299)]:
        part = {
            "classes": req["classes"][start : start + size],
            "seeds": req["seeds"][start : start + size],
            "steer": {"up": req["steer"]["up"][start : start + size], "left": req["steer"]["left"]},
        }
        got = g.sample(**part, truncation=2.0)
        assert np.array_equal(got, full[start : start + size]), (backend, start, size)


def test_torch_backend_restores_onednn(gens):
    assert torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()
    gens["torch"].sample(classes=1, seeds=[1])
    assert torch._C._get_mkldnn_enabled()


def test_backends_agree_and_match_the_definition(gens, model):
    rng = np.random.default_rng()
    req = _random_request(rng, 33)
    images = {b: g.sample(**req) for b, g in gens.items()}
    assert np.abs(images["torch"] - images["onnxruntime"]).max() <= 1e-4
    # the definition: Philox noise, steering along the table, class mix, the generator module
    artifact = Artifact.open(model)
    net = artifact.build_generator()
    table = artifact.load_tensors(DIRECTIONS)["directions"]
    rows = gens["torch"].prepare(**req)
    z = ref.noise(torch.from_numpy(rows.seeds.view(np.int64)), 12)
    z = z + torch.from_numpy(rows.alpha) @ table
    with torch.no_grad():
        y = net.embed(*(torch.from_numpy(a) for a in (rows.class_a, rows.class_b, rows.s)))
        want = net.body(torch.cat([z, y], dim=1)).numpy()
    assert np.abs(images["onnxruntime"] - want).max() <= 1e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", ["lerp", "slerp"])
@pytest.mark.parametrize("steps", [3, 6])
def test_interpolate(gens, model, backend, method, steps):
    g = gens[backend]
    strip = g.interpolate((5, 3), (9, 7), steps=steps, method=method)
    assert strip.shape == (steps, 1, 16, 16)
    assert np.array_equal(strip, g.interpolate((5, 3), (9, 7), steps, method=method, vary="both"))
    assert np.array_equal(strip[0], g.sample(classes=3, seeds=[5])[0])
    np.testing.assert_allclose(strip[-1], g.sample(classes=7, seeds=[9])[0], atol=1e-6)
    # every step: noise interpolated by the method, classes mixed linearly (s = t)
    net = Artifact.open(model).build_generator()
    za, zb = (torch.from_numpy(ctrlgan.noise([s], 12)) for s in (5, 9))
    t = torch.linspace(0, 1, steps)
    fn = ref.slerp if method == "slerp" else ref.lerp
    z = fn(za.expand(steps, -1), zb.expand(steps, -1), t)
    with torch.no_grad():
        y = net.embed(torch.full((steps,), 3), torch.full((steps,), 7), t)
        want = net.body(torch.cat([z, y], dim=1)).numpy()
    assert np.abs(strip - want).max() <= 1e-5


@pytest.fixture(scope="module")
def digits():
    return {b: ctrlgan.load("digits", backend=b) for b in CPU_BACKENDS}


def _digits_reference(z, class_a, class_b, s):
    """The bundled model's torch module fed noise rows z and the class mix (1 - s) e(a) + s e(b)."""
    net = Artifact.open("digits").build_generator()
    n = len(z)
    with torch.no_grad():
        y = net.embed(torch.full((n,), class_a), torch.full((n,), class_b), s)
        return net.body(torch.cat([z, y], dim=1)).numpy()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("method", ["lerp", "slerp"])
@pytest.mark.parametrize("steps", [3, 7])
def test_interpolate_noise_only_keeps_the_start_class(digits, backend, method, steps):
    g = digits[backend]
    strip = g.interpolate((5, 3), (9, 7), steps, method=method, vary="noise")
    assert strip.shape == (steps, *g.image_shape)
    assert np.array_equal(strip[0], g.sample(classes=3, seeds=[5])[0])  # t = 0: seed A, class A
    np.testing.assert_allclose(strip[-1], g.sample(classes=3, seeds=[9])[0], atol=1e-5)
    za, zb = (torch.from_numpy(ctrlgan.noise([s], g.z_dim)).expand(steps, -1) for s in (5, 9))
    t = torch.linspace(0, 1, steps)
    z = (ref.slerp if method == "slerp" else ref.lerp)(za, zb, t)
    want = _digits_reference(z, 3, 3, torch.zeros(steps))
    assert np.abs(strip - want).max() <= 1e-5


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("steps", [3, 7])
def test_interpolate_class_only_keeps_the_start_noise(digits, backend, steps):
    g = digits[backend]
    strip = g.interpolate((5, 3), (9, 7), steps, vary="class")
    assert strip.shape == (steps, *g.image_shape)
    assert np.array_equal(strip[0], g.sample(classes=3, seeds=[5])[0])
    np.testing.assert_allclose(strip[-1], g.sample(classes=7, seeds=[5])[0], atol=1e-5)
    # every step is seed A with the soft one-hot mix s = i / (steps - 1); the method is moot
    s = np.linspace(0, 1, steps, dtype=np.float32)
    mixes = [(3, 7, float(v)) for v in s]
    assert np.array_equal(strip, g.sample(classes=mixes, seeds=[5] * steps))
    assert np.array_equal(strip, g.interpolate((5, 3), (9, 7), steps, method="lerp", vary="class"))
    # the middle row is the module fed seed A's noise and the 0.5 / 0.5 mix
    z = torch.from_numpy(ctrlgan.noise([5], g.z_dim))
    middle = _digits_reference(z, 3, 7, torch.tensor([0.5]))
    assert s[steps // 2] == 0.5
    assert np.abs(strip[steps // 2] - middle[0]).max() <= 1e-5
    want = _digits_reference(z.expand(steps, -1), 3, 7, torch.from_numpy(s))
    assert np.abs(strip - want).max() <= 1e-5


def test_traverse_moves_along_the_direction(gens):
    g = gens["onnxruntime"]
    alphas = [-2.0, 0.0, 1.5]
    strip = g.traverse(seed=4, cls=2, feature="up", alphas=alphas)
    assert strip.shape == (3, 1, 16, 16)
    for alpha, image in zip(alphas, strip, strict=True):
        want = g.sample(classes=2, seeds=[4], steer={"up": alpha})[0]
        assert np.array_equal(image, want)
    assert np.array_equal(strip[1], g.sample(classes=2, seeds=[4])[0])


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda g: g.traverse(seed=1, cls=0, feature="slant"), "feature"),
        (lambda g: g.traverse(seed=1, cls=0, feature="up", alphas=[np.nan]), "alphas"),
        (lambda g: g.traverse(seed=1, cls=0, feature="up", alphas=[]), "alphas"),
        (lambda g: g.interpolate((1, 2), (3, 4), steps=1), "steps"),
        (lambda g: g.interpolate((1, 2), (3, 4), method="cubic"), "method"),
        (lambda g: g.interpolate((1, 2), (3, 4), vary="sideways"), "vary"),
        (lambda g: g.interpolate((1, 2), (3, 4), vary=None), "vary"),
        (lambda g: g.interpolate((1, 2), 3), "end"),
        (lambda g: g.interpolate((1, 12), (3, 4)), "start"),
        (lambda g: g.sample(classes=1, seeds=[1], output="bmp"), "output"),
        (lambda g: g.sample(classes=1, seeds="3-1"), "seeds"),
        (lambda g: g.sample(classes=1, seeds="a-b"), "seeds"),
        (lambda g: g.sample(classes=1, seeds=[1], steer={"up": np.inf}), "steer.up"),
        (lambda g: g.sample(classes=1, seeds=[1], steer={"up": 1e308}), "steer.up"),
        (lambda g: g.traverse(seed=1, cls=0, feature="up", alphas=[1e308, 1.0]), "alphas"),
    ],
)
def test_bad_verb_arguments(gens, call, field):
    with pytest.raises(InvalidRequest) as e:
        call(gens["torch"])
    assert e.value.field == field


def test_output_forms_and_seed_strings(gens):
    g = gens["onnxruntime"]
    x = g.sample(classes=3, seeds="0-2,7")
    assert np.array_equal(x, g.sample(classes=3, seeds=[0, 1, 2, 7]))
    u8 = g.sample(classes=3, seeds="0-2,7", output="uint8")
    assert u8.dtype == np.uint8 and u8.shape == (4, 16, 16, 1)
    assert np.array_equal(u8, ctrlgan.to_uint8(x))
    t = g.sample(classes=3, seeds="0-2,7", output="torch")
    assert isinstance(t, torch.Tensor) and torch.equal(t, torch.from_numpy(x))
    pil = g.sample(classes=3, seeds="0-2,7", output="pil")
    assert len(pil) == 4 and pil[0].size == (16, 16)
    assert np.array_equal(np.asarray(pil[3]), u8[3, :, :, 0])


def test_backend_selection(tiny_model, model):
    assert ctrlgan.load(model).backend == ("triton" if torch.cuda.is_available() else "onnxruntime")
    if not torch.cuda.is_available():
        # not exported: auto falls back to torch; asking for onnxruntime names the fix
        assert ctrlgan.load(tiny_model.artifact.path).backend == "torch"
        with pytest.raises(BackendUnavailable, match="ctrlgan export"):
            ctrlgan.load(tiny_model.artifact.path, backend="onnxruntime")
        with pytest.raises(BackendUnavailable, match="CUDA"):
            ctrlgan.load(model, backend="triton")
    with pytest.raises(InvalidRequest, match="max_batch"):
        ctrlgan.load(model, max_batch=0)


@pytest.mark.gpu
def test_triton_backend_matches_onnxruntime(model):
    g = ctrlgan.load(model, backend="triton")
    cpu = ctrlgan.load(model, backend="onnxruntime", device="cpu")
    req = _random_request(np.random.default_rng(0), 37)
    got = g.sample(**req)
    assert np.abs(got - cpu.sample(**req)).max() <= 1e-2  # float16 body
    # within a bucket (33..64 rows), a row does not depend on the others
    part = {"classes": req["classes"][:33], "seeds": req["seeds"][:33],
            "steer": {"up": req["steer"]["up"][:33], "left": req["steer"]["left"]}}  # fmt: skip
    assert np.array_equal(g.sample(**part), got[:33])


def test_per_class_direction_table(tmp_path, tiny_model):
    """A [C, K, Z] table: exported, checked, and the same on both CPU backends."""
    path = tmp_path / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    manifest = Artifact.open(path).manifest
    manifest.directions = ["a", "b", "c"]
    table = torch.randn(10, 3, 12)
    write_artifact(path, manifest, tensors={DIRECTIONS: {"directions": table}})
    export.export(path)
    assert all(r.ok for r in export.check(path, batches=(1, 7), reference_batches=(7,)))
    req = _random_request(np.random.default_rng(), 9)
    req["steer"] = {"a": 1.5, "c": np.linspace(-2, 2, 9).tolist()}
    gens = {b: ctrlgan.load(path, backend=b) for b in CPU_BACKENDS}
    images = {b: g.sample(**req) for b, g in gens.items()}
    assert np.abs(images["torch"] - images["onnxruntime"]).max() <= 1e-5
    # steering depends on the class: the same seed and alpha, other class, other push
    rows = gens["torch"].prepare(**req)
    z = ref.noise(torch.from_numpy(rows.seeds.view(np.int64)), 12)
    alpha = torch.from_numpy(rows.alpha)
    z = z + torch.einsum("bk,bkz->bz", alpha, table[torch.from_numpy(rows.class_a)])
    net = Artifact.open(path).build_generator()
    with torch.no_grad():
        y = net.embed(*(torch.from_numpy(a) for a in (rows.class_a, rows.class_b, rows.s)))
        want = net.body(torch.cat([z, y], dim=1)).numpy()
    assert np.abs(images["onnxruntime"] - want).max() <= 1e-5


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_host_slerp_matches_the_reference(batch):
    """The host backends slerp in numpy (no torch on the onnxruntime path): the same function
    as kernels.reference.slerp, near-parallel, anti-parallel and zero rows included."""
    from ctrlgan.kernels import reference
    from ctrlgan.runtime.backends import slerp

    rng = np.random.default_rng()
    z_a = rng.standard_normal((batch, 37)).astype(np.float32)
    z_b = rng.standard_normal((batch, 37)).astype(np.float32)
    t = rng.random(batch).astype(np.float32)
    if batch > 4:
        z_b[0] = z_a[0] * 1.5 + 1e-5  # near parallel
        z_b[1] = -z_a[1]  # anti-parallel
        z_a[2] = 0.0  # a zero row
        t[3] = 0.0
    want = reference.slerp(*(torch.from_numpy(v) for v in (z_a, z_b, t))).numpy()
    got = slerp(z_a, z_b, t)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
