"""Direction discovery in z-space, its measurement, and writing the table into an artifact.

A direction d is a unit vector in noise space; the runtime steers with z' = z + alpha d (DESIGN's
latent prologue, step 3). Two ways to find one:

* Linear boundaries (``boundary_directions``, fitted by ``fit_boundary``): sample z and classes
  y, measure features of G(z, y), label each z by whether its feature lies above the median of its
  class (per class, so that the class's own effect on the feature does not blur the labels), and
  fit a logistic regression on z. The unit normal of its boundary, w / ||w||, is the direction;
  positive = more of the feature. The accuracy on held-out samples says how linearly z encodes
  the feature. With ``chosen_ratio`` R in (0, 0.5], InterFaceGAN's convention (``train_boundary``
  labels the top and bottom 2% of the scores): only the int(R n_c) highest and the int(R n_c)
  lowest scores of each class's n_c samples are labelled (1 and 0), the middle is left out of the
  fit and out of the accuracy.
* Closed form (``closed_form_directions``): unsupervised, from the generator's first layer alone.
  With h = W_z z + ..., a step along d changes h by W_z d, so the unit d that move h most are the
  top eigenvectors of A = W_z^T W_z (symmetric: torch.linalg.eigh), sorted by eigenvalue,
  descending; each sign is fixed so that its largest-magnitude component is positive. Named
  factor_0, factor_1, ... (what each changes is read off the effect matrix). With ``normalize``,
  SeFa's convention (``factorize_weight``): each output unit's weights over z (a row of W_z, of
  fc.weight [out, Z + E] restricted to its Z noise columns) is scaled to unit norm first, so that
  every unit counts alike whatever its gain.

* Classifier gradients (``gradient_directions``, the source's method): freeze the generator,
  sample z and classes, and do gradient ascent on z only, per sample, on the score
  s = f_t(z) - lambda * ||f_o(z) - f_o(z_0)||, where f_t is the target feature and f_o the other
  features (each divided by its spread over the starting samples, so that lambda weighs them
  alike). Each step moves z by ``step_size`` along the normalised gradient of s. The direction is
  the mean of the unit displacements (z_T - z_0) / ||z_T - z_0||, normalised: over all samples
  (a global [K, Z] row) or over each class's samples (a per-class [C, K, Z] table). It needs
  differentiable features: ``differentiable_features`` computes features.py's measures with
  the gradient kept (``features.measure(..., keep_grad=True)``).

``project_off`` (conditional manipulation) removes from a direction n its component in the span
of other directions C [M, Z]: n' = n - C^T (C C^T)^-1 C n, normalised; moving along n' leaves the
linear scores C z unchanged, which keeps those features (to first order) fixed.

``effect_matrix`` measures E[k, f], the mean change of feature f per unit step along direction k
(central difference over alpha = -1, +1, averaged over samples of every class), and
``monotonic_share`` the share of samples whose target feature rises monotonically over alphas.

``write_directions`` validates a table against the artifact, then writes directions.safetensors
({"directions": float32 [K, Z] or per class [C, K, Z], optionally "effects": float32 [K, F]})
and the manifest's names in one atomic replacement, with freshly exported ONNX graphs when the
artifact had graphs before (they bake the table in). A refused or failed write leaves the
artifact as it was.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ctrlgan.artifact import DIRECTIONS, Artifact, write_artifact
from ctrlgan.errors import InvalidRequest
from ctrlgan.network import ConditionalGenerator
from ctrlgan.training.data import SHAPE_FACTORS
from ctrlgan.training.features import FEATURES, MOMENTS

FeatureFn = Callable[..., dict[str, torch.Tensor]]  # (images, labels=None) -> {name: [B]}
METHODS = ("boundary", "closed-form", "gradient")
KNOWN_NAMES = tuple(dict.fromkeys((*FEATURES, *SHAPE_FACTORS, "shape")))
_FACTOR = re.compile(r"factor_[0-9]+")
DEFAULT_ALPHAS = tuple(np.linspace(-3.0, 3.0, 7).tolist())
BATCH = 2048


@dataclass
class Directions:
    """Found directions: ``table`` float32 [K, Z] (or per class [C, K, Z]), unit rows, one per
    name."""

    method: str
    names: list[str]
    table: torch.Tensor
    accuracy: dict[str, float] = field(default_factory=dict)  # boundary: validation accuracy
    eigenvalues: list[float] = field(default_factory=list)  # closed form
    held: list[str] = field(default_factory=list)  # hold_fixed: the others are projected off
    settings: dict = field(default_factory=dict)  # the method's options, for the provenance


# Sampling ------------------------------------------------------------------------------------


def sample_latents(
    generator: ConditionalGenerator, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """n noise rows z ~ N(0, I) and class labels cycling over all classes (balanced)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator.config.z_dim, generator=gen)
    labels = torch.arange(n) % generator.config.n_classes
    return z, labels


