"""The runtime: sampling API and backends. It never imports ctrlgan.training."""

from ctrlgan.runtime.generator import Generator, load, noise

__all__ = ["Generator", "load", "noise"]
