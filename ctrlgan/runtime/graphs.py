"""The generator body on CUDA in float16, replayed from CUDA graphs captured at start-up.

A CUDA graph fixes its tensors' addresses and shapes, so there is one graph per batch-size
bucket: 1, 2, 4, ... below ``max_batch``, then ``max_batch`` itself (``capture_plan``). A call
of n rows takes the smallest bucket >= n: the fused prologue kernel writes the latent rows into
that bucket's static input buffer, the graph is replayed, and the first n rows of its static
output are the images. Rows past n hold whatever the previous call left; they are computed and
ignored, and never influence the first n (every layer is row-wise in the batch), so a row is
bit-identical whatever shares its call within one bucket (the captures use deterministic cuDNN
algorithms only), and agrees to float16 rounding across buckets (another batch size may pick
other kernels).

Every bucket is captured in the constructor, none on first use. A capture while serving would
stall that call, and a capture is fragile next to other threads: ``torch.cuda.graph`` empties
the allocator's cache and, in its default "global" mode, any cudaMalloc from any thread during
the capture invalidates it. Here each bucket is warmed up eagerly on the body's own stream
(``WARMUP_ITERS`` runs: cuDNN picks its algorithms and workspaces outside the capture), then
captured on that same stream in "thread_local" mode, so another thread's CUDA work (another
model, an upload) cannot break it. The cost is paid once, at start-up, and logged (info; a
warning past ``SLOW_CAPTURE_S``): ``len(buckets)`` captures (15 for the 16384-row cap that
backends.create applies), each a few eager runs and one capture, and the memory of every graph
reserved up front, used or not. The graphs share one memory pool, captured
largest first so that the smaller ones reuse its freed activations: the pool holds about the
largest bucket's activations plus every bucket's static input and output. A smaller
``max_batch`` bounds both (a 64-row cap: 7 captures).

Sharing the pool is safe only because replays never overlap and outputs leave at once: a later
capture may place its output where an earlier graph keeps activations, so a replay can
overwrite another bucket's output.
The caller (the triton backend) holds one lock around upload, prologue, replay and copy-out,
and runs all of them on ``stream``; an output is copied out before any other replay.

Memory format. The body runs in the default NCHW order. channels_last was dropped: it barely
applied (the first layer is a Linear whose output is viewed as NCHW, so only the first
transposed convolution's input was converted, inside the graph), and the image then came out
NHWC, which for colour models cost a host-side transpose of float32 images on every call. No
measurement showed a gain to weigh against that (no GPU has run this code yet); making it apply
would mean permuting the first layer's rows to emit NHWC and transposing the output on the
device.
"""

from __future__ import annotations

import copy
import logging
import time

import torch

from ctrlgan.errors import BackendUnavailable
from ctrlgan.network import ConditionalGenerator

log = logging.getLogger(__name__)

WARMUP_ITERS = 3  # eager runs per bucket on the body's stream before its capture
SLOW_CAPTURE_S = 2.0  # start-ups slower than this log a warning (visible in `ctrlgan serve`)


def capture_plan(max_batch: int) -> tuple[int, ...]:
    """The batch-size buckets captured for calls of up to ``max_batch`` rows, ascending:
    the powers of two below ``max_batch``, then ``max_batch``."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return (*(1 << i for i in range((max_batch - 1).bit_length()) if 1 << i < max_batch), max_batch)


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket of the ascending ``buckets`` holding n rows."""
    if not 1 <= n <= buckets[-1]:
        raise ValueError(f"batch {n} outside 1..{buckets[-1]}")
    power = 1 << (n - 1).bit_length()
    return power if power < buckets[-1] else buckets[-1]


class CudaGraphBody:
    """The body's graphs, one per bucket of ``capture_plan(max_batch)``, all captured here.

    Not thread-safe by itself: call ``latent_buffer``, write it, ``run`` and copy the result out
    under one lock, on ``stream`` (see the module docstring).
    """

    def __init__(
        self,
        net: ConditionalGenerator,
        max_batch: int,
        device: torch.device,
        dtype: torch.dtype = torch.float16,
    ):
        if not torch.cuda.is_available():
            raise BackendUnavailable("triton: CUDA graphs need a CUDA device (none is usable)")
        self.device, self.dtype = torch.device(device), dtype
        self.width = net.config.latent_dim
        self.buckets = capture_plan(max_batch)
        self.stream = torch.cuda.Stream(self.device)
        # The weights are copied on the current stream; the body's stream waits for them.
        self.net = copy.deepcopy(net).to(device=self.device, dtype=dtype).eval()
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        self.captures = 0  # graphs captured so far; never grows after the constructor
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        start = time.perf_counter()
        # cuDNN picks each convolution's algorithm when it first runs, and a graph keeps it:
        # deterministic ones only (some transposed-convolution algorithms add with atomics, so
        # one bucket's rows would differ from call to call). The flag is process-wide; it is set
        # for the captures only and restored.
        deterministic = torch.backends.cudnn.deterministic
        torch.backends.cudnn.deterministic = True
        try:
            for bucket in reversed(self.buckets):  # largest first: the rest reuse its memory
                self._graphs[bucket] = self._capture(bucket)
        except Exception as e:
            # out of memory in a warm-up, or inside a capture (then capture_end raises too,
            # with the OOM as its context): the model does not fit at this max_batch
            oom = torch.cuda.OutOfMemoryError
            if isinstance(e, oom) or isinstance(e.__context__, oom):
                raise BackendUnavailable(
                    f"triton: GPU memory ran out capturing the {bucket}-row CUDA graph; "
                    f"load with a smaller max_batch (now {max_batch})"
                ) from e
            raise
        finally:
            torch.backends.cudnn.deterministic = deterministic
        torch.cuda.synchronize(self.device)
        self.capture_seconds = time.perf_counter() - start
        log.log(
            logging.WARNING if self.capture_seconds >= SLOW_CAPTURE_S else logging.INFO,
            "triton backend: captured %d CUDA graphs (batch buckets %s) in %.2f s; "
            "a smaller max_batch captures fewer",
            len(self.buckets),
            ", ".join(map(str, self.buckets)),
            self.capture_seconds,
        )

    def _capture(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        """Warm the body up on ``stream`` at this batch size, then capture it on ``stream``."""
        with torch.cuda.stream(self.stream):
            # a normal tensor, not an inference one: callers write it outside inference mode
            latent = torch.zeros(bucket, self.width, device=self.device, dtype=self.dtype)
            with torch.inference_mode():
                for _ in range(WARMUP_ITERS):
                    self.net.body(latent)
        graph = torch.cuda.CUDAGraph()
        with (
            torch.inference_mode(),
            torch.cuda.graph(
                graph, pool=self._pool, stream=self.stream, capture_error_mode="thread_local"
            ),
        ):
            image = self.net.body(latent)
        self.captures += 1
        return graph, latent, image

    def bucket(self, n: int) -> int:
        return bucket_for(n, self.buckets)

    def latent_buffer(self, n: int) -> torch.Tensor:
        """The first n rows of the bucket's static input (contiguous): write the latent here."""
        return self._graphs[self.bucket(n)][1][:n]

    def run(self, n: int) -> torch.Tensor:
        """Replay the bucket's graph on the current stream (``stream``: see the class docstring);
        the first n images, a view of the static output that the next replay may overwrite."""
        graph, _, image = self._graphs[self.bucket(n)]
        graph.replay()
        return image[:n]
