"""Quality metrics of a conditional generator, measured against the real data.

* Conditional accuracy: the share of generated samples that an independent classifier, fitted
  only on real images (an RBF support-vector machine on pixels), assigns to the requested class.
* Diversity ratio: per class, the mean pairwise L2 distance between generated samples divided
  by that between real samples of the class; near 0 means mode collapse, near 1 means the
  generated spread matches the data's.
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
) -> dict[str, float]:
    """Conditional accuracy and diversity of ``generate(labels, seed_start) -> images``.

    Samples use seeds from ``seed_base`` on, away from the seeds that demos and tests show.
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
    result = {
        "conditional_accuracy": correct / (n_classes * per_class),
        "eval_per_class": per_class,
    }
    if ratios:
        result["diversity_ratio_mean"] = float(np.mean(ratios))
        result["diversity_ratio_min"] = float(np.min(ratios))
    return result
