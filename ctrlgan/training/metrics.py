"""Quality metrics of a conditional generator, measured against the real data.

* Conditional accuracy: the share of generated samples that an independent classifier, fitted
  only on real images (an RBF support-vector machine on pixels), assigns to the requested class.
* Diversity ratio: per class, the mean pairwise L2 distance between generated samples divided
  by that between real samples of the class; near 0 means mode collapse, near 1 means the
  generated spread matches the data's.
* MIG, the mutual information gap (Chen et al., 2018), of a generator trained on ``shapes``:
  how exclusively single latent dimensions carry single ground-truth factors. The factors of
  generated images are read by ``ShapeFactorReader``, fitted on real shapes only; the
  estimator is in ``mutual_information_gap``'s docstring. ``dci`` gives Eastwood & Williams'
  disentanglement, completeness and informativeness of the same samples.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

MAX_CLASSIFIER_TRAIN = 6000
MAX_PAIRWISE = 400


def fit_reference_classifier(images: torch.Tensor, labels: torch.Tensor, seed: int = 0):
    """An SVM fitted on real images only (at most MAX_CLASSIFIER_TRAIN, stratified at random)."""
    from sklearn.svm import SVC

    x = images.reshape(len(images), -1).numpy()
    y = labels.numpy()
    if len(x) > MAX_CLASSIFIER_TRAIN:
        keep = np.random.default_rng(seed).permutation(len(x))[:MAX_CLASSIFIER_TRAIN]
        x, y = x[keep], y[keep]
    return SVC(kernel="rbf", gamma="scale", C=10.0).fit(x, y)


def conditional_accuracy(classifier, images: torch.Tensor, requested: torch.Tensor) -> float:
    predicted = classifier.predict(np.asarray(images.reshape(len(images), -1)))
    return float((predicted == np.asarray(requested)).mean())


def mean_pairwise_distance(images: torch.Tensor, seed: int = 0) -> float:
    """Mean L2 distance over distinct pairs (of at most MAX_PAIRWISE random images)."""
    x = images.reshape(len(images), -1).to(torch.float64)
    if len(x) > MAX_PAIRWISE:
        keep = torch.from_numpy(np.random.default_rng(seed).permutation(len(x))[:MAX_PAIRWISE])
        x = x[keep]
    if len(x) < 2:
        raise ValueError("need at least two images for a pairwise distance")
    d = torch.cdist(x, x)
    n = len(x)
    return float(d.sum() / (n * (n - 1)))


def evaluate(
    generate: Callable[[torch.Tensor, int], torch.Tensor],
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    n_classes: int,
    per_class: int,
    seed_base: int = 10**9,
    progress: Callable[[int], object] | None = None,
) -> dict[str, float]:
    """Conditional accuracy and diversity of ``generate(labels, seed_start) -> images``.

    Samples use seeds from ``seed_base`` on, away from the seeds that demos and tests show.
    ``progress(n)`` is called with the number of images measured, class by class.
    """
    classifier = fit_reference_classifier(real_images, real_labels)
    correct, ratios = 0, []
    for c in range(n_classes):
        labels = torch.full((per_class,), c, dtype=torch.int64)
        fake = generate(labels, seed_base + c * per_class)
        correct += int((classifier.predict(fake.reshape(per_class, -1).numpy()) == c).sum())
        real = real_images[real_labels == c]
        if len(real) >= 2 and per_class >= 2:
            ratios.append(mean_pairwise_distance(fake) / mean_pairwise_distance(real))
        if progress is not None:
            progress(per_class)
    result = {
        "conditional_accuracy": correct / (n_classes * per_class),
        "eval_per_class": per_class,
    }
    if ratios:
        result["diversity_ratio_mean"] = float(np.mean(ratios))
        result["diversity_ratio_min"] = float(np.min(ratios))
    return result


# Disentanglement: MIG on shapes -----------------------------------------------------------

MIG_BINS = 20
# Rotational symmetry order of each shapes class (square, ellipse, heart, triangle): an image
# determines its orientation only modulo 2 pi / k.
SHAPE_SYMMETRY = {"square": 4, "ellipse": 2, "heart": 1, "triangle": 3}


def _equal_frequency_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Column-wise ranks -> bin indices in [0, bins), each bin holding ~N / bins values. A column
    with at most ``bins`` distinct values (a discrete factor) keeps one bin per value instead, so
    that ties are never split across bins."""
    ranks = np.argsort(np.argsort(values, axis=0, kind="stable"), axis=0, kind="stable")
    out = (ranks * bins) // len(values)
    for j in range(values.shape[1]):
        distinct, index = np.unique(values[:, j], return_inverse=True)
        if len(distinct) <= bins:
            out[:, j] = index.reshape(-1)
    return out


