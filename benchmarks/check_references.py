"""Agreement of ctrlgan's directions with the reference code of the methods they follow.

    python benchmarks/check_references.py            # records results/references-cpu-<date>.json
    python benchmarks/check_references.py --no-save

On every bundled model (digits; mnist when one is bundled) and on the same samples and scores
that `ctrlgan directions` uses (5,000 noise rows of seed 0, classes cycling, the features read
by the model's discovery reader; again with 50,000 rows, to see how much of the difference is
the few labelled samples):

* boundaries: ctrlgan's `boundary_directions` (default labels: above/below the class median;
  `chosen_ratio=0.02`: the top and bottom 2% of each class) against InterFaceGAN's
  `train_boundary`, copied below, run on the same z and scores. train_boundary ranks the scores
  of all samples together; ctrlgan ranks within each class. "alike" feeds train_boundary each
  sample's rank within its class (divided by the class size) instead of the raw score, so that
  its top and bottom 2% are exactly ctrlgan's labelled samples (checked); "raw" feeds the raw
  scores, as the reference would be run. train_boundary splits its labelled samples at random
  (np.random.shuffle, split_ratio 0.7), so it runs for 5 seeds of NumPy's global generator and
  the cosines are given per seed. "classifier only" fits train_boundary's SVC(kernel='linear')
  on exactly ctrlgan's labelled training rows: what is left of the difference is the classifier
  (ctrlgan: logistic regression, C = 1). With 5,000 samples also ctrlgan's default labels
  against train_boundary at chosen_num_or_ratio 0.5 on the within-class ranks: both then label
  every sample by its class median.
* closed form: ctrlgan's `closed_form_directions` with and without `normalize` against SeFa's
  `factorize_weight`, copied below, on the first layer's z columns. Per direction |cosine| (the
  eigenvectors' signs are arbitrary) and the subspace overlap ||Q_a Q_b^T||_F^2 / k of the first
  k = 3 and 5 (1 = the same span), with SeFa's directions in the order `np.linalg.eig` returns
  them (SeFa does not sort; whether that order is descending is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn import svm

from ctrlgan.artifact import Artifact, bundled_models
from ctrlgan.training import directions as D
from ctrlgan.training import feature_net

RESULTS = Path(__file__).resolve().parent / "results"
INTERFACEGAN = {
    "repository": "https://github.com/genforce/interfacegan",
    "commit": "8da3fc0fe2a1d4c88dc5f9bee65e8077093ad2bb",
    "file": "utils/manipulator.py",
    "function": "train_boundary",
}
SEFA = {
    "repository": "https://github.com/genforce/sefa",
    "commit": "0d16060208506f5a68df8826bd581a7e0cf0cb4c",
    "file": "utils.py",
    "function": "factorize_weight",
}
SAMPLES, SEED, SHUFFLE_SEEDS, RATIO = (5000, 50000), 0, range(5), 0.02


# The references -------------------------------------------------------------------------------


def train_boundary(
    latent_codes, scores, chosen_num_or_ratio=0.02, split_ratio=0.7, invalid_value=None
):
    """InterFaceGAN's train_boundary (INTERFACEGAN above), line for line, with two changes:
    ``np.int`` (removed in NumPy 1.24) is ``int``, and what it logged is returned in a dict
    beside the boundary instead."""
    log = {}
    if not isinstance(latent_codes, np.ndarray) or not len(latent_codes.shape) == 2:
        raise ValueError("Input `latent_codes` should be [num_samples, latent_space_dim]!")
    num_samples = latent_codes.shape[0]
    latent_space_dim = latent_codes.shape[1]
    if (
        not isinstance(scores, np.ndarray)
        or not len(scores.shape) == 2
        or not scores.shape[0] == num_samples
        or not scores.shape[1] == 1
    ):
        raise ValueError("Input `scores` should be [num_samples, 1]!")
    if chosen_num_or_ratio <= 0:
        raise ValueError(f"Input `chosen_num_or_ratio` should be positive, {chosen_num_or_ratio}")

    if invalid_value is not None:
        latent_codes = latent_codes[scores[:, 0] != invalid_value]
        scores = scores[scores[:, 0] != invalid_value]

    sorted_idx = np.argsort(scores, axis=0)[::-1, 0]
    latent_codes = latent_codes[sorted_idx]
    scores = scores[sorted_idx]
    num_samples = latent_codes.shape[0]
    if 0 < chosen_num_or_ratio <= 1:
        chosen_num = int(num_samples * chosen_num_or_ratio)
    else:
        chosen_num = int(chosen_num_or_ratio)
    chosen_num = min(chosen_num, num_samples // 2)

    train_num = int(chosen_num * split_ratio)
    val_num = chosen_num - train_num
    # Positive samples.
    positive_idx = np.arange(chosen_num)
    np.random.shuffle(positive_idx)
    positive_train = latent_codes[:chosen_num][positive_idx[:train_num]]
    positive_val = latent_codes[:chosen_num][positive_idx[train_num:]]
    # Negative samples.
    negative_idx = np.arange(chosen_num)
    np.random.shuffle(negative_idx)
    negative_train = latent_codes[-chosen_num:][negative_idx[:train_num]]
    negative_val = latent_codes[-chosen_num:][negative_idx[train_num:]]
    # Training set.
    train_data = np.concatenate([positive_train, negative_train], axis=0)
    train_label = np.concatenate(
        [np.ones(train_num, dtype=int), np.zeros(train_num, dtype=int)], axis=0
    )
    log["train"] = [train_num, train_num]
    # Validation set.
    val_data = np.concatenate([positive_val, negative_val], axis=0)
    val_label = np.concatenate([np.ones(val_num, dtype=int), np.zeros(val_num, dtype=int)], axis=0)
    log["val"] = [val_num, val_num]
    # Remaining set.
    remaining_num = num_samples - chosen_num * 2
    remaining_data = latent_codes[chosen_num:-chosen_num]
    remaining_scores = scores[chosen_num:-chosen_num]
    decision_value = (scores[0] + scores[-1]) / 2
    remaining_label = np.ones(remaining_num, dtype=int)
    remaining_label[remaining_scores.ravel() < decision_value] = 0
    log["remaining"] = [int(np.sum(remaining_label == 1)), int(np.sum(remaining_label == 0))]

    clf = svm.SVC(kernel="linear")
    classifier = clf.fit(train_data, train_label)

    if val_num:
        val_prediction = classifier.predict(val_data)
        log["val_accuracy"] = float(np.sum(val_label == val_prediction) / (val_num * 2))
    if remaining_num:
        remaining_prediction = classifier.predict(remaining_data)
        log["remaining_accuracy"] = float(
            np.sum(remaining_label == remaining_prediction) / remaining_num
        )
    log["chosen"] = sorted_idx[:chosen_num], sorted_idx[-chosen_num:]

    a = classifier.coef_.reshape(1, latent_space_dim).astype(np.float32)
    return a / np.linalg.norm(a), log


def factorize_weight(weights):
    """SeFa's factorize_weight (SEFA above) from the point where it has the layers' weights:
    each [in, out] with the latent's dimensions as rows (StyleGAN: ``style.weight.T``; ctrlgan's
    nn.Linear first layer: ``fc.weight[:, :Z].T``, the z columns), line for line."""
    weight = np.concatenate(weights, axis=1).astype(np.float32)
    weight = weight / np.linalg.norm(weight, axis=0, keepdims=True)
    eigen_values, eigen_vectors = np.linalg.eig(weight.dot(weight.T))
    return eigen_vectors.T, eigen_values


# Comparisons ----------------------------------------------------------------------------------


def cosine(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def overlap(a, b) -> float:
    """||Q_a Q_b^T||_F^2 / k for the row spaces of a, b [k, Z]: the mean squared cosine of the
    principal angles (1: the same span)."""
    qa = np.linalg.qr(np.asarray(a, np.float64).T)[0].T
    qb = np.linalg.qr(np.asarray(b, np.float64).T)[0].T
    return float(np.linalg.norm(qa @ qb.T) ** 2 / len(qa))


def spread(values) -> dict:
    return {
        "mean": round(float(np.mean(values)), 4),
        "min": round(float(np.min(values)), 4),
        "max": round(float(np.max(values)), 4),
        "per_seed": [round(float(v), 4) for v in values],
    }


def within_class_rank(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each score's rank within its class (ties by position, as ctrlgan's stable sort), over
    the class size: train_boundary's global top fraction of these is each class's top."""
    out = np.empty(len(scores))
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        order = rows[np.argsort(scores[rows], kind="stable")]
        out[order] = np.arange(len(rows)) / len(rows)
    return out


