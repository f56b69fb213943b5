"""The prologue fused with the first linear layer, against the reference and the real generator."""

import pytest
import torch

from ctrlgan.kernels import first_layer as fl
from ctrlgan.kernels import latent
from ctrlgan.kernels import reference as ref
from ctrlgan.network import ConditionalGenerator, GeneratorConfig
from tests.kernels.inputs import device_params, make_inputs, row_relative_error, to_cpu

pytestmark = pytest.mark.skipif(
    not latent.INTERPRET and not torch.cuda.is_available(),
    reason="needs TRITON_INTERPRET=1 (set by tests/conftest.py) or CUDA",
)
DEVICES = device_params()

CASES = [
    # B,  Z,   K, C,    H,   embedding, method,  trunc, per_class, bias
    (1, 8, 0, 10, 16, "onehot", None, None, False, True),
    (1, 100, 5, 10, 490, "learned", "slerp", 1.0, True, True),
    (3, 64, 1, 1000, 50, "soft", "lerp", None, False, False),
    (64, 128, 0, 10, 256, "onehot", "slerp", 0.7, False, True),
    (64, 100, 5, 37, 200, "soft", None, 1.5, True, True),
    (257, 8, 1, 3, 33, "learned", "lerp", None, False, False),
    (257, 64, 5, 1000, 130, "soft", "slerp", None, True, True),
]


