"""Explicit noise: ``Generator.sample(classes, z=...)`` on every backend, the batcher and
``ctrlgan sample --z``. Given ``ctrlgan.noise(seeds)`` it draws exactly the images of the seeds;
a row's image does not depend on the other rows of its call; bad z is refused before any work
with InvalidRequest naming the field."""

import threading

import numpy as np
import pytest
import torch

import ctrlgan
from ctrlgan.errors import InvalidRequest
from ctrlgan.runtime.request import Rows
from tests.test_cli import assert_one_line_error, run

CPU_BACKENDS = ["torch", "onnxruntime"]


@pytest.fixture(scope="module")
def gens():
    return {b: ctrlgan.load("digits", backend=b) for b in CPU_BACKENDS}


def _request(g, rng, n):
    """Fresh random classes (plain and mixes), seeds and per-row steering for n images."""
    classes = [
        (int(a), int(b), float(s)) if s > 0.5 else int(a)
        for a, b, s in zip(
            rng.integers(0, 10, n), rng.integers(0, 10, n), rng.random(n), strict=True
        )
    ]
    seeds = [int(s) for s in rng.integers(0, 2**64 - 1, n, dtype=np.uint64)]
    steer = {g.features[0]: rng.normal(size=n).tolist(), g.features[1]: float(rng.normal())}
    return classes, seeds, steer


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_noise_of_seeds_draws_the_images_of_the_seeds(gens, backend):
    """Bit for bit on the host backends: both paths feed the same float32 rows (the C Philox
    loop) through the same graph."""
    g = gens[backend]
    classes, seeds, steer = _request(g, np.random.default_rng(), 9)
    z = ctrlgan.noise(seeds, g.z_dim)
    want = g.sample(classes, seeds=seeds, steer=steer)
    assert np.array_equal(g.sample(classes, z=z, steer=steer), want)
    # a single class (or mix) is repeated over the rows, as with n seeds
    one = g.sample((2, 7, 0.25), z=z[:4])
    assert np.array_equal(one, g.sample((2, 7, 0.25), seeds=seeds[:4]))
    u8 = g.sample(5, z=z[:3], output="uint8")
    assert np.array_equal(u8, g.sample(5, seeds=seeds[:3], output="uint8"))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rows_do_not_depend_on_the_rest_of_the_call(gens, backend):
    g = gens[backend]
    rng = np.random.default_rng()
    classes, _, steer = _request(g, rng, 40)
    z = rng.standard_normal((40, g.z_dim), dtype=np.float32)  # fresh, never zeros
    full = g.sample(classes, z=z, steer=steer)
    assert np.isfinite(full).all() and full.std() > 0
    for size in (1, 7, 13):
        start = int(rng.integers(0, 40 - size + 1))
        part = slice(start, start + size)
        got = g.sample(
            classes[part], z=z[part],
            steer={g.features[0]: steer[g.features[0]][part], g.features[1]: steer[g.features[1]]},
        )  # fmt: skip
        assert np.array_equal(got, full[part]), (backend, start, size)


def test_backends_agree_on_given_noise(gens):
    rng = np.random.default_rng()
    classes, _, steer = _request(gens["torch"], rng, 13)
    z = rng.standard_normal((13, 64), dtype=np.float32)
    a, b = (gens[name].sample(classes, z=z, steer=steer) for name in CPU_BACKENDS)
    assert np.abs(a - b).max() <= 1e-5


def test_edited_noise_changes_only_its_row(gens):
    g = gens["onnxruntime"]
    z = ctrlgan.noise([11, 12, 13], g.z_dim)
    before = g.sample(4, z=z)
    z[1] += 0.5 * np.random.default_rng().standard_normal(g.z_dim).astype(np.float32)
    after = g.sample(4, z=z)
    assert np.array_equal(after[[0, 2]], before[[0, 2]])
    assert np.abs(after[1] - before[1]).max() > 1e-3


def test_accepted_forms_are_cast_to_float32(gens):
    """float16 / float64 arrays, torch tensors (any layout, with grad) and lists of rows give
    the images of their float32 values."""
    g = gens["torch"]
    rng = np.random.default_rng()
    z64 = rng.standard_normal((5, g.z_dim))
    want = g.sample(3, z=z64.astype(np.float32))
    assert np.array_equal(g.sample(3, z=z64), want)
    assert np.array_equal(g.sample(3, z=z64.tolist()), want)
    assert np.array_equal(g.sample(3, z=np.asfortranarray(z64)), want)
    t = torch.tensor(z64.T, requires_grad=True).t()  # float64, not contiguous, needs grad
    assert np.array_equal(g.sample(3, z=t), want)
    z16 = z64.astype(np.float16)
    assert np.array_equal(g.sample(3, z=z16), g.sample(3, z=z16.astype(np.float32)))
    bf = torch.from_numpy(z64).to(torch.bfloat16)
    assert np.array_equal(g.sample(3, z=bf), g.sample(3, z=bf.float().numpy()))
    x = g.sample([1, 2], z=z64[:2], output="torch")
    assert isinstance(x, torch.Tensor) and x.shape == (2, 1, 16, 16)
    assert len(g.sample(1, z=z64[:2], output="pil")) == 2


