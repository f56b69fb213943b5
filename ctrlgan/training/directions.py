"""Direction discovery in z-space, its measurement, and writing the table into an artifact.

A direction d is a unit vector in noise space; the runtime steers with z' = z + alpha d (DESIGN's
latent prologue, step 3). Two ways to find one:

* Linear boundaries (``boundary_directions``): sample z and classes y, measure features of G(z, y),
  label each z by whether its feature lies above the median of its class (per class, so that the
  class's own effect on the feature does not blur the labels), and fit a logistic regression on z.
  The unit normal of its boundary, w / ||w||, is the direction; positive = more of the feature.
  The accuracy on held-out samples says how linearly z encodes the feature.
* Closed form (``closed_form_directions``): unsupervised, from the generator's first layer alone.
  With h = W_z z + ..., a step along d changes h by W_z d, so the unit d that move h most are the
  top eigenvectors of A = W_z^T W_z (symmetric: torch.linalg.eigh), sorted by eigenvalue,
  descending; each sign is fixed so that its largest-magnitude component is positive. Named
  factor_0, factor_1, ... (what each changes is read off the effect matrix).

``project_off`` (conditional manipulation) removes from a direction n its component in the span
of other directions C [M, Z]: n' = n - C^T (C C^T)^-1 C n, normalised; moving along n' leaves the
linear scores C z unchanged, which keeps those features (to first order) fixed.

``effect_matrix`` measures E[k, f], the mean change of feature f per unit step along direction k
(central difference over alpha = -1, +1, averaged over samples of every class), and
``monotonic_share`` the share of samples whose target feature rises monotonically over alphas.

``write_directions`` validates a table against the artifact, then writes directions.safetensors
({"directions": float32 [K, Z] or per class [C, K, Z]}) and the manifest's names in one atomic
replacement, with freshly exported ONNX graphs when the artifact had graphs before (they bake the
table in). A refused or failed write leaves the artifact as it was.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctrlgan.artifact import DIRECTIONS, Artifact, write_artifact
from ctrlgan.errors import InvalidRequest
from ctrlgan.network import ConditionalGenerator
from ctrlgan.training.data import SHAPE_FACTORS
from ctrlgan.training.features import FEATURES

FeatureFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]
METHODS = ("boundary", "closed-form")
KNOWN_NAMES = tuple(dict.fromkeys((*FEATURES, *SHAPE_FACTORS, "shape")))
_FACTOR = re.compile(r"factor_[0-9]+")
DEFAULT_ALPHAS = tuple(np.linspace(-3.0, 3.0, 7).tolist())
BATCH = 2048


@dataclass
class Directions:
    """Found directions: ``table`` float32 [K, Z], unit rows, one per name."""

    method: str
    names: list[str]
    table: torch.Tensor
    accuracy: dict[str, float] = field(default_factory=dict)  # boundary: validation accuracy
    eigenvalues: list[float] = field(default_factory=list)  # closed form


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
    return feature_fn(render(generator, z, labels))


# Discovery -----------------------------------------------------------------------------------


def boundary_directions(
    generator: ConditionalGenerator,
    feature_fn: FeatureFn,
    n: int = 4000,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> Directions:
    """One direction per feature of ``feature_fn``: the unit normal of a logistic-regression
    boundary on z between samples above and below their class's median of the feature."""
    from sklearn.linear_model import LogisticRegression

    n = _check_int(n, "samples", 20)
    if not 0 < val_fraction < 1:
        raise InvalidRequest("val_fraction", f"must lie in (0, 1), got {val_fraction!r}")
    z, labels = sample_latents(generator, n, seed)
    values = _features(generator, z, labels, feature_fn)
    n_val = max(1, round(n * val_fraction))
    train, val = slice(0, n - n_val), slice(n - n_val, n)
    x = z.double().numpy()
    names, rows, accuracy = [], [], {}
    for name, v in values.items():
        above = torch.zeros(n, dtype=torch.bool)
        for c in labels.unique():
            mask = labels == c
            above[mask] = v[mask] > v[mask].median()
        y = above.numpy()
        if y[train].all() or not y[train].any():
            raise InvalidRequest("features", f"{name!r} does not vary over the samples")
        clf = LogisticRegression(C=1.0, max_iter=1000).fit(x[train], y[train])
        w = torch.from_numpy(clf.coef_[0])
        names.append(name)
        rows.append(w / w.norm())
        accuracy[name] = float(clf.score(x[val], y[val]))
    return Directions("boundary", names, torch.stack(rows).float(), accuracy=accuracy)


def closed_form_directions(generator: ConditionalGenerator, k: int) -> Directions:
    """The top-k eigenvectors of W_z^T W_z of the first layer, named factor_0..factor_{k-1}."""
    z_dim = generator.config.z_dim
    k = _check_int(k, "k", 1)
    if k > z_dim:
        raise InvalidRequest("k", f"must be at most z_dim = {z_dim}, got {k}")
    w = generator.fc.weight.detach()[:, :z_dim].double()
    values, vectors = torch.linalg.eigh(w.T @ w)  # ascending
    order = torch.argsort(values, descending=True)[:k]
    table = vectors[:, order].T.contiguous()  # [k, Z]
    table = table * _sign(table)[:, None]
    return Directions(
        "closed-form",
        [f"factor_{i}" for i in range(k)],
        table.float(),
        eigenvalues=[float(v) for v in values[order]],
    )


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


def write_directions(model_path, names, table, info: dict | None = None) -> Artifact:
    """Replace the artifact's direction table by ``table`` [K, Z] (or [C, K, Z]) with ``names``.

    ONNX graphs, if the artifact had them, are re-exported with the new table; everything is
    staged in a temporary copy and swapped in with one atomic write. ``info`` (JSON-able) is
    recorded as the manifest's provenance["directions"]."""
    from ctrlgan.export import onnx as export

    artifact = Artifact.open(model_path)
    names, t = check_table(artifact, names, table)
    manifest = artifact.manifest
    manifest.directions = names
    if info is not None:
        manifest.provenance = {**manifest.provenance, "directions": info}
    tensors = {DIRECTIONS: {"directions": t}}
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
