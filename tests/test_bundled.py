"""The bundled default model: present, verified, and as good as its README says."""

import numpy as np
import torch

import ctrlgan
from ctrlgan.artifact import Artifact, bundled_models
from ctrlgan.cli import main
from ctrlgan.training.data import load_digits
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


def test_digits_conditional_accuracy_and_diversity():
    """CI's smaller sample of the README's measurement: fresh seeds, an SVM on real digits."""
    real = load_digits()
    classifier = fit_reference_classifier(real.images, real.labels)
    g = ctrlgan.load("digits", backend="torch")
    per_class = 100
    start = int(np.random.default_rng().integers(0, 2**62))
    labels = np.repeat(np.arange(10), per_class)
    x = g.sample(classes=labels.tolist(), seeds=range(start, start + len(labels)))
    predicted = classifier.predict(x.reshape(len(x), -1))
    accuracy = (predicted == labels).mean()
    assert accuracy >= 0.9, accuracy
    for c in range(10):
        fake = torch.from_numpy(x[labels == c])
        ratio = mean_pairwise_distance(fake) / mean_pairwise_distance(real.images[real.labels == c])
        assert ratio >= 0.5, (c, ratio)


def test_sample_command_uses_the_bundled_default(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--class", "7"]) == 0
    assert (tmp_path / "samples.png").exists()
    assert "[7]" in capsys.readouterr().out
