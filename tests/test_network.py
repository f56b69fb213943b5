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
