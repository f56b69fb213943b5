"""Per-sample noise editing, as the source course does it (C1W4, "Controllable Generation").

Instead of moving every sample along one shared direction, the source edits each sample's own
noise: freeze the generator and a feature classifier, then do gradient ascent on the noise only,
on a score that raises the target features and penalises any change of the others:

    get_score(current, original, target_indices, other_indices, penalty_weight)
        = mean over samples and targets of current[:, target_indices]
          - penalty_weight * mean over samples of ||current[:, others] - original[:, others]||_2
    calculate_updated_noise(noise, weight) = noise + weight * noise.grad

Both keep the source's names, argument order and arithmetic, so that its exercise values hold
exactly (tests/training/test_edit.py). ``edit_noise`` runs the source's loop on a model and
``ascend`` on a generator module and a reader:

* The reader is the artifact's feature network (``feature_net.feature_sets``, the reader that
  directions are found with), read with the gradient kept; the image moments
  (``features.MOMENTS``) when the artifact ships none. ``Edit.reader`` names the one used.
  Each reading is divided by that feature's spread over SPREAD_SAMPLES of the model's own
  samples (fixed seeds, every class; ``spread``): the analogue of the source's classifier
  logits, so that the penalty weighs features alike and one weight serves every feature. The
  spread is fixed per model, never taken from the batch being edited.
* Several targets: ``increase`` features count +, ``decrease`` features count - (their columns
  are negated before get_score); ``keep`` features are the source's other_indices, the only
  ones penalised. A feature in none of the three lists is neither raised nor penalised. The
  score raises the *mean* of the signed targets, so a target that works against another can
  fall for some samples (digits, 200 samples, thickness and slant up, size down, pos_x kept:
  thickness rose for 99.5%, slant for 100%, size fell for 84%); one target alone, the other
  two kept, moved its way for all 200, raised or lowered (benchmarks/bench_edit.py).
* Only the noise moves: the generator (eval mode, so BatchNorm uses its running statistics)
  and the reader stay frozen, the gradient is taken with respect to the noise alone
  (``torch.autograd.grad``), and every sample keeps its class.
* Batch invariance. The source's score is a mean over its batch of n, so a step moves each
  sample by weight / n times its own gradient, and a sample's edit depends on how many share
  its batch. ``ascend`` ascends n * get_score, the sum over samples: each sample moves by
  weight times the gradient of its own score whatever else is in the batch (to float rounding:
  torch's CPU kernels pick algorithms by batch size). Passing ``weight = w / n`` reproduces the
  notebook's batch of n with its weight w.
* Fresh gradients. The notebook never zeroes noise.grad (its ``opt.zero_grad()`` zeroes the
  classifier's gradients), so its step i applies the sum of every gradient so far: an
  accidental momentum. ``ascend`` takes a fresh gradient each step (plain gradient ascent);
  ``accumulate=True`` reproduces the notebook (to float rounding; tested against its loop run
  line for line).

Defaults: 10 steps of weight 1 / steps, the source's (its ``grad_steps = 10`` and
``1 / grad_steps``), and penalty 1 instead of the source's 0.1, chosen by measurement on the
bundled digits model (benchmarks/bench_edit.py; benchmarks/README.md, "Per-sample editing"):
over 200 samples and the targets thickness, slant and size, each with the other two kept, the
kept features moved 0.10 of the target's change (both in units of their spreads, measured by
the exact image moments) with penalty 1, against 0.28 with 0.1 and 0.36 with none, for 9% less
target change per unit |dz|. Stronger penalties leak more again (0.25 at 3, 1.05 at 10): the
norm's gradient has the same length however small the change, so a strong penalty overshoots
back and forth. Finer steps hold better (0.07 with 20 steps of 0.05) at twice the cost.
``penalty=0.1`` is the source's setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ctrlgan import validate
from ctrlgan.errors import InvalidRequest
from ctrlgan.training.features import FeatureSet, check_names

SPREAD_SAMPLES = 1000  # samples whose feature spread is the unit of every reading
SPREAD_SEED = 0
MAX_STEPS = 10_000
PENALTY = 1.0  # measured: see the module docstring
STEPS = 10
MAX_SAMPLES = 65_536


# The source's two functions, verbatim in arithmetic ----------------------------------------


def get_score(
    current_classifications: torch.Tensor,
    original_classifications: torch.Tensor,
    target_indices,
    other_indices,
    penalty_weight: float,
) -> torch.Tensor:
    """The mean of the target columns over samples and targets, minus ``penalty_weight`` times
    the mean over samples of the L2 norm of the other columns' change from the original."""
    other_distances = (
        current_classifications[:, other_indices] - original_classifications[:, other_indices]
    )
    other_class_penalty = -torch.norm(other_distances, dim=1).mean() * penalty_weight
    target_score = current_classifications[:, target_indices].mean()
    return target_score + other_class_penalty


