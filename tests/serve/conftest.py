"""The server under test is the real one: `ctrlgan serve` started as a subprocess on free ports
bound to 127.0.0.1, driven by real clients (httpx, tritonclient, KServe's client) and stopped
with SIGTERM, which must exit 0.

Servers (each start costs a second or two, so there are few):

    server        digits, onnxruntime; --max-images 100 --max-body-mb 1 (for 400 / 413)
    auth_server   the same with --api-key-file
    busy_server   --max-queue 2 --max-batch-size 1: queue-full (429) and timeout (504) checks
    start_server  a factory for servers a test stops itself (drain)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_WAIT = 60.0  # seconds: a bound on the wait for readiness (only a bug reaches it)
STOP_WAIT = 30.0
KEY = "test-key-0123456789"


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (held open together so that they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Server:
    """One `ctrlgan serve` process: ``url`` (HTTP), ``grpc`` (host:port), ``stop()``."""

    def __init__(self, log_dir: Path, *flags: str, env: dict | None = None):
        self.port, self.grpc_port = free_ports(2)
        self.url = f"http://{HOST}:{self.port}"
        self.grpc = f"{HOST}:{self.grpc_port}"
        self.flags = flags
        self.signalled = False
        self.log = log_dir / f"serve-{self.port}.log"
        argv = [sys.executable, "-m", "ctrlgan", "serve", "digits", "--backend", "onnxruntime",
                "--host", HOST, "--port", str(self.port), "--grpc-port", str(self.grpc_port),
                "--threads", "1", *flags]  # fmt: skip
        self._log = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )  # fmt: skip

    def wait_ready(self, timeout: float = START_WAIT) -> Server:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"the server exited with {code}: {self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1.0).status_code == 200:
                    return self
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"the server was not ready within {timeout} s: {self.output()}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def terminate(self) -> None:
        self.signalled = True
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_WAIT) -> int:
        """SIGTERM (once: a second one stops without draining), then the exit status (killed
        after ``timeout`` seconds: a bug)."""
        if self.proc.poll() is None and not self.signalled:
            self.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the server did not stop within {timeout} s") from None
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running(log_dir: Path, *flags: str, env: dict | None = None):
    server = Server(log_dir, *flags, env=env).wait_ready()
    try:
        yield server
    finally:
        code = server.stop()
        assert "Traceback" not in server.output(), server.output()
        assert code == 0, f"exit status {code}: {server.output()}"


@pytest.fixture(scope="session")
def serve_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="session")
def server(serve_logs):
    with running(serve_logs, "--max-images", "100", "--max-body-mb", "1") as s:
        yield s


@pytest.fixture(scope="session")
def auth_server(serve_logs):
    path = serve_logs / "key"
    path.write_text(KEY + "\n")
    with running(serve_logs, "--api-key-file", str(path)) as s:
        yield s


@pytest.fixture(scope="session")
def busy_server(serve_logs):
    with running(serve_logs, "--max-queue", "2", "--max-batch-size", "1") as s:
        yield s


@pytest.fixture
def start_server(serve_logs):
    """Start a server with flags; the test stops it (a leftover one is killed)."""
    started = []

    def start(*flags: str) -> Server:
        server = Server(serve_logs, *flags)
        started.append(server)
        return server.wait_ready()

    yield start
    for s in started:
        s.kill()


@pytest.fixture(scope="session")
def http(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="session")
def generator():
    """The in-process reference: every image the server gives must equal its images."""
    import ctrlgan

    return ctrlgan.load("digits", backend="onnxruntime")