def _z(rows=3, cols=64, fill=None):
    z = np.random.default_rng().standard_normal((rows, cols)).astype(np.float32)
    if fill is not None:
        z[rows // 2, cols // 3] = fill
    return z


BAD = [
    ({"z": _z()[0]}, "z", ["shape (64,)", "(1, 64)"]),
    ({"z": _z()[None]}, "z", ["shape (1, 3, 64)"]),
    ({"z": _z(cols=63)}, "z", ["z_dim 64", "(3, 63)"]),
    ({"z": _z(rows=0)}, "z", ["B >= 1"]),
    ({"z": _z(fill=np.nan)}, "z", ["finite", "z[1, 21]", "nan"]),
    ({"z": _z(fill=np.inf)}, "z", ["finite", "inf"]),
    ({"z": _z(fill=-np.inf)}, "z", ["finite", "-inf"]),
    ({"z": _z().astype(np.float64) * 1e39}, "z", ["finite", "float32"]),  # inf once cast
    ({"z": _z(fill=1e4)}, "z", ["[-1000, 1000]"]),
    ({"z": np.ones((3, 64), np.int64)}, "z", ["floating-point", "int64"]),
    ({"z": np.ones((3, 64), bool)}, "z", ["floating-point", "bool"]),
    ({"z": np.ones((3, 64), np.complex64)}, "z", ["complex64"]),
    ({"z": np.ones((3, 64), object)}, "z", ["object"]),
    ({"z": torch.ones(3, 64, dtype=torch.int32)}, "z", ["int32"]),
    ({"z": "0-3"}, "z", ["float32 numpy array", "'0-3'"]),
    ({"z": {"a": 1}}, "z", ["a dict"]),
    ({"z": [[0.5] * 64, [0.5] * 63]}, "z", ["row 1", "63 values"]),
    ({"z": [[0.5] * 63 + ["x"]]}, "z", ["row 0", "'x'"]),
    ({"z": [[0.5] * 63 + [10**400]]}, "z", ["row 0", "1000"]),
    ({"z": [0.5] * 64}, "z", ["shape (64,)"]),
    ({"z": []}, "z", ["shape (0,)"]),
    ({"z": _z(), "seeds": [1, 2, 3]}, "z", ["seeds"]),
    ({"z": _z(), "n": 3}, "z", ["n"]),
    ({"z": _z(), "seed": 0}, "z", ["seed"]),
    ({"z": _z(), "truncation": 1.5}, "truncation", ["redrawn", "ctrlgan.noise"]),
    ({"z": _z(), "classes": [1, 2]}, "z", ["3 noise rows for 2 classes"]),
    ({"z": _z(), "classes": [1, 2, 3, 4]}, "z", ["3 noise rows for 4 classes"]),
    ({"z": _z(), "classes": "eleven"}, "classes", ["eleven"]),
    ({"z": _z(), "steer": {"thickness": [1.0, 2.0]}}, "steer.thickness", ["3 numbers"]),
    ({"z": _z(), "steer": {"weight": 1.0}}, "steer", ["weight"]),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize(("kwargs", "field", "words"), BAD)
def test_bad_noise_is_refused_before_any_work(gens, backend, kwargs, field, words, monkeypatch):
    g = gens[backend]
    monkeypatch.setattr(g, "run", lambda rows: pytest.fail("a bad request reached the backend"))
    kwargs = {"classes": 3} | kwargs
    with pytest.raises(InvalidRequest) as e:
        g.sample(**kwargs)
    assert e.value.field == field
    for word in words:
        assert word in e.value.message, e.value.message


def test_more_rows_than_the_batch_limit():
    g = ctrlgan.load("digits", backend="onnxruntime", max_batch=4)
    assert g.sample(3, z=_z(rows=4)).shape == (4, 1, 16, 16)
    for z in (_z(rows=5), _z(rows=5).tolist(), torch.from_numpy(_z(rows=5))):
        with pytest.raises(InvalidRequest, match="5 noise rows .* batch limit 4") as e:
            g.sample(3, z=z)
        assert e.value.field == "z"


def test_rows_of_given_noise_slice_and_join_by_their_own_key(gens):
    g = gens["torch"]
    a = g.prepare([1, 2, 3], z=_z())
    b = g.prepare([4, 5], z=_z(rows=2))
    seeded = g.prepare([1, 2], seeds=[7, 8])
    assert a.seeds is None and a.key == b.key != seeded.key
    joined = Rows.concat([a, b])
    assert len(joined) == 5 and np.array_equal(joined.z, np.concatenate([a.z, b.z]))
    assert np.array_equal(joined.slice(3, 5).z, b.z)
    with pytest.raises(ValueError, match="noise source"):
        Rows.concat([a, seeded])
    assert np.array_equal(g.run(joined), np.concatenate([g.run(a), g.run(b)]))


def test_batcher_takes_given_noise_and_copies_it(gens, monkeypatch):
    """Requests of z and of seeds queued together are batched by kind; each gets its own
    images, and a caller changing its array after submit does not change them."""
    g = gens["onnxruntime"]
    rng = np.random.default_rng()
    zs = [rng.standard_normal((k, g.z_dim), dtype=np.float32) for k in (1, 7, 13)]
    want = [g.sample(c, z=z) for c, z in zip((1, 5, 9), zs, strict=True)]
    calls, run = [], g.run
    monkeypatch.setattr(
        g, "run", lambda rows: calls.append((rows.z is not None, len(rows))) or run(rows)
    )
    with ctrlgan.BatchingGenerator(g, max_batch_size=64, max_delay_ms=100) as b:
        futures = [b.submit(c, z=z.copy()) for c, z in zip((1, 5, 9), zs, strict=True)]
        seeded = b.submit([2, 3], seeds=[4, 5])
        kept = zs[0].copy()
        mutable = b.submit(1, z=kept)
        kept[:] = 0.0  # after submit: must not reach the images
        for fut, w in zip(futures, want, strict=True):
            assert np.array_equal(fut.result(timeout=30), w)
        assert np.array_equal(mutable.result(timeout=30), want[0])
        assert np.array_equal(seeded.result(timeout=30), g.sample([2, 3], seeds=[4, 5]))
        assert np.array_equal(b.sample(3, z=zs[1]), g.sample(3, z=zs[1]))
        with pytest.raises(InvalidRequest) as e:
            b.submit(3, z=zs[1], seeds=[1] * 7)
        assert e.value.field == "z"
    # the four queued z requests shared one call, the seeds another
    assert calls[:2] in ([(True, 22), (False, 2)], [(False, 2), (True, 22)])


def test_batcher_refuses_more_noise_rows_than_its_queue(gens):
    with ctrlgan.BatchingGenerator(gens["onnxruntime"], max_queue=4) as b:
        with pytest.raises(InvalidRequest, match="queue limit") as e:
            b.submit(3, z=_z(rows=5))
        assert e.value.field == "z"


# The triton backend -----------------------------------------------------------------------


class _EagerBody:
    """A CPU stand-in for CudaGraphBody (same two methods): a float32 latent buffer and the
    generator's body run eagerly on it."""

    def __init__(self, net):
        self.net, self.buffer = net, None

    def latent_buffer(self, n):
        self.buffer = torch.empty(n, self.net.config.latent_dim)
        return self.buffer

    def run(self, n):
        with torch.inference_mode():
            return self.net.body(self.buffer[:n])


def _triton_on_cpu(g):
    """TritonBackend's own __call__, with its fused prologue kernel in Triton's interpreter
    (conftest sets TRITON_INTERPRET=1 without CUDA) and the body eager on the CPU."""
    from ctrlgan.runtime import torch_backends

    be = object.__new__(torch_backends.TritonBackend)
    be.artifact, be.device = g.artifact, torch.device("cpu")
    be.net = g.artifact.build_generator()
    be.z_dim = g.z_dim
    be.table = be.net.class_table().detach().float().contiguous()
    be.onehot = g.artifact.manifest.embedding == "onehot"
    be.directions = torch_backends._directions(g.artifact, be.device)
    be.body, be.chunk, be._lock = _EagerBody(be.net), 64, threading.Lock()
    be.stream = None  # torch.cuda.stream(None) is a no-op: the CPU stand-in has no stream
    return be


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs without CUDA only")
def test_triton_backend_reads_given_noise_rows(gens):
    """The kernel's z_a path: ctrlgan.noise(seeds) gives the seeds' images within float32
    rounding (the kernel's tl.randn and the host's C loop agree to ~1e-6, not bit for bit)."""
    g = gens["torch"]
    be = _triton_on_cpu(g)
    classes, seeds, steer = _request(g, np.random.default_rng(), 7)
    by_seed = g.prepare(classes, seeds=seeds, steer=steer)
    by_z = g.prepare(classes, z=ctrlgan.noise(seeds, g.z_dim), steer=steer)
    want = be(by_seed)
    got = be(by_z)
    assert np.abs(got - want).max() <= 1e-5
    assert np.abs(got - g.run(by_z)).max() <= 1e-5  # and the torch backend's images
    # the kernel's latent rows are the same alone and in the call (the stand-in's eager body
    # is not batch-invariant on the CPU; the real one is a CUDA graph per bucket)
    full = be.body.buffer.clone()
    for start, size in ((0, 1), (2, 3)):
        be(by_z.slice(start, start + size))
        assert torch.equal(be.body.buffer, full[start : start + size])


@pytest.mark.gpu
def test_triton_backend_given_noise_matches_seeds():
    g = ctrlgan.load("digits", backend="triton")
    classes, seeds, steer = _request(g, np.random.default_rng(0), 37)
    z = ctrlgan.noise(seeds, g.z_dim)
    got = g.sample(classes, z=z, steer=steer)
    assert np.abs(got - g.sample(classes, seeds=seeds, steer=steer)).max() <= 1e-2  # fp16 body
    cpu = ctrlgan.load("digits", backend="onnxruntime", device="cpu")
    assert np.abs(got - cpu.sample(classes, z=z, steer=steer)).max() <= 1e-2
    part = {g.features[0]: steer[g.features[0]][:33], g.features[1]: steer[g.features[1]]}
    assert np.array_equal(g.sample(classes[:33], z=z[:33], steer=part), got[:33])  # one bucket


# ctrlgan sample --z ----------------------------------------------------------------------


def test_cli_renders_saved_noise_as_its_seeds(tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "z.npy"
    np.save(path, ctrlgan.noise(range(5, 9), 64))
    by_z, by_seed = tmp_path / "z.png", tmp_path / "seeds.png"
    code, out, _ = run(capsys, "sample", "--z", str(path), "--class", "3,7", "-o", str(by_z))
    assert code == 0 and "4 noise row(s)" in out
    argv = ["sample", "--n", "4", "--seed", "5", "--class", "3,7", "-o", str(by_seed)]
    assert run(capsys, *argv)[0] == 0
    a, b = np.asarray(Image.open(by_z)), np.asarray(Image.open(by_seed))
    assert a.shape == b.shape and np.array_equal(a, b)


def _save(tmp_path, name, value=None, raw=None):
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    elif name.endswith(".npz"):
        np.savez(path, z=value)
    else:
        np.save(path, value, allow_pickle=True)
    return str(path)


CLI_BAD = [
    (lambda t: str(t / "missing.npy"), [], ["no such file"]),
    (lambda t: str(t), [], ["directory"]),
    (lambda t: _save(t, "text.npy", raw=b"0.1 0.2\n"), [], ["not a .npy file"]),
    (lambda t: _save(t, "pickle.npy", np.array([{"a": 1}], dtype=object)), [], ["Python objects"]),
    (lambda t: _save(t, "both.npz", _z()), [], [".npz archive"]),
    (lambda t: _save(t, "cut.npy", raw=b"\x93NUMPY\x01\x00v\x00{'descr'"), [], ["broken"]),
    (lambda t: _save(t, "int.npy", np.ones((3, 64), np.int32)), [], ["int32"]),
    (lambda t: _save(t, "wide.npy", _z(cols=65)), [], ["z_dim 64"]),
    (lambda t: _save(t, "flat.npy", _z()[0]), [], ["shape (64,)"]),
    (lambda t: _save(t, "empty.npy", _z(rows=0)), [], ["B >= 1"]),
    (lambda t: _save(t, "nan.npy", _z(fill=np.nan)), [], ["finite", "nan.npy"]),
    (lambda t: _save(t, "inf.npy", _z(fill=np.inf)), [], ["finite"]),
    (lambda t: _save(t, "ok.npy", _z()), ["--n", "3"], ["--n"]),
    (lambda t: _save(t, "ok.npy", _z()), ["--seed", "0"], ["--seed"]),
    (lambda t: _save(t, "ok.npy", _z()), ["--truncation", "1"], ["--truncation"]),
    (lambda t: _save(t, "ok.npy", _z()), ["--steer", "weight=1"], ["steer", "weight"]),
]


@pytest.mark.parametrize(("make", "extra", "words"), CLI_BAD)
def test_cli_bad_noise_file_is_one_line(tmp_path, capsys, make, extra, words):
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "sample", "--z", make(tmp_path), *extra, "-o", str(out))
    assert_one_line_error(code, err, "error: z" if words[0] != "steer" else "steer", *words)
    assert not out.exists()
