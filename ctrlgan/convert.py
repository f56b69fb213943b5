"""Convert another project's generator checkpoint into a ctrlgan model artifact.

One source format, ``course``: the conditional generator of the course this project follows
(GANs specialisation, "Build a Conditional GAN"), saved with ``torch.save(gen.state_dict(),
path)`` or inside a dict under "gen" (``torch.save({"gen": gen.state_dict(), ...}, path)``).
Its module is ``gen = Sequential(block(In, 4h, k3 s2), block(4h, 2h, k4 s1), block(2h, h, k3
s2), Sequential(ConvT(h, C, k4 s2), Tanh))`` with ``block = ConvT -> BatchNorm -> ReLU``, and its
input is ``concat(noise, one_hot)`` seen as In x 1 x 1, so a state dict holds

    gen.0.0.weight [In, 4h, 3, 3]  gen.0.0.bias [4h]   gen.0.1.* BatchNorm(4h)
    gen.1.0.weight [4h, 2h, 4, 4]  gen.1.0.bias [2h]   gen.1.1.* BatchNorm(2h)
    gen.2.0.weight [2h, h, 3, 3]   gen.2.0.bias [h]    gen.2.1.* BatchNorm(h)
    gen.3.0.weight [h, C, 4, 4]    gen.3.0.bias [C]

from which h, C and In = z_dim + n_classes are read; the class names (hence their count, hence
z_dim) are the caller's. It becomes ctrlgan's ``arch="course"`` generator
(ctrlgan.architecture.layout): the first transposed convolution of a 1 x 1 input is a linear
map, ``fc.weight = W.reshape(In, 4h * 9).T`` (rows in (channel, y, x) order) and ``fc.bias =
b.repeat_interleave(9)``; the other layers keep their weights under ctrlgan's names (gen.0.1 ->
bn0, gen.1.* -> blocks.0.*, gen.2.* -> blocks.1.*, gen.3.0 -> out).

The file is read with ``torch.load(..., weights_only=True)`` only: a pickle of anything but
tensors and plain containers is refused, never run. Every key, shape and value is checked
before anything is written (ArtifactError naming the file and the first problem), the artifact
is written atomically (with its ONNX graphs unless ``export=False``), and the provenance records
the source file's name and sha256.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from ctrlgan._fs import naming
from ctrlgan.architecture import MAX_CLASSES, GeneratorConfig, layout, weight_shapes
from ctrlgan.artifact import GENERATOR_WEIGHTS, MAX_NAME, Artifact, Manifest, write_artifact
from ctrlgan.errors import ArtifactError, InvalidRequest

FORMATS = ("course",)
IMAGE_SIZE = 28
# The course's module names -> ctrlgan's (the first layer, gen.0.0, becomes fc: see above).
RENAME = {
    "gen.0.1.": "bn0.",
    "gen.1.0.": "blocks.0.0.",
    "gen.1.1.": "blocks.0.1.",
    "gen.2.0.": "blocks.1.0.",
    "gen.2.1.": "blocks.1.1.",
    "gen.3.0.": "out.",
}
_RANGE = re.compile(r"(\d+)-(\d+)")


def parse_classes(spec) -> list[str]:
    """Class names from a count (10 or "10": names "0".."9"), a comma list of names and ranges
    ("0-9", "cat,dog", "0-3,other"), or a list of names; InvalidRequest("classes") otherwise."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = str(spec)
    if isinstance(spec, str):
        text = spec.strip()
        if text.isdigit():
            count = int(text)
            if not 1 <= count <= MAX_CLASSES:
                raise InvalidRequest(
                    "classes", f"a count must lie in 1..{MAX_CLASSES}, got {count}"
                )
            return [str(i) for i in range(count)]
        names: list[str] = []
        for part in text.split(","):
            part = part.strip()
            match = _RANGE.fullmatch(part)
            if match:
                lo, hi = int(match[1]), int(match[2])
                if hi < lo or hi - lo + 1 + len(names) > MAX_CLASSES:
                    raise InvalidRequest(
                        "classes", f"range {part!r}: expected LOW-HIGH of at most {MAX_CLASSES}"
                    )
                names.extend(str(i) for i in range(lo, hi + 1))
            else:
                names.append(part)
    elif isinstance(spec, (list, tuple)) and all(isinstance(n, str) for n in spec):
        names = list(spec)
    else:
        raise InvalidRequest(
            "classes", f"expected a count, '0-9', 'a,b,c' or a list of names, got {spec!r:.60}"
        )
    for name in names:
        if not name or len(name) > MAX_NAME or not name.isprintable():
            raise InvalidRequest(
                "classes",
                f"{name[:40]!r} is not a class name (non-empty, printable, at most {MAX_NAME} "
                "characters)",
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidRequest("classes", f"repeated name(s) {', '.join(repeated[:5])}")
    if len(names) > MAX_CLASSES:
        raise InvalidRequest("classes", f"at most {MAX_CLASSES} classes, got {len(names)}")
    return names


def convert_course(
    path: str | os.PathLike,
    classes,
    out: str | os.PathLike,
    z_dim: int | None = None,
    export: bool = True,
    command: str | None = None,
) -> Artifact:
    """Convert the course's conditional generator at ``path`` into an artifact at ``out``.

    ``classes``: the class names in one-hot order, or their count (see parse_classes); z_dim is
    the generator's input width less their number. ``z_dim``, if given, must agree. ``export``:
    also write the ONNX graphs (as ``ctrlgan export`` does) in the same atomic write.
    ``command``: recorded in the provenance. An existing artifact at ``out`` is replaced.
    """
    for value, field in ((path, "path"), (out, "out")):
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise InvalidRequest(field, f"expected a path, got {value!r:.60}")
    names = parse_classes(classes)
    if z_dim is not None and (type(z_dim) is not int or z_dim < 1):
        raise InvalidRequest("z_dim", f"must be an int >= 1, got {z_dim!r:.40}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidRequest("out", f"{str(out)!r} is a file, not a directory")
    data = _read(Path(path))
    source = Path(path).name
    state = _state_dict(_load(data, path), path)
    config = _config(state, len(names), z_dim, path)
    _check(state, config, path)
    weights = course_to_ctrlgan(state)
    manifest = Manifest(
        z_dim=config.z_dim,
        classes=names,
        image_shape=[config.channels, IMAGE_SIZE, IMAGE_SIZE],
        generator=config.to_dict(),
        embedding="onehot",
        value_range=[-1.0, 1.0],  # the course's last layer is a Tanh
        provenance={
            "converted_from": source,
            "sha256": hashlib.sha256(data).hexdigest(),
            "format": "course",
            "command": command or "ctrlgan.convert.convert_course",
            "torch": torch.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    if not export:
        return write_artifact(out, manifest, {GENERATOR_WEIGHTS: weights}, keep=False)
    return _write_exported(out, manifest, weights)


def course_to_ctrlgan(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checked course state dict -> ctrlgan's ``arch="course"`` state dict (float32; the
    BatchNorm counters int64)."""
    w, b = state["gen.0.0.weight"].float(), state["gen.0.0.bias"].float()
    cells = w.shape[2] * w.shape[3]  # the 3 x 3 output of a transposed conv of a 1 x 1 input
    # ConvT of a 1 x 1 input: h[o, y, x] = sum_i x[i] W[i, o, y, x] + b[o]: a Linear whose row
    # (o, y, x) is W[:, o, y, x], in the (channel, y, x) order of the view that follows it.
    weights = {
        "fc.weight": w.reshape(w.shape[0], -1).t().contiguous(),
        "fc.bias": b.repeat_interleave(cells),
    }
    for key, value in state.items():
        for old, new in RENAME.items():
            if key.startswith(old):
                is_count = key.endswith("num_batches_tracked")
                weights[new + key[len(old) :]] = value.long() if is_count else value.float()
    return {k: v.contiguous() for k, v in weights.items()}


def course_shapes(config: GeneratorConfig) -> dict[str, list[int]]:
    """Every tensor of the course's state dict for a generator of ``config`` and its shape: the
    inverse of course_to_ctrlgan over ctrlgan's layout (architecture.weight_shapes)."""
    ch0, s0, _ = layout(config)
    shapes = {"gen.0.0.weight": [config.latent_dim, ch0, s0, s0], "gen.0.0.bias": [ch0]}
    for key, shape in weight_shapes(config).items():
        for old, new in RENAME.items():
            if key.startswith(new):
                shapes[old + key[len(new) :]] = shape
    return shapes


# Reading and checking ---------------------------------------------------------------------


def _read(path: Path) -> bytes:
    """The file's bytes (hashed and parsed from memory: what is checked is what is recorded)."""
    try:
        if path.is_dir():
            raise ArtifactError(str(path), "is a directory, not a checkpoint file")
        if not path.exists():
            raise ArtifactError(str(path), "no such file")
        data = path.read_bytes()
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise ArtifactError(
            str(path), f"cannot be read ({getattr(e, 'strerror', None) or e})"
        ) from None
    if not data:
        raise ArtifactError(str(path), "is empty, not a torch checkpoint")
    return data


def _load(data: bytes, path) -> object:
    """torch.load with weights_only=True: tensors and plain containers, nothing else."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error says it
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler's refusal
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:  # a pickle of Python objects, e.g. torch.save(gen) of the whole module
            raise ArtifactError(
                str(path),
                f"refused by torch.load(weights_only=True): it pickles {found[1][:80]}, and "
                "ctrlgan never unpickles objects; save the generator's weights with "
                "torch.save(gen.state_dict(), path)",
            ) from None
        operand = re.search(r"Unsupported operand \d+", str(e))
        raise ArtifactError(
            str(path),
            "not a torch checkpoint of tensors: torch.load(weights_only=True) refuses it "
            f"({operand[0] if operand else 'not tensors and plain containers'}); save the "
            "generator's weights with torch.save(gen.state_dict(), path)",
        ) from None
    except Exception as e:  # a foreign parser: EOFError, KeyError, RuntimeError, ...
        detail = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ArtifactError(str(path), f"not a torch checkpoint ({detail})") from None


def _state_dict(obj, path) -> dict[str, torch.Tensor]:
    """The generator's state dict: the file's top-level dict, or its "gen" entry."""
    if isinstance(obj, dict) and isinstance(obj.get("gen"), dict):
        obj = obj["gen"]
    if not isinstance(obj, dict) or not obj:
        kind = "an empty dict" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise ArtifactError(
            str(path),
            f"holds {kind}, not a generator state_dict (torch.save(gen.state_dict(), path) "
            'or a dict with it under "gen")',
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ArtifactError(
            str(path), f"entry {str(bad[0])[:60]!r} is not a named tensor: not a state_dict"
        )
    return obj


def _config(state: dict, n_classes: int, z_dim: int | None, path) -> GeneratorConfig:
    """The generator's config from its first and last layers' shapes and the class count."""
    first, last = state.get("gen.0.0.weight"), state.get("gen.3.0.weight")
    if first is None or last is None or first.ndim != 4 or last.ndim != 4:
        keys = ", ".join(list(state)[:3]) + (", ..." if len(state) > 3 else "")
        raise ArtifactError(
            str(path),
            "not the course's conditional generator (expected gen.0.0.weight [In, 4h, 3, 3] "
            f"... gen.3.0.weight [h, C, 4, 4]; found {keys})",
        )
    inputs, ch0 = first.shape[0], first.shape[1]
    if ch0 % 4:
        raise ArtifactError(
            str(path),
            f"gen.0.0.weight {list(first.shape)}: the course's first layer has 4h output "
            f"channels, and {ch0} is not a multiple of 4",
        )
    found = inputs - n_classes
    if found < 1:
        raise ArtifactError(
            str(path),
            f"the generator takes {inputs} inputs (z_dim + classes): {n_classes} classes leave "
            f"z_dim = {found}; it must be >= 1 (check --classes)",
        )
    if z_dim is not None and z_dim != found:
        raise ArtifactError(
            str(path),
            f"the generator takes {inputs} inputs: with {n_classes} classes z_dim is {found}, "
            f"not {z_dim} (check --classes and --z-dim)",
        )
    try:
        return GeneratorConfig(
            z_dim=found,
            n_classes=n_classes,
            image_size=IMAGE_SIZE,
            channels=last.shape[1],
            base_channels=ch0 // 4,
            arch="course",
        )
    except ValueError as e:  # a width beyond ctrlgan's limits
        raise ArtifactError(str(path), f"cannot be a ctrlgan generator ({e})") from None


def _check(state: dict, config: GeneratorConfig, path) -> None:
    """Every key and shape of the course's layout, floats that are finite, variances >= 0."""
    expected = course_shapes(config)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise ArtifactError(
            str(path), f"not the course's conditional generator: {'; '.join(parts)}"
        )
    for key, shape in expected.items():
        value = state[key]
        if list(value.shape) != shape:
            raise ArtifactError(
                str(path),
                f"{key} has shape {list(value.shape)}; the course's layout (z_dim "
                f"{config.z_dim}, {config.n_classes} classes, h = {config.base_channels}, "
                f"{config.channels} channel(s)) implies {shape}",
            )
        if value.layout != torch.strided:
            raise ArtifactError(str(path), f"{key} is a {value.layout} tensor, not a dense one")
        if key.endswith("num_batches_tracked"):
            if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
                raise ArtifactError(str(path), f"{key} is {value.dtype}, not an integer count")
            continue
        if not value.is_floating_point():
            raise ArtifactError(str(path), f"{key} is {value.dtype}, not a floating-point tensor")
        if not torch.isfinite(value.float()).all():  # float64 beyond float32's range too
            raise ArtifactError(str(path), f"{key} holds NaN or inf (as float32)")
        if key.endswith("running_var") and (value < 0).any():
            raise ArtifactError(str(path), f"{key} holds negative variances")


def _few(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _write_exported(out: Path, manifest: Manifest, weights: dict) -> Artifact:
    """Write the artifact with its ONNX graphs in one atomic step: it is assembled and exported
    (ctrlgan.export.onnx.export, the same code as `ctrlgan export`) in a staging directory
    beside ``out``, then written to ``out`` as a whole; the staging directory is removed."""
    from ctrlgan.export import onnx as onnx_export

    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidRequest("out", f"directory {str(parent)!r} does not exist")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.convert-", dir=parent))
    except OSError as e:
        raise InvalidRequest("out", f"cannot write to {str(parent)!r} ({e.strerror})") from None
    try:
        with naming(out):  # a full disk: an error about OUT, not the staging directory
            staged = write_artifact(staging / "model", manifest, {GENERATOR_WEIGHTS: weights})
            staged = onnx_export.export(staged.path)
            files = {name: (staged.path / name).read_bytes() for name in staged.manifest.files}
        return write_artifact(out, staged.manifest, {}, files=files, keep=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
