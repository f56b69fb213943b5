"""Measurable image features: what a direction in z-space is asked to change.

Computed from images x in [-1, 1] (NCHW, any channel count), all vectorised over the batch.
The ink of a pixel is w = (x + 1) / 2 in [0, 1], averaged over channels; its total mass is
m = sum w. Coordinates are u = column / (W - 1) (left 0, right 1) and v = row / (H - 1)
(top 0, bottom 1), so positions are in [0, 1] whatever the image size.

    thickness  mean ink, m / (H W)                                  (stroke mass per pixel)
    pos_x      ink centroid  cx = sum w u / m                       in [0, 1], 0 = left
    pos_y      ink centroid  cy = sum w v / m                       in [0, 1], 0 = top
    slant      -mu11 / mu02, with mu11 = sum w (u - cx)(v - cy) / m and mu02 = sum w (v - cy)^2 / m:
               the horizontal shear of the ink per unit height (the least-squares slope of u on
               v); the sign is flipped because v points down, so positive = the top leans to the
               right (like italics), negative = to the left
    size       sqrt(mu20 + mu02), mu20 = sum w (u - cx)^2 / m: the ink's radius of gyration, in
               units of the image side

An image without ink (m = 0) has thickness 0 and the remaining features of a uniform image
(centroid 0.5, slant 0): every denominator is guarded by EPS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from ctrlgan.errors import InvalidRequest

FEATURES = ("thickness", "slant", "size", "pos_x", "pos_y")
EPS = 1e-6


def check_names(names, field: str = "features", known=FEATURES) -> tuple[str, ...]:
    """Validate feature names (a sequence or a comma-separated string) against ``known``."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = tuple(names)
    if not names:
        raise InvalidRequest(field, f"give one or more of {', '.join(known)}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidRequest(
            field,
            f"unknown feature(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}",
        )
    if len(set(names)) != len(names):
        raise InvalidRequest(field, f"names repeat: {', '.join(names)}")
    return names


def measure(
    images, names=FEATURES, keep_grad: bool = False, labels=None
) -> dict[str, torch.Tensor]:
    """Features of images [B, C, H, W] in [-1, 1] (tensor or array): {name: float32 [B]}.
    ``labels`` (the images' classes) is accepted like every FeatureSet's and not needed here.

    ``keep_grad``: differentiable in the images (for gradient ascent on z); ``size`` then adds
    EPS^2 under its square root so that its gradient stays finite on a blank image."""
    names = check_names(names)
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.ndim != 4 or x.shape[2] < 2 or x.shape[3] < 2:
        raise InvalidRequest("images", f"must be [B, C, H, W] with H, W >= 2, got {tuple(x.shape)}")
    x = (x if keep_grad else x.detach()).to(torch.float64)
    _, _, h, w_ = x.shape
    ink = ((x + 1) / 2).clamp(0, 1).mean(dim=1)  # [B, H, W]
    mass = ink.sum(dim=(1, 2))
    denom = mass + EPS
    u = torch.linspace(0, 1, w_, dtype=x.dtype)[None, None, :]
    v = torch.linspace(0, 1, h, dtype=x.dtype)[None, :, None]
    cx = ((ink * u).sum(dim=(1, 2)) + 0.5 * EPS) / denom
    cy = ((ink * v).sum(dim=(1, 2)) + 0.5 * EPS) / denom
    du = u - cx[:, None, None]
    dv = v - cy[:, None, None]
    mu20 = (ink * du * du).sum(dim=(1, 2)) / denom
    mu02 = (ink * dv * dv).sum(dim=(1, 2)) / denom
    mu11 = (ink * du * dv).sum(dim=(1, 2)) / denom
    values = {
        "thickness": mass / (h * w_),
        "slant": -mu11 / (mu02 + EPS),
        "size": torch.sqrt(mu20 + mu02 + (EPS * EPS if keep_grad else 0.0)),
        "pos_x": cx,
        "pos_y": cy,
    }
    return {n: values[n].to(torch.float32) for n in names}


def feature_fn(names=FEATURES):
    """``measure`` bound to ``names``: the images -> {name: [B]} callable direction search takes
    (``MOMENTS.fn``)."""
    return MOMENTS.fn(names)


@dataclass(frozen=True)
class FeatureSet:
    """The features a model's directions can change: their names, where they come from, and
    ``measure(images, names, keep_grad, labels) -> {name: float32 [B]}`` (labels: the classes
    the images were generated for, where a reader needs them). Image moments (this module) for
    every model; a shapes model that ships a feature network reads the true factors instead
    (``feature_net.feature_sets``)."""

    names: tuple[str, ...]
    source: str
    measure: Callable[..., dict[str, torch.Tensor]]  # (images, names, keep_grad, labels)
    defaults: tuple[str, ...]  # what `ctrlgan directions` finds when no --features are given
    circular: tuple[str, ...] = ()  # angles: they wrap, so they are not held fixed by value

    def check(self, names, field: str = "features") -> tuple[str, ...]:
        return check_names(names, field, self.names)

    def fn(self, names=None, keep_grad: bool = False):
        """``measure`` bound to ``names`` (default: all): (images, labels=None) -> {name: [B]}."""
        names = self.names if names is None else self.check(names)
        return partial(self.measure, names=names, keep_grad=keep_grad)


MOMENTS = FeatureSet(FEATURES, "image moments", measure, ("thickness", "slant", "size"))
