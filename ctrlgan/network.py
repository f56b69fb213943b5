"""The conditional generator: the one architecture that training builds and the runtime loads.

It lives outside training/ so that the runtime can rebuild a generator from an artifact without
the training stack. The input is DESIGN's latent x = concat(z, y): noise z [B, Z] and a class
embedding y [B, E], where y is a one-hot vector (E = number of classes, the source's method) or
a row of a learned table, and a soft mix (1 - s) e(a) + s e(b) of two classes is allowed.

Body: a linear first layer (so the fused prologue can gather class columns of its weight),
BatchNorm + ReLU at s0 x s0, then transposed convolutions (kernel 4, stride 2, padding 1) that
double the size with BatchNorm + ReLU, and a final one to the image channels with Tanh.
s0 = 7 for 28-pixel images and 4 otherwise; supported sizes: 16, 28, 32, 64.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

IMAGE_SIZES = (16, 28, 32, 64)
EMBEDDINGS = ("onehot", "learned")


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
        if self.image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {self.image_size}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")
        if self.embedding == "learned" and self.embed_dim < 1:
            raise ValueError("embed_dim must be >= 1 for a learned embedding")
        for name in ("z_dim", "n_classes", "channels", "base_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

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
        return cls(**d)


def _stages(image_size: int) -> tuple[int, int]:
    """Start size s0 and the number of doublings from s0 to the image size."""
    s0 = 7 if image_size == 28 else 4
    n, s = 0, s0
    while s < image_size:
        s, n = s * 2, n + 1
    return s0, n


class ConditionalGenerator(nn.Module):
    """G(z, y): noise and a class embedding to an image in [-1, 1]."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        s0, n_up = _stages(config.image_size)
        ch = config.base_channels * 2 ** (n_up - 1)
        self.s0, self.ch0 = s0, ch
        if config.embedding == "learned":
            self.embedding = nn.Embedding(config.n_classes, config.embed_dim)
        else:
            self.register_buffer("onehot", torch.eye(config.n_classes), persistent=False)
        self.fc = nn.Linear(config.latent_dim, ch * s0 * s0)
        self.bn0 = nn.BatchNorm2d(ch)
        blocks = []
        for _ in range(n_up - 1):
            blocks.append(
                nn.Sequential(
                    nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(ch // 2),
                    nn.ReLU(inplace=True),
                )
            )
            ch //= 2
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.ConvTranspose2d(ch, config.channels, 4, 2, 1)

    def class_table(self) -> torch.Tensor:
        """The embedding table e [C, E]: identity for one-hot, learned rows otherwise."""
        return self.embedding.weight if self.config.embedding == "learned" else self.onehot

    def embed(
        self,
        class_a: torch.Tensor,
        class_b: torch.Tensor | None = None,
        s: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """y = (1 - s) e(class_a) + s e(class_b); s = None gives the plain class_a rows."""
        table = self.class_table()
        y = table[class_a]
        if class_b is not None and s is not None:
            s = s.reshape(-1, 1).to(y.dtype)
            y = (1 - s) * y + s * table[class_b]
        return y

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """The generator after the prologue: latent x [B, Z + E] -> image [B, C, H, W]."""
        return self.body_after_fc(self.fc(x))

    def body_after_fc(self, h: torch.Tensor) -> torch.Tensor:
        """The body from the first layer's output h [B, ch0 * s0 * s0] on."""
        h = torch.relu(self.bn0(h.view(-1, self.ch0, self.s0, self.s0)))
        h = self.blocks(h)
        return torch.tanh(self.out(h))

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([z, self.embed(labels)], dim=1))
