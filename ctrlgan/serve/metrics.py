"""Prometheus metrics of one server, in their own registry (several apps may share a process).

Histograms, not summaries, so that p99 can be aggregated across replicas: request duration
(by model, protocol and endpoint), queue wait per request, compute time per backend call (by
model and backend), images per backend call; counters of requests (by model, protocol, status)
and of images generated; a gauge of images waiting in each model's queue. ``GET /metrics``
answers ``exposition()`` in the text format.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
# seconds: 100 µs to 30 s, about three buckets per decade
LATENCY = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
           5.0, 10.0, 30.0)  # fmt: skip
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.request_seconds = Histogram(
            "ctrlgan_request_duration_seconds", "Time from a request's arrival to its answer",
            ("model", "protocol", "endpoint"), buckets=LATENCY, registry=r,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "ctrlgan_queue_wait_seconds", "Time a sample request waited in its model's queue",
            ("model",), buckets=LATENCY, registry=r,
        )  # fmt: skip
        self.compute_seconds = Histogram(
            "ctrlgan_compute_seconds", "Time of one backend call (one batch)",
            ("model", "backend"), buckets=LATENCY, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "ctrlgan_batch_size", "Images computed per backend call", ("model",),
            buckets=BATCH, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "ctrlgan_requests", "Requests answered", ("model", "protocol", "status"), registry=r
        )
        self.images = Counter("ctrlgan_images", "Images generated", ("model",), registry=r)
        self.queued = Gauge(
            "ctrlgan_queued_images", "Images waiting in a model's queue", ("model",), registry=r
        )
        self._children: dict = {}

    def watch(self, model) -> None:
        """Observe a ServedModel's batcher: its backend calls and its queue."""
        name, backend = model.name, model.generator.backend
        compute = self.compute_seconds.labels(name, backend)
        size = self.batch_size.labels(name)
        wait = self.queue_seconds.labels(name)
        images = self.images.labels(name)

        def on_batch(count: int, seconds: float, waits) -> None:
            compute.observe(seconds)
            size.observe(count)
            images.inc(count)
            for w in waits:
                wait.observe(w)

        model.batcher.on_batch = on_batch
        self.queued.labels(name).set_function(lambda: model.batcher.queued_images)

    def request(self, model: str, protocol: str, endpoint: str, status, seconds: float) -> None:
        key = (model, protocol, endpoint, status)
        pair = self._children.get(key)
        if pair is None:
            pair = (
                self.request_seconds.labels(model, protocol, endpoint),
                self.requests.labels(model, protocol, str(status)),
            )
            if len(self._children) < 10_000:  # labels come from fixed sets; bound it anyway
                self._children[key] = pair
        pair[0].observe(seconds)
        pair[1].inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
