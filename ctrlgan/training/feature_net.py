"""Feature networks: the features a direction changes, learned from the real images.

Every model that ``ctrlgan train`` writes ships one unless ``--feature-steps 0``
(``features.safetensors``; the manifest's
provenance["features"] holds its configuration and held-out quality), the source's frozen
"feature classifier": the boundary method labels generated samples with it and the gradient
method ascends through it. Directions are then *measured* by exact readers, so that none is
graded by the reader that found it. Two kinds:

* ``moments`` (digits and any other data): regression heads for features.py's image measures
  (thickness, slant, size, pos_x, pos_y), learned from their values on the real images;
  measured exactly by features.measure.
* ``shapes``: the true factors scale, orientation, pos_x, pos_y. Regression heads for scale,
  pos_x, pos_y and (cos phi, sin phi) of the *effective* orientation phi = k theta, k the
  class's rotational symmetry order (an image fixes theta only modulo 2 pi / k). Measured by
  exact moment readers: by the data set's construction the ink centroid of a shape *is* its
  position, with pixel centres at ((j + 0.5) / W, (i + 0.5) / H); its ink mass is its area, a
  class constant times scale^2, so scale = g[class] sqrt(mass / (H W)) with one gain per class
  fitted on the real images (least squares through the origin). Scale needs the class the
  image was generated for (``labels``). Orientation has no exact reader: the network's.

Network: ``nets._conv_trunk`` (stride-2 convolutions with LeakyReLU, no normalisation, so that
training and inference compute the same function) down to s0 x s0, flattened (position
survives), a hidden layer, then a class head and the regression outputs, standardised by the
training set's mean and spread. Features are float32 [B] each and differentiable in the images;
orientation is atan2(sin phi, cos phi) / k in (-pi/k, pi/k], k of the images' class (their
labels where given, else the class head's prediction)
(circular: a direction for it wraps around, and it is never held fixed by value).

``fit`` trains on 90% of the images (a seeded shuffle) and reports held-out quality on the rest: R^2
per feature (for shapes against the true factors, for the network and the exact readers), the
circular correlation mean cos(phi_read - phi_true) for orientation, and the class accuracy.
"""

import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from ctrlgan.errors import InvalidRequest
from ctrlgan.training.features import FEATURES, MOMENTS, FeatureSet, check_names, measure
from ctrlgan.training.metrics import SHAPE_SYMMETRY, ink_moments
from ctrlgan.training.nets import _conv_trunk

FEATURE_NET = "features.safetensors"
KINDS = ("moments", "shapes")
NAMES = ("scale", "orientation", "pos_x", "pos_y")  # shapes
LINEAR = ("scale", "pos_x", "pos_y")  # shapes: regressed directly; orientation via (cos, sin)
HIDDEN = 128


def min_images(classes) -> int:
    """The fewest images ``fit`` accepts: two per class to train on, plus a held-out one."""
    return 2 * len(classes) + 1


def kind_for(classes, factors) -> str:
    """ "shapes" for data with shapes' classes and true factors, else "moments"."""
    shapes = factors is not None and all(c in SHAPE_SYMMETRY for c in classes)
    return "shapes" if shapes else "moments"


