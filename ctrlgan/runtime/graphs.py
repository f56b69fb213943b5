"""The generator body on CUDA in float16, channels_last, replayed from CUDA graphs.

A CUDA graph fixes its tensors' addresses and shapes, so there is one graph per batch-size
bucket (1, 2, 4, ..., up to the largest batch), captured on first use: the fused prologue kernel
writes the latent rows into the bucket's static input buffer, the graph is replayed, and the
first n rows of its static output are the images. Rows past n hold whatever the previous call
left; they are computed and ignored, and never influence the first n (every layer is row-wise
in the batch). Not thread-safe by itself: the triton backend holds a lock around each call.
"""

from __future__ import annotations

import copy

import torch

from ctrlgan.network import ConditionalGenerator

WARMUP_ITERS = 3  # eager runs on a side stream before capture (cuDNN picks its algorithms)


class CudaGraphBody:
    def __init__(
        self,
        net: ConditionalGenerator,
        max_batch: int,
        device: torch.device,
        dtype: torch.dtype = torch.float16,
    ):
        self.net = copy.deepcopy(net).to(device=device, dtype=dtype).eval()
        self.net = self.net.to(memory_format=torch.channels_last)
        self.device, self.dtype = device, dtype
        self.width = net.config.latent_dim
        self.max_bucket = 1 << max(0, (max_batch - 1).bit_length())
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        # One memory pool for every bucket's graph: they never run concurrently (the backend
        # serialises calls) and each output is copied out right after its replay.
        self._pool = torch.cuda.graph_pool_handle()

    def bucket(self, n: int) -> int:
        if not 1 <= n <= self.max_bucket:
            raise ValueError(f"batch {n} outside 1..{self.max_bucket}")
        return 1 << (n - 1).bit_length()

    def _graph(self, bucket: int):
        if bucket not in self._graphs:
            latent = torch.zeros(bucket, self.width, device=self.device, dtype=self.dtype)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.inference_mode(), torch.cuda.stream(side):
                for _ in range(WARMUP_ITERS):
                    self.net.body(latent)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
                image = self.net.body(latent)
            self._graphs[bucket] = (graph, latent, image)
        return self._graphs[bucket]

    def latent_buffer(self, n: int) -> torch.Tensor:
        """The first n rows of the bucket's static input (contiguous): write the latent here."""
        return self._graph(self.bucket(n))[1][:n]

    def run(self, n: int) -> torch.Tensor:
        """Replay the bucket's graph; the first n images (a view of the static output)."""
        graph, _, image = self._graph(self.bucket(n))
        graph.replay()
        return image[:n]