def calculate_updated_noise(noise: torch.Tensor, weight: float) -> torch.Tensor:
    """One ascent step: ``noise + weight * noise.grad``."""
    return noise + (noise.grad * weight)


# The edit -----------------------------------------------------------------------------------


@dataclass
class Edit:
    """A per-sample edit: the noise and the reader's features at every step (step 0 = the
    original), float32 numpy arrays."""

    z: np.ndarray  # [steps + 1, B, Z]
    features: dict[str, np.ndarray]  # every feature of the reader, [steps + 1, B], its units
    reader: str  # the reader that was ascended through (FeatureSet.source)
    classes: np.ndarray  # int64 [B]
    increase: tuple[str, ...]
    decrease: tuple[str, ...]
    keep: tuple[str, ...]
    weight: float
    penalty: float
    accumulate: bool
    scale: dict[str, float] = field(default_factory=dict)  # the unit of each reading
    images: np.ndarray | None = None  # [steps + 1, B, C, H, W] in [-1, 1] when asked for

    @property
    def steps(self) -> int:
        return len(self.z) - 1

    def distance(self) -> np.ndarray:
        """|z_T - z_0| per sample, float32 [B]."""
        return np.linalg.norm(self.z[-1] - self.z[0], axis=1).astype(np.float32)

    def change(self, name: str) -> np.ndarray:
        """The reader's change of feature ``name`` from step 0 to the last, float32 [B]."""
        return self.features[name][-1] - self.features[name][0]


def edit_noise(
    model,
    classes,
    z_or_seeds,
    increase=(),
    decrease=(),
    keep=(),
    weight: float | None = None,
    penalty: float = PENALTY,
    steps: int = STEPS,
    accumulate: bool = False,
    images: bool = False,
) -> Edit:
    """Edit each sample's noise by the source's gradient ascent (module docstring).

    ``model``: a bundled model name, an artifact directory or an ``Artifact``. ``classes``: one
    class (index or name) for every sample, or one per sample. ``z_or_seeds``: noise [B, Z]
    (array or tensor) or seeds (a list, range, 1-D integer array or a string like "0-7"; the
    Philox noise ``ctrlgan.noise`` gives, so step 0 is what ``ctrlgan sample`` draws).
    ``increase`` / ``decrease`` / ``keep``: feature names (a list or "a,b") of the reader;
    ``weight``: the step (default 1 / steps); ``penalty``: the source's penalty_weight;
    ``accumulate``: the notebook's never-zeroed noise.grad; ``images``: keep G(z) of every step.
    """
    from ctrlgan.artifact import Artifact
    from ctrlgan.training import feature_net

    artifact = model if isinstance(model, Artifact) else Artifact.open(model)
    reader, _ = feature_net.feature_sets(artifact)
    request = _Request.check(reader, increase, decrease, keep, weight, penalty, steps)
    z = _start(z_or_seeds, artifact.manifest.z_dim)
    labels = _labels(classes, artifact.manifest.classes, len(z))
    generator = artifact.build_generator()
    return _run(generator, reader, labels, z, request, accumulate, None, images)


