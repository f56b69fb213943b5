"""Per-sample noise editing (training/edit.py) and `ctrlgan edit`: the source's exercise values,
its notebook loop reproduced, the edit's promises on a tiny generator and on the bundled digits
model, batch invariance, and every refusal."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import ctrlgan
from ctrlgan.artifact import Artifact, write_artifact
from ctrlgan.cli import edit as edit_cli
from ctrlgan.cli import main
from ctrlgan.errors import InvalidRequest
from ctrlgan.network import ConditionalGenerator, GeneratorConfig
from ctrlgan.training import edit as E
from ctrlgan.training.feature_net import FEATURE_NET
from ctrlgan.training.features import FeatureSet

TINY_NAMES = ("a", "b", "c", "d")


def fresh_seed() -> int:
    return int(np.random.SeedSequence().entropy % 2**31)


# The source's exercises, verbatim --------------------------------------------------------------


def test_calculate_updated_noise_holds_the_exercise_values():
    noise = torch.ones(20, 20) * 2
    noise.requires_grad_()
    fake_classes = (noise**2).mean()
    fake_classes.backward()
    new_noise = E.calculate_updated_noise(noise, 0.1)
    assert type(new_noise) == torch.Tensor and tuple(new_noise.shape) == (20, 20)  # noqa: E721
    assert new_noise.max() == 2.0010 and new_noise.min() == 2.0010
    assert torch.isclose(new_noise.sum(), torch.tensor(0.4) + 20 * 20 * 2)


def test_get_score_holds_the_exercise_values():
    assert torch.isclose(
        E.get_score(torch.ones(4, 3), torch.zeros(4, 3), [0], [1, 2], 0.2),
        1 - torch.sqrt(torch.tensor(2.0)) * 0.2,
    )
    rows = 10
    current_class = torch.tensor([[1] * rows, [2] * rows, [3] * rows, [4] * rows]).T.float()
    original_class = torch.tensor([[1] * rows, [2] * rows, [3] * rows, [4] * rows]).T.float()
    assert E.get_score(current_class, original_class, [1, 3], [0, 2], 0.2).item() == 3
    original_class = torch.tensor([[4] * rows, [4] * rows, [2] * rows, [1] * rows]).T.float()
    assert torch.isclose(
        E.get_score(current_class, original_class, [1, 3], [0, 2], 0.2),
        -torch.sqrt(torch.tensor(10.0)) * 0.2 + 3,
    )


def test_the_functions_compute_what_their_docstrings_say_on_random_inputs():
    g = torch.Generator().manual_seed(fresh_seed())
    current, original = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    want = (
        current[:, [4, 1]].mean()
        - 0.3 * (current[:, [0, 2]] - original[:, [0, 2]]).norm(dim=1).mean()
    )
    torch.testing.assert_close(E.get_score(current, original, [4, 1], [0, 2], 0.3), want)
    noise = torch.randn(3, 4, generator=g).requires_grad_()
    noise.grad = torch.randn(3, 4, generator=g)
    torch.testing.assert_close(
        E.calculate_updated_noise(noise, 0.7), noise.detach() + 0.7 * noise.grad
    )


# A tiny generator and reader ------------------------------------------------------------------


class TinyReader(nn.Module):
    """Images [B, 1, 16, 16] -> 4 readings: a small conv net with random weights."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(4 * 8 * 8, len(TINY_NAMES)),
        )

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def tiny():
    """(generator, classifier module, its FeatureSet): random weights, fixed seed."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        generator = ConditionalGenerator(
            GeneratorConfig(z_dim=7, n_classes=3, image_size=16, channels=1, base_channels=8)
        ).eval()
        classifier = TinyReader()

    def measure(images, names=TINY_NAMES, keep_grad=False, labels=None):
        with torch.set_grad_enabled(keep_grad):
            out = classifier(images if keep_grad else images.detach())
        return {n: out[:, TINY_NAMES.index(n)] for n in names}

    reader = FeatureSet(TINY_NAMES, "tiny reader", measure, ("a",), circular=("d",))
    return generator, classifier, reader


ONES = dict.fromkeys(TINY_NAMES, 1.0)


def tiny_batch(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 7, generator=g), torch.randint(0, 3, (n,), generator=g)


def notebook(gen, classifier, noise, target_indices, other_indices, grad_steps, penalty, fresh):
    """The source's loop, line for line (gen takes the noise only; ``fresh`` adds a
    noise.grad = None, plain gradient ascent)."""
    opt = torch.optim.Adam(classifier.parameters(), lr=0.0002)
    noise = noise.clone().requires_grad_()
    fake_image_history, noises = [], [noise.detach().clone()]
    original_classifications = classifier(gen(noise)).detach()
    for _ in range(grad_steps):
        opt.zero_grad()  # zeroes the classifier's grads, NOT noise.grad
        if fresh:
            noise.grad = None
        fake = gen(noise)
        fake_image_history += [fake]
        fake_score = E.get_score(
            classifier(fake),
            original_classifications,
            target_indices,
            other_indices,
            penalty_weight=penalty,
        )
        fake_score.backward()
        noise.data = E.calculate_updated_noise(noise, 1 / grad_steps)
        noises.append(noise.detach().clone())
    return torch.stack(noises), torch.stack([x.detach() for x in fake_image_history])


@pytest.mark.parametrize("n", [8, 5])
def test_accumulate_reproduces_the_notebooks_loop(tiny, n):
    generator, classifier, reader = tiny
    seed = fresh_seed()
    z, labels = tiny_batch(n, seed)
    # classifier columns a, b, c, d: targets a and c, other b (d neither)
    want_z, want_images = notebook(
        lambda noise: generator(noise, labels), classifier, z, [0, 2], [1], 10, 0.1, fresh=False
    )
    got = E.ascend(generator, reader, labels, z, ["a", "c"], (), ["b"], weight=0.1 / n,
                   penalty=0.1, steps=10, accumulate=True, scale=ONES, images=True)  # fmt: skip
    torch.testing.assert_close(torch.from_numpy(got.z), want_z, rtol=1e-5, atol=1e-6, msg=seed)
    torch.testing.assert_close(
        torch.from_numpy(got.images[:10]), want_images, rtol=1e-5, atol=1e-6, msg=seed
    )
    # without accumulation the steps differ: the notebook's momentum is real
    plain = E.ascend(generator, reader, labels, z, ["a", "c"], (), ["b"], weight=0.1 / n,
                     penalty=0.1, steps=10, scale=ONES)  # fmt: skip
    assert np.abs(plain.z[-1] - got.z[-1]).max() > 1e-4
    fresh_z, _ = notebook(
        lambda noise: generator(noise, labels), classifier, z, [0, 2], [1], 10, 0.1, fresh=True
    )
    torch.testing.assert_close(torch.from_numpy(plain.z), fresh_z, rtol=1e-5, atol=1e-6)
    assert all(p.requires_grad for p in generator.parameters())  # flags restored


def test_a_samples_edit_does_not_depend_on_its_batch(tiny):
    generator, _, reader = tiny
    seed = fresh_seed()
    z, labels = tiny_batch(7, seed)
    kwargs = {"increase": ["a"], "decrease": ["c"], "keep": ["b"], "scale": ONES, "weight": 0.5}
    whole = E.ascend(generator, reader, labels, z, **kwargs)
    for i in (0, 3, 6):
        alone = E.ascend(generator, reader, labels[i : i + 1], z[i : i + 1], **kwargs)
        np.testing.assert_allclose(alone.z[:, 0], whole.z[:, i], rtol=1e-5, atol=1e-6)
        for name in TINY_NAMES:
            np.testing.assert_allclose(
                alone.features[name][:, 0], whole.features[name][:, i], rtol=1e-4, atol=1e-5
            )


def signed_mean(e):
    """The targets' part of the source's score per sample: mean of the standardised increase
    features minus the decrease features, [steps + 1, B]."""
    signed = [e.features[f] / e.scale[f] for f in e.increase]
    signed += [-e.features[f] / e.scale[f] for f in e.decrease]
    return np.mean(signed, axis=0)


def leak(e):
    """Mean over samples of the kept features' absolute change, in units of their spread."""
    return sum(np.abs(e.change(k)) / e.scale[k] for k in e.keep).mean()


