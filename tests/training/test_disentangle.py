import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from ctrlgan.artifact import GENERATOR_WEIGHTS, Artifact
from ctrlgan.errors import InvalidRequest
from ctrlgan.training import metrics
from ctrlgan.training.data import make_shapes
from ctrlgan.training.disentangle import (
    InfoCodes,
    attach_factor_net,
    attach_q_head,
    codes_to_z,
    factor_codes,
    info_loss,
    regress,
)
from ctrlgan.training.nets import ConditionalGenerator, Discriminator, GeneratorConfig
from ctrlgan.training.train import TrainConfig, train

FAST = dict(
    feature_steps=0,  # shapes: no feature network (tests/training/test_feature_net.py)
    steps=3,
    batch_size=16,
    z_dim=10,
    g_channels=8,
    d_channels=8,
    eval_per_class=0,
    sample_every=3,
    checkpoint_every=3,
)


def test_codes_are_uniform_and_categories_balanced():
    z = torch.randn(20000, 6, generator=torch.Generator().manual_seed(1))
    codes = InfoCodes(3, 4)
    c = codes.continuous(z)
    assert c.shape == (20000, 3) and c.abs().max() < 1
    torch.testing.assert_close(c.mean(0), torch.zeros(3), atol=0.02, rtol=0)
    torch.testing.assert_close(c.var(0), torch.full((3,), 1 / 3), atol=0.02, rtol=0)
    k = codes.categorical(z)
    assert torch.equal(k, torch.floor(4 * 0.5 * (1 + torch.erf(z[:, 3] / math.sqrt(2)))).long())
    assert (torch.bincount(k, minlength=4).float() / 20000 - 0.25).abs().max() < 0.02
    assert codes.n_dims == 4 and codes.n_outputs == 7


@pytest.mark.parametrize("kind", ["concat", "projection"])
def test_info_loss_sends_gradients_to_generator_and_q_head(kind):
    torch.manual_seed(0)
    G = ConditionalGenerator(GeneratorConfig(z_dim=6, n_classes=3, base_channels=8))
    D = Discriminator(3, 16, 1, 8, kind=kind)
    codes = InfoCodes(2, 3)
    q = attach_q_head(D, codes, 16, 1)
    assert "q_head.net.1.weight" in D.state_dict()  # checkpointed and optimised with D
    z, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    h = D.features(G(z, y), y)
    torch.testing.assert_close(D.score(h, y), D(G(z, y), y))
    loss = info_loss(codes, q(h), z)
    assert loss.item() > 0
    loss.backward()
    for name, module in (("G", G), ("Q", q)):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and any(bool(g.abs().sum() > 0) for g in grads), name


def test_training_with_codes_writes_a_loadable_artifact_with_provenance(tmp_path):
    config = TrainConfig(
        out=str(tmp_path / "info"),
        info_codes=3,
        info_categories=2,
        info_lambda=0.5,
        data="shapes",
        n_data=64,
        image_size=16,
        **FAST,
    )
    result = train(config, progress=False)
    a = Artifact.open(result.artifact.path)
    p = a.manifest.provenance
    assert p["config"]["info_codes"] == 3 and p["config"]["info_lambda"] == 0.5
    assert p["disentangle"]["continuous_dims"] == [0, 1, 2]
    assert p["disentangle"]["categorical_dim"] == 3 and p["disentangle"]["lambda"] == 0.5
    g = a.build_generator()
    assert torch.isfinite(g(torch.randn(2, 10), torch.tensor([0, 3]))).all()
    # The codes change training: same seed and data without them give other weights.
    plain = replace(config, out=str(tmp_path / "plain"), info_codes=0, info_categories=0)
    plain = train(plain, progress=False)
    a_bytes = (result.artifact.path / GENERATOR_WEIGHTS).read_bytes()
    assert a_bytes != (plain.artifact.path / GENERATOR_WEIGHTS).read_bytes()
    assert "disentangle" not in plain.artifact.manifest.provenance


def test_resume_with_codes_is_exact(tmp_path):
    base = dict(FAST, info_codes=2, loss="wgan-gp", discriminator="projection")
    whole = train(TrainConfig(out=str(tmp_path / "w"), **base), progress=False)
    part = TrainConfig(out=str(tmp_path / "p"), **{**base, "steps": 1})
    train(part, progress=False)
    resumed = train(replace(part, steps=3, resume=True), progress=False)
    read = lambda r: (r.artifact.path / GENERATOR_WEIGHTS).read_bytes()
    assert read(whole) == read(resumed)


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"info_codes": -1}, "info_codes"),
        ({"info_codes": 11}, "info_codes"),
        ({"info_codes": 10, "info_categories": 3}, "info_codes"),
        ({"info_categories": 1}, "info_categories"),
        ({"info_categories": 2.5}, "info_categories"),
        ({"info_codes": 2, "info_lambda": 0.0}, "info_lambda"),
        ({"info_codes": 2, "info_lambda": float("nan")}, "info_lambda"),
        ({"info_codes": 2, "info_lambda": float("inf")}, "info_lambda"),
        ({"supervised_codes": ["orientation"], "data": "shapes"}, "supervised_codes"),
        ({"supervised_codes": ["scale", "scale"], "data": "shapes"}, "supervised_codes"),
        ({"supervised_codes": "scale", "data": "shapes"}, "supervised_codes"),
        ({"supervised_codes": ["scale"], "info_codes": 1, "data": "shapes"}, "supervised_codes"),
        ({"supervised_codes": ["scale"]}, "supervised_codes"),  # digits: no factors
    ],
)
def test_bad_info_config_names_the_field(tmp_path, changes, field):
    config = TrainConfig(out=str(tmp_path / "bad"), **{**FAST, **changes})
    with pytest.raises(InvalidRequest) as e:
        train(config, progress=False)
    assert e.value.field == field
    assert not (tmp_path / "bad").exists()