class FeatureNetwork(nn.Module):
    """Images [B, C, H, W] in [-1, 1] -> (class logits [B, n_classes], outputs [B, n_out])."""

    def __init__(
        self,
        classes,
        kind: str = "moments",
        image_size: int = 16,
        channels: int = 1,
        base_channels: int = 32,
    ):
        super().__init__()
        if kind not in KINDS:
            raise InvalidRequest("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
        unknown = [c for c in classes if c not in SHAPE_SYMMETRY]
        if kind == "shapes" and unknown:
            raise InvalidRequest("classes", f"not shapes classes: {unknown}")
        self.classes, self.kind = list(classes), kind
        self.names = NAMES if kind == "shapes" else FEATURES
        self.linear = LINEAR if kind == "shapes" else FEATURES
        self.config = {
            "kind": kind,
            "classes": self.classes,
            "image_size": image_size,
            "channels": channels,
            "base_channels": base_channels,
        }
        self.trunk, ch = _conv_trunk(channels, image_size, base_channels, norm=False)
        s0 = 7 if image_size == 28 else 4
        n_out = len(self.linear) + (2 if kind == "shapes" else 0)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(ch * s0 * s0, HIDDEN),
            nn.LeakyReLU(0.2),
            nn.Linear(HIDDEN, len(classes) + n_out),
        )
        order = [SHAPE_SYMMETRY.get(c, 1) for c in classes]
        self.register_buffer("order", torch.tensor(order).float())
        self.register_buffer("mean", torch.zeros(len(self.linear)))
        self.register_buffer("std", torch.ones(len(self.linear)))
        self.register_buffer("scale_gain", torch.ones(len(classes)))  # shapes' exact reader

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.trunk(x))
        return out[:, : len(self.classes)], out[:, len(self.classes) :]

    def features(self, images, names=None, labels=None) -> dict[str, torch.Tensor]:
        """{name: float32 [B]} for ``names`` (default all); gradients flow to the images.
        Orientation's symmetry order comes from ``labels`` when given, else the class head."""
        names = self.names if names is None else names
        logits, out = self(images.float())
        n = len(self.linear)
        linear = out[:, :n] * self.std + self.mean
        values = {name: linear[:, i] for i, name in enumerate(self.linear)}
        if "orientation" in names:
            classes = logits.argmax(dim=1) if labels is None else torch.as_tensor(labels)
            k = self.order[classes]
            values["orientation"] = torch.atan2(out[:, n + 1], out[:, n]) / k
        return {name: values[name] for name in names}

    def exact(self, images, labels, names=LINEAR) -> dict[str, torch.Tensor]:
        """Shapes' exact moment readers (the module docstring) for ``names`` within LINEAR."""
        mass, cx, cy = ink_moments(images)
        values = {"pos_x": cx, "pos_y": cy}
        if "scale" in names:
            if labels is None:
                raise InvalidRequest("labels", "reading scale needs the images' classes")
            labels = torch.as_tensor(labels)
            values["scale"] = self.scale_gain[labels] * mass.clamp_min(0).sqrt()
        return {name: values[name].float() for name in names}

    def values(self, images, labels, factors) -> torch.Tensor:
        """What the regression heads learn, in the data's units: [N, len(linear)]."""
        if self.kind == "shapes":
            return factors[:, [0, 2, 3]].float()
        measured = measure(images)
        return torch.stack([measured[name] for name in FEATURES], dim=1)

    def targets(self, values, labels, factors) -> torch.Tensor:
        """Training targets: the standardised values, plus (cos phi, sin phi) for shapes."""
        standard = (values - self.mean) / self.std
        if self.kind != "shapes":
            return standard
        phi = self.order[labels] * factors[:, 1]
        return torch.cat([standard, torch.cos(phi)[:, None], torch.sin(phi)[:, None]], dim=1)


