"""Disentanglement in training: InfoGAN-style latent codes, L = L_gan + lambda * reg_d.

The first ``n_codes`` dimensions of z carry continuous codes and, optionally, the next one a
categorical code with ``n_categories`` values (Chen et al., 2016). A Q head on the
discriminator's convolutional features predicts the codes back from a generated image, and
both players add ``lambda * reg_d`` to their losses, where

    reg_d = mean_j (c_j - mu_j(x))^2  +  CE(softmax(logits(x)), k)   (mean over codes and batch)

is the negative of InfoGAN's variational lower bound on I(c; G(z, y)) up to constants: the
log-likelihood of a unit-variance Gaussian Q(c | x) for the continuous codes (i.e. MSE) and of
a categorical Q(k | x) for the categorical one. Minimising it over G and Q raises the bound, so
G keeps each code readable from its output.

How the codes enter z (the random stream is that of plain training):

    continuous  c_j = erf(z_j / sqrt 2) = 2 Phi(z_j) - 1  ~  U(-1, 1),     j < n_codes
    categorical k   = floor(K Phi(z_n))                  ~  U{0, ..., K-1}, the next dim

The generator still receives the ordinary N(0, 1) value z_j; the code is an invertible (or, for
k, equal-probability binned) function of it. So a run with codes draws exactly the same
batches and noise as a run without, the trained artifact samples with the runtime's ordinary
noise, and moving z_j moves c_j monotonically. The Q head (``QHead``) is attached to the
discriminator as ``D.q_head``: it shares D's trunk, is optimised with D on the discriminator
step (InfoGAN's D/Q update), is saved in checkpoints with D, and is not part of the artifact.

Supervised variant (``supervised_codes``, shapes only): z dims [0, m) are reserved for chosen
true factors (SUPERVISED_FACTORS). Each factor f in [lo, hi] maps to the code
c = 2 (f - lo) / (hi - lo) - 1 in [-1, 1], which enters z as z = sqrt 2 erfinv(c), again N(0, 1)
for the uniformly drawn factors. Generated samples take the codes of the real batch's images
(so classes and factors keep the data's joint law, correlations included), and a factor
regressor R (a FeatureNet regression head, attached as ``D.factor_net`` and fitted on real
images with their codes in D's step) must read them back: reg_d = MSE(R(G(z, y)), c).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN = 128


@dataclass(frozen=True)
class InfoCodes:
    """Which z dimensions are codes: [0, n_codes) continuous, then one categorical if K > 0."""

    n_codes: int
    n_categories: int = 0

    @property
    def n_dims(self) -> int:
        return self.n_codes + (1 if self.n_categories else 0)

    @property
    def n_outputs(self) -> int:
        return self.n_codes + self.n_categories

    def continuous(self, z: torch.Tensor) -> torch.Tensor:
        """[B, n_codes] codes in (-1, 1) from the first z dims."""
        return torch.erf(z[:, : self.n_codes] / math.sqrt(2.0))

    def categorical(self, z: torch.Tensor) -> torch.Tensor:
        """[B] int64 codes in [0, n_categories) from z dim n_codes (equal-probability bins)."""
        u = 0.5 * (1.0 + torch.erf(z[:, self.n_codes] / math.sqrt(2.0)))
        k = torch.floor(u * self.n_categories).to(torch.int64)
        return k.clamp_(0, self.n_categories - 1)

    def describe(self) -> dict:
        """Provenance entry: which dims hold which code and how it maps from z."""
        out = {
            "continuous_dims": list(range(self.n_codes)),
            "continuous": "c = erf(z / sqrt 2) ~ U(-1, 1)",
        }
        if self.n_categories:
            out["categorical_dim"] = self.n_codes
            out["categorical"] = (
                f"k = floor({self.n_categories} Phi(z)), {self.n_categories} values"
            )
        return out


class QHead(nn.Module):
    """D's trunk features [B, C, s, s] -> [B, n_codes] code means, then [B, K] category logits."""

    def __init__(self, in_features: int, n_outputs: int, hidden: int = HIDDEN):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, n_outputs),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def attach_q_head(D: nn.Module, codes: InfoCodes, image_size: int, channels: int) -> QHead:
    """Build a Q head sized for D's trunk and attach it as ``D.q_head`` (so D's optimiser and
    checkpoints include it). Call after D's own initialisation: D's weights and the global RNG
    stream up to that point stay those of a run without codes."""
    from ctrlgan.training.nets import init_weights

    was_training = D.training
    D.eval()  # the probe must not move D's BatchNorm running statistics
    try:
        with torch.no_grad():
            probe = D.features(
                torch.zeros(1, channels, image_size, image_size), torch.zeros(1, dtype=torch.int64)
            )
    finally:
        D.train(was_training)
    head = QHead(probe[0].numel(), codes.n_outputs)
    init_weights(head)
    D.q_head = head
    return head


def info_loss(codes: InfoCodes, q_out: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """reg_d: MSE of the continuous codes (unit-variance Gaussian NLL up to a constant) plus the
    cross-entropy of the categorical code, given Q's outputs on G(z, y)."""
    loss = q_out.new_zeros(())
    if codes.n_codes:
        loss = loss + F.mse_loss(q_out[:, : codes.n_codes], codes.continuous(z))
    if codes.n_categories:
        loss = loss + F.cross_entropy(q_out[:, codes.n_codes :], codes.categorical(z))
    return loss


SUPERVISED_FACTORS = ("scale", "pos_x", "pos_y")  # orientation is circular and symmetric
_CODE_LIMIT = 1 - 1e-6  # keeps erfinv finite at the ends of a factor's range


def factor_codes(factors: torch.Tensor, factor_names, chosen) -> torch.Tensor:
    """Shapes factors [N, F] -> codes [N, len(chosen)] in [-1, 1], linear in each factor."""
    from ctrlgan.training.data import _FACTOR_RANGES

    cols = [list(factor_names).index(name) for name in chosen]
    lo = torch.tensor([_FACTOR_RANGES[name][0] for name in chosen], dtype=torch.float32)
    hi = torch.tensor([_FACTOR_RANGES[name][1] for name in chosen], dtype=torch.float32)
    return (2 * (factors[:, cols].to(torch.float32) - lo) / (hi - lo) - 1).clamp(-1, 1)


def codes_to_z(codes: torch.Tensor) -> torch.Tensor:
    """Codes in [-1, 1] -> the N(0, 1) values z = sqrt 2 erfinv(c) that carry them."""
    return math.sqrt(2.0) * torch.erfinv(codes.clamp(-_CODE_LIMIT, _CODE_LIMIT))


def attach_factor_net(D: nn.Module, n_factors: int, image_size: int, channels: int) -> nn.Module:
    """A FeatureNet regressor for the supervised codes, attached as ``D.factor_net``."""
    from ctrlgan.training.nets import FeatureNet, init_weights

    net = FeatureNet(1, n_factors, image_size, channels, base_channels=16)
    init_weights(net)
    D.factor_net = net
    return net


def regress(net: nn.Module, images: torch.Tensor, train: bool = True) -> torch.Tensor:
    """The regressor's factor codes [B, m]; train=False uses its running BatchNorm statistics
    (generated images are read the way real ones were learnt), gradients still flow."""
    was = net.training
    net.train(train)
    try:
        return net(images)[1]
    finally:
        net.train(was)
