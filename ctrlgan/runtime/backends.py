"""The runtime's backends: each turns validated Rows into float32 images [N, C, H, W].

    torch        the eager reference: host noise, the latent prologue in torch ops, the
                 generator module (its first layer computed row by row, see below)
    onnxruntime  generator.onnx in an OrtSession; host noise (slerp done on the host, fed with
                 t = 0: the graph's lerp returns z_a exactly there)
    triton       CUDA only: noise and prologue in the fused Triton kernel, written straight into
                 a half-precision latent buffer, then the generator body in fp16, channels_last,
                 replayed from a CUDA graph captured per batch-size bucket (1, 2, 4, ..., max);
                 calls are serialised by a lock. fp16 latents overflow beyond |z| = 65504, so
                 absurd steering (alpha ~ 1e4 and up) gives NaN images here, saturated ones on
                 the host backends.

Batch invariance. A row's image must not depend on which rows share its call. Noise and the
prologue are row-wise by construction. onnxruntime's CPU kernels gave bit-identical rows for
every batch size and offset we tried (1-300, tested). torch's CPU kernels do not: Linear takes
another GEMM path below 16 rows, and oneDNN picks convolution algorithms by batch size (rows
differ by ~2e-7). So the torch backend runs the first layer as a batched matmul of 1-row
products (baddbmm) and, on the CPU, the transposed convolutions with oneDNN off (torch's own
kernels loop over the images), which made every row bit-identical for every batch size and
offset tried; batch 1 got faster, batch 256 about 2x slower. On CUDA the
triton backend pads each call to its bucket; rows are identical within a bucket and agree to
float16 rounding across buckets.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import numpy as np
import torch

from ctrlgan.artifact import Artifact
from ctrlgan.errors import BackendUnavailable
from ctrlgan.kernels import reference
from ctrlgan.runtime import philox
from ctrlgan.runtime.request import Rows

NAMES = ("torch", "onnxruntime", "triton")


def host_latents(rows: Rows, z_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z_a, z_b, t) for graphs that lerp: noise from seeds; slerp already applied on the host."""
    z_a = philox.normal(rows.seeds, z_dim, rows.truncation)
    if rows.t is None:
        return z_a, z_a, _zeros(len(rows))
    z_b = philox.normal(rows.seeds_b, z_dim, rows.truncation)
    if rows.method == "slerp":
        ta, tb, tt = (torch.from_numpy(v) for v in (z_a, z_b, rows.t))
        z_a = reference.slerp(ta, tb, tt).numpy()
        return z_a, z_a, _zeros(len(rows))
    return z_a, z_b, rows.t


@functools.lru_cache(maxsize=64)
def _zeros(n: int) -> np.ndarray:
    """A read-only float32 zero vector (t = 0 for every call without interpolation)."""
    z = np.zeros(n, np.float32)
    z.flags.writeable = False
    return z


_onednn_lock = threading.Lock()
_onednn_users = 0
_onednn_saved = True


@contextlib.contextmanager
def _without_onednn():
    """oneDNN off for the duration (process-wide: torch has no per-thread switch); reference
    counted, so concurrent calls restore the caller's setting only when the last one leaves."""
    global _onednn_users, _onednn_saved
    with _onednn_lock:
        if _onednn_users == 0:
            _onednn_saved = torch.backends.mkldnn.set_flags(_enabled=False, _fp32_precision=None)[0]
        _onednn_users += 1
    try:
        yield
    finally:
        with _onednn_lock:
            _onednn_users -= 1
            if _onednn_users == 0:
                torch.backends.mkldnn.set_flags(_enabled=_onednn_saved, _fp32_precision=None)


HOST_CHUNK = 1024  # rows per host backend call, bounding memory for large requests


class TorchBackend:
    name = "torch"
    chunk = HOST_CHUNK

    def __init__(self, artifact: Artifact, device: torch.device):
        self.device = device
        self.net = artifact.build_generator().to(device)
        self.table = self.net.class_table().detach().float()
        self.directions = _directions(artifact, device)

    def __call__(self, rows: Rows) -> np.ndarray:
        z_a, z_b, t = host_latents(rows, self.net.config.z_dim)
        dev = lambda a: torch.from_numpy(np.require(a, requirements=["C", "W"])).to(self.device)
        steer = {}
        if self.directions is not None:
            steer = {"alpha": dev(rows.alpha), "directions": self.directions}
        cpu = self.device.type == "cpu"
        with torch.inference_mode(), _without_onednn() if cpu else contextlib.nullcontext():
            x = reference.latent_prologue(
                z_a=dev(z_a), z_b=dev(z_b), t=dev(t), class_a=dev(rows.class_a),
                class_b=dev(rows.class_b), s=dev(rows.s), table=self.table, **steer,
            )  # fmt: skip
            fc = self.net.fc
            n = x.shape[0]
            h = torch.baddbmm(
                fc.bias.expand(n, 1, -1), x[:, None, :], fc.weight.t().expand(n, -1, -1)
            )[:, 0]
            return self.net.body_after_fc(h).cpu().numpy()


