"""benchmarks/gpu_check.sh on a machine without CUDA: one clear line, every part's start-up check
runs and passes, exit 3; usage errors are one line and exit 2."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run(*args, env=None):
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_without_cuda_every_part_starts_and_exit_3(tmp_path):
    out = tmp_path / "new" / "out"  # made by the script
    # An empty CUDA_VISIBLE_DEVICES hides any GPU from torch, so this runs the no-CUDA path
    # wherever the test runs.
    p = run(str(out), env={"CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 3, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert any(line.startswith("gpu_check: no usable CUDA device (") for line in lines)
    for part in ("pytest (start-up)", "kernels (start-up)", "bench (start-up)"):
        assert f"=== {part}: passed" in lines, p.stdout
    log = (out / "gpu_check.log").read_text()
    assert "gpu_check: no usable CUDA device (" in log
    assert "=== bench (start-up): passed" in log
    assert "tests collected" in log  # pytest --collect-only -m gpu really ran
    assert "usage: bench_kernels.py" in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cuda"] is False
    assert {p["part"]: p["state"] for p in summary["parts"]} == {
        "pytest (start-up)": "passed",
        "kernels (start-up)": "passed",
        "bench (start-up)": "passed",
    }


def test_missing_outdir_is_a_one_line_usage_error():
    p = run()
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and "missing OUTDIR" in p.stderr


def test_unwritable_outdir_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")  # a path under a file cannot be made, even by root
    p = run(str(blocker / "out"))
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr == f"gpu_check: cannot write to OUTDIR {blocker / 'out'}\n"