def test_tiny_edit_raises_lowers_and_keeps(tiny):
    generator, _, reader = tiny
    seed = fresh_seed()
    z, labels = tiny_batch(9, seed)
    scale = E.spread(generator, reader, n=300)
    for increase, decrease in ((["a"], []), ([], ["c"]), (["a"], ["c"])):
        edits = [
            E.ascend(
                generator, reader, labels, z, increase, decrease, ["b"], penalty=p, scale=scale
            )
            for p in (0.0, 1.0)
        ]
        for e in edits:
            score = signed_mean(e)
            assert (score[-1] > score[0]).all(), seed
            if len(increase + decrease) == 1:  # one target: it moves for every sample
                assert (e.change("a") > 0).all() if increase else (e.change("c") < 0).all()
            assert e.z.shape == (11, 9, 7) and e.z.dtype == np.float32
            assert set(e.features) == set(TINY_NAMES) and e.features["d"].shape == (11, 9)
            np.testing.assert_array_equal(e.z[0], z.numpy())
        assert leak(edits[1]) < leak(edits[0]), seed


def test_the_generator_and_reader_stay_frozen(tiny):
    generator, classifier, reader = tiny
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    for p in [*generator.parameters(), *classifier.parameters()]:
        p.grad = None  # the notebook's loop leaves gradients on both
    z, labels = tiny_batch(3, fresh_seed())
    E.ascend(generator, reader, labels, z, ["b"], scale=ONES)
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())
    assert all(p.grad is None for p in generator.parameters())
    assert all(p.grad is None for p in classifier.parameters())
    assert not generator.training


