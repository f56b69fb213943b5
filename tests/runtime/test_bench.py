"""`ctrlgan bench` end to end on a small exported model (a smoke run: no speed goals here)."""

import json
import shutil

import pytest

from ctrlgan.cli import main
from ctrlgan.export import onnx as export
from tests.test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("bench") / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    export.export(path)
    return path


def test_bench_table_json_and_plot(model, tmp_path, capsys):
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    argv = ["bench", str(model), "--batch-sizes", "1,3", "--rounds", "10", "--warmup", "1"]
    argv += ["--no-compile", "--quiet", "--json", str(out_json), "--plot", str(out_png)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ("torch", "onnxruntime", "onnxruntime raw", "torch raw"):
        assert sum(line.split("  ")[0] == name for line in lines) == 2  # batch 1 and 3
    data = json.loads(out_json.read_text())
    assert {"device", "versions", "date", "command", "results"} <= data.keys()
    rows = {(r["contender"], r["batch"]) for r in data["results"]}
    assert ("onnxruntime", 3) in rows and ("torch raw", 1) in rows
    for r in data["results"]:
        assert 0 < r["p50_us"] <= r["p90_us"] <= r["p99_us"]
        assert r["calls"] == 10 * 5 and r["images_per_s"] > 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unusable_backend_is_skipped_with_a_note(tiny_model, capsys):
    argv = ["bench", str(tiny_model.artifact.path), "--backends", "torch,onnxruntime"]
    argv += ["--batch-sizes", "1", "--rounds", "10", "--warmup", "1", "--no-compile", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "note: onnxruntime: skipped" in out and "ctrlgan export" in out


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--backends", "tensorflow"], ["backends", "tensorflow"]),
        (["--batch-sizes", "0"], ["--batch-sizes"]),
        (["--rounds", "3"], ["rounds"]),
        (["--warmup", "0"], ["warmup"]),
        (["--json", "{tmp}/x.txt"], ["json"]),
        (["--plot", "{tmp}/no/such/x.png"], ["plot"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(model, tmp_path, capsys, extra, words):
    argv = ["bench", str(model), "--quiet", *[a.format(tmp=tmp_path) for a in extra]]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *words)