def ascend(
    generator,
    reader: FeatureSet,
    labels,
    z,
    increase=(),
    decrease=(),
    keep=(),
    weight: float | None = None,
    penalty: float = PENALTY,
    steps: int = STEPS,
    accumulate: bool = False,
    scale: dict[str, float] | None = None,
    images: bool = False,
) -> Edit:
    """``edit_noise`` on a generator module (called as ``generator(z, labels)``) and a
    differentiable reader: ``labels`` int [B], ``z`` float [B, Z]; ``scale`` {feature: unit of
    its reading} (default: ``spread(generator, reader)``)."""
    request = _Request.check(reader, increase, decrease, keep, weight, penalty, steps)
    z = torch.as_tensor(z).detach().to(torch.float32)
    labels = torch.as_tensor(labels).to(torch.int64)
    if z.ndim != 2 or len(z) == 0 or labels.shape != (len(z),):
        raise InvalidRequest(
            "z", f"expected z [B, Z] and labels [B], got {tuple(z.shape)}, {tuple(labels.shape)}"
        )
    return _run(generator, reader, labels, z, request, accumulate, scale, images)


@torch.no_grad()
def spread(generator, reader: FeatureSet, n: int = SPREAD_SAMPLES, seed: int = SPREAD_SEED):
    """{feature: its standard deviation over n of the generator's samples}: noise from
    ``seed``, classes cycling over all (directions.sample_latents), read by ``reader``."""
    from ctrlgan.training.directions import render, sample_latents

    z, labels = sample_latents(generator, n, seed)
    values = reader.measure(render(generator, z, labels), names=reader.names, labels=labels)
    return {name: max(float(v.double().std()), 1e-6) for name, v in values.items()}


@dataclass(frozen=True)
class _Request:
    increase: tuple[str, ...]
    decrease: tuple[str, ...]
    keep: tuple[str, ...]
    weight: float
    penalty: float
    steps: int

    @classmethod
    def check(cls, reader: FeatureSet, increase, decrease, keep, weight, penalty, steps):
        lists = {}
        for name, value in (("increase", increase), ("decrease", decrease), ("keep", keep)):
            if value is not None and not isinstance(value, (str, list, tuple)):
                raise InvalidRequest(
                    name, f"expected feature names (a list or 'a,b'), got {validate.show(value)}"
                )
            empty = value is None or not (value.strip() if isinstance(value, str) else value)
            lists[name] = () if empty else check_names(value, name, reader.names)
        seen: dict[str, str] = {}
        for name, values in lists.items():
            for v in values:
                if v in seen:
                    raise InvalidRequest(name, f"{v!r} is already in {seen[v]}: one role each")
                seen[v] = name
        if not lists["increase"] and not lists["decrease"]:
            raise InvalidRequest(
                "increase",
                f"give at least one feature to increase or decrease ({', '.join(reader.names)})",
            )
        circular = [v for v in lists["keep"] if v in reader.circular]
        if circular:
            raise InvalidRequest(
                "keep", f"{', '.join(circular)}: an angle that wraps cannot be kept by value"
            )
        steps = validate.integer(steps, "steps", 1, MAX_STEPS)
        weight = 1.0 / steps if weight is None else validate.real(weight, "weight", above=0)
        penalty = validate.real(penalty, "penalty", lo=0)
        return cls(**lists, weight=weight, penalty=penalty, steps=steps)


def _start(z_or_seeds, z_dim: int) -> torch.Tensor:
    """Noise rows [B, Z] from given noise or from seeds (ctrlgan.noise)."""
    from ctrlgan.runtime.generator import noise

    value = z_or_seeds
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    rows = isinstance(value, (list, tuple)) and len(value) > 0
    rows = rows and isinstance(value[0], (list, tuple, np.ndarray))
    if (isinstance(value, np.ndarray) and value.ndim == 2) or rows:
        z = np.asarray(value)
        if z.ndim != 2 or z.dtype.kind not in "iuf":
            raise InvalidRequest("z", f"expected real noise [B, {z_dim}], got {z.dtype} {z.shape}")
        if z.shape[1] != z_dim or not 1 <= len(z) <= MAX_SAMPLES:
            raise InvalidRequest(
                "z", f"expected [B, {z_dim}] with 1 <= B <= {MAX_SAMPLES}, got {z.shape}"
            )
        if not np.isfinite(z).all():
            raise InvalidRequest("z", "must be finite (no NaN or inf)")
        return torch.from_numpy(z.astype(np.float32))
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise InvalidRequest("z", f"expected noise [B, {z_dim}] or seeds [B], got {value.shape}")
    z = noise(value, z_dim)
    if len(z) > MAX_SAMPLES:
        raise InvalidRequest("seeds", f"{len(z)} samples exceed {MAX_SAMPLES}")
    return torch.from_numpy(z)


