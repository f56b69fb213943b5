"""The sampling API: ``ctrlgan.load(...)`` returns a Generator with a few verbs.

A Generator holds one verified model artifact and one backend (backends.py). Every request is
validated in full into Rows before any work starts (request.py); noise comes from per-image
seeds by the Philox contract, or is given as rows (``z=``); results are float32 NCHW arrays in
[-1, 1] by default, or uint8 NHWC arrays, torch tensors or PIL images on request.

Backends: "torch" (eager reference), "onnxruntime" (the exported generator.onnx), "triton"
(CUDA: fused prologue kernel + CUDA-graph body). "auto" takes triton where CUDA is usable,
else onnxruntime where the model is exported, else torch.
"""

from __future__ import annotations

import os

import numpy as np

from ctrlgan import validate
from ctrlgan.artifact import DEFAULT_MODEL, Artifact
from ctrlgan.errors import BackendUnavailable, InvalidRequest
from ctrlgan.images import to_uint8
from ctrlgan.runtime import backends, cuda, philox, request
from ctrlgan.runtime.request import Rows

BACKENDS = ("auto", *backends.NAMES)
OUTPUTS = ("float32", "uint8", "torch", "pil")
METHODS = ("lerp", "slerp")
VARIES = ("both", "noise", "class")
DEFAULT_MAX_BATCH = 65536


