"""The conditional generator: the one architecture that training builds and the runtime loads.

It lives outside training/ so that the runtime can rebuild a generator from an artifact without
the training stack. The input is DESIGN's latent x = concat(z, y): noise z [B, Z] and a class
embedding y [B, E], where y is a one-hot vector (E = number of classes, the source's method) or
a row of a learned table, and a soft mix (1 - s) e(a) + s e(b) of two classes is allowed.

Body: a linear first layer (so the fused prologue can gather class columns of its weight),
BatchNorm + ReLU at s0 x s0, then transposed convolutions (kernel 4, stride 2, padding 1) that
double the size with BatchNorm + ReLU, and a final one to the image channels with Tanh.
s0 = 7 for 28-pixel images and 4 otherwise; supported sizes: 16, 28, 32, 64. With
``arch="course"`` the body is the source's 28x28 MNIST generator instead (architecture.layout).
"""

from __future__ import annotations

import torch
from torch import nn

from ctrlgan.architecture import EMBEDDINGS, IMAGE_SIZES, GeneratorConfig, layout, stages

__all__ = ["EMBEDDINGS", "IMAGE_SIZES", "ConditionalGenerator", "GeneratorConfig", "stages"]


class ConditionalGenerator(nn.Module):
    """G(z, y): noise and a class embedding to an image in [-1, 1]."""

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        ch0, s0, layers = layout(config)
        self.s0, self.ch0 = s0, ch0
        if config.embedding == "learned":
            self.embedding = nn.Embedding(config.n_classes, config.embed_dim)
        else:
            self.register_buffer("onehot", torch.eye(config.n_classes), persistent=False)
        self.fc = nn.Linear(config.latent_dim, ch0 * s0 * s0)
        self.bn0 = nn.BatchNorm2d(ch0)
        conv = lambda up: nn.ConvTranspose2d(
            up.in_channels, up.out_channels, up.kernel, up.stride, up.padding, bias=up.bias
        )
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(conv(up), nn.BatchNorm2d(up.out_channels), nn.ReLU(inplace=True))
                for up in layers[:-1]
            )
        )
        self.out = conv(layers[-1])

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