def mutual_information_gap(latents, factors, bins: int = MIG_BINS) -> dict:
    """MIG of samples: latents [N, L] (L >= 2) against factor values [N, F].

    Estimator: every latent and every factor column is discretised into ``bins`` equal-frequency
    bins (by rank, so any monotone rescaling of a column gives the same result); I(z_j; v_k) is
    the plug-in mutual information of the binned pair (sklearn's ``mutual_info_score``, nats)
    and H(v_k) the plug-in entropy of the binned factor (log bins when the bins are full). Then

        MIG = mean_k (I(z_(1); v_k) - I(z_(2); v_k)) / H(v_k),

    z_(1) and z_(2) being the latents with the largest and second-largest information about
    v_k. MIG is in [0, 1]: near 1 when each factor is determined by one latent and no other
    latent carries information about it; near 0 when no latent stands out. The
    plug-in MI of independent columns is biased up by about (bins - 1)^2 / (2 N) nats, so use
    N >> bins^2 (e.g. N >= 2000 for 20 bins).

    Returns {"mig", "gaps" [F], "best_latent" [F], "mi" [L, F] (nats), "entropy" [F]}.
    """
    from sklearn.metrics import mutual_info_score

    z = np.asarray(latents, dtype=np.float64)
    v = np.asarray(factors, dtype=np.float64)
    if z.ndim != 2 or v.ndim != 2 or len(z) != len(v):
        raise ValueError(f"latents [N, L] and factors [N, F] needed, got {z.shape}, {v.shape}")
    if z.shape[1] < 2 or v.shape[1] < 1:
        raise ValueError("MIG needs at least two latent dimensions and one factor")
    if len(z) < 2 * bins:
        raise ValueError(f"need at least {2 * bins} samples for {bins} bins, got {len(z)}")
    zb, vb = _equal_frequency_bins(z, bins), _equal_frequency_bins(v, bins)
    mi = np.array(
        [
            [mutual_info_score(zb[:, j], vb[:, k]) for k in range(v.shape[1])]
            for j in range(z.shape[1])
        ]
    )
    entropy = np.array([mutual_info_score(vb[:, k], vb[:, k]) for k in range(v.shape[1])])
    top = np.sort(mi, axis=0)[::-1]
    gaps = (top[0] - top[1]) / np.maximum(entropy, 1e-12)
    return {
        "mig": float(gaps.mean()),
        "gaps": gaps.tolist(),
        "best_latent": mi.argmax(axis=0).tolist(),
        "mi": mi.tolist(),
        "entropy": entropy.tolist(),
    }


