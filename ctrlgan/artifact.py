"""The model artifact: a directory that training writes and export and the runtime read.

    manifest.json           format version, z_dim, classes, image shape and value range,
                            embedding kind, generator architecture, direction names,
                            provenance (data set, command, steps, seed, metrics), and the
                            sha256 of every other file
    generator.safetensors   generator weights, eval-ready (BatchNorm statistics included)
    directions.safetensors  direction table (written by `ctrlgan directions`)
    generator*.onnx         the exported graphs (written by `ctrlgan export`), their
                            input/output signatures recorded in the manifest

Writes are atomic: the new directory is assembled beside the target, flushed to disk, and
exchanged with it in one step (Linux renameat2; elsewhere two renames), so a reader sees the
old artifact or the new one, never a mix. Reads verify the format version, every checksum and
the manifest's meaning (Manifest._check: unique class and direction names, the direction
table's shape, every recorded graph signature against z_dim, classes, directions and image
shape) and raise ArtifactError naming the file on any mismatch, so an artifact that loads can
sample. Reading an artifact does not import torch (only build_generator and load_tensors do).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import shutil
import struct
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from ctrlgan._fs import make_readable, naming
from ctrlgan.architecture import GeneratorConfig, weight_shapes
from ctrlgan.errors import ArtifactError, InvalidRequest

if TYPE_CHECKING:
    import torch

    from ctrlgan.network import ConditionalGenerator

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GENERATOR_WEIGHTS = "generator.safetensors"
DIRECTIONS = "directions.safetensors"
GENERATOR_ONNX = "generator.onnx"
GENERATOR_FP16_ONNX = "generator.fp16.onnx"
BODY_ONNX = "generator.body.onnx"
BUNDLED_DIR = Path(__file__).parent / "models"
# The model the CLI, the server and ctrlgan.load() use when none is named: the source's
# networks on real 28x28 MNIST (README, "The bundled models"; "digits" is the small 16x16 one)
DEFAULT_MODEL = "mnist"
MAX_MANIFEST_BYTES = 1 << 24  # 16 MiB: a manifest is a few KB
MAX_NAME = 200  # characters of a class or direction name
MAX_DIRECTION_VALUE = 1e4  # entries of a direction table (unit vectors: |entry| <= 1)


@dataclass
class Manifest:
    z_dim: int
    classes: list[str]
    image_shape: list[int]  # [C, H, W]
    generator: dict  # GeneratorConfig fields
    embedding: str = "onehot"
    value_range: list[float] = field(default_factory=lambda: [-1.0, 1.0])
    directions: list[str] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    onnx: dict[str, dict] = field(default_factory=dict)  # ONNX file name -> its signature
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, path: str = MANIFEST) -> Manifest:
        try:
            data = json.loads(text)
        except ValueError as e:  # JSONDecodeError, or an int of more than 4300 digits
            raise ArtifactError(path, f"not valid JSON ({str(e)[:200]})") from None
        except RecursionError:
            raise ArtifactError(path, "JSON nested too deeply to be a manifest") from None
        if not isinstance(data, dict):
            raise ArtifactError(path, "must hold a JSON object")
        version = data.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:
            raise ArtifactError(
                path, f"format_version {version!r} is not supported (expected {FORMAT_VERSION})"
            )
        names = {f.name for f in fields(cls)}
        required = ("z_dim", "classes", "image_shape", "generator")
        missing = [n for n in required if n not in data]
        if missing:
            raise ArtifactError(path, f"missing field(s) {', '.join(missing)}")
        unknown = sorted(set(data) - names)
        if unknown:
            raise ArtifactError(path, f"unknown field(s) {', '.join(unknown)}")
        manifest = cls(**data)
        manifest._check(path)
        return manifest

    def _check(self, path: str) -> None:
        """The manifest's meaning: every field of the right kind, and the fields consistent
        with each other and with the graphs' recorded signatures."""
        try:
            config = GeneratorConfig.from_dict(self.generator)
        except (TypeError, ValueError) as e:
            raise ArtifactError(path, f"generator: {e}") from None
        expected = [config.channels, config.image_size, config.image_size]
        shape = self.image_shape
        if (
            not isinstance(shape, list)
            or [type(v) for v in shape] != [int] * 3
            or shape != expected
        ):
            raise ArtifactError(path, f"image_shape {self.image_shape} != generator's {expected}")
        _names(self.classes, "classes", path)
        _names(self.directions, "directions", path)
        if type(self.z_dim) is not int or self.z_dim != config.z_dim:
            raise ArtifactError(path, "z_dim disagrees with the generator config")
        if len(self.classes) != config.n_classes:
            raise ArtifactError(
                path, f"{len(self.classes)} classes, the generator config has {config.n_classes}"
            )
        if self.embedding != config.embedding:
            raise ArtifactError(path, "embedding disagrees with the generator config")
        if not isinstance(self.files, dict) or not all(
            isinstance(v, str) and len(v) == 64 for v in self.files.values()
        ):
            raise ArtifactError(path, "files must map file names to sha256 hex digests")
        if not isinstance(self.provenance, dict):
            raise ArtifactError(path, "provenance must be an object")
        lo_hi = self.value_range
        if not (
            isinstance(lo_hi, list)
            and len(lo_hi) == 2
            and all(type(v) in (int, float) and math.isfinite(v) for v in lo_hi)
            and lo_hi[0] < lo_hi[1]
        ):
            raise ArtifactError(path, f"value_range must be [low, high], got {lo_hi!r:.60}")
        if bool(self.directions) != (DIRECTIONS in self.files):
            raise ArtifactError(
                path,
                f"directions: names {self.directions} but {DIRECTIONS} is "
                f"{'listed' if DIRECTIONS in self.files else 'not listed'} in files",
            )
        if not isinstance(self.onnx, dict) or not all(
            isinstance(v, dict) for v in self.onnx.values()
        ):
            raise ArtifactError(path, "onnx must map ONNX file names to their signatures")
        unsigned = [n for n in self.files if n.endswith(".onnx") and n not in self.onnx]
        if unsigned:
            raise ArtifactError(path, f"onnx: no signature recorded for {', '.join(unsigned)}")
        for name, sig in self.onnx.items():
            expected = self._signature(name, config)
            if expected is not None:
                found = [sig.get("inputs"), sig.get("outputs")]
                if found != expected:
                    raise ArtifactError(
                        path,
                        f"onnx: {name} is recorded as {found}; this manifest (z_dim "
                        f"{self.z_dim}, {len(self.classes)} classes, {len(self.directions)} "
                        f"directions, image {self.image_shape}) implies {expected}",
                    )

    def _signature(self, name: str, config: GeneratorConfig) -> list | None:
        """The inputs and outputs a graph of this manifest must have (None: not a graph of
        ours, e.g. a user's extra file)."""
        image = [["image", "float", ["batch", *self.image_shape]]]
        if name == BODY_ONNX:
            return [[["latent", "float", ["batch", config.latent_dim]]], image]
        if name not in (GENERATOR_ONNX, GENERATOR_FP16_ONNX):
            return None
        z, k = self.z_dim, len(self.directions)
        inputs = [
            ["z_a", "float", ["batch", z]], ["z_b", "float", ["batch", z]],
            ["t", "float", ["batch"]], ["class_a", "int64", ["batch"]],
            ["class_b", "int64", ["batch"]], ["s", "float", ["batch"]],
            ["alpha", "float", ["batch", k]],
        ]  # fmt: skip
        return [inputs, image]

    @property
    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig.from_dict(self.generator)