def fit(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes,
    factors: torch.Tensor | None = None,
    steps: int = 4000,
    batch_size: int = 256,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
) -> tuple[FeatureNetwork, dict]:
    """Train a FeatureNetwork on real images (shapes' kind when ``factors`` are shapes' true
    factors, else the image moments); returns (net in eval mode, held-out quality).
    ``progress(n)`` is called after every n steps (every step, or every 10 of them)."""
    kind = kind_for(classes, factors)
    if factors is not None and kind == "shapes" and factors.shape[1] != 4:
        raise InvalidRequest("data", "the shapes feature network needs the four true factors")
    n = len(images)
    n_fit = n - max(1, n // 10)
    # A seeded shuffle before the split: data sets sorted by class must not hold out one class.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit_idx, held = order[:n_fit], order[n_fit:]
    if n < min_images(classes):
        raise InvalidRequest("data", f"need at least {min_images(classes)} images, got {n}")
    batch_size = min(batch_size, n_fit)
    started = time.perf_counter()
    torch.manual_seed(seed)
    _, channels, size, _ = images.shape
    net = FeatureNetwork(classes, kind, size, channels)
    factors = None if factors is None else factors.float()
    values = net.values(images, labels, factors)
    net.mean.copy_(values[fit_idx].mean(0))
    net.std.copy_(values[fit_idx].std(0).clamp_min(1e-6))
    targets = net.targets(values, labels, factors)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = torch.Generator().manual_seed(seed)
    net.train()
    for step in range(steps):
        idx = fit_idx[torch.randint(0, n_fit, (batch_size,), generator=rng)]
        logits, out = net(images[idx])
        loss = F.cross_entropy(logits, labels[idx]) + F.mse_loss(out, targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if progress is not None and (step + 1) % 10 == 0:
            progress(10)
    if progress is not None and steps % 10:
        progress(steps % 10)
    net.eval()
    if kind == "shapes":
        with torch.no_grad():
            root = ink_moments(images[fit_idx])[0].clamp_min(0).sqrt()
            for c in range(len(classes)):
                sel = labels[fit_idx] == c
                if sel.any():  # scale = g sqrt(mass): least squares through the origin
                    g = (factors[fit_idx, 0][sel].double() * root[sel]).sum()
                    net.scale_gain[c] = float(g / (root[sel] ** 2).sum())
    held_factors = None if factors is None else factors[held]
    quality = evaluate(net, images[held], labels[held], values[held], held_factors)
    quality["seconds"] = round(time.perf_counter() - started, 1)
    return net, quality


@torch.no_grad()
def evaluate(net: FeatureNetwork, images, labels, values, factors=None) -> dict:
    """Held-out agreement: class accuracy and R^2 of every regression against ``values`` (the
    true factors for shapes, with the exact readers' R^2 too, and the circular correlation of
    the effective orientation; else the measured moments)."""
    logits, out = net(images)
    read = net.features(images)
    quality = {"class_accuracy": round(float((logits.argmax(1) == labels).float().mean()), 4)}
    exact = net.exact(images, labels) if net.kind == "shapes" else {}
    for i, name in enumerate(net.linear):
        true = values[:, i].double()
        spread = ((true - true.mean()) ** 2).sum().clamp_min(1e-12)
        for prefix, got in (("r2", read), ("exact_r2", exact)):
            if name in got:
                resid = ((got[name].double() - true) ** 2).sum()
                quality[f"{prefix}_{name}"] = round(float(1 - resid / spread), 4)
    if net.kind == "shapes":
        n = len(net.linear)
        phi_true = net.order[labels] * factors[:, 1]
        phi_read = torch.atan2(out[:, n + 1], out[:, n])
        quality["orientation_circular_corr"] = round(
            float(torch.cos(phi_read - phi_true).mean()), 4
        )
    return quality


def describe(net: FeatureNetwork, quality: dict) -> dict:
    """The manifest's provenance["features"] entry."""
    return {"file": FEATURE_NET, "names": list(net.names), **net.config, "held_out": quality}


def load(artifact) -> FeatureNetwork | None:
    """The artifact's feature network (frozen, eval mode), or None when it has none."""
    entry = artifact.manifest.provenance.get("features")
    if FEATURE_NET not in artifact.manifest.files or not isinstance(entry, dict):
        return None
    kind = entry.get("kind")
    if kind not in KINDS:  # early shapes networks wrote "shapes-regressor", or no kind
        kind = "shapes" if entry.get("names") == list(NAMES) else "moments"
    try:
        net = FeatureNetwork(
            entry["classes"], kind, entry["image_size"], entry["channels"], entry["base_channels"]
        )
        net.load_state_dict(artifact.load_tensors(FEATURE_NET))
    except (KeyError, TypeError, RuntimeError, InvalidRequest) as e:
        raise InvalidRequest(
            "model",
            f"{artifact.path}: its feature network does not load ({str(e).splitlines()[0]}); "
            "retrain, or train with --feature-steps 0 for none",
        ) from None
    net.eval().requires_grad_(False)
    return net


def feature_sets(artifact) -> tuple[FeatureSet, FeatureSet]:
    """(discovery, measurement) readers for ``artifact``: its feature network and the exact
    readers of its kind; a model without a network uses the image moments for both."""
    net = load(artifact)
    if net is None:
        return MOMENTS, MOMENTS
    expected = (net.config["channels"], net.config["image_size"], net.config["image_size"])

    def checked(images, names):
        names = check_names(names, known=net.names)
        x = torch.as_tensor(images) if not torch.is_tensor(images) else images
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise InvalidRequest(
                "images",
                f"the feature network reads [B, {', '.join(map(str, expected))}] images, "
                f"got {tuple(x.shape)}",
            )
        return x, names

    def discover(images, names=net.names, keep_grad: bool = False, labels=None):
        x, names = checked(images, names)
        with torch.set_grad_enabled(keep_grad):
            values = net.features(x if keep_grad else x.detach(), names, labels)
        return {n: v if keep_grad else v.detach() for n, v in values.items()}

    learned = FeatureSet(net.names, "feature network (learned)", discover, MOMENTS.defaults)
    if net.kind == "moments":
        return learned, MOMENTS

    def exact(images, names=NAMES, keep_grad: bool = False, labels=None):
        x, names = checked(images, names)
        with torch.set_grad_enabled(keep_grad):
            x = x if keep_grad else x.detach()
            values = net.exact(x, labels, [n for n in names if n in LINEAR])
            if "orientation" in names:
                values |= net.features(x, ("orientation",), labels)
        return {n: values[n] if keep_grad else values[n].detach() for n in names}

    circular = ("orientation",)
    return (
        replace(learned, defaults=LINEAR, circular=circular),
        FeatureSet(NAMES, "exact moment readers (orientation: network)", exact, LINEAR, circular),
    )
