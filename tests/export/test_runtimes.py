"""Conformance: every shipped graph of every bundled model, and a freshly exported one, loads and
runs in other ONNX runtimes than onnxruntime (OpenVINO, tract) at batch 1, 7 and 64 from one
load, and matches the torch model: 1e-4 for generator.onnx, 2e-2 for generator.fp16.onnx.

A graph a runtime cannot load fails here with that runtime's own message. onnx2torch, the
fourth runtime the portability issue names, is not here: it imports torchvision, and the only
torchvision for this torch on the package indexes is a CUDA build that cannot import beside the
CPU torch (docs/onnx.md).

OpenVINO's CPU plugin computes in bfloat16 by default on CPUs that have it (the errors are then
~0.03 on fp32 graphs); ``INFERENCE_PRECISION_HINT: f32`` asks for what the graph says.
"""

from __future__ import annotations

import numpy as np
import pytest

from ctrlgan.artifact import GENERATOR_FP16_ONNX, GENERATOR_ONNX, Artifact
from ctrlgan.export import onnx as export

openvino = pytest.importorskip("openvino", reason="openvino is part of dev")
tract = pytest.importorskip("tract", reason="tract is part of dev")

BATCHES = (1, 7, 64)
GRAPHS = {GENERATOR_ONNX: 1e-4, GENERATOR_FP16_ONNX: 2e-2}
INPUT_TYPES = {"z_a": "f32", "z_b": "f32", "t": "f32", "class_a": "i64", "class_b": "i64"}
INPUT_TYPES |= {"s": "f32", "alpha": "f32"}


def run_openvino(path: str):
    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda feeds: compiled(feeds)[compiled.output(0)]


def run_tract(path: str, artifact: Artifact):
    """One load with a symbolic batch B; tract needs the input facts spelled out."""
    model = tract.onnx().load(path)
    m = artifact.manifest
    widths = {"z_a": m.z_dim, "z_b": m.z_dim, "alpha": len(m.directions)}
    for i, name in enumerate(export.graph.INPUTS):
        dims = ["B"] + ([str(widths[name])] if name in widths else [])
        model.set_input_fact(i, ",".join([*dims, INPUT_TYPES[name]]))
    runnable = model.into_model().into_runnable()
    return lambda feeds: runnable.run([feeds[n] for n in export.graph.INPUTS])[0].to_numpy()


RUNTIMES = {"openvino": lambda path, artifact: run_openvino(path), "tract": run_tract}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, tiny_model):
    """The tiny trained model with a 3-direction table, exported now."""
    import shutil

    import torch

    from ctrlgan.artifact import DIRECTIONS, write_artifact

    path = tmp_path_factory.mktemp("runtimes") / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    manifest = Artifact.open(path).manifest
    manifest.directions = ["d0", "d1", "d2"]
    table = {"directions": torch.randn(3, manifest.z_dim)}
    write_artifact(path, manifest, tensors={DIRECTIONS: table})
    return export.export(path).path


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
@pytest.mark.parametrize("which", ["mnist", "digits", "fresh"])
def test_graphs_run_in_other_runtimes_and_match_torch(runtime, which, fresh):
    artifact = Artifact.open(fresh if which == "fresh" else which)
    reference = (artifact.build_generator(), export.steering_table(artifact))
    rng = np.random.default_rng()
    for file, tolerance in GRAPHS.items():
        run = RUNTIMES[runtime](str(artifact.path / file), artifact)  # one load, every batch
        for batch in BATCHES:
            feeds = export.random_inputs(artifact, batch, rng)
            want, _ = export.torch_images(artifact, feeds, reference)
            got = run(feeds)
            assert got.shape == want.shape, (runtime, file, batch)
            err = float(np.abs(got - want).max())
            assert err <= tolerance, (runtime, which, file, batch, err)