class Generator:
    """Seeded, class-conditional, steerable sampling from one model artifact."""

    def __init__(
        self,
        artifact: Artifact,
        backend: str = "auto",
        device: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        threads: int = 0,
    ):
        if not isinstance(artifact, Artifact):
            raise InvalidRequest(
                "artifact",
                f"expected a ctrlgan Artifact, got {validate.show(artifact)}: use ctrlgan.load",
            )
        backend = validate.choice(backend, "backend", BACKENDS)
        if device is not None:
            device = validate.choice(device, "device", ("cpu", "cuda"))
        max_batch = validate.integer(max_batch, "max_batch", 1, validate.MAX_BATCH)
        threads = validate.threads(threads)
        if device == "cuda" and not cuda.available():
            raise BackendUnavailable("device 'cuda' requested but no CUDA device is usable here")
        if device is None:
            on_cuda = backend in ("auto", "triton") and cuda.available()
            device = "cuda" if on_cuda else "cpu"
        self.device = device  # "cpu" or "cuda"
        if backend == "auto":
            backend = next(
                b for b in ("triton", "onnxruntime", "torch")
                if backends.usable(b, artifact, self.device)
            )  # fmt: skip
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.max_batch = max_batch
        self._backend = backends.create(backend, artifact, device, threads, max_batch)
        self.backend = backend

    # Metadata ---------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def features(self) -> list[str]:
        return list(self.manifest.directions)

    @property
    def z_dim(self) -> int:
        return self.manifest.z_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest.image_shape)

    def __repr__(self) -> str:
        return (
            f"Generator({os.fspath(self.artifact.path)!r}, backend={self.backend!r}, "
            f"classes={len(self.classes)}, z_dim={self.z_dim}, image_shape={self.image_shape})"
        )

    # Verbs ------------------------------------------------------------------------------
    def sample(
        self,
        classes=None,
        seeds=None,
        *,
        n: int | None = None,
        seed: int | None = None,
        steer=None,
        truncation: float | None = None,
        z=None,
        output: str = "float32",
    ):
        """Images of the requested classes: float32 [N, C, H, W] in [-1, 1] by default.

        classes: an index or name for every image, a list with one per image, or class mixes
        (class_a, class_b, s) giving (1 - s) e(a) + s e(b). seeds: one int per image (list,
        range, or a string like "0-15" or "1,4,7-9"), or ``n`` seeds counting up from ``seed``
        (default 0; a single class is repeated). z: explicit noise rows instead of seeds, [N,
        z_dim] float32 (e.g. ``ctrlgan.noise(seeds, g.z_dim)``, edited; float16/float64 arrays
        and torch tensors are cast, integer arrays refused); not with seeds, n, seed or
        truncation (truncation redraws seeded noise: truncate with ``ctrlgan.noise`` first).
        steer: {feature: alpha, or one alpha per image}.
        output: "float32" (NCHW in [-1, 1]), "uint8" (NHWC), "torch" (a float32 tensor) or
        "pil" (a list of PIL images). The same (seed or z row, class, controls) always gives
        the same image, whatever else shares the batch: bit for bit on the CPU backends; on the
        triton backend (CUDA) within one batch-size bucket, and to float16 rounding across
        buckets (each bucket is its own CUDA graph). ``z=ctrlgan.noise(seeds, g.z_dim)`` gives
        the images of ``seeds``.
        """
        check_output(output)
        rows = self.prepare(classes, seeds, n=n, seed=seed, steer=steer, truncation=truncation, z=z)
        return convert(self.run(rows), output)

    def interpolate(
        self,
        start,
        end,
        steps: int = 8,
        *,
        method: str = "slerp",
        vary: str = "both",
        truncation: float | None = None,
        output: str = "float32",
    ):
        """A strip of ``steps`` images from ``start`` to ``end``, each a (seed, class) pair.

        vary: "both" moves the noise by lerp or slerp (``method``) while the class embedding
        moves linearly, (1 - t) e(class_a) + t e(class_b); "noise" moves only the noise and
        keeps the start's class; "class" keeps the start's noise and moves only the class mix.
        """
        check_output(output)
        validate.choice(method, "method", METHODS)
        validate.choice(vary, "vary", VARIES)
        steps = validate.integer(steps, "steps", 2, self.max_batch)
        (seed_a, class_a), (seed_b, class_b) = (
            _endpoint(p, name, self.classes) for p, name in ((start, "start"), (end, "end"))
        )
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)
        if vary == "noise":
            class_b = class_a
        # "class" keeps seed A's noise: plain rows without interpolation (t = 0 throughout)
        noise_moves = vary != "class"
        rows = Rows(
            seeds=np.full(steps, seed_a, np.uint64),
            class_a=np.full(steps, class_a, np.int64),
            class_b=np.full(steps, class_b, np.int64),
            s=np.zeros(steps, np.float32) if vary == "noise" else t.copy(),
            alpha=np.zeros((steps, len(self.features)), np.float32),
            truncation=request.parse_truncation(truncation),
            seeds_b=np.full(steps, seed_b, np.uint64) if noise_moves else None,
            t=t if noise_moves else None,
            method=method,
        )
        return convert(self.run(rows), output)

    def traverse(
        self,
        seed: int,
        cls,
        feature: str,
        alphas=(-3.0, -1.5, 0.0, 1.5, 3.0),
        *,
        truncation: float | None = None,
        output: str = "float32",
    ):
        """One seed and class stepped along one feature's direction, one image per alpha."""
        check_output(output)
        if not isinstance(feature, str) or feature not in self.features:
            known = ", ".join(self.features) or "none: this model has no direction table"
            raise InvalidRequest(
                "feature", f"unknown feature {validate.show(feature)}; known: {known}"
            )
        values = validate.reals(alphas, "alphas", bound=request.MAX_ALPHA, limit=self.max_batch)
        cls = request.class_index(cls, self.classes, "cls")
        if not validate.is_int(seed) or not 0 <= int(seed) < request.MAX_SEED:
            raise InvalidRequest("seed", f"must be an int in [0, 2**64), got {validate.show(seed)}")
        return self.sample(
            classes=cls, seeds=[seed] * len(values), steer={feature: values},
            truncation=truncation, output=output,
        )  # fmt: skip

    # The two halves of every verb (the micro-batcher calls them separately) ----------------
    def prepare(
        self, classes=None, seeds=None, *, n=None, seed=None, steer=None, truncation=None, z=None
    ) -> Rows:
        """Validate a sample request into Rows; raises InvalidRequest naming the field."""
        if z is not None:
            return self._prepare_z(classes, z, seeds, n, seed, steer, truncation)
        spec, scalar = request.parse_classes(classes, self.classes, limit=self.max_batch)
        count = None if scalar else len(spec.class_a)
        seed_rows = request.parse_seeds(
            seeds, n, 0 if seed is None else seed, count if count is not None else 1,
            limit=self.max_batch,
        )  # fmt: skip
        if scalar:
            spec = _repeat(spec, len(seed_rows))
        elif len(seed_rows) != len(spec.class_a):
            raise InvalidRequest(
                "seeds",
                f"{len(seed_rows)} seeds for {len(spec.class_a)} classes: give one per image",
            )
        tau = request.parse_truncation(truncation)
        alpha = request.parse_steer(steer, self.features, len(seed_rows))
        return Rows(seed_rows, spec.class_a, spec.class_b, spec.s, alpha, tau)

    def _prepare_z(self, classes, z, seeds, n, seed, steer, truncation) -> Rows:
        """Rows of given noise: z replaces the seeds, so nothing that makes seeds may come."""
        for name, value in (("seeds", seeds), ("n", n), ("seed", seed)):
            if value is not None:
                raise InvalidRequest(
                    "z", f"give either z (noise rows) or {name}, not both: {name} draws noise"
                )
        if truncation is not None:
            raise InvalidRequest(
                "truncation",
                "applies to noise drawn from seeds (values beyond tau are redrawn from later "
                "counters of the seed), not to given z: truncate first, with "
                "ctrlgan.noise(seeds, z_dim, truncation=tau), then edit and pass that z",
            )
        z = request.parse_z(z, self.z_dim, limit=self.max_batch)
        spec, scalar = request.parse_classes(classes, self.classes, limit=self.max_batch)
        if scalar:
            spec = _repeat(spec, len(z))
        elif len(spec.class_a) != len(z):
            raise InvalidRequest(
                "z",
                f"{len(z)} noise rows for {len(spec.class_a)} classes: give one class per row "
                "of z, or a single class for all of them",
            )
        alpha = request.parse_steer(steer, self.features, len(z))
        return Rows(None, spec.class_a, spec.class_b, spec.s, alpha, z=z)

    def run(self, rows: Rows) -> np.ndarray:
        """Images of validated rows: float32 [N, C, H, W], computed in chunks."""
        if len(rows) > self.max_batch:
            raise InvalidRequest(
                "z" if rows.z is not None else "seeds",
                f"{len(rows)} images exceed the batch limit {self.max_batch}",
            )
        chunk = self._backend.chunk
        if len(rows) <= chunk:
            return self._backend(rows)
        out = np.empty((len(rows), *self.image_shape), dtype=np.float32)
        for start in range(0, len(rows), chunk):
            stop = min(start + chunk, len(rows))
            out[start:stop] = self._backend(rows.slice(start, stop))
        return out


