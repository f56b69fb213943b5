"""The bundled models: present, verified, and as good as the README says."""

import numpy as np
import torch

import ctrlgan
from ctrlgan.artifact import Artifact, bundled_models
from ctrlgan.cli import main
from ctrlgan.training.data import load_dataset, load_digits
from ctrlgan.training.metrics import fit_reference_classifier, mean_pairwise_distance


def test_digits_is_bundled_with_its_provenance():
    assert "digits" in bundled_models()
    m = Artifact.open("digits").manifest
    p = m.provenance
    assert p["command"].startswith("ctrlgan train")
    assert p["dataset"] == "digits" and p["n_images"] == 1797
    assert p["metrics"]["conditional_accuracy"] >= 0.9
    assert p["metrics"]["eval_per_class"] == 1000
    assert p["train_seconds"] <= 15 * 60
    size = sum((Artifact.open("digits").path / f).stat().st_size for f in m.files)
    assert size < 5 * 2**20  # "a few MB at most" (issue 2): weights, 3 graphs, feature network


def measure(model: str, real, per_class: int, backend: str) -> tuple[float, list[float]]:
    """CI's smaller sample of the README's measurement: fresh random seeds, an SVM fitted on the
    real images only; (conditional accuracy, diversity ratio per class)."""
    classifier = fit_reference_classifier(real.images, real.labels)
    g = ctrlgan.load(model, backend=backend)
    start = int(np.random.default_rng().integers(0, 2**62))
    labels = np.repeat(np.arange(10), per_class)
    x = g.sample(classes=labels.tolist(), seeds=range(start, start + len(labels)))
    accuracy = float((classifier.predict(x.reshape(len(x), -1)) == labels).mean())
    ratios = [
        mean_pairwise_distance(torch.from_numpy(x[labels == c]))
        / mean_pairwise_distance(real.images[real.labels == c])
        for c in range(10)
    ]
    return accuracy, ratios


def test_digits_conditional_accuracy_and_diversity():
    accuracy, ratios = measure("digits", load_digits(), 100, "torch")
    assert accuracy >= 0.9, accuracy
    assert min(ratios) >= 0.5, ratios


def test_mnist_is_bundled_with_its_provenance():
    """The source's networks (--arch course) trained on real MNIST (issue 14's targets)."""
    assert "mnist" in bundled_models()
    a = Artifact.open("mnist")
    m, p = a.manifest, a.manifest.provenance
    assert m.generator["arch"] == "course" and m.image_shape == [1, 28, 28]
    assert p["command"].startswith("ctrlgan train") and "--arch course" in p["command"]
    assert p["dataset"] == "mnist" and p["n_images"] == 5000
    assert p["metrics"]["conditional_accuracy"] >= 0.95
    assert p["metrics"]["diversity_ratio_mean"] >= 0.6
    assert m.directions[:3] == ["thickness", "slant", "size"]
    assert "features.safetensors" in m.files and "generator.onnx" in m.files


def test_mnist_conditional_accuracy_and_diversity():
    accuracy, ratios = measure("mnist", load_dataset("mnist"), 60, "onnxruntime")
    assert accuracy >= 0.93, accuracy  # 97% over 10,000 samples; a 600-sample estimate varies
    assert np.mean(ratios) >= 0.6 and min(ratios) >= 0.45, ratios


def test_sample_command_uses_the_bundled_default(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--class", "7"]) == 0
    from PIL import Image

    grid = Image.open(tmp_path / "samples.png")
    assert "[7]" in capsys.readouterr().out
    assert grid.width > 28 * 8  # the default model is mnist: 28x28 digits, 8 to a row
