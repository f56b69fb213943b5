"""Training networks: the conditional discriminator (one-hot channels or projection) and the
feature network; the generator itself lives in ctrlgan.network (the runtime needs it too).

Discriminator input, the source's method: the image with one extra channel per class appended,
class c's channel all ones and the others all zeros. The projection variant instead scores
D(x, y) = psi(phi(x)) + embed(y) . phi(x) (Miyato & Koyama, 2018). ``CourseDiscriminator``
and ``course_init`` are the source's own 28x28 MNIST critic and initialisation (--arch course).
"""

from __future__ import annotations

import torch
from torch import nn

from ctrlgan.network import ConditionalGenerator, GeneratorConfig, stages

__all__ = [
    "ConditionalGenerator",
    "CourseDiscriminator",
    "Discriminator",
    "FeatureNet",
    "GeneratorConfig",
    "course_init",
    "init_weights",
    "onehot_channels",
]

DISCRIMINATORS = ("concat", "projection")


def onehot_channels(labels: torch.Tensor, n_classes: int, height: int, width: int) -> torch.Tensor:
    """[B] class indices -> [B, n_classes, H, W] maps: ones in the label's channel, zeros else."""
    onehot = torch.nn.functional.one_hot(labels, n_classes).to(torch.float32)
    return onehot[:, :, None, None].expand(-1, -1, height, width)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv/linear weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def course_init(module: nn.Module) -> None:
    """The source's initialisation: (transposed) convolution weights N(0, 0.02), BatchNorm
    scales N(0, 0.02) (sic: not 1 + N(0, 0.02)) and shifts 0; biases keep torch's default. The
    generator's first layer, a Linear here, stands for the source's first transposed
    convolution and is drawn alike."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)


def _conv_trunk(in_ch: int, image_size: int, base: int, norm: bool) -> tuple[nn.Sequential, int]:
    """Stride-2 conv blocks with LeakyReLU(0.2) down to s0 x s0; returns (trunk, out channels)."""
    _, n_down = stages(image_size)
    layers: list[nn.Module] = []
    ch_in, ch = in_ch, base
    for i in range(n_down):
        layers.append(nn.Conv2d(ch_in, ch, 4, 2, 1, bias=not norm or i == 0))
        if norm and i > 0:
            layers.append(nn.BatchNorm2d(ch))
        layers.append(nn.LeakyReLU(0.2, inplace=True))
        ch_in, ch = ch, ch * 2
    return nn.Sequential(*layers), ch_in


class Discriminator(nn.Module):
    """Conditional critic D(x, y) -> one logit (BCE) or score (W-loss) per image.

    kind="concat": conv over the image plus one one-hot channel per class.
    kind="projection": phi(x) from conv over the image alone, then psi(phi) + embed(y) . phi.
    norm: BatchNorm in the hidden blocks (BCE); use False for W-loss with gradient penalty,
    whose per-sample gradients BatchNorm would couple.
    """

    def __init__(
        self,
        n_classes: int,
        image_size: int = 16,
        channels: int = 1,
        base_channels: int = 64,
        kind: str = "concat",
        norm: bool = True,
    ):
        super().__init__()
        if kind not in DISCRIMINATORS:
            raise ValueError(f"kind must be one of {DISCRIMINATORS}, got {kind!r}")
        self.kind, self.n_classes = kind, n_classes
        in_ch = channels + (n_classes if kind == "concat" else 0)
        self.trunk, ch = _conv_trunk(in_ch, image_size, base_channels, norm)
        s0, _ = stages(image_size)
        if kind == "concat":
            self.head = nn.Conv2d(ch, 1, s0)  # s0 x s0 -> 1 x 1
        else:
            self.psi = nn.Linear(ch, 1)
            self.embed = nn.Embedding(n_classes, ch)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x, labels), labels)

    def features(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The trunk's output maps [B, C, s0, s0], shared with a Q head (disentangle.py)."""
        if self.kind == "concat":
            maps = onehot_channels(labels, self.n_classes, x.shape[2], x.shape[3]).to(x.dtype)
            return self.trunk(torch.cat([x, maps], dim=1))
        return self.trunk(x)

    def score(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Trunk features -> one logit or score per image."""
        if self.kind == "concat":
            return self.head(h).flatten()
        phi = h.sum(dim=(2, 3))  # global sum pooling
        return self.psi(phi).flatten() + (self.embed(labels) * phi).sum(dim=1)


class CourseDiscriminator(nn.Module):
    """The source's conditional critic for 28x28 images: the image plus one one-hot channel per
    class, then Conv(4, stride 2, no padding) + BatchNorm + LeakyReLU(0.2) twice (28 -> 13 -> 5;
    hidden h then 2h channels) and a last Conv(4, stride 2) to one channel (5 -> 1): one logit
    per image, ``forward`` returns [B, 1] as the source's ``view(len(x), -1)`` does."""

    def __init__(self, n_classes: int, channels: int = 1, hidden: int = 64):
        super().__init__()
        self.n_classes = n_classes

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 4, 2), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)
            )

        self.disc = nn.Sequential(
            block(channels + n_classes, hidden),
            block(hidden, 2 * hidden),
            nn.Conv2d(2 * hidden, 1, 4, 2),
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        maps = onehot_channels(labels, self.n_classes, x.shape[2], x.shape[3]).to(x.dtype)
        return self.disc(torch.cat([x, maps], dim=1)).view(len(x), -1)


class FeatureNet(nn.Module):
    """Image -> (class logits [B, n_classes], continuous factors [B, n_factors]).

    A small conv trunk shared by a class head and regression heads; it labels generated images
    for direction discovery and evaluation.
    """

    def __init__(
        self,
        n_classes: int,
        n_factors: int = 0,
        image_size: int = 16,
        channels: int = 1,
        base_channels: int = 32,
    ):
        super().__init__()
        self.trunk, ch = _conv_trunk(channels, image_size, base_channels, norm=True)
        self.classify = nn.Linear(ch, n_classes)
        self.regress = nn.Linear(ch, n_factors) if n_factors else None
        self.n_factors = n_factors

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x).mean(dim=(2, 3))
        factors = self.regress(h) if self.regress is not None else h.new_zeros(len(h), 0)
        return self.classify(h), factors