def _names(value, field_name: str, path: str) -> None:
    """A list of distinct, printable names (they appear in messages, files and one-line errors:
    no control characters, no lone surrogates, at most MAX_NAME characters)."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ArtifactError(path, f"{field_name} must be a list of non-empty names")
    for v in value:
        if len(v) > MAX_NAME or not v.isprintable() or not _utf8(v):
            raise ArtifactError(
                path,
                f"{field_name}: {v[:40]!r} is not a name (printable, at most {MAX_NAME} "
                "characters)",
            )
    repeated = sorted({v for v in value if value.count(v) > 1})
    if repeated:
        raise ArtifactError(path, f"{field_name}: repeated name(s) {', '.join(repeated)}")


def _read_numpy(path: Path) -> dict:
    """A safetensors file's tensors as numpy arrays (no torch), or ArtifactError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError, AttributeError) as e:
        raise ArtifactError(str(path), f"unreadable safetensors ({str(e)[:200]})") from None


def _finite(path: Path, what: str) -> None:
    """Every float tensor of a safetensors file is finite (a diverged run writes NaN)."""
    import numpy as np

    for name, value in _read_numpy(path).items():
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ArtifactError(str(path), f"{what}: {name} holds NaN or inf")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which JSON can spell as \ud800
        return False
    return True


