import pytest
import torch

from ctrlgan.network import IMAGE_SIZES
from ctrlgan.training.nets import Discriminator, FeatureNet, init_weights, onehot_channels


def test_onehot_channels_one_full_channel_per_class():
    labels = torch.tensor([2, 0, 4])
    maps = onehot_channels(labels, 5, 3, 7)
    assert maps.shape == (3, 5, 3, 7)
    for row, c in enumerate(labels.tolist()):
        assert torch.all(maps[row, c] == 1)
        others = torch.cat([maps[row, :c], maps[row, c + 1 :]])
        assert torch.all(others == 0)


@pytest.mark.parametrize("size", IMAGE_SIZES)
@pytest.mark.parametrize("kind", ["concat", "projection"])
def test_discriminator_scores_one_value_per_image(size, kind):
    d = Discriminator(n_classes=3, image_size=size, channels=2, base_channels=4, kind=kind)
    x = torch.randn(5, 2, size, size)
    out = d(x, torch.tensor([0, 1, 2, 1, 0]))
    assert out.shape == (5,)
    assert torch.isfinite(out).all()


def test_concat_discriminator_sees_the_class_channels():
    torch.manual_seed(0)
    d = Discriminator(n_classes=4, image_size=16, base_channels=8, norm=False)
    init_weights(d)
    x = torch.randn(1, 1, 16, 16)
    assert d.trunk[0].in_channels == 1 + 4
    assert not torch.allclose(d(x, torch.tensor([0])), d(x, torch.tensor([3])))


def test_projection_discriminator_is_psi_plus_embedding_dot_phi():
    torch.manual_seed(0)
    d = Discriminator(n_classes=3, image_size=16, base_channels=4, kind="projection", norm=False)
    x, y = torch.randn(2, 1, 16, 16), torch.tensor([2, 0])
    phi = d.trunk(x).sum(dim=(2, 3))
    expected = d.psi(phi).flatten() + (d.embed(y) * phi).sum(1)
    torch.testing.assert_close(d(x, y), expected)


@pytest.mark.parametrize("size", [16, 28])
def test_feature_net_heads(size):
    f = FeatureNet(n_classes=4, n_factors=3, image_size=size, base_channels=4)
    logits, factors = f(torch.randn(2, 1, size, size))
    assert logits.shape == (2, 4) and factors.shape == (2, 3)
    _, none = FeatureNet(n_classes=4, image_size=size, base_channels=4)(
        torch.randn(2, 1, size, size)
    )
    assert none.shape == (2, 0)


def test_init_weights_dcgan_statistics():
    torch.manual_seed(0)
    d = Discriminator(n_classes=10, image_size=32, base_channels=32)
    init_weights(d)
    w = torch.cat([m.weight.flatten() for m in d.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(w.mean().item()) < 2e-3
    assert abs(w.std().item() - 0.02) < 1e-3


def test_course_discriminator_is_the_sources():
    """The source's critic on image + one-hot channels, with the same weights: equal outputs,
    one logit per 28x28 image; course_init draws its N(0, 0.02) weights and BN scales."""
    from torch import nn

    from ctrlgan.training.nets import CourseDiscriminator, course_init, onehot_channels

    def block(cin, cout, final=False):  # the source's make_disc_block
        if final:
            return nn.Sequential(nn.Conv2d(cin, cout, 4, 2))
        return nn.Sequential(nn.Conv2d(cin, cout, 4, 2), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))

    hidden, n_classes = 16, 10
    source = nn.Sequential(block(1 + n_classes, hidden), block(hidden, 2 * hidden))
    source.append(block(2 * hidden, 1, final=True))
    ours = CourseDiscriminator(n_classes, 1, hidden)
    course_init(ours)
    for name in ("disc.0.1", "disc.1.1"):
        bn = ours.get_submodule(name)
        assert bn.weight.abs().max() < 0.15 and bn.bias.abs().max() == 0  # N(0, 0.02), 0
    conv_w = torch.cat([ours.disc[i][0].weight.flatten() for i in (0, 1)])
    assert 0.015 < conv_w.std() < 0.025
    rename = lambda k: k.removeprefix("disc.").replace("2.", "2.0.", k.startswith("disc.2."))
    source.load_state_dict({rename(k): v for k, v in ours.state_dict().items()})
    x, y = torch.rand(5, 1, 28, 28) * 2 - 1, torch.randint(0, n_classes, (5,))
    want = source(torch.cat([x, onehot_channels(y, n_classes, 28, 28)], 1)).view(5, -1)
    got = ours(x, y)
    assert got.shape == (5, 1)
    torch.testing.assert_close(got, want)
