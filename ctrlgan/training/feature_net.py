"""The learned feature network of shapes models: true factors read off images by regression heads.

Shapes have exact ground truth (scale, orientation, pos_x, pos_y and the shape class), so the
features a direction is asked to change are the true factors, learned from the real images by a
small network and then frozen: the boundary method labels generated samples with it, the gradient
method ascends through it, and the effect matrix and monotonic share measure with it.

Network: ``nets._conv_trunk`` (stride-2 convolutions with LeakyReLU, no normalisation, so that
training and inference compute the same function) down to s0 x s0, flattened (position survives),
a hidden layer, then a class head and five regression outputs: scale, pos_x, pos_y standardised
by the training set's mean and spread, and (cos phi, sin phi) of the *effective* orientation
phi = k theta, k the class's rotational symmetry order (an image fixes theta only modulo
2 pi / k). Features (float32 [B] each, differentiable in the images):

    scale, pos_x, pos_y   the regressions, in the data's units
    orientation           atan2(sin phi, cos phi) / k in (-pi/k, pi/k], k of the predicted class
                          (circular: a direction for it wraps around)

``fit`` trains on the first 90% of the images and reports held-out quality on the rest: R^2 per
factor, the circular correlation mean cos(phi_read - phi_true) for orientation, and the class
accuracy. The weights travel in the artifact as ``features.safetensors``; the manifest's
provenance["features"] holds the configuration and that quality.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ctrlgan.errors import InvalidRequest
from ctrlgan.training.features import MOMENTS, FeatureSet, check_names
from ctrlgan.training.metrics import SHAPE_SYMMETRY
from ctrlgan.training.nets import _conv_trunk

FEATURE_NET = "features.safetensors"
NAMES = ("scale", "orientation", "pos_x", "pos_y")
LINEAR = ("scale", "pos_x", "pos_y")  # regressed directly; orientation through (cos, sin)
HIDDEN = 128


class ShapeFeatureNet(nn.Module):
    """Images [B, C, H, W] in [-1, 1] -> (class logits [B, n_classes], outputs [B, 5])."""

    def __init__(self, classes, image_size: int = 16, channels: int = 1, base_channels: int = 32):
        super().__init__()
        unknown = [c for c in classes if c not in SHAPE_SYMMETRY]
        if unknown:
            raise InvalidRequest("classes", f"not shapes classes: {unknown}")
        self.classes = list(classes)
        self.config = {
            "classes": self.classes,
            "image_size": image_size,
            "channels": channels,
            "base_channels": base_channels,
        }
        self.trunk, ch = _conv_trunk(channels, image_size, base_channels, norm=False)
        s0 = 7 if image_size == 28 else 4
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(ch * s0 * s0, HIDDEN),
            nn.LeakyReLU(0.2),
            nn.Linear(HIDDEN, len(classes) + 5),
        )
        self.register_buffer("order", torch.tensor([SHAPE_SYMMETRY[c] for c in classes]).float())
        self.register_buffer("mean", torch.zeros(3))
        self.register_buffer("std", torch.ones(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.trunk(x))
        return out[:, : len(self.classes)], out[:, len(self.classes) :]

    def features(self, images, names=NAMES) -> dict[str, torch.Tensor]:
        """{name: float32 [B]} for ``names`` (a subset of NAMES); gradients flow to the images."""
        logits, out = self(images.float())
        linear = out[:, :3] * self.std + self.mean
        values = {name: linear[:, i] for i, name in enumerate(LINEAR)}
        if "orientation" in names:
            k = self.order[logits.argmax(dim=1)]
            values["orientation"] = torch.atan2(out[:, 4], out[:, 3]) / k
        return {name: values[name] for name in names}

    def targets(self, labels: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """Training targets [N, 5] from true (scale, orientation, pos_x, pos_y) factors."""
        phi = self.order[labels] * factors[:, 1]
        linear = (factors[:, [0, 2, 3]] - self.mean) / self.std
        return torch.cat([linear, torch.cos(phi)[:, None], torch.sin(phi)[:, None]], dim=1)


def fit(
    images: torch.Tensor,
    labels: torch.Tensor,
    factors: torch.Tensor,
    classes,
    steps: int = 4000,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[ShapeFeatureNet, dict]:
    """Train a ShapeFeatureNet on real shapes; returns (net in eval mode, held-out quality)."""
    if factors is None or factors.shape[1] != 4:
        raise InvalidRequest("data", "the feature network needs shapes' four true factors")
    n = len(images)
    n_fit = n - max(1, n // 10)
    if n_fit < 2 * len(classes):
        raise InvalidRequest("data", f"need at least {2 * len(classes) + 1} shapes, got {n}")
    batch_size = min(batch_size, n_fit)
    started = time.perf_counter()
    torch.manual_seed(seed)
    _, channels, size, _ = images.shape
    net = ShapeFeatureNet(classes, size, channels)
    factors = factors.float()
    net.mean.copy_(factors[:n_fit, [0, 2, 3]].mean(0))
    net.std.copy_(factors[:n_fit, [0, 2, 3]].std(0).clamp_min(1e-6))
    targets = net.targets(labels, factors)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, n_fit, (batch_size,), generator=rng)
        logits, out = net(images[idx])
        loss = F.cross_entropy(logits, labels[idx]) + F.mse_loss(out, targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    net.eval()
    quality = evaluate(net, images[n_fit:], labels[n_fit:], factors[n_fit:])
    quality["seconds"] = round(time.perf_counter() - started, 1)
    return net, quality


@torch.no_grad()
def evaluate(net: ShapeFeatureNet, images, labels, factors) -> dict:
    """Held-out agreement with the true factors: R^2 (scale, pos_x, pos_y), circular
    correlation (orientation, effective angle) and class accuracy."""
    logits, out = net(images)
    read = net.features(images)
    quality = {"class_accuracy": round(float((logits.argmax(1) == labels).float().mean()), 4)}
    for i, name in zip((0, 2, 3), LINEAR, strict=True):
        true = factors[:, i].double()
        resid = ((read[name].double() - true) ** 2).sum()
        quality[f"r2_{name}"] = round(float(1 - resid / ((true - true.mean()) ** 2).sum()), 4)
    phi_true = net.order[labels] * factors[:, 1]
    phi_read = torch.atan2(out[:, 4], out[:, 3])
    quality["orientation_circular_corr"] = round(float(torch.cos(phi_read - phi_true).mean()), 4)
    return quality


def describe(net: ShapeFeatureNet, quality: dict) -> dict:
    """The manifest's provenance["features"] entry."""
    return {
        "file": FEATURE_NET,
        "kind": "shapes-regressor",
        "names": list(NAMES),
        **net.config,
        "held_out": quality,
    }


