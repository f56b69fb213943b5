"""pytest-benchmark suite for the runtime's paths (not part of `make test`):

    .venv/bin/python -m pytest benchmarks/test_runtime_benchmarks.py --benchmark-only

The same contenders as `ctrlgan bench`: the public sample() per backend, the raw onnxruntime
session.run on prepared feeds, and the eager torch module, at batch 1 and 64 on the bundled
digits model. Seeds change every call.
"""

import itertools

import numpy as np
import pytest
import torch

import ctrlgan
from ctrlgan.runtime import philox

BATCHES = [1, 64]


@pytest.fixture(scope="module")
def gens():
    return {b: ctrlgan.load("digits", backend=b) for b in ("torch", "onnxruntime")}


def _seeds(batch):
    counter = itertools.count()

    def next_seeds():
        start = next(counter) * batch
        return list(range(start, start + batch))

    return next_seeds


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_sample(benchmark, gens, backend, batch):
    g, seeds = gens[backend], _seeds(batch)
    classes = [i % 10 for i in range(batch)]
    benchmark.group = f"batch {batch}"
    benchmark(lambda: g.sample(classes=classes, seeds=seeds()))


@pytest.mark.parametrize("batch", BATCHES)
def test_onnxruntime_raw(benchmark, gens, batch):
    g = gens["onnxruntime"]
    rows = g.prepare(classes=[i % 10 for i in range(batch)], seeds=range(batch))
    feeds = g._backend.feeds(rows)
    session = g._backend.session
    benchmark.group = f"batch {batch}"
    benchmark(lambda: session.session.run([session.output], feeds))


@pytest.mark.parametrize("batch", BATCHES)
def test_torch_raw(benchmark, gens, batch):
    net = gens["torch"].artifact.build_generator()
    z = torch.from_numpy(philox.normal(np.arange(batch, dtype=np.uint64), 64))
    labels = torch.arange(batch) % 10
    benchmark.group = f"batch {batch}"

    def run():
        with torch.inference_mode():
            return net(z, labels)

    benchmark(run)
