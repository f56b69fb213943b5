import pytest
import torch

from ctrlgan.network import IMAGE_SIZES, ConditionalGenerator, GeneratorConfig


@pytest.mark.parametrize("size", IMAGE_SIZES)
@pytest.mark.parametrize("embedding", ["onehot", "learned"])
def test_generator_output_shape_and_range(size, embedding):
    config = GeneratorConfig(
        z_dim=13,
        n_classes=5,
        image_size=size,
        channels=3,
        base_channels=8,
        embedding=embedding,
        embed_dim=4 if embedding == "learned" else 0,
    )
    g = ConditionalGenerator(config).eval()
    z = torch.randn(3, 13)
    x = g(z, torch.tensor([0, 4, 2]))
    assert x.shape == (3, 3, size, size)
    assert x.dtype == torch.float32
    assert x.abs().max() <= 1.0
    assert g.fc.in_features == config.latent_dim == 13 + (5 if embedding == "onehot" else 4)


def test_onehot_embedding_is_the_source_concat():
    g = ConditionalGenerator(GeneratorConfig(z_dim=7, n_classes=4, base_channels=8)).eval()
    z = torch.randn(2, 7)
    labels = torch.tensor([3, 1])
    expected = g.body(torch.cat([z, torch.nn.functional.one_hot(labels, 4).float()], 1))
    torch.testing.assert_close(g(z, labels), expected)


def test_soft_class_mix_interpolates_embeddings():
    g = ConditionalGenerator(
        GeneratorConfig(z_dim=5, n_classes=6, embedding="learned", embed_dim=3, base_channels=8)
    )
    torch.nn.init.normal_(g.embedding.weight)
    a, b = torch.tensor([0, 2, 5]), torch.tensor([1, 2, 3])
    s = torch.tensor([0.0, 0.3, 1.0])
    y = g.embed(a, b, s)
    table = g.embedding.weight
    torch.testing.assert_close(y[0], table[0])
    torch.testing.assert_close(y[1], table[2])
    torch.testing.assert_close(y[2], table[3])
    mid = g.embed(torch.tensor([4]), torch.tensor([1]), torch.tensor([0.25]))
    torch.testing.assert_close(mid[0], 0.75 * table[4] + 0.25 * table[1])


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"image_size": 20}, "image_size"),
        ({"embedding": "bogus"}, "embedding"),
        ({"embedding": "learned", "embed_dim": 0}, "embed_dim"),
        ({"z_dim": 0}, "z_dim"),
    ],
)
def test_config_rejects_bad_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        GeneratorConfig(**{"z_dim": 4, "n_classes": 2, **kwargs})


def test_course_layout_matches_the_source():
    """arch="course": 74 -> 256x3x3 -> 128x6x6 -> 64x13x13 -> 1x28x28, biases everywhere."""
    from ctrlgan.architecture import layout, weight_shapes

    config = GeneratorConfig(z_dim=64, n_classes=10, image_size=28, arch="course")
    g = ConditionalGenerator(config)
    assert {k: list(v.shape) for k, v in g.state_dict().items()} == weight_shapes(config)
    ch0, s0, layers = layout(config)
    assert (ch0, s0) == (256, 3) and [up.size for up in layers] == [6, 13, 28]
    assert g.fc.weight.shape == (256 * 9, 74)
    assert [(m.kernel_size, m.stride) for m in (g.blocks[0][0], g.blocks[1][0], g.out)] == [
        ((4, 4), (1, 1)),
        ((3, 3), (2, 2)),
        ((4, 4), (2, 2)),
    ]
    x = g.eval()(torch.randn(3, 64), torch.tensor([0, 4, 9]))
    assert x.shape == (3, 1, 28, 28) and x.abs().max() <= 1
    assert "arch" not in GeneratorConfig(z_dim=8, n_classes=2).to_dict()  # old manifests
    with pytest.raises(ValueError, match="28x28"):
        GeneratorConfig(z_dim=8, n_classes=2, image_size=32, arch="course")
    with pytest.raises(ValueError, match="arch must be one of"):
        GeneratorConfig(z_dim=8, n_classes=2, arch="dcgan")
