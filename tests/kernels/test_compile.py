"""The real kernels compile for the GPUs they will run on: every variant of the latent prologue
and of the fused first layer, with a kept autotune config, for sm_90 and sm_80, by the installed
Triton on this machine's CPU (no GPU needed). The interpreter runs the same source but never
lowers it, so a construct that only fails in codegen (or ptxas) would pass every other test.

It runs `benchmarks/compile_kernels.py --check` in a fresh process without TRITON_INTERPRET
and with an empty cache; the exhaustive sweep (every kept config, compile time, PTX size and
spills) is the benchmark script's, recorded under benchmarks/results/.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compile_kernels.py"


def test_every_kernel_variant_compiles_for_sm90_and_sm80(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # empty: every kernel is really compiled
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when it is unset
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    compiled = [line for line in proc.stdout.splitlines() if ": ok " in line]
    assert any("sm_90" in line for line in compiled) and any("sm_80" in line for line in compiled)
    # every variant of both kernels compiled, each for at least one arch
    done = {(line.split(" ")[0], line.split(" ")[2]) for line in compiled}
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import compile_kernels as ck
    finally:
        sys.path.remove(str(SCRIPT.parent))
    want = {(k, ck.variant_name(v)) for k in ("latent", "first_layer") for v in ck.variants(k)}
    assert done == want, log[-6000:]