@torch.no_grad()
def render(generator: ConditionalGenerator, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """G(z, y) in eval mode, in batches of BATCH: float32 [N, C, H, W]."""
    generator.eval()
    parts = [
        generator(z[i : i + BATCH].float(), labels[i : i + BATCH]) for i in range(0, len(z), BATCH)
    ]
    return torch.cat(parts)


def _features(generator, z, labels, feature_fn: FeatureFn) -> dict[str, torch.Tensor]:
    return feature_fn(render(generator, z, labels), labels=labels)


# Discovery -----------------------------------------------------------------------------------


def boundary_directions(
    generator: ConditionalGenerator,
    feature_fn: FeatureFn,
    n: int = 4000,
    seed: int = 0,
    val_fraction: float = 0.2,
    chosen_ratio: float | None = None,
) -> Directions:
    """One direction per feature of ``feature_fn``: the unit normal of a logistic-regression
    boundary on z between samples above and below their class's median of the feature, or with
    ``chosen_ratio`` R between the top and bottom R of each class's scores (``fit_boundary``)."""
    n = _check_int(n, "samples", 20)
    chosen_ratio = _check_fractions(val_fraction, chosen_ratio)
    z, labels = sample_latents(generator, n, seed)
    values = _features(generator, z, labels, feature_fn)
    names, rows, accuracy, labelled = [], [], {}, {}
    for name, v in values.items():
        try:
            normal, accuracy[name], labelled[name] = fit_boundary(
                z, v, labels, chosen_ratio=chosen_ratio, val_fraction=val_fraction
            )
        except InvalidRequest as e:
            if e.field != "scores":
                raise
            raise InvalidRequest("features", f"{name!r} {e.message}") from None
        names.append(name)
        rows.append(normal)
    settings = {"chosen_ratio": chosen_ratio, "labelled": labelled}
    return Directions(
        "boundary", names, torch.stack(rows).float(), accuracy=accuracy, settings=settings
    )


def fit_boundary(
    z, scores, labels, chosen_ratio: float | None = None, val_fraction: float = 0.2
) -> tuple[torch.Tensor, float, int]:
    """The boundary of one feature: (unit normal float64 [Z], held-out accuracy, labelled count).

    ``z`` [N, Z], ``scores`` [N] and class ``labels`` [N]. Labels: score above its class's
    median (every sample), or with ``chosen_ratio`` R the int(R n_c) highest (1) and lowest (0)
    scores of each class (ties by position), the rest dropped. The last round(N val_fraction)
    rows are held out; a logistic regression (C = 1) on the labelled rows before them gives the
    normal, and its accuracy on the labelled held-out rows is returned."""
    from sklearn.linear_model import LogisticRegression

    chosen_ratio = _check_fractions(val_fraction, chosen_ratio)
    z, v, labels = torch.as_tensor(z), torch.as_tensor(scores), torch.as_tensor(labels)
    n = len(z)
    if z.ndim != 2 or v.shape != (n,) or labels.shape != (n,):
        raise InvalidRequest(
            "scores",
            f"must be [N] scores for z [N, Z] and labels [N]; got {tuple(v.shape)} for "
            f"{tuple(z.shape)} and {tuple(labels.shape)}",
        )
    if not torch.isfinite(v).all():
        raise InvalidRequest("scores", "must be finite (no NaN or inf)")
    if n and not v.max() > v.min():  # constant: nothing to separate
        raise InvalidRequest("scores", "does not vary over the samples")
    above = torch.zeros(n, dtype=torch.bool)
    keep = torch.ones(n, dtype=torch.bool)
    for c in labels.unique():
        (rows,) = torch.nonzero(labels == c, as_tuple=True)
        if chosen_ratio is None:
            above[rows] = v[rows] > v[rows].median()
            continue
        chosen = int(len(rows) * chosen_ratio)
        if chosen < 1:
            raise InvalidRequest(
                "chosen_ratio",
                f"{chosen_ratio} of the {len(rows)} samples of class {int(c)} labels none: "
                f"raise it or the samples",
            )
        order = rows[torch.argsort(v[rows], stable=True)]
        keep[order[chosen:-chosen]] = False
        above[order[-chosen:]] = True
    n_val = max(1, round(n * val_fraction))
    y, x = above.numpy(), z.double().numpy()
    train = keep.numpy().copy()
    train[n - n_val :] = False
    val = keep.numpy().copy()
    val[: n - n_val] = False
    if chosen_ratio is None and (not y[train].any() or y[train].all()):
        raise InvalidRequest("scores", "does not vary over the samples")
    if chosen_ratio is not None and (min(y[train].sum(), (~y[train]).sum()) < 2 or not val.any()):
        raise InvalidRequest(
            "chosen_ratio",
            f"{chosen_ratio} labels too few samples for the fit ({int(train.sum())} to train "
            f"on, {int(val.sum())} held out): raise it or the samples",
        )
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(x[train], y[train])
    w = torch.from_numpy(clf.coef_[0])
    return w / w.norm(), float(clf.score(x[val], y[val])), int(keep.sum())


def _check_fractions(val_fraction, chosen_ratio) -> float | None:
    """Refuse a bad ``val_fraction`` or ``chosen_ratio``; the latter as a float (or None)."""
    if not 0 < val_fraction < 1:
        raise InvalidRequest("val_fraction", f"must lie in (0, 1), got {val_fraction!r}")
    if chosen_ratio is None:
        return None
    if (
        isinstance(chosen_ratio, bool)
        or not isinstance(chosen_ratio, (int, float, np.floating))
        or not 0 < chosen_ratio <= 0.5
    ):
        raise InvalidRequest(
            "chosen_ratio", f"must be a fraction in (0, 0.5] or None, got {chosen_ratio!r}"
        )
    return float(chosen_ratio)


def closed_form_directions(
    generator: ConditionalGenerator, k: int, normalize: bool = False
) -> Directions:
    """The top-k eigenvectors of W_z^T W_z of the first layer, named factor_0..factor_{k-1};
    ``normalize``: every row of W_z (one output unit's weights over z) scaled to unit norm
    first, as SeFa does (rows without any weight on z are left out)."""
    z_dim = generator.config.z_dim
    k = _check_int(k, "k", 1)
    if k > z_dim:
        raise InvalidRequest("k", f"must be at most z_dim = {z_dim}, got {k}")
    if not isinstance(normalize, bool):
        raise InvalidRequest("normalize", f"must be True or False, got {normalize!r}")
    w = generator.fc.weight.detach()[:, :z_dim].double()
    if normalize:
        norms = w.norm(dim=1, keepdim=True)
        w = (w / norms)[norms[:, 0] > 0]
    values, vectors = torch.linalg.eigh(w.T @ w)  # ascending
    order = torch.argsort(values, descending=True)[:k]
    table = vectors[:, order].T.contiguous()  # [k, Z]
    table = table * _sign(table)[:, None]
    return Directions(
        "closed-form",
        [f"factor_{i}" for i in range(k)],
        table.float(),
        eigenvalues=[float(v) for v in values[order]],
        settings={"normalize": normalize},
    )


def differentiable_features(names=FEATURES) -> FeatureFn:
    """features.py's measures (thickness, slant, size, pos_x, pos_y) with the gradient kept:
    images [B, C, H, W] tensor -> {name: float32 [B]} (``MOMENTS.fn`` with keep_grad)."""
    return MOMENTS.fn(names, keep_grad=True)


def gradient_directions(
    generator: ConditionalGenerator,
    feature_fn: FeatureFn,
    names: Sequence[str],
    n: int = 512,
    steps: int = 20,
    step_size: float = 0.1,
    lam: float = 1.0,
    seed: int = 0,
    per_class: bool = False,
) -> Directions:
    """One direction per name in ``names`` by gradient ascent on z against the frozen generator
    and the differentiable ``feature_fn`` (see the module docstring). ``per_class``: a
    [C, K, Z] table, one row per class from that class's samples; else a global [K, Z] table."""
    n = _check_int(n, "samples", 2)
    steps = _check_int(steps, "steps", 1)
    for value, name in ((step_size, "step_size"), (lam, "lambda")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise InvalidRequest(name, f"must be a number >= 0, got {value!r}")
    if not step_size > 0:
        raise InvalidRequest("step_size", f"must be > 0, got {step_size!r}")
    names = list(names)
    n_classes = generator.config.n_classes
    if per_class and n < n_classes:
        raise InvalidRequest("samples", f"per class needs >= {n_classes} samples, got {n}")
    z0, labels = sample_latents(generator, n, seed)
    generator.eval()
    frozen = [p.requires_grad for p in generator.parameters()]
    generator.requires_grad_(False)
    try:
        with torch.no_grad():
            start = feature_fn(generator(z0, labels), labels=labels)
        missing = [name for name in names if name not in start]
        if missing or not names:
            raise InvalidRequest("names", f"not measured by the feature function: {missing}")
        spread = {f: v.std().clamp_min(1e-8) for f, v in start.items()}
        rows = []
        for target in names:
            others = [f for f in start if f != target]
            z = z0.clone().requires_grad_(True)
            with torch.enable_grad():
                for _ in range(steps):
                    values = feature_fn(generator(z, labels), labels=labels)
                    score = values[target] / spread[target]
                    if others and lam:
                        moved = torch.stack(
                            [(values[f] - start[f]) / spread[f] for f in others], dim=1
                        )
                        score = score - lam * torch.sqrt((moved * moved).sum(dim=1) + 1e-12)
                    # per-sample ascent: the samples are independent, so d sum / dz_i = d s_i / dz_i
                    (grad,) = torch.autograd.grad(score.sum(), z)
                    unit = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    z = (z + step_size * unit).detach().requires_grad_(True)
            shift = (z.detach() - z0).double()
            shift = shift / shift.norm(dim=1, keepdim=True).clamp_min(1e-12)
            if per_class:
                rows.append(torch.stack([shift[labels == c].mean(0) for c in range(n_classes)]))
            else:
                rows.append(shift.mean(0))
    finally:
        for p, flag in zip(generator.parameters(), frozen, strict=True):
            p.requires_grad_(flag)
    table = torch.stack(rows, dim=-2)  # [K, Z] or [C, K, Z]
    norm = table.norm(dim=-1, keepdim=True)
    if (norm < 1e-8).any():
        raise InvalidRequest("names", "a displacement averaged to zero: no direction found")
    return Directions("gradient", names, (table / norm).float())


def _sign(rows: torch.Tensor) -> torch.Tensor:
    """+1 or -1 per row: the sign that makes the row's largest-magnitude component positive."""
    biggest = rows.gather(1, rows.abs().argmax(dim=1, keepdim=True))[:, 0]
    return torch.where(biggest < 0, -1.0, 1.0).to(rows.dtype)


def project_off(direction, others) -> torch.Tensor:
    """n' = n - C^T (C C^T)^-1 C n, normalised: ``direction`` [Z] made orthogonal to every row
    of ``others`` [M, Z] (which must be linearly independent and not span ``direction``)."""
    n = torch.as_tensor(direction).double().flatten()
    c = torch.as_tensor(others).double()
    if c.ndim == 1:
        c = c[None]
    if c.ndim != 2 or c.shape[1] != len(n):
        raise InvalidRequest("others", f"must be [M, {len(n)}], got {tuple(c.shape)}")
    if len(c) == 0:
        return (n / n.norm()).float()
    gram = c @ c.T
    if torch.linalg.matrix_rank(gram) < len(c):
        raise InvalidRequest("others", "the directions to keep fixed are linearly dependent")
    projected = n - c.T @ torch.linalg.solve(gram, c @ n)
    norm = projected.norm()
    if norm <= 1e-8 * max(float(n.norm()), 1e-30):
        raise InvalidRequest("direction", "lies in the span of the others: nothing is left")
    return (projected / norm).float()


def hold_fixed(found: Directions, held: Sequence[str]) -> Directions:
    """Conditional manipulation of a whole table: every direction not named in ``held`` is
    projected off the held ones (``project_off``; per class for a [C, K, Z] table), so that
    moving along it leaves the held features (to first order) where they are. The held rows
    themselves are unchanged; the result's ``held`` records the names."""
    held = list(held)
    unknown = [h for h in held if h not in found.names]
    if unknown:
        raise InvalidRequest(
            "hold",
            f"{', '.join(map(repr, unknown))} not among the directions found: "
            f"{', '.join(found.names)}",
        )
    if len(set(held)) != len(held):
        raise InvalidRequest("hold", f"names repeat: {', '.join(held)}")
    if len(held) == len(found.names):
        raise InvalidRequest("hold", "holds every direction: nothing is left to condition")
    keep = [found.names.index(h) for h in held]
    table = found.table.clone()
    try:
        for k, name in enumerate(found.names):
            if name in held:
                continue
            if table.ndim == 2:
                table[k] = project_off(found.table[k], found.table[keep])
            else:
                for c in range(table.shape[0]):
                    table[c, k] = project_off(found.table[c, k], found.table[c][keep])
    except InvalidRequest as e:  # dependent held rows, or a row inside their span
        raise InvalidRequest("hold", f"{e.message} ({', '.join(held)})") from None
    return replace(found, table=table, held=held)


# Measurement ---------------------------------------------------------------------------------


def _rows(table: torch.Tensor, k: int, labels: torch.Tensor) -> torch.Tensor:
    """Direction k for every sample: D[k] (global table) or D[label, k] (per class)."""
    table = torch.as_tensor(table).float()
    return table[k].expand(len(labels), -1) if table.ndim == 2 else table[labels, k]


def effect_matrix(
    generator: ConditionalGenerator,
    table,
    feature_fn: FeatureFn,
    n: int = 1000,
    seed: int = 1,
    step: float = 1.0,
) -> tuple[list[str], torch.Tensor]:
    """E [K, F]: mean change of every feature per unit step along every direction,
    (f(z + step d) - f(z - step d)) / (2 step), averaged over n samples of all classes.
    Returns (feature names, E)."""
    z, labels = sample_latents(generator, _check_int(n, "samples", 1), seed)
    k_count = torch.as_tensor(table).shape[-2]
    rows, names = [], None
    for k in range(k_count):
        d = _rows(table, k, labels)
        up = _features(generator, z + step * d, labels, feature_fn)
        down = _features(generator, z - step * d, labels, feature_fn)
        names = list(up)
        rows.append(torch.stack([(up[f] - down[f]).mean() / (2 * step) for f in names]))
    return names or [], torch.stack(rows) if rows else torch.zeros(0, 0)


def monotonic_share(
    generator: ConditionalGenerator,
    names: Sequence[str],
    table,
    feature_fn: FeatureFn,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    n: int = 200,
    seed: int = 2,
) -> dict[str, float]:
    """Per direction whose name is a feature of ``feature_fn``: the share of n samples whose
    feature never falls and rises overall as alpha goes through ``alphas`` (ascending)."""
    alphas = sorted(float(a) for a in alphas)
    z, labels = sample_latents(generator, _check_int(n, "samples", 1), seed)
    shares = {}
    for k, name in enumerate(names):
        d = _rows(table, k, labels)
        series = []
        for a in alphas:
            values = _features(generator, z + a * d, labels, feature_fn)
            if name not in values:
                break
            series.append(values[name])
        else:
            v = torch.stack(series, dim=1)  # [n, len(alphas)]
            steps = v.diff(dim=1)
            ok = (steps >= 0).all(dim=1) & (v[:, -1] > v[:, 0])
            shares[name] = float(ok.float().mean())
    return shares


# Writing -------------------------------------------------------------------------------------


def check_table(artifact: Artifact, names, table) -> tuple[list[str], torch.Tensor]:
    """Validate direction names and a table against the artifact; InvalidRequest names the
    field ("names" or "table")."""
    m = artifact.manifest
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise InvalidRequest("names", f"must be a list of direction names, got {names!r}")
    names = list(names)
    if not names:
        raise InvalidRequest("names", "give at least one direction name")
    for name in names:
        if not isinstance(name, str) or not (name in KNOWN_NAMES or _FACTOR.fullmatch(name)):
            raise InvalidRequest(
                "names",
                f"unknown feature {name!r}; known: {', '.join(KNOWN_NAMES)}, or factor_N",
            )
    if len(set(names)) != len(names):
        raise InvalidRequest("names", f"names repeat: {', '.join(names)}")
    try:
        t = torch.as_tensor(np.asarray(table) if not torch.is_tensor(table) else table)
        t = t.detach().to(torch.float32).cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise InvalidRequest("table", f"must be a numeric array ({e})") from None
    K, Z, C = len(names), m.z_dim, len(m.classes)
    if t.ndim not in (2, 3):
        raise InvalidRequest(
            "table", f"must be [K, Z] or per class [C, K, Z], got {tuple(t.shape)}"
        )
    if t.shape[-1] != Z:
        raise InvalidRequest("table", f"z_dim {t.shape[-1]} does not match the model's z_dim {Z}")
    if t.shape[-2] != K:
        raise InvalidRequest("table", f"{t.shape[-2]} directions for {K} names")
    if t.ndim == 3 and t.shape[0] != C:
        raise InvalidRequest(
            "table", f"per-class table for {t.shape[0]} classes; the model has {C}"
        )
    if not torch.isfinite(t).all():
        raise InvalidRequest("table", "must be finite (no NaN or inf)")
    if (t.norm(dim=-1) == 0).any():
        raise InvalidRequest("table", "has an all-zero direction")
    return names, t.contiguous()


def write_directions(model_path, names, table, info: dict | None = None, effects=None) -> Artifact:
    """Replace the artifact's direction table by ``table`` [K, Z] (or [C, K, Z]) with ``names``.

    ONNX graphs, if the artifact had them, are re-exported with the new table; everything is
    staged in a temporary copy and swapped in with one atomic write. ``info`` (JSON-able) is
    recorded as the manifest's provenance["directions"]; ``effects`` [K, F], the measured effect
    matrix, is stored beside the table as "effects" (its feature names belong in ``info``)."""
    from ctrlgan.export import onnx as export

    artifact = Artifact.open(model_path)
    names, t = check_table(artifact, names, table)
    manifest = artifact.manifest
    manifest.directions = names
    if info is not None:
        manifest.provenance = {**manifest.provenance, "directions": info}
    tensors = {DIRECTIONS: {"directions": t}}
    if effects is not None:
        e = torch.as_tensor(effects).detach().to(torch.float32).cpu().contiguous()
        if e.ndim != 2 or e.shape[0] != len(names) or not torch.isfinite(e).all():
            raise InvalidRequest(
                "effects", f"must be finite [{len(names)}, F], got {tuple(e.shape)}"
            )
        tensors[DIRECTIONS]["effects"] = e
    if not any(f.endswith(".onnx") for f in manifest.files):
        return write_artifact(artifact.path, manifest, tensors=tensors, keep=True)
    with tempfile.TemporaryDirectory(prefix=".ctrlgan-directions-") as tmp:
        stage = Path(tmp) / "model"
        stage.mkdir()
        for name in manifest.files:
            shutil.copy2(artifact.path / name, stage / name)
        shutil.copy2(artifact.path / "manifest.json", stage / "manifest.json")
        write_artifact(stage, manifest, tensors=tensors, keep=True)
        staged = export.export(stage)
        files = {
            name: (stage / name).read_bytes()
            for name in staged.manifest.files
            if name == DIRECTIONS or name.endswith(".onnx")
        }
        return write_artifact(artifact.path, staged.manifest, tensors={}, files=files, keep=True)


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidRequest(name, f"must be an int >= {minimum}, got {value!r}")
    return int(value)


# Entanglement report -------------------------------------------------------------------------


def load_table(artifact: Artifact) -> tuple[list[str], torch.Tensor]:
    """The artifact's direction names and table ([K, Z] or [C, K, Z]), checked against it."""
    names = list(artifact.manifest.directions)
    if not names:
        raise InvalidRequest(
            "model", f"{artifact.path} has no direction table: run `ctrlgan directions` first"
        )
    tensors = artifact.load_tensors(DIRECTIONS)
    if "directions" not in tensors:
        raise InvalidRequest("model", f"{artifact.path / DIRECTIONS} has no 'directions' table")
    return check_table(artifact, names, tensors["directions"])


def feature_correlation(
    images, feature_fn: FeatureFn, labels=None
) -> tuple[list[str], torch.Tensor]:
    """Pearson correlation [F, F] of the features measured on ``images`` (a data set's)."""
    values = feature_fn(images, labels=labels)
    names = list(values)
    x = torch.stack([values[f].double() for f in names])  # [F, N]
    x = x - x.mean(dim=1, keepdim=True)
    std = x.norm(dim=1).clamp_min(1e-12)
    return names, ((x @ x.T) / (std[:, None] * std[None, :])).float()


def write_heatmap(
    path,
    directions: Sequence[str],
    features: Sequence[str],
    effects: torch.Tensor,
    correlation: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    title: str = "",
) -> Path:
    """A PNG: the effect matrix [K, F] beside the data's feature correlation [F, F] (if given).

    The effect cells are coloured by the change per unit step divided by ``scale`` [F] (the
    feature's spread on the data, so columns compare) and labelled with the raw values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    e = effects.double()
    shown = e / scale.double()[None, :] if scale is not None else e
    panels = 2 if correlation is not None else 1
    fig, axes = plt.subplots(
        1,
        panels,
        figsize=(
            panels * (2.5 + 0.9 * len(features)),
            1.8 + 0.55 * max(len(directions), len(features)),
        ),
        squeeze=False,
    )
    limit = float(shown.abs().max()) or 1.0
    ax = axes[0, 0]
    im = ax.imshow(shown.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(features)), features, rotation=45, ha="right")
    ax.set_yticks(range(len(directions)), directions)
    ax.set_xlabel("feature")
    ax.set_ylabel("direction")
    ax.set_title("effect per unit step" + (" (colour: / data std)" if scale is not None else ""))
    for (k, f), v in np.ndenumerate(e.numpy()):
        ax.text(f, k, f"{v:.3g}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8)
    if correlation is not None:
        ax = axes[0, 1]
        im = ax.imshow(correlation.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(features)), features, rotation=45, ha="right")
        ax.set_yticks(range(len(features)), features)
        ax.set_title("feature correlation on the data")
        for (a, b), v in np.ndenumerate(correlation.numpy()):
            ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
