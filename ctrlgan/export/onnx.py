"""`ctrlgan export`: write a model's ONNX graphs into its artifact, and check them.

``export(model)`` builds generator.onnx, generator.fp16.onnx and generator.body.onnx (see
graph.py), runs the full ONNX checker on each, and writes them into the artifact atomically with
their sha256 and input/output signatures in the manifest: a failure at any point leaves the
artifact as it was. ``check(model)`` compares every graph with the torch model (ONNX Runtime on
the CPU, and onnx.reference.ReferenceEvaluator for generator.onnx) on random seeds, classes,
class mixes, steering and interpolation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from ctrlgan.artifact import (
    BODY_ONNX,
    DIRECTIONS,
    GENERATOR_FP16_ONNX,
    GENERATOR_ONNX,
    Artifact,
    write_artifact,
)
from ctrlgan.errors import ArtifactError
from ctrlgan.export import graph
from ctrlgan.kernels import reference

ONNX_FILES = (GENERATOR_ONNX, GENERATOR_FP16_ONNX, BODY_ONNX)
TOLERANCE = {GENERATOR_ONNX: 1e-4, GENERATOR_FP16_ONNX: 2e-2, BODY_ONNX: 1e-4}
CHECK_BATCHES = (1, 7, 256)


def steering_table(artifact: Artifact) -> torch.Tensor | None:
    """The artifact's direction table: global D [K, Z] or per class D [C, K, Z]; None without."""
    m = artifact.manifest
    if not m.directions:
        return None
    tensors = artifact.load_tensors(DIRECTIONS)
    if "directions" not in tensors:
        raise ArtifactError(str(artifact.path / DIRECTIONS), "has no 'directions' table")
    table = tensors["directions"].float()
    K, Z, C = len(m.directions), m.z_dim, len(m.classes)
    if tuple(table.shape) not in ((K, Z), (C, K, Z)):
        raise ArtifactError(
            str(artifact.path / DIRECTIONS),
            f"directions: shape {tuple(table.shape)}, the manifest implies {(K, Z)} "
            f"or per class {(C, K, Z)}",
        )
    return table.contiguous()


def build(artifact: Artifact) -> dict[str, onnx.ModelProto]:
    """The three graphs of an artifact, each passing onnx.checker's full check."""
    g = artifact.build_generator()
    table = steering_table(artifact)
    m = artifact.manifest
    meta = graph.graph_metadata(m.classes, m.directions, m.z_dim, m.image_shape, m.value_range)
    models = {
        GENERATOR_ONNX: graph.build_generator_graph(g, table, metadata=meta),
        GENERATOR_FP16_ONNX: graph.build_generator_graph(g, table, fp16=True, metadata=meta),
        BODY_ONNX: graph.build_body_graph(g, metadata=meta),
    }
    for model in models.values():
        onnx.checker.check_model(model, full_check=True)
    return models


def export(model: str | os.PathLike) -> Artifact:
    """Add the ONNX graphs to the artifact at ``model`` (a path or bundled name); returns it."""
    artifact = Artifact.open(model)
    models = build(artifact)
    manifest = artifact.manifest
    manifest.onnx = {name: graph.signature(m) for name, m in models.items()}
    files = {name: m.SerializeToString() for name, m in models.items()}
    return write_artifact(artifact.path, manifest, tensors={}, files=files, keep=True)


def verify_signature(artifact: Artifact, name: str) -> onnx.ModelProto:
    """Load an exported graph and check it against the signature recorded in the manifest."""
    path = artifact.file(name)  # listed, so its checksum was verified on open
    recorded = artifact.manifest.onnx.get(name)
    if recorded is None:
        raise ArtifactError(str(path), "has no signature in the manifest")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError and friends
        raise ArtifactError(str(path), f"not a readable ONNX model ({e})") from None
    found = graph.signature(model)
    if found != recorded:
        raise ArtifactError(str(path), f"signature {found} differs from the manifest's {recorded}")
    return model


# Checking --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckRow:
    file: str
    runner: str  # onnxruntime | reference
    batch: int
    max_abs_error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_error <= self.tolerance


def random_inputs(artifact: Artifact, batch: int, rng: np.random.Generator) -> dict:
    """Feeds of generator.onnx: noise from random seeds, random classes, mixes, t and alpha.

    A third of the rows are plain classes (s = 0) and a third are not interpolated (t = 0).
    """
    m = artifact.manifest
    seeds = torch.from_numpy(rng.integers(0, 2**62, size=(2, batch), dtype=np.int64))
    C, K = len(m.classes), len(m.directions)
    t = rng.random(batch, dtype=np.float32)
    s = rng.random(batch, dtype=np.float32)
    t[::3], s[1::3] = 0.0, 0.0
    return {
        "z_a": reference.noise(seeds[0], m.z_dim).numpy(),
        "z_b": reference.noise(seeds[1], m.z_dim).numpy(),
        "t": t,
        "class_a": rng.integers(0, C, batch),
        "class_b": rng.integers(0, C, batch),
        "s": s,
        "alpha": (rng.standard_normal((batch, K)) * 2).astype(np.float32),
    }


def torch_images(artifact: Artifact, feeds: dict, model=None) -> tuple[np.ndarray, np.ndarray]:
    """What the torch model (unfolded, eval mode) makes of the same feeds: (images, latents).
    ``model``: a (generator, steering table) pair already built from ``artifact``."""
    g, table = model if model is not None else (artifact.build_generator(), None)
    if model is None:
        table = steering_table(artifact)
    f = {k: torch.from_numpy(v) for k, v in feeds.items()}
    steer = {"alpha": f["alpha"], "directions": table} if table is not None else {}
    with torch.no_grad():
        x = reference.latent_prologue(
            z_a=f["z_a"],
            z_b=f["z_b"],
            t=f["t"],
            class_a=f["class_a"],
            class_b=f["class_b"],
            s=f["s"],
            table=g.class_table().detach().float(),
            **steer,
        )
        return g.body(x).numpy(), x.numpy()


def check(
    model: str | os.PathLike, batches=CHECK_BATCHES, reference_batches=None, seed: int = 0
) -> list[CheckRow]:
    """Every exported graph against torch: onnxruntime (CPU) and, for generator.onnx, the ONNX
    reference evaluator. ``reference_batches`` limits the
    (slow, pure numpy) reference evaluator; default: the same batches."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    artifact = Artifact.open(model)
    models = {name: verify_signature(artifact, name) for name in ONNX_FILES}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = {
        name: ort.InferenceSession(m.SerializeToString(), options, ["CPUExecutionProvider"])
        for name, m in models.items()
    }
    evaluator = ReferenceEvaluator(models[GENERATOR_ONNX])
    rng = np.random.default_rng(seed)
    model = (artifact.build_generator(), steering_table(artifact))
    rows = []
    for batch in batches:
        feeds = random_inputs(artifact, batch, rng)
        want, x = torch_images(artifact, feeds, model)

        outputs = [
            (name, "onnxruntime", sessions[name].run(["image"], feeds)[0])
            for name in (GENERATOR_ONNX, GENERATOR_FP16_ONNX)
        ]
        outputs.append(
            (BODY_ONNX, "onnxruntime", sessions[BODY_ONNX].run(["image"], {"latent": x})[0])
        )
        if reference_batches is None or batch in reference_batches:
            outputs.append((GENERATOR_ONNX, "reference", evaluator.run(["image"], feeds)[0]))
        for file, runner, got in outputs:
            err = float(np.abs(got - want).max())
            rows.append(CheckRow(file, runner, batch, err, TOLERANCE[file]))
    return rows
