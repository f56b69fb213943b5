"""The generator's architecture as data: GeneratorConfig, without torch.

A manifest records the config of the generator it ships, and loading an artifact checks it
before any weights are read; that check must not need torch, so that a process that samples on
onnxruntime never imports it (the module itself lives in ctrlgan.network).

Two layouts (``arch``): "ctrlgan", the default (a first linear layer to s0 x s0, then
transposed convolutions with kernel 4, stride 2, padding 1 that double the size), and "course",
the source's conditional generator for 28x28 MNIST (hidden width h = base_channels): z + one-hot
-> 4h x 3 x 3 -> 2h x 6 x 6 -> h x 13 x 13 -> C x 28 x 28 with kernels 3, 4, 3, 4 and strides 2,
1, 2, 2, no padding, every transposed convolution with a bias. The course's first layer, a
transposed convolution of a 1 x 1 input, is a linear map, so both layouts share the linear
first layer that the fused prologue needs (``fc``); ``layout`` gives the rest layer by layer.

Sizes are bounded so that a tampered manifest cannot ask for a network that does not fit in
memory: z_dim and embed_dim at most MAX_WIDTH, base_channels at most MAX_CHANNELS, image
channels at most MAX_IMAGE_CHANNELS and the class count at most MAX_CLASSES.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

IMAGE_SIZES = (16, 28, 32, 64)
EMBEDDINGS = ("onehot", "learned")
ARCHS = ("ctrlgan", "course")
MAX_WIDTH = 4096  # z_dim, embed_dim
MAX_CHANNELS = 1024  # base_channels (the widest layer has 8x that at 64 px: 8192)
MAX_IMAGE_CHANNELS = 16
MAX_CLASSES = 10_000


@dataclass(frozen=True)
class GeneratorConfig:
    z_dim: int
    n_classes: int
    image_size: int = 16
    channels: int = 1
    base_channels: int = 64
    embedding: str = "onehot"
    embed_dim: int = 0  # learned embeddings only; one-hot uses n_classes
    arch: str = "ctrlgan"  # the layer layout (ARCHS; see the module docstring)

    def __post_init__(self):
        # Plain ValueErrors: configs come from the CLI (already validated) or a manifest
        # (whose loader turns this into an ArtifactError).
        for name in ("z_dim", "n_classes", "image_size", "channels", "base_channels", "embed_dim"):
            value = getattr(self, name)
            if type(value) is not int:
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {self.image_size}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.arch == "course" and self.image_size != 28:
            raise ValueError(f"arch 'course' makes 28x28 images, not {self.image_size}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.embedding == "learned" and self.embed_dim < 1:
            raise ValueError("embed_dim must be >= 1 for a learned embedding")
        for name in ("z_dim", "n_classes", "channels", "base_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        limits = {"z_dim": MAX_WIDTH, "embed_dim": MAX_WIDTH, "base_channels": MAX_CHANNELS}
        limits["channels"] = MAX_IMAGE_CHANNELS
        for name, limit in limits.items():
            if getattr(self, name) > limit:
                raise ValueError(f"{name} must be <= {limit}, got {getattr(self, name)}")
        if self.n_classes > MAX_CLASSES:
            raise ValueError(f"n_classes must be <= {MAX_CLASSES}, got {self.n_classes}")

    @property
    def latent_dim(self) -> int:
        """Width of the generator's input x = concat(z, y)."""
        return self.z_dim + self.class_dim

    @property
    def class_dim(self) -> int:
        return self.n_classes if self.embedding == "onehot" else self.embed_dim

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["arch"] == "ctrlgan":  # manifests written before arch existed say nothing
            del d["arch"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> GeneratorConfig:
        if not isinstance(d, dict):
            raise ValueError(f"expected an object of config fields, got {type(d).__name__}")
        return cls(**d)


@dataclass(frozen=True)
class UpLayer:
    """One transposed convolution after the first layer (blocks end in BatchNorm + ReLU; the
    last layer, ``out``, in Tanh)."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    bias: bool
    size: int  # output height and width


def layout(config: GeneratorConfig) -> tuple[int, int, list[UpLayer]]:
    """(ch0, s0, layers): the first layer's output is ch0 x s0 x s0; then the blocks and, last,
    the output layer."""
    c = config.base_channels
    if config.arch == "course":
        return (
            4 * c,
            3,
            [
                UpLayer(4 * c, 2 * c, 4, 1, 0, True, 6),
                UpLayer(2 * c, c, 3, 2, 0, True, 13),
                UpLayer(c, config.channels, 4, 2, 0, True, 28),
            ],
        )
    s0, n_up = stages(config.image_size)
    ch, size, layers = c * 2 ** (n_up - 1), s0, []
    ch0 = ch
    for i in range(n_up):
        out = config.channels if i == n_up - 1 else ch // 2
        size *= 2
        layers.append(UpLayer(ch, out, 4, 2, 1, i == n_up - 1, size))
        ch = out
    return ch0, s0, layers


def weight_shapes(config: GeneratorConfig) -> dict[str, list[int]]:
    """The shape of every tensor in the generator's state dict (ctrlgan.network builds exactly
    these; tested), so that weights can be checked against a manifest without torch."""
    ch0, s0, layers = layout(config)
    bn = lambda prefix, c: (
        {f"{prefix}.{k}": [c] for k in _BN} | {f"{prefix}.num_batches_tracked": []}
    )
    shapes = {}
    if config.embedding == "learned":
        shapes["embedding.weight"] = [config.n_classes, config.embed_dim]
    shapes |= {"fc.weight": [ch0 * s0 * s0, config.latent_dim], "fc.bias": [ch0 * s0 * s0]}
    shapes |= bn("bn0", ch0)
    for i, up in enumerate(layers):
        name = "out" if i == len(layers) - 1 else f"blocks.{i}.0"
        shapes[f"{name}.weight"] = [up.in_channels, up.out_channels, up.kernel, up.kernel]
        if up.bias:
            shapes[f"{name}.bias"] = [up.out_channels]
        if name != "out":
            shapes |= bn(f"blocks.{i}.1", up.out_channels)
    return shapes


_BN = ("weight", "bias", "running_mean", "running_var")


def parameters(config: GeneratorConfig) -> int:
    """The generator's number of values (parameters and BatchNorm statistics)."""
    return sum(math.prod(shape) for shape in weight_shapes(config).values())


def activations(config: GeneratorConfig) -> int:
    """Values one image's forward pass keeps for the backward pass (each layer's output, its
    normalisation and its activation): the per-image term of a batch's memory."""
    ch0, s0, layers = layout(config)
    total = 2 * ch0 * s0 * s0  # fc, then BatchNorm + ReLU
    for up in layers[:-1]:
        total += 3 * up.out_channels * up.size * up.size  # transposed convolution, BN, ReLU
    return total + 2 * config.channels * config.image_size**2  # last convolution, Tanh


def stages(image_size: int) -> tuple[int, int]:
    """Start size s0 and the number of doublings from s0 to the image size (arch "ctrlgan")."""
    s0 = 7 if image_size == 28 else 4
    n, s = 0, s0
    while s < image_size:
        s, n = s * 2, n + 1
    return s0, n
