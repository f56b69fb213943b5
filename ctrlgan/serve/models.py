"""The served models: a fixed table of names, each a Generator behind its own BatchingGenerator,
and the one inference path every protocol shares.

A model is a v2 model with inputs ``classes`` INT64 [B], ``seeds`` INT64 [B] (UINT64 also taken,
for seeds of 2**63 and above), optional ``truncation`` FP32 [B] and ``steer`` FP32 [B, K] (K: the
model's features, in metadata order), and outputs ``image`` FP32 [B, C, H, W] in [-1, 1] and
``image_uint8`` UINT8 [B, H, W, C]. ``ServedModel.infer`` checks the tensors (every value through
the runtime's own validation, so the server refuses exactly what ``Generator.sample`` refuses),
submits one batcher request per distinct truncation, awaits them without blocking the event loop
and returns the images. The same (class, seed, truncation, steer) gives the same bytes as
in-process ``Generator.sample``, whatever else shares the batch.

Models are looked up by name in the table built at start: no request value reaches the
filesystem.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Mapping

import numpy as np

from ctrlgan.errors import InvalidRequest
from ctrlgan.images import to_uint8
from ctrlgan.runtime.batcher import BatchingGenerator
from ctrlgan.runtime.generator import Generator
from ctrlgan.serve.protocol import ProtocolError, Tensor, bad

VERSION = "1"
PLATFORM = "ctrlgan"
OUTPUTS = ("image", "image_uint8")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
INTEGER_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
FLOAT_TYPES = ("FP16", "FP32", "FP64")
MAX_TRUNCATIONS = 8  # different truncation values in one request


class NotFound(ProtocolError):
    def __init__(self, message: str):
        super().__init__(404, message)


class ServedModel:
    """One model of the table: its Generator, its batcher and its v2 description."""

    def __init__(
        self,
        name: str,
        generator: Generator,
        *,
        max_batch_size: int = 64,
        max_delay_ms: float = 0.0,
        max_queue: int = 1024,
        max_images: int = 1024,
    ):
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise InvalidRequest(
                "models", f"model name {name!r}: letters, digits, '_', '.', '-' (at most 64)"
            )
        self.name = name
        self.generator = generator
        self.max_images = min(max_images, generator.max_batch)
        self.batcher = BatchingGenerator(
            generator, max_batch_size=max_batch_size, max_delay_ms=max_delay_ms,
            max_queue=max_queue,
        )  # fmt: skip
        manifest = generator.manifest.to_json().encode()
        self.checksum = hashlib.sha256(manifest).hexdigest()
        self.classes = generator.classes
        self.features = generator.features
        self.image_shape = generator.image_shape

    # Description ----------------------------------------------------------------------------
    def metadata(self) -> dict:
        c, h, w = self.image_shape
        inputs = [
            {"name": "classes", "datatype": "INT64", "shape": [-1]},
            {"name": "seeds", "datatype": "INT64", "shape": [-1]},
            {"name": "truncation", "datatype": "FP32", "shape": [-1], "optional": True},
        ]
        if self.features:
            inputs.append(
                {"name": "steer", "datatype": "FP32", "shape": [-1, len(self.features)],
                 "optional": True}
            )  # fmt: skip
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": PLATFORM,
            "inputs": inputs,
            "outputs": [
                {"name": "image", "datatype": "FP32", "shape": [-1, c, h, w]},
                {"name": "image_uint8", "datatype": "UINT8", "shape": [-1, h, w, c]},
            ],
            "parameters": self.parameters(),
        }

    def parameters(self) -> dict[str, str]:
        """Strings (OIP parameters are scalars): the lists JSON-encoded."""
        return {
            "classes": json.dumps(self.classes),
            "features": json.dumps(self.features),
            "image_shape": json.dumps(list(self.image_shape)),
            "backend": self.generator.backend,
            "max_images": str(self.max_images),
            "checksum": self.checksum,
        }

    def describe(self) -> dict:
        """The /v1/models entry."""
        return {
            "name": self.name,
            "classes": self.classes,
            "features": self.features,
            "image_shape": list(self.image_shape),
            "backend": self.generator.backend,
            "max_images": self.max_images,
            "checksum": self.checksum,
        }

    # Inference --------------------------------------------------------------------------------
    def requests(self, inputs: Mapping[str, Tensor]) -> list[tuple[np.ndarray | None, dict]]:
        """Checked tensors -> batcher requests: (rows of the batch or None for all, kwargs)."""
        unknown = sorted(set(inputs) - {"classes", "seeds", "truncation", "steer"})
        if unknown:
            raise bad(
                f"inputs.{unknown[0][:40]}: unknown input; this model takes classes, seeds, "
                f"truncation{', steer' if self.features else ''}"
            )
        for required in ("classes", "seeds"):
            if required not in inputs:
                raise bad(f"inputs.{required}: required")
        classes = _vector(inputs["classes"], INTEGER_TYPES)
        seeds = _vector(inputs["seeds"], INTEGER_TYPES)
        count = len(classes)
        if count == 0:
            raise bad("inputs.classes: at least one image")
        if count > self.max_images:
            raise bad(f"inputs.classes: {count} images exceed the server's limit {self.max_images}")
        if len(seeds) != count:
            raise bad(f"inputs.seeds: {len(seeds)} seeds for {count} classes: one per image")
        if classes.min() < 0 or classes.max() >= len(self.classes):
            raise bad(f"inputs.classes: class ids are 0..{len(self.classes) - 1}")
        if seeds.dtype.kind == "i" and seeds.min() < 0:
            raise bad("inputs.seeds: seeds are in [0, 2**64)")
        steer = None
        if "steer" in inputs:
            t = inputs["steer"]
            if t.datatype not in FLOAT_TYPES:
                raise bad(f"inputs.steer.datatype: FP32 expected, got {t.datatype}")
            if not self.features:
                raise bad("inputs.steer: this model has no direction table")
            if t.shape != (count, len(self.features)):
                raise bad(f"inputs.steer.shape: [{count}, {len(self.features)}] expected")
            if t.data.any():
                values = t.data.astype(np.float64)
                steer = {f: values[:, k] for k, f in enumerate(self.features) if values[:, k].any()}
        taus = None
        if "truncation" in inputs:
            t = inputs["truncation"]
            if t.datatype not in FLOAT_TYPES:
                raise bad(f"inputs.truncation.datatype: FP32 expected, got {t.datatype}")
            if t.shape != (count,):
                raise bad(f"inputs.truncation.shape: [{count}] expected")
            taus = t.data.astype(np.float64)
        class_list = classes.tolist()
        seed_array = seeds.astype(np.uint64)
        if taus is None or (taus == taus[0]).all():
            tau = None if taus is None else float(taus[0])
            return [(None, _kwargs(class_list, seed_array, steer, tau))]
        distinct = np.unique(taus)
        if len(distinct) > MAX_TRUNCATIONS:
            raise bad(
                f"inputs.truncation: {len(distinct)} different values; at most {MAX_TRUNCATIONS} "
                "in one request (each is its own backend call)"
            )
        out = []
        for tau in distinct:  # NaN never equals itself: refused by the runtime below
            rows = np.flatnonzero(taus == tau)
            part = None if steer is None else {f: v[rows] for f, v in steer.items()}
            out.append((rows, _kwargs(classes[rows].tolist(), seed_array[rows], part, float(tau))))
        if len(np.concatenate([r for r, _ in out])) != count:
            raise InvalidRequest("truncation", "must be finite numbers in (0, 1000]")
        return out

    async def infer(self, inputs: Mapping[str, Tensor], timeout: float | None) -> np.ndarray:
        """The images of the request: float32 [B, C, H, W]. Raises ProtocolError (400),
        InvalidRequest (400), Overloaded (429), TimeoutError (504)."""
        parts = self.requests(inputs)
        if len(parts) == 1:  # the common case: one batcher request, submitted right here
            return await self.batcher.asample(**parts[0][1], timeout=timeout)
        tasks = [
            asyncio.ensure_future(self.batcher.asample(**kwargs, timeout=timeout))
            for _, kwargs in parts
        ]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:  # one part refused (e.g. queue full): drop the others too
            for task in tasks:
                task.cancel()
            raise
        count = sum(len(r) for r in results)
        images = np.empty((count, *self.image_shape), np.float32)
        for (rows, _), part in zip(parts, results, strict=True):
            images[rows] = part
        return images

    @property
    def max_elements(self) -> int:
        """The most values an input tensor of a valid request holds (steer: B x K)."""
        return self.max_images * max(1, len(self.features))

    @property
    def max_request_bytes(self) -> int:
        """The largest body a valid request can need (JSON, even indented: at most 64 bytes a
        value) and no more, compressed or not: a bigger one is refused (413) before it is
        read, inflated or parsed, and cannot hold the event loop."""
        return (64 << 10) + 64 * self.max_images * (3 + len(self.features))

    def close(self, wait: bool = True) -> None:
        self.batcher.close(wait=wait)


def check_outputs(wanted: list[str] | None) -> None:
    """Requested output names, checked before anything is computed."""
    for name in wanted or ():
        if name not in OUTPUTS:
            raise bad(f"outputs.{name[:40]}: unknown output; this model gives image, image_uint8")


def outputs(images: np.ndarray, wanted: list[str] | None) -> dict[str, np.ndarray]:
    """The requested outputs of a batch of images (both when ``wanted`` is None)."""
    out = {}
    for name in OUTPUTS if wanted is None else wanted:
        out[name] = images if name == "image" else to_uint8(images)
    return out


def _vector(t: Tensor, kinds: tuple[str, ...]) -> np.ndarray:
    where = f"inputs.{t.name}"
    if t.datatype not in kinds:
        raise bad(f"{where}.datatype: INT64 expected, got {t.datatype}")
    if len(t.shape) != 1:
        raise bad(f"{where}.shape: [B] expected, got {list(t.shape)}")
    return t.data


def _kwargs(classes: list, seeds: np.ndarray, steer, tau) -> dict:
    return {"classes": classes, "seeds": seeds, "steer": steer, "truncation": tau}


class ModelTable:
    """The fixed name -> ServedModel table of one server."""

    def __init__(self, models: Mapping[str, ServedModel]):
        self.models = dict(models)

    def get(self, name: str) -> ServedModel:
        model = self.models.get(name)
        if model is None:
            shown = name if len(name) <= 40 else name[:37] + "..."
            raise NotFound(f"unknown model {shown!r}; this server has {', '.join(self.models)}")
        return model

    def __iter__(self):
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)

    def close(self, wait: bool = True) -> None:
        for model in self.models.values():
            model.close(wait=wait)