@pytest.mark.parametrize(
    "kwargs, field, words",
    [
        ({"increase": ["beard"]}, "increase", "beard"),
        ({"increase": ["a"], "decrease": "e"}, "decrease", "'e'"),
        ({"increase": ["a"], "keep": ["zz"]}, "keep", "zz"),
        ({"increase": ["a"], "keep": ["a"]}, "keep", "already in increase"),
        ({"increase": ["a"], "decrease": ["b"], "keep": "b"}, "keep", "already in decrease"),
        ({"increase": ["a", "a"]}, "increase", "repeat"),
        ({}, "increase", "at least one"),
        ({"increase": "", "decrease": []}, "increase", "at least one"),
        ({"increase": 3}, "increase", "feature names"),
        ({"increase": ["a"], "keep": ["d"]}, "keep", "wraps"),
        ({"increase": ["a"], "steps": 0}, "steps", "1..10000"),
        ({"increase": ["a"], "steps": 2.5}, "steps", "int"),
        ({"increase": ["a"], "weight": 0.0}, "weight", "> 0"),
        ({"increase": ["a"], "weight": float("nan")}, "weight", "finite"),
        ({"increase": ["a"], "penalty": -0.1}, "penalty", ">= 0"),
        ({"increase": ["a"], "penalty": float("inf")}, "penalty", "finite"),
        ({"increase": ["a"], "scale": {"a": 1.0}}, "scale", "no unit"),
        ({"increase": ["a"], "scale": dict.fromkeys(TINY_NAMES, 0.0)}, "scale", "> 0"),
    ],
)
def test_ascend_refuses_bad_requests(tiny, kwargs, field, words):
    generator, _, reader = tiny
    z, labels = tiny_batch(3, fresh_seed())
    kwargs = {"scale": ONES} | kwargs
    with pytest.raises(InvalidRequest) as e:
        E.ascend(generator, reader, labels, z, **kwargs)
    assert e.value.field == field and words in str(e.value), str(e.value)


