"""The generator's architecture as data: GeneratorConfig, without torch.

A manifest records the config of the generator it ships, and loading an artifact checks it
before any weights are read; that check must not need torch, so that a process that samples on
onnxruntime never imports it (the module itself lives in ctrlgan.network).

Sizes are bounded so that a tampered manifest cannot ask for a network that does not fit in
memory: z_dim and embed_dim at most MAX_WIDTH, base_channels at most MAX_CHANNELS, image
channels at most MAX_IMAGE_CHANNELS and the class count at most MAX_CLASSES.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

IMAGE_SIZES = (16, 28, 32, 64)
EMBEDDINGS = ("onehot", "learned")
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

    def __post_init__(self):
        # Plain ValueErrors: configs come from the CLI (already validated) or a manifest
        # (whose loader turns this into an ArtifactError).
        for name in ("z_dim", "n_classes", "image_size", "channels", "base_channels", "embed_dim"):
            value = getattr(self, name)
            if type(value) is not int:
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {self.image_size}")
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
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GeneratorConfig:
        if not isinstance(d, dict):
            raise ValueError(f"expected an object of config fields, got {type(d).__name__}")
        return cls(**d)


def weight_shapes(config: GeneratorConfig) -> dict[str, list[int]]:
    """The shape of every tensor in the generator's state dict (ctrlgan.network builds exactly
    these; tested), so that weights can be checked against a manifest without torch."""
    s0, n_up = stages(config.image_size)
    ch = config.base_channels * 2 ** (n_up - 1)
    bn = lambda prefix, c: (
        {f"{prefix}.{k}": [c] for k in _BN} | {f"{prefix}.num_batches_tracked": []}
    )
    shapes = {}
    if config.embedding == "learned":
        shapes["embedding.weight"] = [config.n_classes, config.embed_dim]
    shapes |= {"fc.weight": [ch * s0 * s0, config.latent_dim], "fc.bias": [ch * s0 * s0]}
    shapes |= bn("bn0", ch)
    for i in range(n_up - 1):
        shapes[f"blocks.{i}.0.weight"] = [ch, ch // 2, 4, 4]
        shapes |= bn(f"blocks.{i}.1", ch // 2)
        ch //= 2
    shapes |= {"out.weight": [ch, config.channels, 4, 4], "out.bias": [config.channels]}
    return shapes


_BN = ("weight", "bias", "running_mean", "running_var")


def parameters(config: GeneratorConfig) -> int:
    """The generator's number of values (parameters and BatchNorm statistics)."""
    return sum(math.prod(shape) for shape in weight_shapes(config).values())


def activations(config: GeneratorConfig) -> int:
    """Values one image's forward pass keeps for the backward pass (each layer's output, its
    normalisation and its activation): the per-image term of a batch's memory."""
    s0, n_up = stages(config.image_size)
    ch, size = config.base_channels * 2 ** (n_up - 1), s0
    total = 2 * ch * size * size  # fc, then BatchNorm + ReLU
    for _ in range(n_up - 1):
        ch, size = ch // 2, size * 2
        total += 3 * ch * size * size  # transposed convolution, BatchNorm, ReLU
    return total + 2 * config.channels * config.image_size**2  # last convolution, Tanh


def stages(image_size: int) -> tuple[int, int]:
    """Start size s0 and the number of doublings from s0 to the image size."""
    s0 = 7 if image_size == 28 else 4
    n, s = 0, s0
    while s < image_size:
        s, n = s * 2, n + 1
    return s0, n