def test_supervised_codes_map_factors_into_z():
    data = make_shapes(500, 16, seed=0)
    c = factor_codes(data.factors, data.factor_names, ["pos_y", "scale"])
    assert c.shape == (500, 2) and c.min() >= -1 and c.max() <= 1
    torch.testing.assert_close(c[:, 0], (data.factors[:, 3] - 0.25) / 0.5 * 2 - 1)
    z = codes_to_z(c)
    torch.testing.assert_close(torch.erf(z / math.sqrt(2)), c, atol=1e-5, rtol=0)
    assert torch.isfinite(codes_to_z(torch.tensor([-1.0, 1.0]))).all()


def test_supervised_regressor_sends_gradients_to_the_generator():
    torch.manual_seed(0)
    G = ConditionalGenerator(GeneratorConfig(z_dim=6, n_classes=4, base_channels=8))
    D = Discriminator(4, 16, 1, 8)
    net = attach_factor_net(D, 2, 16, 1)
    assert any(k.startswith("factor_net.") for k in D.state_dict())
    regress(net, torch.randn(8, 1, 16, 16))  # train mode: updates BatchNorm statistics
    loss = torch.nn.functional.mse_loss(
        regress(net, G(torch.randn(4, 6), torch.arange(4)), train=False), torch.zeros(4, 2)
    )
    loss.backward()
    assert net.training
    assert any(bool(p.grad.abs().sum() > 0) for p in G.parameters() if p.grad is not None)


def test_training_with_supervised_codes(tmp_path):
    config = TrainConfig(
        out=str(tmp_path / "sup"),
        data="shapes",
        n_data=64,
        image_size=16,
        supervised_codes=["scale", "pos_y"],
        **FAST,
    )
    p = train(config, progress=False).artifact.manifest.provenance
    assert p["disentangle"]["method"] == "supervised"
    assert p["disentangle"]["factors"] == ["scale", "pos_y"] and p["disentangle"]["dims"] == [0, 1]
    assert p["config"]["supervised_codes"] == ["scale", "pos_y"]


# MIG -------------------------------------------------------------------------------------


def test_mig_is_near_one_when_latents_are_the_factors():
    f = np.random.default_rng(0).uniform(size=(4000, 4))
    latents = np.concatenate(
        [f[:, [2, 0, 3, 1]] * 3 - 1, np.random.default_rng(1).normal(size=(4000, 2))], 1
    )
    r = metrics.mutual_information_gap(latents, f)
    assert r["mig"] > 0.95
    assert r["best_latent"] == [1, 3, 0, 2]


def test_mig_is_near_zero_for_independent_or_duplicated_latents():
    rng = np.random.default_rng(0)
    f = rng.uniform(size=(4000, 4))
    assert metrics.mutual_information_gap(rng.normal(size=(4000, 4)), f)["mig"] < 0.03
    # Every factor carried twice: no gap either.
    assert metrics.mutual_information_gap(np.concatenate([f, f], 1), f)["mig"] < 0.03


def test_mig_rejects_bad_shapes():
    with pytest.raises(ValueError):
        metrics.mutual_information_gap(np.zeros((100, 1)), np.zeros((100, 2)))
    with pytest.raises(ValueError):
        metrics.mutual_information_gap(np.zeros((10, 3)), np.zeros((10, 2)))


def test_factor_reader_recovers_real_shapes_factors():
    train_set = make_shapes(2000, 16, seed=0)
    reader = metrics.ShapeFactorReader(train_set.classes)
    reader.fit(train_set.images, train_set.labels, train_set.factors)
    assert reader.quality["scale"] > 0.98 and reader.quality["pos_x"] > 0.98
    assert reader.quality["pos_y"] > 0.98 and reader.quality["orientation"] > 0.85
    test_set = make_shapes(1000, 16, seed=1)
    read = reader.read(test_set.images, test_set.labels)
    true = reader.true_factors(test_set.labels, test_set.factors)
    assert metrics.mutual_information_gap(true, read)["mig"] > 0.6


