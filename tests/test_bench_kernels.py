"""benchmarks/bench_kernels.py runs end to end (a smoke run: no timing goals are checked here)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_records_every_contender(bench, tmp_path, capsys):
    out = tmp_path / "kernels.json"
    argv = ["--batch-sizes", "1,3", "--z-dim", "12", "--hidden", "40", "--no-compile"]
    assert bench.main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"device", "versions", "date", "command", "copy_GB/s"} <= result.keys()
    names = {(r["B"], r["stage"], r["name"]) for r in result["rows"]}
    for B in (1, 3):
        for stage, name in [("prologue", "fused"), ("prologue", "eager seq"),
                            ("first layer", "fused"), ("first layer", "fused + mm")]:  # fmt: skip
            assert (B, stage, name) in names
    assert all(r["us"] > 0 and r["GB/s"] > 0 for r in result["rows"])
    assert "B = 3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, words",
    [(["--batch-sizes", "1,x"], "--batch-sizes"), (["--batch-sizes", "0"], ">= 1"),
     (["--z-dim", "0"], "--z-dim")],
)  # fmt: skip
def test_bad_arguments_exit_2(bench, argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2
    assert words in capsys.readouterr().err