def dci(latents, factors, seed: int = 0) -> dict:
    """DCI (Eastwood & Williams, 2018) of latents [N, L] against factors [N, F], L, F >= 2.

    Per factor k, gradient-boosted trees (sklearn, 50 trees of depth 3) regress the
    standardised factor on the latents, fitted on the first 80% of the samples; their feature
    importances form R[j, k] >= 0. With P_j = R[j, :] / sum_k R[j, k] and Q_k = R[:, k] / sum_j:

        disentanglement = sum_j rho_j (1 - H_F(P_j)),  rho_j = sum_k R[j, k] / sum R
        completeness    = mean_k (1 - H_L(Q_k))
        informativeness = mean_k R^2 of the trees on the held-out 20%

    (H_F, H_L: entropies with logarithms to base F and L, so each term is in [0, 1].)
    Returns those three and "importance" R [L, F].
    """
    from sklearn.ensemble import GradientBoostingRegressor

    z = np.asarray(latents, dtype=np.float64)
    v = np.asarray(factors, dtype=np.float64)
    if z.ndim != 2 or v.ndim != 2 or len(z) != len(v):
        raise ValueError(f"latents [N, L] and factors [N, F] needed, got {z.shape}, {v.shape}")
    n_lat, n_fac = z.shape[1], v.shape[1]
    if n_lat < 2 or n_fac < 2 or len(z) < 10:
        raise ValueError("DCI needs >= 2 latents, >= 2 factors and >= 10 samples")
    v = (v - v.mean(0)) / np.maximum(v.std(0), 1e-12)
    cut = len(z) * 4 // 5
    importance = np.zeros((n_lat, n_fac))
    r2 = []
    for k in range(n_fac):
        model = GradientBoostingRegressor(n_estimators=50, max_depth=3, random_state=seed)
        model.fit(z[:cut], v[:cut, k])
        importance[:, k] = np.abs(model.feature_importances_)
        r2.append(model.score(z[cut:], v[cut:, k]))

    def one_minus_entropy(p: np.ndarray, base: int) -> np.ndarray:
        p = p / np.maximum(p.sum(axis=-1, keepdims=True), 1e-12)
        h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1) / np.log(base)
        return 1 - h

    total = max(importance.sum(), 1e-12)
    rho = importance.sum(axis=1) / total
    return {
        "disentanglement": float((rho * one_minus_entropy(importance, n_fac)).sum()),
        "completeness": float(one_minus_entropy(importance.T, n_lat).mean()),
        "informativeness": float(np.mean(r2)),
        "importance": importance.tolist(),
    }


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def ink_moments(images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(mass / (H W), centroid x, centroid y) of images [B, C, H, W] in [-1, 1], float64, with
    ink w = clamp((x + 1) / 2, 0, 1) averaged over channels and pixel centres (j + 0.5) / W."""
    x = images.to(torch.float64)
    _, _, h, w_ = x.shape
    ink = ((x + 1) / 2).clamp(0, 1).mean(dim=1)
    mass = ink.sum(dim=(1, 2))
    denom = mass + 1e-9
    u = ((torch.arange(w_, dtype=x.dtype) + 0.5) / w_)[None, None, :]
    v = ((torch.arange(h, dtype=x.dtype) + 0.5) / h)[None, :, None]
    cx = ((ink * u).sum(dim=(1, 2)) + 0.5e-9) / denom
    cy = ((ink * v).sum(dim=(1, 2)) + 0.5e-9) / denom
    return mass / (h * w_), cx, cy


def _shape_moments(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Ink centroid, sqrt(ink area) and complex moment phases of images [N, C, H, W].

    Ink w = clamp((x + 1) / 2, 0, 1); pixel centres at ((j + 0.5) / W, (i + 0.5) / H), y up
    for the moments. With d = (x - cx) + i (y - cy) about the ink centroid, the phase of
    M_k = sum w d^k (k = 2, 3, 4) turns by k theta when the image turns by theta; for k = 1
    (sum w d = 0 at the centroid) M_1 = sum w |d|^2 d is used instead.
    """
    x = torch.as_tensor(images).detach().to(torch.float64)
    _, _, h, w_ = x.shape
    ink = ((x + 1) / 2).clamp(0, 1).mean(dim=1)
    area, cx, cy = ink_moments(x)
    u = ((torch.arange(w_, dtype=torch.float64) + 0.5) / w_)[None, None, :]
    v = ((torch.arange(h, dtype=torch.float64) + 0.5) / h)[None, :, None]
    d = torch.complex(u - cx[:, None, None], cy[:, None, None] - v)
    phases = {}
    for k in (1, 2, 3, 4):
        moment = (ink * (d.abs() ** 2 * d if k == 1 else d**k)).sum(dim=(1, 2))
        phases[k] = torch.angle(moment).numpy()
    return {
        "cx": cx.numpy(),
        "cy": cy.numpy(),
        "size": torch.sqrt(area.clamp_min(0)).numpy(),
        "phase": phases,
    }


class ShapeFactorReader:
    """Reads the factors (scale, orientation, pos_x, pos_y) off shapes images of known class.

    Fitted on real shapes with their true factors, per class: scale, pos_x and pos_y by least
    squares on [1, ink centroid x, y, sqrt(ink area)]; orientation from the phase of the complex
    moment of the class's symmetry order k (SHAPE_SYMMETRY) by a fitted sign and offset. An
    image fixes orientation only modulo 2 pi / k, so the factor read (and the one compared
    with, ``true_factors``) is the *effective* orientation k theta mod 2 pi, in [0, 2 pi).
    ``quality`` holds the held-out agreement on real images (R^2; circular correlation for
    orientation), measured on the last fifth of the images passed to ``fit``.
    """

    factor_names = ("scale", "orientation", "pos_x", "pos_y")

    def __init__(self, classes):
        unknown = [c for c in classes if c not in SHAPE_SYMMETRY]
        if unknown:
            raise ValueError(f"not shapes classes: {unknown}")
        self.orders = [SHAPE_SYMMETRY[c] for c in classes]
        self.linear: dict[int, np.ndarray] = {}
        self.rotation: dict[int, tuple[float, float]] = {}
        self.quality: dict[str, float] = {}

    def true_factors(self, labels, factors) -> np.ndarray:
        """Data set factors [N, 4] (scale, orientation, pos_x, pos_y) with effective orientation."""
        out = _numpy(factors).astype(np.float64)  # a copy
        k = np.array(self.orders)[_numpy(labels)]
        out[:, 1] = np.mod(k * out[:, 1], 2 * np.pi)
        return out

    @staticmethod
    def _design(m: dict) -> np.ndarray:
        return np.stack([np.ones_like(m["cx"]), m["cx"], m["cy"], m["size"]], axis=1)

    def fit(self, images: torch.Tensor, labels: torch.Tensor, factors: torch.Tensor):
        n_fit = max(1, len(images) * 4 // 5)
        m = _shape_moments(images[:n_fit])
        y = _numpy(labels)[:n_fit]
        target = self.true_factors(y, factors[:n_fit])
        for c, k in enumerate(self.orders):
            sel = y == c
            if sel.sum() < 8:
                raise ValueError(f"need >= 8 real images of class {c} to fit the factor reader")
            design = self._design(m)[sel]
            self.linear[c] = np.linalg.lstsq(design, target[sel][:, [0, 2, 3]], rcond=None)[0]
            best = None
            for sign in (1.0, -1.0):
                mean = np.exp(1j * (m["phase"][k][sel] - sign * target[sel, 1])).mean()
                if best is None or abs(mean) > best[0]:
                    best = (abs(mean), sign, float(np.angle(mean)))
            self.rotation[c] = best[1:]
        if n_fit < len(images):
            held = self.read(images[n_fit:], labels[n_fit:])
            true = self.true_factors(labels[n_fit:], factors[n_fit:])
            for i, name in enumerate(self.factor_names):
                if name == "orientation":
                    score = float(np.cos(held[:, i] - true[:, i]).mean())
                else:
                    resid = ((held[:, i] - true[:, i]) ** 2).sum()
                    score = 1 - resid / max(((true[:, i] - true[:, i].mean()) ** 2).sum(), 1e-12)
                self.quality[name] = float(score)
        return self

    def read(self, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
        """Factors [N, 4] of images [N, C, H, W] of the given classes."""
        m = _shape_moments(images)
        y = _numpy(labels)
        out = np.zeros((len(y), 4))
        design = self._design(m)
        for c, k in enumerate(self.orders):
            sel = y == c
            if not sel.any():
                continue
            out[np.ix_(sel, [0, 2, 3])] = design[sel] @ self.linear[c]
            sign, offset = self.rotation[c]
            out[sel, 1] = np.mod(sign * (m["phase"][k][sel] - offset), 2 * np.pi)
        return out


def shapes_mig(
    generator: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    factors: torch.Tensor,
    classes,
    latent_dims: int = 4,
    n: int = 4000,
    bins: int = MIG_BINS,
    seed_base: int = 10**9,
    with_dci: bool = False,
) -> dict:
    """MIG between z dims [0, latent_dims) and the factors of ``generator(z, y)``'s images.

    z rows are the runtime's noise for seeds seed_base, seed_base + 1, ...; classes cycle so
    each gets n / C samples; the factors of the generated images are read by a
    ShapeFactorReader fitted on the real (images, labels, factors). Returns
    mutual_information_gap's dict plus "reader_quality", "latent_dims", "n" and, with
    ``with_dci``, "dci" (``dci`` of the same samples).
    """
    from ctrlgan.kernels.reference import noise

    reader = ShapeFactorReader(classes).fit(images, labels, factors)
    z_dim = generator.config.z_dim
    if not 2 <= latent_dims <= z_dim:
        raise ValueError(f"latent_dims must be in [2, z_dim={z_dim}], got {latent_dims}")
    seeds = torch.arange(seed_base, seed_base + n)
    y = seeds % len(classes)
    z = noise(seeds, z_dim)
    read = []
    was_training = generator.training
    generator.eval()
    with torch.no_grad():
        for start in range(0, n, 500):
            fake = generator(z[start : start + 500], y[start : start + 500])
            read.append(reader.read(fake, y[start : start + 500]))
    generator.train(was_training)
    read = np.concatenate(read)
    result = mutual_information_gap(z[:, :latent_dims].numpy(), read, bins)
    if with_dci:
        result["dci"] = dci(z[:, :latent_dims].numpy(), read)
    result.update(reader_quality=reader.quality, latent_dims=latent_dims, n=n)
    return result
