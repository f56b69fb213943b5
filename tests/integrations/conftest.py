"""One local Ray for the integration tests (skipped where the ``ray`` extra is missing)."""

from __future__ import annotations

import os
import sys

import pytest

# Ray binds its services to the node's routable address and listens on every interface, even
# when given _node_ip_address="127.0.0.1" (it resolves loopback to the routable address).
# Ray's switch for single-machine sessions keeps every Ray process of these tests on
# 127.0.0.1; it is read when ray is imported (here, and in the processes Ray and the tests
# start, which inherit the environment).
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
for _name, _value in LOOPBACK_ONLY.items():
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session")
def ray_local():
    """``ray.init`` on this machine: 2 logical CPUs, no dashboard, every Ray process listening
    on 127.0.0.1 only; shut down after the session."""
    ray = pytest.importorskip("ray")
    if "ray._private.ray_constants" in sys.modules:  # imported before this conftest
        sys.modules["ray._private.ray_constants"].ENABLE_RAY_CLUSTER = False
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    yield ray
    ray.shutdown()
