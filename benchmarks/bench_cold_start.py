"""Cold start: how long a fresh process takes to answer, against `import onnxruntime` as floor.

    python benchmarks/bench_cold_start.py                  # 15 rounds, records the JSON
    python benchmarks/bench_cold_start.py --rounds 5 --no-save

Every contender is a new Python process (``subprocess.run``, wall time from spawn to exit),
interleaved round by round after --warmup untimed rounds, so that the page cache is warm for
all of them alike; the figures are medians over rounds, and each ratio is to the floor:

  floor              python -c "import onnxruntime": what any onnxruntime-based sampler pays
  help               ctrlgan --help
  first image (ort)  import ctrlgan, load the bundled model on onnxruntime, sample one image
  first image (auto) the same with backend "auto" (onnxruntime on a machine without CUDA)
  cli sample (ort)   ctrlgan sample --class 3 --n 1 --backend onnxruntime -o FILE
  import torch       python -c "import torch": what the onnxruntime path no longer pays
  first image (torch) the same on the torch backend, for contrast

With --baseline DIR, the ctrlgan commands run again on an earlier checkout (e.g. the commit
before torch left the import path), in the same rounds.

The issue's target: time to first image on onnxruntime <= 2x the floor.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE = "import ctrlgan; ctrlgan.load('digits'{}).sample(classes=3, seeds=[0])"


def contenders(tmp: Path, baseline: str | None = None) -> dict[str, list[str]]:
    py = sys.executable
    cli = Path(py).with_name("ctrlgan")
    ctrlgan = [str(cli)] if cli.exists() else [py, "-m", "ctrlgan"]
    png = str(tmp / "one.png")
    out = {
        "floor: import onnxruntime": [py, "-c", "import onnxruntime"],
        "ctrlgan --help": [*ctrlgan, "--help"],
        "first image (onnxruntime)": [py, "-c", SAMPLE.format(", backend='onnxruntime'")],
        "first image (auto)": [py, "-c", SAMPLE.format("")],
        "ctrlgan sample (onnxruntime)": [
            *ctrlgan,
            "sample",
            "--class",
            "3",
            "--n",
            "1",
            "--backend",
            "onnxruntime",
            "-o",
            png,
        ],
        "import torch": [py, "-c", "import torch"],
        "first image (torch)": [py, "-c", SAMPLE.format(", backend='torch'")],
    }
    if baseline:  # the same commands on another checkout of ctrlgan, first on sys.path
        first = f"import sys; sys.path.insert(0, {baseline!r}); "
        cli = "from ctrlgan.cli import main; main({})"
        out |= {
            "baseline: ctrlgan --help": [py, "-c", first + cli.format("['--help']")],
            "baseline: first image (onnxruntime)": [
                py,
                "-c",
                first + SAMPLE.format(", backend='onnxruntime'"),
            ],
            "baseline: ctrlgan sample (onnxruntime)": [
                py,
                "-c",
                first
                + cli.format(
                    f"['sample', '--class', '3', '--n', '1', '--backend', 'onnxruntime', "
                    f"'-o', {png!r}]"
                ),
            ],
        }
    return out


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15, help="timed rounds (%(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (%(default)s)")
    p.add_argument("--no-save", action="store_true", help="print only, write no JSON")
    p.add_argument("--out", type=Path, help="JSON path (default: results/cold-start-cpu-<date>)")
    p.add_argument(
        "--baseline",
        metavar="DIR",
        help="also time the ctrlgan commands on the checkout in DIR (e.g. a git worktree of "
        "an earlier commit, its C extension copied in), side by side",
    )
    args = p.parse_args(argv)
    if args.rounds < 3 or args.warmup < 0:
        p.error("--rounds >= 3 and --warmup >= 0")
    with tempfile.TemporaryDirectory() as tmp:
        cmds = contenders(Path(tmp), args.baseline)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        for r in range(args.warmup + args.rounds):
            for name, cmd in cmds.items():
                t = timed(cmd)
                if r >= args.warmup:
                    times[name].append(t)
            print(f"round {r + 1}/{args.warmup + args.rounds}", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    floor = statistics.median(times["floor: import onnxruntime"])
    rows = []
    print(f"{'contender':<40}{'median s':>10}{'min s':>8}{'x floor':>9}")
    for name, ts in times.items():
        median = statistics.median(ts)
        rows.append(
            {
                "contender": name,
                "median_s": median,
                "min_s": min(ts),
                "ratio": median / floor,
                "times_s": ts,
                "command": " ".join(cmds[name]),
            }
        )
        print(f"{name:<40}{median:>10.3f}{min(ts):>8.3f}{median / floor:>8.2f}x")
    if args.no_save:
        return 0
    import numpy
    import onnxruntime
    import torch

    from ctrlgan import __version__
    from ctrlgan.runtime.bench import save_json

    today = datetime.date.today().isoformat()
    out = args.out or RESULTS / f"cold-start-cpu-{today}.json"
    save_json(
        out,
        {
            "device": f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "versions": {
                "python": platform.python_version(),
                "ctrlgan": __version__,
                "onnxruntime": onnxruntime.__version__,
                "torch": torch.__version__,
                "numpy": numpy.__version__,
            },
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", "benchmarks/bench_cold_start.py", *sys.argv[1:]]),
            "baseline": args.baseline and _describe(args.baseline),
            "rounds": args.rounds,
            "warmup": args.warmup,
            "results": rows,
        },
    )
    print(f"wrote {out}")
    return 0


def _describe(path: str) -> str:
    """The commit of a baseline checkout, for the record."""
    try:
        head = subprocess.run(["git", "-C", path, "log", "-1", "--format=%h %s"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return path
    return f"{path} at {head.stdout.strip()}"


if __name__ == "__main__":
    sys.exit(main())