def test_ascend_refuses_bad_noise_and_labels(tiny):
    generator, _, reader = tiny
    z, labels = tiny_batch(3, fresh_seed())
    for bad_z, bad_labels, field in [
        (z[0], labels, "z"),
        (z, labels[:2], "z"),
        (z, torch.tensor([0, 1, 3]), "classes"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            E.ascend(generator, reader, bad_labels, bad_z, ["a"], scale=ONES)
        assert e.value.field == field


# The bundled digits model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    """(generator, reader, scale) of the bundled digits model."""
    from ctrlgan.training import feature_net

    artifact = Artifact.open("digits")
    generator = artifact.build_generator()
    reader, _ = feature_net.feature_sets(artifact)
    return generator, reader, E.spread(generator, reader)


@pytest.mark.parametrize(
    "increase, decrease", [(["thickness"], []), (["slant"], []), ([], ["size"])]
)
def test_digits_one_target_moves_for_every_sample_and_the_penalty_keeps(digits, increase, decrease):
    generator, reader, scale = digits
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    z = torch.from_numpy(ctrlgan.noise(rng.choice(10**9, size=9, replace=False).tolist(), 64))
    labels = torch.from_numpy(rng.integers(0, 10, size=9))
    target = (increase + decrease)[0]
    keep = [f for f in ("thickness", "slant", "size") if f != target]
    held, free = (
        E.ascend(generator, reader, labels, z, increase, decrease, keep, penalty=p, scale=scale)
        for p in (E.PENALTY, 0.0)
    )
    for e in (held, free):
        assert e.reader == "feature network (learned)"
        assert e.z.shape == (11, 9, 64) and e.z.dtype == np.float32
        sign = 1 if increase else -1
        assert (sign * e.change(target) > 0).all(), seed
    assert leak(held) < leak(free), seed
    source = E.ascend(generator, reader, labels, z, increase, decrease, keep, penalty=0.1,
                      scale=scale)  # fmt: skip
    assert leak(held) < leak(source), seed  # the measured default beats the source's 0.1


def test_digits_several_targets_raise_their_score_for_every_sample(digits):
    generator, reader, scale = digits
    seed = fresh_seed()
    rng = np.random.default_rng(seed)
    z = torch.from_numpy(ctrlgan.noise(rng.choice(10**9, size=11, replace=False).tolist(), 64))
    labels = torch.from_numpy(rng.integers(0, 10, size=11))
    kwargs = {"increase": ["thickness", "slant"], "decrease": ["size"], "keep": ["pos_y"]}
    held = E.ascend(generator, reader, labels, z, **kwargs, scale=scale)
    free = E.ascend(generator, reader, labels, z, **kwargs, penalty=0.0, scale=scale)
    for e in (held, free):
        score = signed_mean(e)
        assert (score[-1] > score[0]).all(), seed
        # each target moves its way on average (for 84-100% of samples each, measured)
        assert e.change("thickness").mean() > 0 and e.change("slant").mean() > 0, seed
        assert e.change("size").mean() < 0, seed
    assert leak(held) < leak(free), seed


def test_digits_edit_starts_at_the_runtimes_samples_and_is_batch_invariant():
    seeds = [int(s) for s in np.random.default_rng().choice(10**6, size=7, replace=False)]
    classes = [3, 1, 4, 1, 5, 9, 2]
    e = E.edit_noise("digits", classes, seeds, "slant", keep="thickness", images=True)
    np.testing.assert_array_equal(e.z[0], ctrlgan.noise(seeds, 64))
    g = ctrlgan.load("digits", backend="torch")
    np.testing.assert_allclose(e.images[0], g.sample(classes, seeds), atol=1e-5)
    np.testing.assert_allclose(e.images[-1], g.sample(classes, z=e.z[-1]), atol=1e-5)
    np.testing.assert_array_equal(e.classes, classes)
    alone = E.edit_noise("digits", classes[4], seeds[4:5], "slant", keep="thickness")
    np.testing.assert_allclose(alone.z[:, 0], e.z[:, 4], rtol=1e-5, atol=1e-5)
    # the same noise given as an array, as a tensor: the same edit
    again = E.edit_noise("digits", classes, torch.from_numpy(e.z[0]), "slant", keep="thickness")
    np.testing.assert_array_equal(again.z, e.z)


def test_edit_noise_refuses_bad_models_noise_and_classes():
    for args, field in [
        (("nonexistent-model", 0, [1]), "model"),
        (("digits", 10, [1]), "classes"),
        (("digits", "x", [1]), "classes"),
        (("digits", [1, 2], [1, 2, 3]), "classes"),
        (("digits", 0, [-1]), "seeds"),
        (("digits", 0, np.zeros((2, 63), np.float32)), "z"),
        (("digits", 0, np.full((2, 64), np.nan, np.float32)), "z"),
        (("digits", 0, np.zeros((2, 2, 64), np.float32)), "z"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            E.edit_noise(*args, increase="thickness")
        assert e.value.field == field, (args, e.value)


def test_a_model_without_a_feature_network_is_read_by_the_image_moments(tiny_model, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    manifest = Artifact.open(path).manifest
    manifest.files.pop(FEATURE_NET)
    manifest.provenance.pop("features")
    write_artifact(path, manifest, tensors={}, keep=True)
    e = E.edit_noise(path, 2, [4, 5, 6], increase="thickness", keep="size")
    assert e.reader == "image moments" and set(e.features) >= {"thickness", "slant", "size"}
    assert (e.change("thickness") > 0).all()


# The command ----------------------------------------------------------------------------------


def test_cli_penalty_default_is_the_modules():
    assert edit_cli.DEFAULT_PENALTY == E.PENALTY and edit_cli.DEFAULT_STEPS == E.STEPS


def test_edit_command_draws_samples_by_steps_and_saves_the_noise(tiny_model, tmp_path, capsys):
    png, npy = tmp_path / "edit.png", tmp_path / "z.npy"
    model = str(tiny_model.artifact.path)
    argv = ["edit", model, "--class", "3", "--seeds", "2-6", "--increase", "thickness"]
    argv += ["--keep", "slant,size", "--steps", "4", "--scale", "1"]
    assert main([*argv, "-o", str(png), "--save-z", str(npy)]) == 0
    out = capsys.readouterr().out
    assert "5 rows = samples x 5 columns = steps 0..4" in out and "thickness" in out
    assert "increase" in out and "keep" in out and "read by feature network" in out
    with Image.open(png) as im:  # 5 x 5 images of 16 pixels, 2 pixels of padding
        assert im.size == (5 * 16 + 6 * 2, 5 * 16 + 6 * 2)
    z = np.load(npy)
    assert z.shape == (5, 12) and z.dtype == np.float32
    want = E.edit_noise(model, 3, [2, 3, 4, 5, 6], "thickness", keep="slant,size", steps=4)
    np.testing.assert_array_equal(z, want.z[-1])
    # `ctrlgan sample --z` renders the saved noise: the figure's last column
    rendered = tmp_path / "rendered.png"
    argv = ["sample", model, "--z", str(npy), "--class", "3", "--scale", "1", "--backend"]
    assert main([*argv, "torch", "-o", str(rendered)]) == 0
    with Image.open(png) as im, Image.open(rendered) as again:
        figure, drawn = np.asarray(im).astype(int), np.asarray(again).astype(int)
    for row in range(5):
        top, left = 2 + row * 18, 2 + 4 * 18
        last = figure[top : top + 16, left : left + 16]
        assert np.abs(last - drawn[2 : 2 + 16, 2 + row * 18 : 2 + row * 18 + 16]).max() <= 1
    # one class per seed, decrease only, more steps
    argv = ["edit", model, "--class", "0,1,2", "--seeds", "7,8,9", "--decrease", "size"]
    assert main([*argv, "--steps", "2", "--scale", "2", "-o", str(png)]) == 0
    with Image.open(png) as im:
        assert im.size == (2 * (3 * 16 + 4 * 2), 2 * (3 * 16 + 4 * 2))


def test_edit_command_refuses_bad_input_in_one_line(tiny_model, tmp_path, capsys):
    model = str(tiny_model.artifact.path)
    png = str(tmp_path / "edit.png")
    base = ["edit", model, "--increase", "thickness"]
    for argv, word in [
        (["edit", model, "-o", png], "increase"),
        ([*base, "--keep", "thickness", "-o", png], "already in increase"),
        (["edit", model, "--increase", "beard", "-o", png], "beard"),
        ([*base, "--keep", "slant,", "-o", png], "keep"),
        ([*base, "--seeds", "a-b", "-o", png], "seeds"),
        ([*base, "--seeds", "-1", "-o", png], "seeds"),
        ([*base, "--seeds", "0-2000", "-o", png], "seeds"),
        ([*base, "--class", "10", "-o", png], "class"),
        ([*base, "--class", "1,2", "--seeds", "0-2", "-o", png], "class"),
        ([*base, "--steps", "0", "-o", png], "steps"),
        ([*base, "--weight", "nan", "-o", png], "weight"),
        ([*base, "--weight", "-1", "-o", png], "weight"),
        ([*base, "--penalty", "-1", "-o", png], "penalty"),
        ([*base, "-o", str(tmp_path / "edit.jpg")], "png"),
        ([*base, "-o", png, "--save-z", str(tmp_path / "z.txt")], ".npy"),
        ([*base, "-o", png, "--save-z", str(tmp_path / "no" / "z.npy")], "save-z"),
        (["edit", str(tmp_path / "missing"), "--increase", "thickness", "-o", png], "missing"),
    ]:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and word in err, (argv, err)
    assert not list(tmp_path.iterdir())
