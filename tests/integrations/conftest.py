"""One local Ray for the integration tests (skipped where the ``ray`` extra is missing)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_local():
    """``ray.init`` on this machine: 2 logical CPUs, no dashboard, the node on 127.0.0.1
    (Ray's own gRPC services still listen as Ray binds them), shut down after the session."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)  # fmt: skip
    yield ray
    ray.shutdown()
