"""The onnxruntime session factory: IOBinding results, options, providers, refusals."""

import numpy as np
import pytest
import torch

from ctrlgan.artifact import Artifact
from ctrlgan.errors import ArtifactError, BackendUnavailable, InvalidRequest
from ctrlgan.export import onnx as export
from ctrlgan.runtime import ort as rt


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model):
    import shutil

    path = tmp_path_factory.mktemp("ort") / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    return export.export(path)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_iobinding_run_equals_plain_run_and_torch(exported, batch):
    session = rt.OrtSession.open(exported, intra_op_threads=1)
    feeds = export.random_inputs(exported, batch, np.random.default_rng(batch))
    got = session.run(feeds)
    assert got.shape == (batch, *exported.manifest.image_shape) and got.dtype == np.float32
    plain = session.session.run(["image"], feeds)[0]
    assert np.array_equal(got, plain)
    assert np.array_equal(session.run_bound(feeds), plain)
    want, _ = export.torch_images(exported, feeds)
    assert np.abs(got - want).max() <= 1e-5


def test_body_graph_session(exported):
    session = rt.OrtSession.open(exported, export.BODY_ONNX)
    latent = np.random.default_rng(0).standard_normal((3, 12 + 10)).astype(np.float32)
    g = exported.build_generator()
    with torch.no_grad():
        want = g.body(torch.from_numpy(latent)).numpy()
    assert np.abs(session.run({"latent": latent}) - want).max() <= 1e-5


def test_options_are_applied(exported):
    session = rt.OrtSession.open(exported, intra_op_threads=2, inter_op_threads=1)
    opts = session.session.get_session_options()
    assert opts.intra_op_num_threads == 2 and opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level.name == "ORT_ENABLE_ALL"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_cpu_machine_gets_the_cpu_provider_and_no_provider_errors(exported, capfd):
    session = rt.OrtSession.open(exported)
    session.run(export.random_inputs(exported, 2, np.random.default_rng(0)))
    assert session.providers == ["CPUExecutionProvider"]
    assert not rt.cuda_usable()
    captured = capfd.readouterr()
    assert "CUDA" not in captured.err and "CUDA" not in captured.out
    with pytest.raises(BackendUnavailable, match="CUDA"):
        rt.OrtSession.open(exported, device="cuda")


@pytest.mark.parametrize(
    "options, field",
    [
        ({"intra_op_threads": -1}, "intra_op_threads"),
        ({"inter_op_threads": 1.5}, "inter_op_threads"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_options(exported, options, field):
    with pytest.raises(InvalidRequest) as e:
        rt.OrtSession.open(exported, **options)
    assert e.value.field == field


def test_wrong_feeds(exported):
    session = rt.OrtSession.open(exported)
    feeds = export.random_inputs(exported, 2, np.random.default_rng(0))
    del feeds["alpha"]
    for run in (session.run, session.run_bound):
        with pytest.raises(InvalidRequest, match="feeds"):
            run(feeds)


def test_unexported_model_is_refused(tiny_model):
    with pytest.raises(ArtifactError, match="generator.onnx"):
        rt.OrtSession.open(Artifact.open(tiny_model.artifact.path))


def test_the_public_run_path_gives_the_same_images(exported):
    """run() calls onnxruntime's binding directly; without it, the public wrapper."""
    session = rt.OrtSession.open(exported)
    feeds = export.random_inputs(exported, 5, np.random.default_rng(1))
    fast = session.run(feeds)
    session._run = session._wrapped_run
    assert np.array_equal(session.run(feeds), fast)