def test_shapes_mig_of_a_generator():
    data = make_shapes(400, 16, seed=0)
    G = ConditionalGenerator(GeneratorConfig(z_dim=6, n_classes=4, base_channels=8))
    r = metrics.shapes_mig(
        G, data.images, data.labels, data.factors, data.classes, n=400, with_dci=True
    )
    assert 0 <= r["mig"] <= 1 and len(r["gaps"]) == 4 and r["latent_dims"] == 4
    assert set(r["dci"]) >= {"disentanglement", "completeness", "informativeness"}
    with pytest.raises(ValueError):
        metrics.shapes_mig(G, data.images, data.labels, data.factors, data.classes, latent_dims=7)


def test_dci_of_exact_and_independent_latents():
    rng = np.random.default_rng(0)
    f = rng.uniform(size=(1500, 3))
    exact = metrics.dci(np.concatenate([f[:, [1, 2, 0]], rng.normal(size=(1500, 1))], 1), f)
    assert exact["disentanglement"] > 0.9 and exact["completeness"] > 0.9
    assert exact["informativeness"] > 0.95
    assert np.argmax(exact["importance"], axis=0).tolist() == [2, 0, 1]
    mixed = metrics.dci(np.stack([f.sum(1), f[:, 0] - f[:, 1], f[:, 2] - f[:, 0]], 1), f)
    assert mixed["disentanglement"] < exact["disentanglement"] - 0.3
    independent = metrics.dci(rng.normal(size=(1500, 3)), f)
    assert independent["informativeness"] < 0.05
    with pytest.raises(ValueError):
        metrics.dci(np.zeros((100, 1)), f[:100])


def test_checkpoints_from_before_the_info_options_resume(tmp_path):
    """A checkpoint whose header predates info_* / supervised_codes resumes with the defaults."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ctrlgan.training.train import CHECKPOINT

    config = TrainConfig(out=str(tmp_path / "old"), **{**FAST, "steps": 1})
    train(config, progress=False)
    path = tmp_path / "old" / CHECKPOINT
    with safe_open(path, framework="pt") as f:
        header = json.loads(f.metadata()["ctrlgan"])
    for name in ("info_codes", "info_categories", "info_lambda", "supervised_codes"):
        del header["config"][name]
    save_file(load_file(path), path, metadata={"ctrlgan": json.dumps(header)})
    assert train(replace(config, steps=2, resume=True), progress=False).steps == 2


def test_mig_keeps_discrete_values_whole():
    """A 4-valued factor that a latent determines exactly: MIG near 1 (ties not split)."""
    from ctrlgan.training.metrics import mutual_information_gap

    rng = np.random.default_rng(0)
    factor = rng.integers(0, 4, 4000).astype(np.float64)
    latents = np.stack([factor + 0.01 * rng.standard_normal(4000), rng.standard_normal(4000)], 1)
    result = mutual_information_gap(latents, factor[:, None])
    assert result["mig"] > 0.9


def test_both_players_get_the_regulariser(tmp_path, monkeypatch):
    """reg_d enters the D/Q step and the G step of every iteration (L = L_gan + lambda reg_d),
    and the supervised fakes carry the real batch's factor codes in their first z dims."""
    import ctrlgan.training.train as train_module

    calls = {"info": [], "regress": [], "g_inputs": []}
    info_loss, regress = train_module.info_loss, train_module.regress

    def counting_info_loss(codes, q_out, z):
        calls["info"].append(q_out.requires_grad)
        return info_loss(codes, q_out, z)

    def counting_regress(net, images, **kw):
        calls["regress"].append(images.requires_grad)
        return regress(net, images, **kw)

    monkeypatch.setattr(train_module, "info_loss", counting_info_loss)
    monkeypatch.setattr(train_module, "regress", counting_regress)
    config = TrainConfig(out=str(tmp_path / "i"), info_codes=2, **{**FAST, "steps": 2})
    train(config, progress=False)
    assert len(calls["info"]) == 2 * (config.d_steps + 1)  # D steps and the G step, per step

    forward = ConditionalGenerator.forward

    def recording_forward(self, z, labels):
        if self.training:
            calls["g_inputs"].append(z.detach().clone())
        return forward(self, z, labels)

    monkeypatch.setattr(ConditionalGenerator, "forward", recording_forward)
    config = TrainConfig(
        out=str(tmp_path / "s"), data="shapes", n_data=64, image_size=16,
        supervised_codes=["scale"], **{**FAST, "steps": 1},
    )  # fmt: skip
    train(config, progress=False)
    # the regressor reads real images (D step) and fakes with gradients (G step)
    assert calls["regress"] == [False] * config.d_steps + [True]
    # every training-time generator input carries a real image's factor code in z dim 0
    from ctrlgan.training.data import load_dataset

    data = load_dataset("shapes", size=16, n=64, seed=config.seed)
    allowed = codes_to_z(factor_codes(data.factors, data.factor_names, ["scale"]))[:, 0]
    assert calls["g_inputs"]
    for z in calls["g_inputs"]:
        distance = (z[:, 0, None] - allowed[None, :]).abs().min(dim=1).values
        assert distance.max() < 1e-6