def _labels(classes, names: list[str], n: int) -> torch.Tensor:
    """One class (index or name) for all n samples, or one per sample -> int64 [n]."""
    items = [classes] if isinstance(classes, (str, int, np.integer)) else classes
    if torch.is_tensor(items):
        items = items.detach().cpu().numpy()
    if isinstance(items, np.ndarray) and items.ndim == 0:
        items = [items.item()]
    items = validate.items(items, "classes", MAX_SAMPLES, "classes")
    out = []
    for c in items:
        if isinstance(c, str) and c in names:
            out.append(names.index(c))
        elif validate.is_int(c) and 0 <= int(c) < len(names):
            out.append(int(c))
        else:
            raise InvalidRequest(
                "classes", f"unknown class {validate.show(c)}; classes: {', '.join(names)}"
            )
    if len(out) not in (1, n):
        raise InvalidRequest("classes", f"give one class or one per sample ({n}), got {len(out)}")
    return torch.tensor(out * n if len(out) == 1 else out, dtype=torch.int64)


def _run(generator, reader, labels, z, request: _Request, accumulate, scale, keep_images) -> Edit:
    """The source's loop (module docstring), with a fresh gradient per step unless
    ``accumulate``; the generator's requires_grad flags are restored afterwards."""
    n_classes = getattr(getattr(generator, "config", None), "n_classes", None)
    if n_classes is not None and not bool(((labels >= 0) & (labels < n_classes)).all()):
        raise InvalidRequest("classes", f"out of range 0..{n_classes - 1}")
    if scale is None:
        scale = spread(generator, reader)
    missing = [f for f in reader.names if f not in scale]
    if missing:
        raise InvalidRequest("scale", f"no unit for {', '.join(missing)}")
    units = {f: float(scale[f]) for f in reader.names}
    bad = [f for f, s in units.items() if not (math.isfinite(s) and s > 0)]
    if bad:
        raise InvalidRequest("scale", f"units must be finite and > 0: {', '.join(bad)}")
    columns = [*request.increase, *request.decrease, *request.keep]
    sign = (
        [1.0] * len(request.increase) + [-1.0] * len(request.decrease) + [1.0] * len(request.keep)
    )
    sign = torch.tensor(sign) / torch.tensor([units[f] for f in columns])
    n_targets = len(request.increase) + len(request.decrease)
    target_indices = list(range(n_targets))
    other_indices = list(range(n_targets, len(columns)))
    read = reader.fn(reader.names, keep_grad=True)

    def scored(values):  # the reader's columns in get_score's order, standardised and signed
        return torch.stack([values[f] for f in columns], dim=1) * sign

    zs, feats, images = [], [], []

    def record(noise, values, fake):
        zs.append(noise.detach().clone())
        feats.append({f: v.detach().float() for f, v in values.items()})
        if keep_images:
            images.append(fake.detach().float())

    generator.eval()
    flags = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(False)
    try:
        noise = z.clone().requires_grad_(True)
        original = None
        with torch.enable_grad():
            for _ in range(request.steps):
                fake = generator(noise, labels)
                values = read(fake, labels=labels)
                current = scored(values)
                if original is None:
                    original = current.detach()
                record(noise, values, fake)
                score = len(noise) * get_score(
                    current, original, target_indices, other_indices, request.penalty
                )
                (grad,) = torch.autograd.grad(score, noise)
                noise.grad = grad if not accumulate or noise.grad is None else noise.grad + grad
                with torch.no_grad():
                    noise.copy_(calculate_updated_noise(noise, request.weight))
        with torch.no_grad():
            fake = generator(noise, labels)
            record(noise, read(fake, labels=labels), fake)
    finally:
        for p, flag in zip(generator.parameters(), flags, strict=True):
            p.requires_grad_(flag)
    return Edit(
        z=torch.stack(zs).numpy(),
        features={f: torch.stack([step[f] for step in feats]).numpy() for f in reader.names},
        reader=reader.source,
        classes=labels.numpy().copy(),
        increase=request.increase,
        decrease=request.decrease,
        keep=request.keep,
        weight=request.weight,
        penalty=request.penalty,
        accumulate=bool(accumulate),
        scale=units,
        images=torch.stack(images).numpy() if keep_images else None,
    )
