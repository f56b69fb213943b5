"""Reading the true factors of shapes off images: a learned network and exact moment readers.

Shapes have exact ground truth (scale, orientation, pos_x, pos_y and the shape class), so the
features a direction is asked to change are the true factors. Two readers, used for different
jobs so that directions are never graded by the reader that found them:

* Discovery (``discovery``): a small network learned from the real images, then frozen, the
  source's "feature classifier": the boundary method labels generated samples with it and the
  gradient method ascends through it. ``nets._conv_trunk`` (stride-2 convolutions with
  LeakyReLU, no normalisation, so training and inference compute the same function) down to
  s0 x s0, flattened (position survives), a hidden layer, then a class head and five regression
  outputs: scale, pos_x, pos_y standardised by the training set's mean and spread, and
  (cos phi, sin phi) of the *effective* orientation phi = k theta, k the class's rotational
  symmetry order (an image fixes theta only modulo 2 pi / k).
* Measurement (``measurement``): exact readers from the image moments, for the effect matrix,
  the monotonic share and reports. By the data set's construction the ink centroid of a shape
  *is* its position, with pixel centres at ((j + 0.5) / W, (i + 0.5) / H); its ink mass is its
  area, which is a class constant times scale^2, so scale = g[class] sqrt(mass / (H W)) with
  one gain per class fitted on the real images (least squares through the origin). Scale needs
  the class the image was generated for (``labels``). Orientation has no exact reader here:
  both sets read it with the network.

Features (float32 [B] each, differentiable in the images):

    scale, pos_x, pos_y   in the data's units (scale 0.5..1, positions 0.25..0.75)
    orientation           atan2(sin phi, cos phi) / k in (-pi/k, pi/k], k of the predicted class
                          (circular: a direction for it wraps around; never held by value)

``fit`` trains the network and the gains on the first 90% of the images and reports held-out
quality on the rest: R^2 per factor for both readers, the circular correlation
mean cos(phi_read - phi_true) for orientation, and the class accuracy. Both travel in the
artifact as ``features.safetensors``; the manifest's provenance["features"] holds the
configuration and that quality.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ctrlgan.errors import InvalidRequest
from ctrlgan.training.features import MOMENTS, FeatureSet, check_names
from ctrlgan.training.metrics import SHAPE_SYMMETRY, ink_moments
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
        self.register_buffer("scale_gain", torch.ones(len(classes)))  # exact reader, per class

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

    def exact(self, images, labels, names=LINEAR) -> dict[str, torch.Tensor]:
        """The moment readers (see the module docstring) for ``names`` within LINEAR."""
        mass, cx, cy = ink_moments(images)
        values = {"pos_x": cx, "pos_y": cy}
        if "scale" in names:
            if labels is None:
                raise InvalidRequest("labels", "reading scale needs the images' classes")
            labels = torch.as_tensor(labels)
            values["scale"] = self.scale_gain[labels] * mass.clamp_min(0).sqrt()
        return {name: values[name].float() for name in names}

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
    with torch.no_grad():
        root = ink_moments(images[:n_fit])[0].clamp_min(0).sqrt()
        for c in range(len(classes)):
            sel = labels[:n_fit] == c
            if sel.any():  # scale = g sqrt(mass): least squares through the origin
                g = (factors[:n_fit, 0][sel].double() * root[sel]).sum() / (root[sel] ** 2).sum()
                net.scale_gain[c] = float(g)
    quality = evaluate(net, images[n_fit:], labels[n_fit:], factors[n_fit:])
    quality["seconds"] = round(time.perf_counter() - started, 1)
    return net, quality


@torch.no_grad()
def evaluate(net: ShapeFeatureNet, images, labels, factors) -> dict:
    """Held-out agreement with the true factors: R^2 of the network's and of the exact readers
    (scale, pos_x, pos_y), circular correlation (orientation, effective angle) and class
    accuracy."""
    logits, out = net(images)
    read = net.features(images)
    quality = {"class_accuracy": round(float((logits.argmax(1) == labels).float().mean()), 4)}
    exact = net.exact(images, labels)
    for i, name in zip((0, 2, 3), LINEAR, strict=True):
        true = factors[:, i].double()
        spread = ((true - true.mean()) ** 2).sum()
        for prefix, got in (("r2", read), ("exact_r2", exact)):
            resid = ((got[name].double() - true) ** 2).sum()
            quality[f"{prefix}_{name}"] = round(float(1 - resid / spread), 4)
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


def feature_sets(artifact) -> tuple[FeatureSet, FeatureSet]:
    """(discovery, measurement) readers for ``artifact``: the network and the exact readers
    when it ships a feature network, else the image moments of features.py for both."""
    net = load(artifact)
    if net is None:
        return MOMENTS, MOMENTS
    expected = (net.config["channels"], net.config["image_size"], net.config["image_size"])

    def checked(images, names):
        names = check_names(names, known=NAMES)
        x = torch.as_tensor(images) if not torch.is_tensor(images) else images
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise InvalidRequest(
                "images",
                f"the feature network reads [B, {', '.join(map(str, expected))}] images, "
                f"got {tuple(x.shape)}",
            )
        return x, names

    def discover(images, names=NAMES, keep_grad: bool = False, labels=None):
        x, names = checked(images, names)
        with torch.set_grad_enabled(keep_grad):
            values = net.features(x if keep_grad else x.detach(), names)
        return {n: v if keep_grad else v.detach() for n, v in values.items()}

    def measure(images, names=NAMES, keep_grad: bool = False, labels=None):
        x, names = checked(images, names)
        with torch.set_grad_enabled(keep_grad):
            x = x if keep_grad else x.detach()
            values = net.exact(x, labels, [n for n in names if n in LINEAR])
            if "orientation" in names:
                values |= net.features(x, ("orientation",))
        return {n: values[n] if keep_grad else values[n].detach() for n in names}

    circular = ("orientation",)
    return (
        FeatureSet(NAMES, "feature network (learned)", discover, LINEAR, circular),
        FeatureSet(NAMES, "exact moment readers (orientation: network)", measure, LINEAR, circular),
    )
