"""The runtime: sampling API and backends. It never imports ctrlgan.training."""

from ctrlgan.runtime.batcher import BatchingGenerator
from ctrlgan.runtime.generator import Generator, load, noise

__all__ = ["BatchingGenerator", "Generator", "load", "noise"]