def safetensors_shapes(path: Path) -> dict[str, list]:
    """The tensors a safetensors file declares, name -> [dtype, *shape] (e.g. ["F32", 3, 64]),
    read from its JSON header alone (8-byte little-endian length, then the header): no torch,
    no tensor data read."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_MANIFEST_BYTES:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(f.read(length))
        return {k: [v["dtype"], *v["shape"]] for k, v in header.items() if k != "__metadata__"}
    except RecursionError:
        raise ArtifactError(
            str(path), "unreadable safetensors header (nested too deeply)"
        ) from None
    except (OSError, struct.error, ValueError, TypeError, KeyError, AttributeError) as e:
        raise ArtifactError(str(path), f"unreadable safetensors header ({e})") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A model name or path -> the artifact directory; bundled names: see bundled_models()."""
    try:
        text = os.fspath(name_or_path) if isinstance(name_or_path, (str, os.PathLike)) else None
    except TypeError:  # a PathLike whose __fspath__ returns something else
        text = None
    if not isinstance(text, str) or not text or "\0" in text:
        raise InvalidRequest(
            "model", f"expected a bundled model name or a directory path, got {name_or_path!r:.60}"
        )
    shown = text if len(text) <= 200 else "..." + text[-197:]  # a path's end tells most
    try:
        path = Path(text)
        if (path / MANIFEST).is_file():
            return path
        bundled = BUNDLED_DIR / text
        if "/" not in text and os.sep not in text and (bundled / MANIFEST).is_file():
            return bundled
        exists = path.exists()
    except OSError as e:  # e.g. a name too long for the file system
        raise InvalidRequest("model", f"{shown!r} cannot be opened ({e.strerror})") from None
    except UnicodeEncodeError:  # a lone surrogate: no file system can spell it
        raise InvalidRequest("model", f"{shown!r} cannot be a path here") from None
    if exists:
        raise ArtifactError(str(path), f"no {MANIFEST} here: not a ctrlgan model artifact")
    raise InvalidRequest(
        "model",
        f"{shown!r} is neither a model directory nor a bundled model "
        f"({', '.join(bundled_models()) or 'none installed'})",
    )


def bundled_models() -> list[str]:
    return sorted(p.parent.name for p in BUNDLED_DIR.glob(f"*/{MANIFEST}"))


