"""ONNX export: the graphs against torch (onnxruntime, the reference evaluator), their
portability and metadata, the artifact bookkeeping, and every way an export can be refused."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ctrlgan.artifact import DIRECTIONS, MANIFEST, Artifact, write_artifact
from ctrlgan.cli import main
from ctrlgan.errors import ArtifactError, InvalidRequest
from ctrlgan.export import graph
from ctrlgan.export import onnx as export
from ctrlgan.kernels import reference as ref
from ctrlgan.network import ConditionalGenerator, GeneratorConfig
from tests.test_cli import assert_one_line_error, run


@pytest.fixture
def model(tmp_path, tiny_model):
    """A copy of the tiny model with a 3-direction steering table."""
    path = tmp_path / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    artifact = Artifact.open(path)
    manifest = artifact.manifest
    manifest.directions = ["d0", "d1", "d2"]
    table = {"directions": torch.randn(3, manifest.z_dim)}
    write_artifact(path, manifest, tensors={DIRECTIONS: table})
    return path


def test_export_writes_verified_graphs_that_match_torch(model):
    artifact = export.export(model)
    m = artifact.manifest
    for name in export.ONNX_FILES:
        assert name in m.files and name in m.onnx
    sig = m.onnx[export.GENERATOR_ONNX]
    assert [i[0] for i in sig["inputs"]] == ["z_a", "z_b", "t", "class_a", "class_b", "s", "alpha"]
    assert sig["inputs"][6] == ["alpha", "float", ["batch", 3]]
    assert sig["inputs"][3] == ["class_a", "int64", ["batch"]]
    assert sig["outputs"] == [["image", "float", ["batch", *m.image_shape]]]
    assert sig["opset"] >= 18
    rows = export.check(model, batches=(1, 7, 256), reference_batches=(1, 7, 256))
    assert {(r.file, r.runner) for r in rows} == {
        (export.GENERATOR_ONNX, "onnxruntime"),
        (export.GENERATOR_ONNX, "reference"),
        (export.GENERATOR_FP16_ONNX, "onnxruntime"),
        (export.BODY_ONNX, "onnxruntime"),
    }
    assert {r.batch for r in rows} == {1, 7, 256}
    assert all(r.ok for r in rows), [r for r in rows if not r.ok]
    fp32 = [r.max_abs_error for r in rows if r.file == export.GENERATOR_ONNX]
    assert max(fp32) <= 1e-5  # well inside the 1e-4 contract


def test_graph_structure(model):
    artifact = export.export(model)
    m = onnx.load(str(artifact.path / export.GENERATOR_ONNX))
    ops = [n.op_type for n in m.graph.node]
    assert "BatchNormalization" not in ops
    assert ops.count("ConvTranspose") == 2 and ops[-1] == "Tanh"
    assert m.ir_version <= 13  # what onnxruntime 1.31 reads
    assert {i.name for i in m.graph.initializer} >= {"directions", "class_table"}
    # the prologue: named nodes in one group, ending in the body's input
    prologue = [n for n in m.graph.node if n.name.startswith("prologue/")]
    assert [n.op_type for n in m.graph.node[: len(prologue)]] == [n.op_type for n in prologue]
    assert prologue[-1].op_type == "Concat" and list(prologue[-1].output) == ["latent"]
    assert {"MatMul", "Gather"} <= {n.op_type for n in prologue}


def _portable(m: onnx.ModelProto) -> None:
    """Standard ops only: no local functions, no custom domain, nothing a runtime must inline."""
    assert not m.functions
    assert [o.domain for o in m.opset_import] in ([""], ["ai.onnx"])
    assert all(n.domain in ("", "ai.onnx") for n in m.graph.node)


def test_every_graph_is_portable_and_explains_itself(model):
    artifact = export.export(model)
    manifest = artifact.manifest
    for name in export.ONNX_FILES:
        m = onnx.load(str(artifact.path / name))
        _portable(m)
        meta = {p.key: p.value for p in m.metadata_props}
        assert json.loads(meta["ctrlgan.classes"]) == manifest.classes
        assert json.loads(meta["ctrlgan.features"]) == manifest.directions == ["d0", "d1", "d2"]
        assert int(meta["ctrlgan.z_dim"]) == manifest.z_dim
        assert json.loads(meta["ctrlgan.image_shape"]) == manifest.image_shape
        assert json.loads(meta["ctrlgan.value_range"]) == [-1.0, 1.0]
        assert "Philox-4x32-10" in meta["ctrlgan.noise"] and "0x9E3779B9" in meta["ctrlgan.noise"]
        # onnxruntime shows it to a user holding only the file
        path = str(artifact.path / name)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        assert session.get_modelmeta().custom_metadata_map == meta
    # tract 0.23 rejects a float16 Gemm with a bias: the fp16 graph adds it separately
    fp16 = onnx.load(str(artifact.path / export.GENERATOR_FP16_ONNX))
    gemms = [n for n in fp16.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == 1 and len(gemms[0].input) == 2


def test_bundled_graphs_are_portable():
    from ctrlgan.artifact import bundled_models

    for name in bundled_models():
        artifact = Artifact.open(name)
        for file in export.ONNX_FILES:
            m = onnx.load(str(artifact.path / file))
            _portable(m)
            meta = {p.key: p.value for p in m.metadata_props}
            assert json.loads(meta["ctrlgan.features"]) == artifact.manifest.directions


@pytest.mark.parametrize("embedding", ["onehot", "learned"])
@pytest.mark.parametrize("arch", ["ctrlgan", "course"])
def test_per_class_steering_and_learned_table_match_the_reference(embedding, arch):
    """The builder on its own: a per-class table [C, K, Z], both embeddings, an odd size, both
    layouts (the course's has kernels 3 and 4, strides 1 and 2, and biases before BatchNorm)."""
    config = GeneratorConfig(
        z_dim=13,
        n_classes=5,
        image_size=28,
        base_channels=6,
        embedding=embedding,
        embed_dim=4 if embedding == "learned" else 0,
        arch=arch,
    )
    g = ConditionalGenerator(config)
    for bn in (g.bn0, *(block[1] for block in g.blocks)):  # non-trivial statistics to fold
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    for conv in (*(block[0] for block in g.blocks), g.out):
        if conv.bias is not None:
            conv.bias.data.uniform_(-0.5, 0.5)
    g.eval()
    table = torch.randn(5, 2, 13)
    model = graph.build_generator_graph(g, table)
    onnx.checker.check_model(model, full_check=True)
    B = 9
    feeds = {
        "z_a": torch.randn(B, 13).numpy(),
        "z_b": torch.randn(B, 13).numpy(),
        "t": torch.rand(B).numpy(),
        "class_a": torch.randint(0, 5, (B,)).numpy(),
        "class_b": torch.randint(0, 5, (B,)).numpy(),
        "s": torch.rand(B).numpy(),
        "alpha": torch.randn(B, 2).numpy(),
    }
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(["image"], feeds)[0]
    f = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        x = ref.latent_prologue(directions=table, table=g.class_table().detach(), **f)
        want = g.body(x).numpy()
    assert np.abs(got - want).max() <= 1e-5


def test_tampered_onnx_is_refused_on_load(model):
    export.export(model)
    with open(model / export.GENERATOR_ONNX, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="generator.onnx"):
        Artifact.open(model)


def test_signature_mismatch_is_refused(model):
    export.export(model)
    manifest = json.loads((model / MANIFEST).read_text())
    manifest["onnx"][export.GENERATOR_ONNX]["inputs"][6][2] = ["batch", 4]
    (model / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="signature"):
        export.verify_signature(Artifact.open(model), export.GENERATOR_ONNX)


def test_unsigned_onnx_file_is_refused(model):
    export.export(model)
    manifest = json.loads((model / MANIFEST).read_text())
    del manifest["onnx"][export.BODY_ONNX]
    (model / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="generator.body.onnx"):
        Artifact.open(model)


def _snapshot(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_failed_export_leaves_the_artifact_as_it_was(model, monkeypatch):
    before = _snapshot(model)

    def broken(g, metadata=None):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(graph, "build_body_graph", broken)
    with pytest.raises(RuntimeError):
        export.export(model)
    assert _snapshot(model) == before
    assert [p.name for p in model.parent.iterdir()] == ["model"]  # no temporary left behind


def test_weights_that_do_not_match_the_manifest(model):
    manifest = json.loads((model / MANIFEST).read_text())
    manifest["generator"]["base_channels"] += 1
    (model / MANIFEST).write_text(json.dumps(manifest))
    before = _snapshot(model)
    with pytest.raises(ArtifactError, match="do not match"):
        export.export(model)
    assert _snapshot(model) == before


def test_direction_table_that_does_not_fit(model):
    manifest = json.loads((model / MANIFEST).read_text())
    manifest["directions"] = ["d0", "d1"]  # the table has 3 rows
    (model / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="directions"):
        export.export(model)


def test_missing_and_unwritable(tmp_path, model, monkeypatch):
    with pytest.raises(InvalidRequest, match="model"):
        export.export(tmp_path / "nowhere")
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    with pytest.raises(InvalidRequest, match="out"):
        export.export(model)


def test_cli_export_and_check(model, capsys):
    assert main(["export", str(model), "--check", "--reference-batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "generator.fp16.onnx" in out and "FAIL" not in out
    assert out.count(" ok") == 10  # 3 batches x 3 graphs, plus the reference at batch 1
    assert main(["export", str(model), "--check-only", "--reference-batches", "1"]) == 0


@pytest.mark.parametrize(
    "argv, words",
    [
        (["export", "{tmp}/none"], ["none"]),
        (["export", "{model}", "--reference-batches", "0"], ["--reference-batches"]),
        (["export", "{model}", "--reference-batches", "a"], ["--reference-batches"]),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, model, capsys, argv, words):
    code, _, err = run(capsys, *[a.format(tmp=tmp_path, model=model) for a in argv])
    assert_one_line_error(code, err, *words)


def test_check_only_without_export_names_the_file(model, capsys):
    assert main(["export", str(model), "--check-only"]) == 2
    assert "generator.onnx" in capsys.readouterr().err


def test_bundled_models_ship_up_to_date_graphs():
    """The shipped ONNX files are exactly what export builds from the shipped weights now (so a
    change of weights or of the exporter without a re-export fails here)."""
    from ctrlgan.artifact import bundled_models

    for name in bundled_models():
        artifact = Artifact.open(name)
        fresh = export.build(artifact)
        for file in export.ONNX_FILES:
            shipped = export.verify_signature(artifact, file)
            assert shipped.SerializeToString() == fresh[file].SerializeToString(), (name, file)


def test_new_directions_or_weights_drop_stale_graphs(model):
    export.export(model)
    artifact = Artifact.open(model)
    manifest = artifact.manifest
    write_artifact(model, manifest, tensors={DIRECTIONS: {"directions": torch.randn(3, 12)}})
    after = Artifact.open(model).manifest
    assert not [f for f in after.files if f.endswith(".onnx")] and after.onnx == {}
    assert not list(model.glob("*.onnx"))
    # other additions keep them
    export.export(model)
    manifest = Artifact.open(model).manifest
    write_artifact(model, manifest, tensors={}, files={"notes.txt": b"hello"})
    assert export.GENERATOR_ONNX in Artifact.open(model).manifest.files


def test_tampered_weights_are_refused_and_nothing_is_written(model):
    with open(model / "generator.safetensors", "r+b") as f:
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 1]))
    before = _snapshot(model)
    with pytest.raises(ArtifactError, match="generator.safetensors"):
        export.export(model)
    assert _snapshot(model) == before