def load(artifact) -> ShapeFeatureNet | None:
    """The artifact's feature network (frozen, eval mode), or None when it has none."""
    entry = artifact.manifest.provenance.get("features")
    if FEATURE_NET not in artifact.manifest.files or not isinstance(entry, dict):
        return None
    net = ShapeFeatureNet(
        entry["classes"], entry["image_size"], entry["channels"], entry["base_channels"]
    )
    net.load_state_dict(artifact.load_tensors(FEATURE_NET))
    net.eval().requires_grad_(False)
    return net


def feature_set(artifact) -> FeatureSet:
    """What ``ctrlgan directions`` measures on ``artifact``: the true factors through its
    feature network when it ships one, else the image moments of features.py."""
    net = load(artifact)
    if net is None:
        return MOMENTS

    def measure(images, names=NAMES, keep_grad: bool = False) -> dict[str, torch.Tensor]:
        names = check_names(names, known=NAMES)
        x = torch.as_tensor(images) if not torch.is_tensor(images) else images
        expected = (net.config["channels"], net.config["image_size"], net.config["image_size"])
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise InvalidRequest(
                "images",
                f"the feature network reads [B, {', '.join(map(str, expected))}] images, "
                f"got {tuple(x.shape)}",
            )
        with torch.set_grad_enabled(keep_grad):
            values = net.features(x if keep_grad else x.detach(), names)
        return {n: v if keep_grad else v.detach() for n, v in values.items()}

    return FeatureSet(
        NAMES, "feature network (shapes' true factors)", measure, LINEAR, ("orientation",)
    )