def _weights(Z, C, H, embedding, bias, E=7, device="cpu"):
    weight = torch.randn(H, Z + (E if embedding == "learned" else C)) / Z**0.5
    table = torch.randn(C, E) if embedding == "learned" else None
    wz_t, columns = fl.pack_weights(weight, Z, table)
    b = torch.randn(H) if bias else None
    to = lambda x: None if x is None else x.to(device)
    return weight, table, to(wz_t), to(columns), to(b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B, Z, K, C, H, embedding, method, truncation, per_class, bias", CASES)
def test_first_layer_matches_reference(
    B, Z, K, C, H, embedding, method, truncation, per_class, bias, device
):
    kw = make_inputs(B, Z, K, C, embedding, method, truncation, per_class, device=device)
    kw.pop("n_classes", None)
    table = kw.pop("table", None)
    weight, table, wz_t, columns, b = _weights(Z, C, H, embedding, bias, device=device)
    out = torch.full((B, H), float("nan"), device=device)  # poisoned: all must be written
    got = fl.first_layer(wz_t=wz_t, columns=columns, bias=b, out=out, **kw)
    assert got is out and torch.isfinite(got).all()
    got, kw, columns, b = got.cpu(), to_cpu(kw), columns.cpu(), None if b is None else b.cpu()
    want = ref.first_layer(w_z=weight[:, :Z], columns=columns, bias=b, **kw)
    assert row_relative_error(got, want) <= 1e-5
    # ... and the unfused definition: the prologue's concat through the whole weight
    x = ref.latent_prologue(**kw, **({"table": table} if table is not None else {"n_classes": C}))
    unfused = x @ weight.t() + (0 if b is None else b)
    assert row_relative_error(got, unfused) <= 1e-5


@pytest.mark.parametrize("embedding", ["onehot", "learned"])
def test_first_layer_matches_the_generator(embedding):
    """The fused result equals the real generator's fc(concat(z, embed(a, b, s)))."""
    torch.manual_seed(0)
    config = GeneratorConfig(
        z_dim=20,
        n_classes=10,
        image_size=28,
        base_channels=5,  # H = 10 * 7 * 7 = 490, not a power of two
        embedding=embedding,
        embed_dim=6 if embedding == "learned" else 0,
    )
    g = ConditionalGenerator(config).eval()
    table = g.class_table().detach() if embedding == "learned" else None
    wz_t, columns = fl.pack_weights(g.fc.weight, config.z_dim, table)
    kw = make_inputs(33, 20, 2, 10, "soft", "slerp", 1.5)
    kw.pop("n_classes")
    h = fl.first_layer(wz_t=wz_t, columns=columns, bias=g.fc.bias.detach(), **kw)
    with torch.no_grad():
        z = ref.prologue_z(**{k: v for k, v in kw.items() if k not in ("class_b", "s")})
        want = g.fc(torch.cat([z, g.embed(kw["class_a"], kw["class_b"], kw["s"])], dim=1))
    assert h.shape == (33, 490)
    assert row_relative_error(h, want) <= 1e-5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("row", [0, 41, 69])
def test_rows_are_batch_invariant(row, device):
    """A row's result does not depend on the other rows. Within rounding only: the interpreter's
    tl.dot is a numpy matmul whose BLAS kernel rounds a row by its position in the tile (the
    prologue before it is bit-invariant, see test_latent)."""
    kw = make_inputs(70, 24, 3, 10, "soft", "lerp", 1.0, True, device=device)
    kw.pop("n_classes")
    _, _, wz_t, columns, b = _weights(24, 10, 40, "soft", True, device=device)
    full = fl.first_layer(wz_t=wz_t, columns=columns, bias=b, **kw)
    one = {k: v[[row]] if isinstance(v, torch.Tensor) and v.shape[:1] == (70,) else v
           for k, v in kw.items()}  # fmt: skip
    single = fl.first_layer(wz_t=wz_t, columns=columns, bias=b, **one)
    assert row_relative_error(single.cpu(), full[[row]].cpu()) <= 1e-6


def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    monkeypatch.setattr(fl, "use_triton", lambda device: False)
    kw = make_inputs(5, 12, 1, 4, "soft")
    kw.pop("n_classes")
    _, _, wz_t, columns, b = _weights(12, 4, 24, "soft", True)
    out = torch.full((5, 24), float("nan"))
    got = fl.first_layer(wz_t=wz_t, columns=columns, bias=b, out=out, **kw)
    assert got is out
    assert torch.equal(got, ref.first_layer(w_z=wz_t.t(), columns=columns, bias=b, **kw))


def test_pack_weights_shapes_and_table_check():
    weight = torch.randn(30, 8 + 5)
    wz_t, columns = fl.pack_weights(weight, 8)
    assert wz_t.shape == (8, 30) and columns.shape == (5, 30)
    assert wz_t.is_contiguous() and columns.is_contiguous()
    torch.testing.assert_close(columns, weight[:, 8:].t())
    with pytest.raises(ValueError, match="table"):
        fl.pack_weights(weight, 8, torch.randn(4, 3))


def _valid():
    kw = make_inputs(4, 8, 1, 5, "soft")
    kw.pop("n_classes")
    _, _, wz_t, columns, b = _weights(8, 5, 20, "soft", True)
    return {"wz_t": wz_t, "columns": columns, "bias": b, **kw}


@pytest.mark.parametrize(
    "change, error, words",
    [
        (lambda k: k.update(wz_t=k["wz_t"].double()), TypeError, "wz_t"),
        (lambda k: k.update(wz_t=torch.randn(9, 20)), ValueError, "wz_t"),
        (lambda k: k.update(wz_t=torch.randn(20, 8).t()), ValueError, "contiguous"),
        (lambda k: k.update(columns=torch.randn(5, 21)), ValueError, "columns"),
        (lambda k: k.update(columns=torch.randn(5)), ValueError, "columns"),
        (lambda k: k.update(bias=torch.randn(19)), ValueError, "bias"),
        (lambda k: k.update(out=torch.empty(4, 19)), ValueError, "out"),
        (lambda k: k.update(out=torch.empty(3, 20)), ValueError, "out"),
        (lambda k: k.update(out=torch.empty(4, 20, dtype=torch.float16)), TypeError, "out"),
        (lambda k: k.update(class_a=k["class_a"] + 0.5), TypeError, "class_a"),
    ],
)
def test_launcher_rejects_bad_arguments(change, error, words):
    kw = _valid()
    change(kw)
    with pytest.raises(error, match=words):
        fl.first_layer(**kw)
