import shutil

import pytest
import torch

from ctrlgan.artifact import DIRECTIONS, Artifact, write_artifact
from ctrlgan.export import onnx as export


def steered_model(tmp_path_factory, tiny_model, seed: int):
    """A copy of the tiny model with two random steering directions ("up", "left"; torch seed
    ``seed``), exported to ONNX."""
    path = tmp_path_factory.mktemp("steered") / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    manifest = Artifact.open(path).manifest
    manifest.directions = ["up", "left"]
    torch.manual_seed(seed)
    write_artifact(path, manifest, tensors={DIRECTIONS: {"directions": torch.randn(2, 12)}})
    export.export(path)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_model):
    """The tiny model with two steering directions, exported to ONNX."""
    return steered_model(tmp_path_factory, tiny_model, seed=3)
