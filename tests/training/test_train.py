import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ctrlgan.artifact import GENERATOR_WEIGHTS, Artifact
from ctrlgan.errors import InvalidRequest
from ctrlgan.training import losses
from ctrlgan.training.train import CHECKPOINT, TrainConfig, train

FAST = dict(
    feature_steps=0,  # shapes: no feature network (tests/training/test_feature_net.py)
    steps=6,
    batch_size=16,
    z_dim=10,
    g_channels=8,
    d_channels=8,
    eval_per_class=0,
    sample_every=3,
    checkpoint_every=2,
)


def test_short_run_writes_a_loadable_artifact_and_samples(tiny_model):
    run = Path(tiny_model.artifact.path).parent
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step_000003.png",
        "step_000006.png",
    ]
    from PIL import Image

    grid = Image.open(run / "samples" / "step_000006.png")
    assert grid.height > grid.width  # 10 class rows x 8 seed columns
    a = Artifact.open(tiny_model.artifact.path)
    assert a.manifest.provenance["steps"] == 6
    assert set(tiny_model.metrics) >= {"conditional_accuracy", "diversity_ratio_mean"}


def test_resume_equals_an_uninterrupted_run(tmp_path):
    whole = train(TrainConfig(out=str(tmp_path / "whole"), **FAST), progress=False)
    part = TrainConfig(out=str(tmp_path / "part"), **{**FAST, "steps": 3})
    train(part, progress=False)
    resumed = train(replace(part, steps=6, resume=True), progress=False)
    a = (whole.artifact.path / GENERATOR_WEIGHTS).read_bytes()
    b = (resumed.artifact.path / GENERATOR_WEIGHTS).read_bytes()
    assert a == b  # bit-identical weights
    ca = load_file(tmp_path / "whole" / CHECKPOINT)
    cb = load_file(tmp_path / "part" / CHECKPOINT)
    assert ca.keys() == cb.keys()
    for k in ca:  # discriminator and both optimisers too
        assert torch.equal(ca[k], cb[k]), k


def test_runs_are_reproducible_and_seeds_matter(tmp_path):
    a = train(TrainConfig(out=str(tmp_path / "a"), **{**FAST, "steps": 2}), progress=False)
    b = train(TrainConfig(out=str(tmp_path / "b"), **{**FAST, "steps": 2}), progress=False)
    c = train(
        TrainConfig(out=str(tmp_path / "c"), **{**FAST, "steps": 2, "seed": 1}), progress=False
    )
    read = lambda r: (r.artifact.path / GENERATOR_WEIGHTS).read_bytes()
    assert read(a) == read(b) != read(c)


def test_resume_guards(tmp_path):
    config = TrainConfig(out=str(tmp_path / "r"), **{**FAST, "steps": 2})
    train(config, progress=False)
    with pytest.raises(InvalidRequest) as e:
        train(config, progress=False)  # would overwrite an earlier run
    assert e.value.field == "out"
    with pytest.raises(InvalidRequest) as e:
        train(replace(config, resume=True, z_dim=11, steps=4), progress=False)
    assert e.value.field == "z_dim"
    with pytest.raises(InvalidRequest) as e:
        train(replace(config, out=str(tmp_path / "none"), resume=True), progress=False)
    assert e.value.field == "resume"


def test_wgan_projection_learned_embedding(tmp_path):
    config = TrainConfig(
        out=str(tmp_path / "w"),
        loss="wgan-gp",
        discriminator="projection",
        embedding="learned",
        embed_dim=5,
        d_steps=2,
        **{**FAST, "steps": 3},
    )
    result = train(config, progress=False)
    m = result.artifact.manifest
    assert m.embedding == "learned" and m.generator["embed_dim"] == 5
    g = result.artifact.build_generator()
    assert torch.isfinite(g(torch.randn(2, 10), torch.tensor([0, 9]))).all()


def test_correlated_shapes_training_at_32px(tmp_path):
    config = TrainConfig(
        out=str(tmp_path / "s"),
        data="shapes",
        n_data=40,
        correlate=[["scale", "pos_y", 0.8]],
        **{**FAST, "steps": 2},
    )
    m = train(config, progress=False).artifact.manifest
    assert m.classes == ["square", "ellipse", "heart", "triangle"]
    assert m.image_shape == [1, 32, 32]
    assert m.provenance["config"]["correlate"] == [["scale", "pos_y", 0.8]]


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"steps": 0}, "steps"),
        ({"loss": "hinge"}, "loss"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"beta1": 1.0}, "beta1"),
        ({"image_size": 20}, "image_size"),
        ({"embedding": "bag"}, "embedding"),
        ({"discriminator": "x"}, "discriminator"),
        ({"eval_per_class": -1}, "eval_per_class"),
        ({"data": "/no/such/data"}, "data"),
        ({"arch": "dcgan"}, "arch"),
        ({"arch": "course"}, "image_size"),  # digits are 16x16 unless resized
        ({"arch": "course", "image_size": 32}, "image_size"),
        ({"arch": "course", "loss": "wgan-gp"}, "loss"),
        ({"arch": "course", "discriminator": "projection"}, "discriminator"),
        ({"arch": "course", "embedding": "learned"}, "embedding"),
        ({"arch": "course", "info_codes": 2}, "arch"),
    ],
)
def test_bad_config_names_the_field(tmp_path, changes, field):
    config = TrainConfig(out=str(tmp_path / "bad"), **{**FAST, **changes})
    with pytest.raises(InvalidRequest) as e:
        train(config, progress=False)
    assert e.value.field == field
    assert not (tmp_path / "bad" / "model").exists()


