"""The torch and triton backends (runtime/backends.py describes all three). Importing this
module imports torch: the runtime does so only when one of these backends is built.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch

from ctrlgan.artifact import Artifact
from ctrlgan.errors import BackendUnavailable
from ctrlgan.kernels import reference
from ctrlgan.runtime.backends import HOST_CHUNK, host_latents
from ctrlgan.runtime.request import Rows

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


class TorchBackend:
    name = "torch"
    chunk = HOST_CHUNK

    def __init__(self, artifact: Artifact, device: str):
        self.device = torch.device(device)
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


class TritonBackend:
    """CUDA: the fused prologue kernel and the CUDA-graph body (graphs.py), every bucket
    captured here. One call at a time, each wholly on the body's own stream under ``_lock``:
    upload, prologue into the bucket's static input, replay, copy-out. Calls of a bucket share
    its static buffers, and a replay may overwrite another bucket's output (one memory pool)."""

    name = "triton"

    def __init__(self, artifact: Artifact, device: str, max_batch: int):
        if device != "cuda" or not torch.cuda.is_available():
            raise BackendUnavailable("triton: needs a CUDA device (none is usable here)")
        from ctrlgan.runtime.graphs import CudaGraphBody

        self.artifact = artifact
        self.device = device = torch.device(device)
        self.net = artifact.build_generator().to(device)
        self.z_dim = artifact.manifest.z_dim
        self.table = self.net.class_table().detach().float().contiguous()
        self.onehot = artifact.manifest.embedding == "onehot"
        self.directions = _directions(artifact, device)
        self.body = CudaGraphBody(self.net, max_batch, device)  # captures every bucket
        self.stream = self.body.stream
        # the table and directions were uploaded on the default stream; calls read them on
        # self.stream (CudaGraphBody synchronised the device after its captures; this says so)
        self.stream.wait_stream(torch.cuda.current_stream(device))
        self.chunk = max_batch  # the largest bucket: one graph replay per call
        self._lock = threading.Lock()

    def __call__(self, rows: Rows) -> np.ndarray:
        return self._run(rows, host=True)

    def on_device(self, rows: Rows) -> torch.Tensor:
        """The images as a float16 CUDA tensor [N, C, H, W] (a copy of the graph's output, the
        stream synchronised): the work of ``__call__`` without the float32 host copy-out. Rows
        beyond the largest bucket run in chunks of it, as ``Generator.run`` does for a call."""
        n, chunk, caller = len(rows), self.chunk, torch.cuda.current_stream(self.device)
        parts = []
        for i in range(0, n, chunk):
            part = self._run(rows.slice(i, min(i + chunk, n)), host=False)
            # made on self.stream, read on the caller's: the allocator must not hand its memory
            # to a later call on self.stream while the caller's stream may still read it
            part.record_stream(caller)
            parts.append(part)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _run(self, rows: Rows, host: bool):
        from ctrlgan.kernels import latent

        n = len(rows)
        embed = {"n_classes": self.table.shape[0]} if self.onehot else {"table": self.table}
        with self._lock, torch.cuda.stream(self.stream):
            # Everything below is ordered on self.stream: uploads (from pageable memory CUDA
            # stages the array before .to returns), the kernel, the replay and copy-out.
            dev = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(
                self.device, non_blocking=True
            )
            kw = {"class_a": dev(rows.class_a), "class_b": dev(rows.class_b), "s": dev(rows.s)}
            if rows.z is not None:  # given noise rows replace the kernel's seeds
                kw["z_a"] = dev(rows.z)
            else:
                kw |= {"seed_a": dev(rows.seeds.view(np.int64)), "z_dim": self.z_dim}
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
            latent_buf = self.body.latent_buffer(n)
            latent.latent_prologue(out=latent_buf, out_dtype=latent_buf.dtype, **kw, **embed)
            image = self.body.run(n)  # a view of the static output: copied out before unlocking
            if not host:
                image = image.clone()
                self.stream.synchronize()
                return image
            return image.float().cpu().numpy()  # NCHW, contiguous; .cpu() waits for the stream


def _directions(artifact: Artifact, device: torch.device) -> torch.Tensor | None:
    from ctrlgan.export.onnx import steering_table

    table = steering_table(artifact)
    return None if table is None else table.to(device).contiguous()