def check_output(output: str) -> None:
    validate.choice(output, "output", OUTPUTS)


def convert(images: np.ndarray, output: str):
    """float32 NCHW images in [-1, 1] to the requested output form."""
    if output == "float32":
        return images
    if output == "torch":
        import torch

        return torch.from_numpy(images)
    u8 = to_uint8(images)
    if output == "uint8":
        return u8
    from PIL import Image

    return [Image.fromarray(im[:, :, 0] if im.shape[2] == 1 else im) for im in u8]


def _repeat(spec: request.ClassSpec, count: int) -> request.ClassSpec:
    """A single class (or mix) for each of ``count`` images."""
    repeat = lambda a: np.repeat(a, count)
    return request.ClassSpec(repeat(spec.class_a), repeat(spec.class_b), repeat(spec.s))


def _endpoint(point, name: str, classes) -> tuple[int, int]:
    if not isinstance(point, (tuple, list)):
        raise InvalidRequest(name, f"must be a (seed, class) pair, got {validate.show(point)}")
    point = validate.items(point, name, 2, "values")
    if len(point) != 2:
        raise InvalidRequest(name, f"must be a (seed, class) pair, got {len(point)} values")
    seed = point[0]
    if not validate.is_int(seed) or not 0 <= int(seed) < request.MAX_SEED:
        raise InvalidRequest(name, f"seed must be an int in [0, 2**64), got {validate.show(seed)}")
    return int(seed), request.class_index(point[1], classes, name)


def load(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    backend: str = "auto",
    device: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    threads: int = 0,
) -> Generator:
    """Load a bundled model by name ("mnist", the default, or "digits") or an artifact directory
    by path.

    backend: "auto", "torch", "onnxruntime" or "triton"; device: None (the backend's
    choice), "cpu" or "cuda"; max_batch: the most images one call may ask for (the triton
    backend captures a CUDA graph per batch-size bucket up to it, capped at 16384 rows, when it
    loads: a smaller max_batch loads faster and holds less GPU memory); threads: CPU threads of
    the onnxruntime backend (0: all cores; at most the machine's cores).
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InvalidRequest(
            "model",
            f"expected a bundled model name or a directory path, got {validate.show(name_or_path)}",
        )
    return Generator(
        Artifact.open(name_or_path),
        backend=backend,
        device=device,
        max_batch=max_batch,
        threads=threads,
    )


def noise(seeds, z_dim: int, truncation: float | None = None) -> np.ndarray:
    """The noise rows of ``seeds`` by the Philox contract: float32 numpy [len(seeds), z_dim].

    At most validate.MAX_NOISE_VALUES values (seeds x z_dim) in one call.
    """
    z_dim = validate.integer(z_dim, "z_dim", 1, validate.MAX_Z_DIM)
    if seeds is None:
        raise InvalidRequest("seeds", "required: a list, range or string of seeds")
    values = request.parse_seeds(seeds, None, 0, None, limit=validate.MAX_NOISE_VALUES // z_dim)
    tau = request.parse_truncation(truncation)
    return philox.normal(values, z_dim, tau)