class Artifact:
    """A verified model artifact on disk. Use ``Artifact.open(name_or_path)``."""

    def __init__(self, path: Path, manifest: Manifest):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, name_or_path: str | os.PathLike, verify: bool = True) -> Artifact:
        path = resolve(name_or_path)
        try:
            if (path / MANIFEST).stat().st_size > MAX_MANIFEST_BYTES:
                raise ArtifactError(str(path / MANIFEST), "is too large to be a manifest")
            text = (path / MANIFEST).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ArtifactError(str(path / MANIFEST), f"cannot be read ({e})") from None
        manifest = Manifest.from_json(text, str(path / MANIFEST))
        if GENERATOR_WEIGHTS not in manifest.files:
            raise ArtifactError(str(path / MANIFEST), f"lists no {GENERATOR_WEIGHTS}")
        artifact = cls(path, manifest)
        if verify:
            artifact.verify()
        return artifact

    def verify(self) -> None:
        """Check that every file the manifest lists exists and has its recorded sha256, and
        that the direction table has the shape the manifest implies."""
        for name, digest in sorted(self.manifest.files.items()):
            file = self.path / name
            bad = not name or len(name) > 255 or Path(name).name != name or name in (".", "..")
            if bad or not name.isprintable():
                raise ArtifactError(str(self.path / MANIFEST), f"bad file name {name[:60]!r}")
            try:
                if file.is_symlink() or (file.exists() and not file.is_file()):
                    raise ArtifactError(str(file), "is not a regular file of the artifact")
                if not file.is_file():
                    raise ArtifactError(str(file), "missing (listed in the manifest)")
                if sha256_file(file) != digest:
                    raise ArtifactError(
                        str(file), "checksum mismatch: the file was modified or truncated"
                    )
            except OSError as e:
                raise ArtifactError(str(file), f"cannot be read ({e.strerror})") from None
        m = self.manifest
        weights = safetensors_shapes(self.path / GENERATOR_WEIGHTS)
        expected = {  # float32 tensors, as training writes them; BatchNorm's counters int64
            k: ["I64" if k.endswith("num_batches_tracked") else "F32", *shape]
            for k, shape in weight_shapes(m.generator_config).items()
        }
        if weights != expected:
            wrong = sorted(k for k in expected.keys() | weights.keys()
                           if weights.get(k) != expected.get(k))  # fmt: skip
            first = wrong[0]
            raise ArtifactError(
                str(self.path / GENERATOR_WEIGHTS),
                f"weights do not match the manifest's generator ({first}: "
                f"{weights.get(first, 'missing')}, the manifest implies "
                f"{expected.get(first, 'no such tensor')}"
                f"{f'; {len(wrong) - 1} more' if len(wrong) > 1 else ''})",
            )
        _finite(self.path / GENERATOR_WEIGHTS, "weights")
        if m.directions:
            self._verify_table()

    def _verify_table(self) -> None:
        """The direction table: the shape the manifest implies, finite, bounded entries."""
        m, path = self.manifest, self.path / DIRECTIONS
        K, Z, C = len(m.directions), m.z_dim, len(m.classes)
        shape = safetensors_shapes(path).get("directions")
        if shape not in (["F32", K, Z], ["F32", C, K, Z]):
            raise ArtifactError(
                str(path),
                f"directions table {shape}; the manifest's {K} direction(s) imply float32 "
                f"{[K, Z]} or per class {[C, K, Z]}",
            )
        table = _read_numpy(path)["directions"]
        if (
            table.dtype.kind != "f"
            or not (abs(table.astype("float64")) <= MAX_DIRECTION_VALUE).all()
        ):
            raise ArtifactError(
                str(path), f"directions must be finite floats within +-{MAX_DIRECTION_VALUE:g}"
            )

    def file(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise ArtifactError(str(self.path / name), "not part of this artifact")
        return self.path / name

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(self.file(name))
        except (SafetensorError, OSError, ValueError) as e:
            raise ArtifactError(str(self.path / name), f"unreadable safetensors ({e})") from None

    def build_generator(self) -> ConditionalGenerator:
        """The generator module in eval mode, weights loaded and checked against the config."""
        from ctrlgan.network import ConditionalGenerator

        generator = ConditionalGenerator(self.manifest.generator_config)
        state = self.load_tensors(GENERATOR_WEIGHTS)
        try:
            generator.load_state_dict(state, strict=True)
        except RuntimeError as e:
            lines = str(e).strip().splitlines()
            detail = lines[1].strip() if len(lines) > 1 else lines[0]
            raise ArtifactError(
                str(self.path / GENERATOR_WEIGHTS),
                f"weights do not match the manifest's generator ({detail})",
            ) from None
        return generator.eval()


def write_artifact(
    path: str | os.PathLike,
    manifest: Manifest,
    tensors: dict[str, dict[str, torch.Tensor]],
    files: dict[str, bytes] | None = None,
    keep: bool = True,
) -> Artifact:
    """Write an artifact directory atomically.

    ``tensors`` maps safetensors file names to state dicts and ``files`` other file names to
    bytes. With ``keep``, files of an existing artifact at ``path`` that the manifest lists and
    this call does not replace are carried over, except ONNX graphs when the weights or the
    direction table change (they bake both in: re-export).
    The manifest's ``files`` is recomputed from what is written.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InvalidRequest("out", f"directory {str(parent)!r} does not exist")
    if path.exists() and not (path / MANIFEST).is_file() and any(path.iterdir()):
        raise InvalidRequest("out", f"{str(path)!r} exists and is not a model artifact")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    except OSError as e:
        raise InvalidRequest("out", f"cannot write to {str(parent)!r} ({e.strerror})") from None
    try:
        with naming(path):  # a full disk: one error naming the artifact, not the temporary
            _assemble(path, tmp, manifest, tensors, files or {}, keep)
            _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact.open(path)


def _assemble(path: Path, tmp: Path, manifest: Manifest, tensors, files, keep) -> None:
    """Write the new artifact's files and manifest into ``tmp`` (see write_artifact)."""
    from safetensors.torch import save

    written: dict[str, str] = {}
    for name, state in tensors.items():
        data = save({k: v.detach().cpu().contiguous() for k, v in state.items()})
        (tmp / name).write_bytes(data)
        written[name] = sha256_file(tmp / name)
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        written[name] = sha256_file(tmp / name)
    # Exported graphs bake in the weights and the direction table: new ones make them stale.
    stale = {GENERATOR_WEIGHTS, DIRECTIONS} & set(written)
    if keep and (path / MANIFEST).is_file():
        old = Artifact.open(path)
        for name, digest in old.manifest.files.items():
            if stale and name.endswith(".onnx"):
                continue
            if name not in written and name in manifest.files:
                shutil.copy2(path / name, tmp / name)
                written[name] = digest
    manifest.files = dict(sorted(written.items()))
    manifest.onnx = {k: v for k, v in sorted(manifest.onnx.items()) if k in manifest.files}
    manifest._check(str(tmp / MANIFEST))
    (tmp / MANIFEST).write_text(manifest.to_json())
    make_readable(tmp)


def _swap_in(tmp: Path, path: Path) -> None:
    """Replace directory ``path`` by ``tmp``: the files are flushed to disk first, then the two
    directories are exchanged in one atomic step where the OS can (Linux renameat2), else by two
    renames (a crash between them leaves the old artifact as .NAME.old-PID beside it)."""
    for file in tmp.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    if not path.exists():
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old artifact
    else:
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 with RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
