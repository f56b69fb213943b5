import shutil

import pytest
import torch

from ctrlgan.artifact import DIRECTIONS, Artifact, write_artifact
from ctrlgan.export import onnx as export


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_model):
    """The tiny model with two steering directions, exported to ONNX."""
    path = tmp_path_factory.mktemp("steered") / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    manifest = Artifact.open(path).manifest
    manifest.directions = ["up", "left"]
    torch.manual_seed(3)
    write_artifact(path, manifest, tensors={DIRECTIONS: {"directions": torch.randn(2, 12)}})
    export.export(path)
    return path