class OnnxRuntimeBackend:
    name = "onnxruntime"
    chunk = HOST_CHUNK

    def __init__(self, artifact: Artifact, device: torch.device, threads: int = 0):
        from ctrlgan.export.onnx import GENERATOR_ONNX
        from ctrlgan.runtime.ort import OrtSession

        if GENERATOR_ONNX not in artifact.manifest.files:
            raise BackendUnavailable(
                f"onnxruntime: {artifact.path} has no {GENERATOR_ONNX}; run `ctrlgan export`"
            )
        self.z_dim = artifact.manifest.z_dim
        self.session = OrtSession.open(artifact, device=device.type, intra_op_threads=threads)

    def feeds(self, rows: Rows) -> dict[str, np.ndarray]:
        z_a, z_b, t = host_latents(rows, self.z_dim)
        return {
            "z_a": z_a, "z_b": z_b, "t": t, "class_a": rows.class_a,
            "class_b": rows.class_b, "s": rows.s, "alpha": rows.alpha,
        }  # fmt: skip

    def __call__(self, rows: Rows) -> np.ndarray:
        return self.session.run(self.feeds(rows))


class TritonBackend:
    name = "triton"

    def __init__(self, artifact: Artifact, device: torch.device, max_batch: int):
        if device.type != "cuda" or not torch.cuda.is_available():
            raise BackendUnavailable("triton: needs a CUDA device (none is usable here)")
        from ctrlgan.runtime.graphs import CudaGraphBody

        self.artifact = artifact
        self.device = device
        self.net = artifact.build_generator().to(device)
        self.z_dim = artifact.manifest.z_dim
        self.table = self.net.class_table().detach().float().contiguous()
        self.onehot = artifact.manifest.embedding == "onehot"
        self.directions = _directions(artifact, device)
        self.body = CudaGraphBody(self.net, max_batch, device)
        self.chunk = max_batch  # the largest bucket: one graph replay per call
        # One call at a time: calls of a bucket share its static buffers, and a capture must
        # not see other CUDA work.
        self._lock = threading.Lock()

    def __call__(self, rows: Rows) -> np.ndarray:
        from ctrlgan.kernels import latent

        n = len(rows)
        dev = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)
        kw = {
            "seed_a": dev(rows.seeds.view(np.int64)), "z_dim": self.z_dim,
            "class_a": dev(rows.class_a), "class_b": dev(rows.class_b), "s": dev(rows.s),
        }  # fmt: skip
        if rows.truncation is not None:
            kw["truncation"] = rows.truncation
        if rows.t is not None:
            kw |= {
                "seed_b": dev(rows.seeds_b.view(np.int64)),
                "t": dev(rows.t),
                "method": rows.method,
            }
        if self.directions is not None:
            kw |= {"alpha": dev(rows.alpha), "directions": self.directions}
        embed = {"n_classes": self.table.shape[0]} if self.onehot else {"table": self.table}
        with self._lock:
            latent_buf = self.body.latent_buffer(n)
            latent.latent_prologue(out=latent_buf, out_dtype=latent_buf.dtype, **kw, **embed)
            image = self.body.run(n).float()  # a copy: the next replay overwrites the output
        return np.ascontiguousarray(image.cpu().numpy())  # NCHW order (the body is NHWC)


def _directions(artifact: Artifact, device: torch.device) -> torch.Tensor | None:
    from ctrlgan.export.onnx import steering_table

    table = steering_table(artifact)
    return None if table is None else table.to(device).contiguous()


def usable(name: str, artifact: Artifact, device: torch.device) -> bool:
    """Whether backend ``name`` can run here for this artifact (without building it)."""
    from ctrlgan.export.onnx import GENERATOR_ONNX

    if name == "torch":
        return True
    if name == "onnxruntime":
        from ctrlgan.runtime.ort import cuda_usable

        return GENERATOR_ONNX in artifact.manifest.files and (device.type == "cpu" or cuda_usable())
    return device.type == "cuda" and torch.cuda.is_available()