def test_gradient_penalty_of_a_linear_critic():
    w = torch.randn(1, 2, 3, 3)
    critic = lambda x, y: (x * w).sum(dim=(1, 2, 3))
    real, fake = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    gp = losses.gradient_penalty(critic, real, fake, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(gp, (w.norm() - 1) ** 2)


def test_loss_values_match_their_definitions():
    real, fake = torch.randn(9), torch.randn(9)
    softplus = torch.nn.functional.softplus
    # BCE: D wants real -> 1, fake -> 0; G wants fake -> 1 (the source's non-saturating loss)
    torch.testing.assert_close(
        losses.bce_discriminator(real, fake), (softplus(-real).mean() + softplus(fake).mean()) / 2
    )
    torch.testing.assert_close(losses.bce_generator(fake), softplus(-fake).mean())
    torch.testing.assert_close(losses.wasserstein_critic(real, fake), fake.mean() - real.mean())
    torch.testing.assert_close(losses.wasserstein_generator(fake), -fake.mean())


def test_optimizer_is_the_sources_adam(tmp_path, monkeypatch):
    """Adam with lr 2e-4 and betas (0.5, 0.999) for both networks, unless configured."""
    made = []
    adam = torch.optim.Adam

    def recording_adam(params, **kw):
        made.append(kw)
        return adam(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", recording_adam)
    train(TrainConfig(out=str(tmp_path / "a"), **{**FAST, "steps": 1}), progress=False)
    assert made == [{"lr": 2e-4, "betas": (0.5, 0.999)}] * 2


def test_gradient_penalty_enters_the_critic_loss(tmp_path):
    """W-loss runs with and without the penalty train different generators."""
    weights = []
    for gp_weight in (10.0, 1e-9):
        config = TrainConfig(
            out=str(tmp_path / f"gp{gp_weight:g}"),
            loss="wgan-gp",
            gp_weight=gp_weight,
            d_steps=1,
            **{**FAST, "steps": 2},
        )
        weights.append(load_file(train(config, progress=False).artifact.path / GENERATOR_WEIGHTS))
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_ctrl_c_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "int"
    cmd = [
        sys.executable,
        "-m",
        "ctrlgan.cli",
        "train",
        "--out",
        str(out),
        "--steps",
        "100000",
        "--batch-size",
        "8",
        "--g-channels",
        "4",
        "--d-channels",
        "4",
        "--z-dim",
        "4",
        "--eval-per-class",
        "0",
        "--checkpoint-every",
        "100000",
        "--sample-every",
        "100000",
        "--feature-steps",
        "0",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ})
    deadline = time.time() + 60
    while not (out / "samples").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "--resume" in err
    step = load_file(out / CHECKPOINT)  # a readable checkpoint of the last finished step
    assert any(k.startswith("G.") for k in step)
    import json

    from safetensors import safe_open

    with safe_open(out / CHECKPOINT, framework="pt") as f:
        done = json.loads(f.metadata()["ctrlgan"])["step"]
    assert done >= 1
    resume = [*cmd, "--resume"]
    resume[resume.index("100000")] = str(done + 1)
    finished = subprocess.run(resume, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert Artifact.open(out / "model").manifest.provenance["steps"] == done + 1


def test_course_arch_trains_the_sources_networks(tmp_path):
    """--arch course: the source's generator and critic, its initialisation, 28x28 images."""
    from ctrlgan.training import train as train_module
    from ctrlgan.training.nets import CourseDiscriminator

    built = []
    real_init = train_module.course_init
    train_module.course_init = lambda m: (built.append(m), real_init(m))[1]
    try:
        config = TrainConfig(
            out=str(tmp_path / "c"), arch="course", image_size=28, **{**FAST, "steps": 2}
        )
        result = train(config, progress=False)
    finally:
        train_module.course_init = real_init
    assert [type(m).__name__ for m in built] == ["ConditionalGenerator", "CourseDiscriminator"]
    assert isinstance(built[1], CourseDiscriminator)
    m = result.artifact.manifest
    assert m.generator["arch"] == "course" and m.image_shape == [1, 28, 28]
    g = result.artifact.build_generator()
    x = g(torch.randn(3, 10), torch.tensor([0, 5, 9]))
    assert x.shape == (3, 1, 28, 28) and torch.isfinite(x).all()
    d = load_file(tmp_path / "c" / CHECKPOINT)
    assert d["D.disc.0.0.weight"].shape == (8, 1 + 10, 4, 4)  # image + one channel per class