def pairwise(directions) -> list[float]:
    return [cosine(a, b) for i, a in enumerate(directions) for b in directions[i + 1 :]]


def check_boundaries(generator, fset, names, n: int, median: bool) -> dict:
    """Cosines on n samples; ``median``: also ctrlgan's default labelling against
    train_boundary at chosen_num_or_ratio 0.5 on the within-class ranks, which labels every
    sample alike (above / below its class median; slow: an SVC on 0.7 n samples)."""
    z, labels = D.sample_latents(generator, n, SEED)
    measured = D._features(generator, z, labels, fset.fn(names))
    scores = {name: v.double().numpy() for name, v in measured.items()}
    default = D.boundary_directions(generator, fset.fn(names), n=n, seed=SEED)
    chosen = D.boundary_directions(generator, fset.fn(names), n=n, seed=SEED, chosen_ratio=RATIO)
    x, y = z.numpy(), labels.numpy()
    n_train = n - round(n * 0.2)  # fit_boundary's held-out rows are the last val_fraction
    out = {}
    for k, name in enumerate(names):
        ranks = within_class_rank(scores[name], y)
        runs = {"alike": [], "raw": [], "half": []}
        for s in SHUFFLE_SEEDS:
            feeds = [("alike", ranks, RATIO), ("raw", scores[name], RATIO)]
            for kind, feed, ratio in feeds + ([("half", ranks, 0.5)] if median else []):
                np.random.seed(s)
                runs[kind].append(train_boundary(x, feed[:, None], ratio))
        # ctrlgan's labelled samples (the int(n_c R) top and bottom of each class) are exactly
        # train_boundary's when it is fed the within-class ranks
        top, bottom = runs["alike"][0][1]["chosen"]
        want_top, want_bottom = [], []
        for c in np.unique(y):
            rows = np.flatnonzero(y == c)
            order = rows[np.argsort(scores[name][rows], kind="stable")]
            k_c = int(len(rows) * RATIO)
            want_top += list(order[-k_c:])
            want_bottom += list(order[:k_c])
        assert set(top) == set(want_top) and set(bottom) == set(want_bottom), name
        assert chosen.settings["labelled"][name] == len(want_top) + len(want_bottom)
        # the classifier alone: train_boundary's SVC on ctrlgan's own labelled training rows
        rows = np.concatenate([top, bottom])
        rows = rows[rows < n_train]
        svc = svm.SVC(kernel="linear").fit(x[rows], np.isin(rows, top).astype(int))
        ours_c, ours_d = chosen.table[k].numpy(), default.table[k].numpy()
        tb = {kind: [r[0] for r in found] for kind, found in runs.items()}
        row = {
            "chosen_0.02_vs_train_boundary_alike": spread([cosine(ours_c, b) for b in tb["alike"]]),
            "chosen_0.02_vs_train_boundary_raw": spread([cosine(ours_c, b) for b in tb["raw"]]),
            "default_vs_train_boundary_alike": spread([cosine(ours_d, b) for b in tb["alike"]]),
            "default_vs_train_boundary_raw": spread([cosine(ours_d, b) for b in tb["raw"]]),
            "chosen_0.02_vs_svc_same_rows": round(cosine(ours_c, svc.coef_), 4),
            "chosen_0.02_vs_default": round(cosine(ours_c, ours_d), 4),
            "train_boundary_alike_seed_to_seed": spread(pairwise(tb["alike"])),
            "accuracy": {
                "ctrlgan_default_val": round(default.accuracy[name], 4),
                "ctrlgan_chosen_val": round(chosen.accuracy[name], 4),
                "train_boundary_alike_val": spread([r[1]["val_accuracy"] for r in runs["alike"]]),
                "train_boundary_alike_remaining": spread(
                    [r[1]["remaining_accuracy"] for r in runs["alike"]]
                ),
            },
            "labelled": {
                "ctrlgan_chosen": chosen.settings["labelled"][name],
                "train_boundary": 2 * len(top),
            },
        }
        if median:
            row["default_vs_train_boundary_0.5_alike"] = spread(
                [cosine(ours_d, b) for b in tb["half"]]
            )
        out[name] = row
    return out


