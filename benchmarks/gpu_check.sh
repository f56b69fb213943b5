#!/usr/bin/env bash
# The whole GPU check in one command, for a lent H100/H200 machine with nothing installed:
#
#     benchmarks/gpu_check.sh OUTDIR
#
# Runs ctrlgan from this source tree (PYTHONPATH, nothing pip-installed) with the machine's
# python3 (or $PYTHON), in parts, each under its own `timeout`, so that the whole stays under
# 8 minutes (the timeouts below add up to 470 s):
#
#   env           versions, the device, missing Python modules, which host noise serves
#                 (the C extension ctrlgan._philox or its torch fallback)   -> environment.json
#   pytest        pytest -m gpu (pytest-xdist workers where installed): the compiled kernels
#                 and the triton backend against their references       -> pytest-gpu.xml/.json
#   kernels       benchmarks/bench_kernels.py (fused prologue / first layer vs eager torch and
#                 torch.compile; B = 1 .. 256k)                            -> kernels.json
#   bench         ctrlgan bench --backends triton at B = 1, 8, 64, 512, 4096, 65536:
#                 Generator.sample on the triton backend, the backend on prepared rows with the
#                 images left on the GPU ("triton raw"), the eager torch module ("torch raw")
#                 and torch.compile(mode="reduce-overhead") of it; p50/p90/p99, images/s
#                                                                          -> runtime.json
#
# Everything printed also goes to OUTDIR/gpu_check.log; OUTDIR/summary.json and the last lines
# say which parts passed, failed, timed out or were skipped (a missing optional module, e.g.
# hypothesis: the test files that import it are left out, and the log says which).
#
# Without a usable CUDA device (no nvidia-smi, or torch.cuda.is_available() false) it says so
# in one line, then only checks that every part can start (pytest --collect-only -m gpu,
# bench_kernels.py --help, ctrlgan bench --help).
#
# Exit status: 0 every part passed; 1 a part failed or timed out (on either path);
# 2 usage: OUTDIR missing or not writable (one line on stderr); 3 no usable CUDA device, and
# every part's start-up check passed.
set -euo pipefail

usage="usage: benchmarks/gpu_check.sh OUTDIR"
if [[ $# -ne 1 || -z "${1:-}" ]]; then
    echo "gpu_check: missing OUTDIR ($usage)" >&2
    exit 2
fi
if ! mkdir -p -- "$1" 2>/dev/null || ! touch -- "$1/gpu_check.log" 2>/dev/null; then
    echo "gpu_check: cannot write to OUTDIR $1" >&2
    exit 2
fi
OUT=$(cd -- "$1" && pwd)
LOG="$OUT/gpu_check.log"
: >"$LOG"

REPO=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$REPO"

# Seconds per part (sum 470 s, under the 8-minute budget with start-up and kill grace); each
# can be lowered to fit a shorter lease, e.g. GPU_CHECK_T_BENCH=90.
T_ENV=${GPU_CHECK_T_ENV:-20}
T_PYTEST=${GPU_CHECK_T_PYTEST:-140}
T_KERNELS=${GPU_CHECK_T_KERNELS:-130}
T_BENCH=${GPU_CHECK_T_BENCH:-180}

declare -a NAMES=() STATES=() SECONDS_USED=()

log() {
    echo "$*" | tee -a "$LOG"
}

# run_part NAME SECONDS CMD...: runs CMD under timeout, output to the terminal and the log;
# records passed / failed (rc) / timed out. A failing part never stops the others.
run_part() {
    local name=$1 secs=$2 rc start state
    shift 2
    log ""
    log "=== $name (timeout ${secs}s): $*"
    start=$(date +%s)
    set +e
    timeout -k 5 "$secs" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    set -e
    case $rc in
        0) state="passed" ;;
        124 | 137) state="timed out" ;;
        *) state="failed (exit $rc)" ;;
    esac
    NAMES+=("$name")
    STATES+=("$state")
    SECONDS_USED+=("$(($(date +%s) - start))")
    log "=== $name: $state"
}

skip_part() {
    log ""
    log "=== $1: skipped ($2)"
    NAMES+=("$1")
    STATES+=("skipped: $2")
    SECONDS_USED+=(0)
}

