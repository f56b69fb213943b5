"""Shared fixtures. Without CUDA the kernels run in Triton's interpreter: TRITON_INTERPRET must
be set before any @triton.jit decorates. With CUDA it stays unset, so that the `gpu` tests run
the compiled kernels."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A small digits model trained for a few steps: a real, loadable artifact."""
    from ctrlgan.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny") / "run"
    config = TrainConfig(
        out=str(out),
        steps=6,
        batch_size=16,
        z_dim=12,
        g_channels=8,
        d_channels=8,
        eval_per_class=3,
        sample_every=3,
        checkpoint_every=3,
        feature_steps=40,  # a real but quick feature network
        command="test",
    )
    return train(config, progress=False)