def check_closed_form(generator) -> dict:
    z_dim = generator.config.z_dim
    weight_zt = generator.fc.weight.detach()[:, :z_dim].T.numpy()  # [Z, out], SeFa's layout
    boundaries, values = factorize_weight([weight_zt])
    complex_parts = float(np.abs(np.imag(values)).max()) if np.iscomplexobj(values) else 0.0
    boundaries, values = np.real(boundaries), np.real(values)
    out = {
        # SeFa takes eig's order as it comes: are its first five the five largest, in order?
        "eig_first_5_are_top_5": bool(
            np.array_equal(np.argsort(-values, kind="stable")[:5], np.arange(5))
        ),
        "eig_order_descending": bool(np.all(np.diff(values) <= 0)),
        "eig_imaginary_max": complex_parts,
        "sefa_top_eigenvalues": [round(float(v), 4) for v in values[:5]],
    }
    for normalize in (False, True):
        found = D.closed_form_directions(generator, 5, normalize=normalize)
        ours = found.table.double().numpy()
        row = {"eigenvalues": [round(v, 4) for v in found.eigenvalues]}
        for k in (3, 5):
            cosines = [abs(cosine(a, b)) for a, b in zip(ours[:k], boundaries[:k], strict=True)]
            row[f"k{k}"] = {
                "abs_cosine": [round(c, 4) for c in cosines],
                "one_minus_abs_cosine_max": float(1 - min(cosines)),
                "subspace_overlap": round(overlap(ours[:k], boundaries[:k]), 4),
            }
        row["eigenvalue_max_relative_difference"] = (
            float(np.max(np.abs(np.array(found.eigenvalues) / values[:5] - 1)))
            if normalize
            else None
        )
        out["normalize" if normalize else "default"] = row
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-save", action="store_true", help="print, do not record")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    import sklearn

    import ctrlgan
    from ctrlgan.runtime.bench import environment

    models = [m for m in ("digits", "mnist") if m in bundled_models()]
    env = environment(
        " ".join(["python", "benchmarks/check_references.py", *(argv or sys.argv[1:])])
    )
    env["versions"] |= {"ctrlgan": ctrlgan.__version__, "scikit-learn": sklearn.__version__}
    report = {
        "benchmark": "references",
        **env,
        "references": {"interfacegan": INTERFACEGAN, "sefa": SEFA},
        "samples": SAMPLES,
        "seed": SEED,
        "chosen_ratio": RATIO,
        "shuffle_seeds": list(SHUFFLE_SEEDS),
        "models": {},
    }
    for model in models:
        artifact = Artifact.open(model)
        fset, _ = feature_net.feature_sets(artifact)
        generator = artifact.build_generator()
        names = list(fset.defaults)
        report["models"][model] = {
            "features": names,
            "feature_source": fset.source,
            "boundary": {
                f"samples_{n}": check_boundaries(generator, fset, names, n, median=n <= 5000)
                for n in SAMPLES
            },
            "closed_form": check_closed_form(generator),
        }
    text = json.dumps(report, indent=1)
    print(text)
    if not args.no_save:
        path = RESULTS / f"references-cpu-{report['date'][:10]}.json"
        path.write_text(text + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