# require_contenders JSON: after a `ctrlgan bench` part that passed, fail it unless its JSON
# holds the triton backend, the eager module and torch.compile(mode="reduce-overhead") at every
# batch size (ctrlgan bench skips a contender that cannot run with only a note).
require_contenders() {
    local last=$((${#STATES[@]} - 1)) problem
    [[ ${STATES[$last]} == passed ]] || return 0
    if ! problem=$("$PY" - "$1" 2>&1 <<'EOF'
import json, sys

data = json.load(open(sys.argv[1]))
want = ("triton", "torch raw", "torch.compile (reduce-overhead)")
have = {(r["contender"], r["batch"]) for r in data["results"]}
sizes = sorted({b for _, b in have})
gone = [f"{c} at B={b}" for b in sizes for c in want if (c, b) not in have]
if not sizes or gone:
    print("missing from the results: " + (", ".join(gone) or "everything"),
          "; notes: " + "; ".join(data.get("notes", [])))
    sys.exit(1)
EOF
    ); then
        STATES[last]="failed (contenders)"
        log "=== ${NAMES[$last]}: failed after all: ${problem//$'\n'/ }"
    fi
}

has_module() {
    "$PY" -c "import $1" >/dev/null 2>&1
}

# The gpu tests: only the files that hold them are given to pytest (collecting the others would
# import what they need, e.g. the server's test clients, which this machine may lack): those
# with a `mark.gpu`, and the kernel tests, whose CUDA case gets its mark from
# tests/kernels/inputs.device_params(). A file
# that imports at module level (it or a conftest.py above it) a module not installed here, e.g.
# hypothesis, is left out, and the log says so.
gpu_tests_plan() {
    grep -rlE 'mark\.gpu|device_params\(' tests --include='test_*.py' | sort | "$PY" -c '
import ast, importlib.util, sys
from pathlib import Path

def missing(path):
    for node in ast.parse(Path(path).read_text()).body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if importlib.util.find_spec(name.split(".")[0]) is None:
                return name.split(".")[0]
    return None

for line in sys.stdin:
    f = Path(line.strip())
    chain = [d / "conftest.py" for d in reversed(f.parents) if (d / "conftest.py").is_file()]
    gone = next((m for m in map(missing, [*chain, f]) if m), None)
    print(f"skip {f} {gone}" if gone else f"run {f}")
'
}

cuda_reason=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
    cuda_reason="nvidia-smi not found"
elif ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
    >/dev/null 2>&1; then
    cuda_reason="torch.cuda.is_available() is false"
fi

log "gpu_check: $(date -u +%FT%TZ) repo $REPO ($(git rev-parse --short HEAD 2>/dev/null ||
    echo 'not a git checkout')), python $("$PY" -V 2>&1), OUTDIR $OUT"

pytest_args=(-m gpu -q -p no:cacheprovider --durations=10)
# Every kernel variant's first launch compiles each kept autotune config (seconds each, on one
# CPU core): with pytest-xdist the test files' compiles run side by side on the machine's cores.
if [[ -n "$(command -v nproc)" ]] && "$PY" -c "import xdist" >/dev/null 2>&1; then
    workers=$(($(nproc) / 2))
    ((workers > 8)) && workers=8
    ((workers >= 2)) && pytest_args+=(-n "$workers")
fi
# torch's CPU work in the tests (training the tiny model, export, onnxruntime) takes every core
# in every worker by default (8 workers x 16 threads on 16 cores; the fixtures took 160-180 s
# per worker on an H200 machine so): each worker gets its share of the cores.
test_threads=$(($(nproc 2>/dev/null || echo 2) / ${workers:-1}))
((test_threads < 1)) && test_threads=1
n_gpu_files=0
while read -r verdict file module; do
    if [[ $verdict == run ]]; then
        pytest_args+=("$file")
        n_gpu_files=$((n_gpu_files + 1))
    else
        log "gpu_check: $module is not installed: leaving out $file (its gpu tests do not run)"
    fi
done < <(gpu_tests_plan)

if [[ -n "$cuda_reason" ]]; then
    log "gpu_check: no usable CUDA device ($cuda_reason); checking only that every part can start"
    if ! has_module pytest; then
        skip_part "pytest (start-up)" "pytest is not installed"
    elif [[ $n_gpu_files -eq 0 ]]; then
        skip_part "pytest (start-up)" "no test file with gpu tests can be imported here"
    else
        run_part "pytest (start-up)" 60 "$PY" -m pytest --collect-only "${pytest_args[@]}"
    fi
    run_part "kernels (start-up)" 60 "$PY" benchmarks/bench_kernels.py --help
    run_part "bench (start-up)" 60 "$PY" -m ctrlgan bench --help
else
    nvidia-smi 2>&1 | tee -a "$LOG" || true
    run_part "env" "$T_ENV" "$PY" - "$OUT/environment.json" <<'EOF'
import importlib, json, platform, sys

out = {"python": sys.version.split()[0], "platform": platform.platform(), "missing": []}
for name in ("torch", "triton", "numpy", "safetensors", "onnx", "onnxruntime", "tqdm", "PIL",
             "sklearn", "pytest", "hypothesis", "pytest_benchmark", "matplotlib"):
    try:
        out[name] = getattr(importlib.import_module(name), "__version__", "?")
    except ImportError:
        out["missing"].append(name)
import numpy as np
import torch

from ctrlgan.runtime import philox

out["device"] = torch.cuda.get_device_name(0)
out["cuda"] = torch.version.cuda
out["host_noise"] = philox.IMPLEMENTATION  # "c" or "torch" (the fallback)
seeds = np.arange(3, dtype=np.uint64)
# the C loop agrees with the torch reference within 1e-6 (floats), the fallback is the reference
diff = np.abs(philox.normal(seeds, 64) - philox.reference_normal(seeds, 64)).max()
out["host_noise_max_diff_to_reference"] = float(diff)
same = diff <= 1e-6
print(json.dumps(out, indent=1))
print(f"missing modules: {', '.join(out['missing']) or 'none'}; host noise: "
      f"{out['host_noise']} ({'C extension' if out['host_noise'] == 'c' else 'torch fallback'})")
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
sys.exit(0 if same else 1)
EOF
    if ! has_module pytest; then
        skip_part "pytest" "pytest is not installed"
    elif [[ $n_gpu_files -eq 0 ]]; then
        skip_part "pytest" "no test file with gpu tests can be imported here"
    else
        run_part "pytest" "$T_PYTEST" env OMP_NUM_THREADS="$test_threads" \
            "$PY" -m pytest "${pytest_args[@]}" \
            --junitxml="$OUT/pytest-gpu.xml"
        "$PY" - "$OUT/pytest-gpu.xml" "$OUT/pytest-gpu.json" <<'EOF' 2>>"$LOG" || true
import json, sys, xml.etree.ElementTree as ET

suite = ET.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
keys = ("tests", "failures", "errors", "skipped", "time")
json.dump({k: suite.get(k) for k in keys}, open(sys.argv[2], "w"), indent=1)
EOF
    fi
    run_part "kernels" "$T_KERNELS" "$PY" benchmarks/bench_kernels.py --seq-max 1024 \
        --out "$OUT/kernels.json"
    run_part "bench" "$T_BENCH" "$PY" -m ctrlgan bench digits --backends triton \
        --batch-sizes 1,8,64,512,4096,65536 --rounds 50 --warmup 5 --quiet \
        --json "$OUT/runtime.json"
    require_contenders "$OUT/runtime.json"
fi

# Summary: the log's last lines and summary.json.
failed=0
log ""
log "=== summary"
{
    printf '{\n "cuda": %s,\n "reason": "%s",\n "parts": [\n' \
        "$([[ -z "$cuda_reason" ]] && echo true || echo false)" "$cuda_reason"
    for i in "${!NAMES[@]}"; do
        sep=","
        [[ $i -eq $((${#NAMES[@]} - 1)) ]] && sep=""
        printf '  {"part": "%s", "state": "%s", "seconds": %s}%s\n' \
            "${NAMES[$i]}" "${STATES[$i]}" "${SECONDS_USED[$i]}" "$sep"
    done
    printf ' ]\n}\n'
} >"$OUT/summary.json"
for i in "${!NAMES[@]}"; do
    log "$(printf '%-20s %-24s %4ss' "${NAMES[$i]}" "${STATES[$i]}" "${SECONDS_USED[$i]}")"
    case ${STATES[$i]} in passed | skipped*) ;; *) failed=1 ;; esac
done
if [[ $failed -ne 0 ]]; then
    log "gpu_check: FAILED (a part failed or timed out; see $LOG)"
    exit 1
fi
if [[ -n "$cuda_reason" ]]; then
    log "gpu_check: no usable CUDA device ($cuda_reason): every part can start; nothing was timed"
    exit 3
fi
log "gpu_check: all parts passed; results in $OUT"
exit 0
