import json
from dataclasses import fields

import numpy as np
import pytest
from PIL import Image

import ctrlgan
from ctrlgan.artifact import GENERATOR_WEIGHTS
from ctrlgan.cli import build_parser, main
from ctrlgan.images import make_grid
from ctrlgan.training.train import TrainConfig


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors and --help
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0]


def test_train_sample_info_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code, text, err = run(
        capsys,
        "train",
        "--out",
        str(out),
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--g-channels",
        "8",
        "--d-channels",
        "8",
        "--z-dim",
        "6",
        "--eval-per-class",
        "4",
        "--feature-steps",
        "20",
        "--quiet",
    )
    assert code == 0, err
    assert "model written to" in text and "conditional_accuracy" in text
    model = str(out / "model")
    code, text, err = run(capsys, "info", model)
    assert code == 0, err
    assert "0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in text and "verified" in text
    assert "ctrlgan train --out" in text  # the exact command is the provenance
    code, text, _ = run(capsys, "info", model, "--json")
    assert json.loads(text)["provenance"]["steps"] == 3
    png = tmp_path / "grid.png"
    code, text, err = run(
        capsys,
        "sample",
        model,
        "--class",
        "2-4",
        "--n",
        "5",
        "--seed",
        "7",
        "--scale",
        "1",
        "-o",
        str(png),
    )
    assert code == 0, err
    assert str(png) in text
    assert Image.open(png).size == (5 * 18 + 2, 3 * 18 + 2)  # 5 seeds wide, 3 classes tall


def test_train_help_documents_every_option(capsys):
    code, text, _ = run(capsys, "train", "--help")
    assert code == 0
    for f in fields(TrainConfig):
        if f.name != "command":
            assert "--" + f.name.replace("_", "-") in text, f.name
    assert "--threads" in text and "--quiet" in text


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", "no-such-model"], ["model", "no-such-model"]),
        (["sample", "{model}", "--class", "12"], ["class", "12"]),
        (["sample", "{model}", "--class", "3-1"], ["class"]),
        (["sample", "{model}", "--class", "seven"], ["class"]),
        (["sample", "{model}", "--n", "0"], ["n"]),
        (["sample", "{model}", "-o", "{tmp}/x.jpg"], ["output", ".png"]),
        (["sample", "{model}", "-o", "{tmp}/no/dir/x.png"], ["output"]),
        (["sample", "{model}", "--steer", "thickness=2"], ["steer", "thickness"]),
        (["sample", "{model}", "--steer", "thickness"], ["steer"]),
        (["sample", "{model}", "--truncation", "-1"], ["truncation"]),
        (["sample", "{model}", "--seed", "-3"], ["seed"]),
        (["sample", "{model}", "--n", "x"], ["--n"]),
        (["sample", "{model}", "--n", "100000000", "--class", "0-9"], ["n", "batch limit"]),
        (["sample", "{model}", "--scale", "100000", "-o", "{tmp}/x.png"], ["scale", "pixels"]),
        (["train", "--threads", "-1", "--out", "{tmp}/t"], ["threads"]),
        (["interpolate", "{model}", "--from", "5"], ["from", "SEED:CLASS"]),
        (["interpolate", "{model}", "--to", "x:3"], ["to"]),
        (["interpolate", "{model}", "--to", "3:eleven"], ["end", "eleven"]),
        (["interpolate", "{model}", "--steps", "1"], ["steps"]),
        (["interpolate", "{model}", "--method", "cubic"], ["method"]),
        (["interpolate", "{model}", "--vary", "z"], ["vary", "both, noise, class"]),
        (["interpolate", "{model}", "--grid", "--method", "lerp"], ["grid", "--method"]),
        (["interpolate", "{model}", "--grid", "--vary", "noise"], ["grid", "--vary"]),
        (["interpolate", "{model}", "--grid", "--steps", "1"], ["steps"]),
        (["interpolate", "{model}", "-o", "{tmp}/x.jpg"], ["output"]),
        (["train", "--loss", "hinge"], ["--loss"]),
        (["train", "--data", "shapes", "--correlate", "scale:pos_y"], ["correlate"]),
        (
            ["train", "--data", "shapes", "--correlate", "scale:size:0.5", "--out", "{tmp}/t"],
            ["correlate", "size"],
        ),
        (["train", "--correlate", "scale:pos_y:0.5", "--out", "{tmp}/t"], ["correlate"]),
        (["train", "--steps", "0", "--out", "{tmp}/t"], ["steps"]),
        (["train", "--data", "{tmp}/nothing", "--out", "{tmp}/t"], ["nothing"]),
        (["info", "{tmp}"], ["not a ctrlgan model"]),
        (["frobnicate"], ["frobnicate"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, tiny_model, argv, words):
    fill = {"model": str(tiny_model.artifact.path), "tmp": str(tmp_path)}
    argv = [a.format(**fill) for a in argv]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *[w.format(**fill) for w in words])
    assert not list(tmp_path.glob("**/*.png"))  # nothing half-written


def test_interpolate_writes_a_strip(tmp_path, capsys, tiny_model):
    from PIL import Image

    out = tmp_path / "strip.png"
    argv = ["interpolate", str(tiny_model.artifact.path), "--from", "1:2", "--to", "3:4"]
    code, stdout, _ = run(capsys, *argv, "--steps", "5", "--scale", "2", "-o", str(out))
    assert code == 0 and "5 steps" in stdout
    assert Image.open(out).size == (2 * (5 * (16 + 2) + 2), 2 * (16 + 2 + 2))


@pytest.mark.parametrize("vary", ["noise", "class"])
def test_interpolate_vary_writes_that_strip(tmp_path, capsys, vary):
    out = tmp_path / "strip.png"
    argv = ["interpolate", "digits", "--backend", "onnxruntime", "--vary", vary, "--steps", "3"]
    code, stdout, err = run(capsys, *argv, "--scale", "1", "-o", str(out))
    assert code == 0, err
    assert "3 steps" in stdout and str(out) in stdout
    g = ctrlgan.load("digits", backend="onnxruntime")
    want = make_grid(g.interpolate((5, 3), (9, 7), steps=3, vary=vary), nrow=3)
    assert np.array_equal(np.asarray(Image.open(out)), want)


@pytest.mark.parametrize("steps", [3, 8])
def test_interpolate_grid_is_one_row_per_mode(tmp_path, capsys, steps):
    out = tmp_path / "grid.png"
    argv = ["interpolate", "digits", "--backend", "onnxruntime", "--grid"]
    argv += ["--from", "5:3", "--to", "9:7", "--steps", str(steps), "--scale", "2"]
    code, stdout, err = run(capsys, *argv, "-o", str(out))
    assert code == 0, err
    image = np.asarray(Image.open(out))
    assert image.shape == (2 * (4 * (16 + 2) + 2), 2 * (steps * (16 + 2) + 2))  # 4 rows x steps
    # rows in order: lerp z, slerp z (class 3 fixed), class mix (seed 5 fixed), slerp z + mix
    g = ctrlgan.load("digits", backend="onnxruntime")
    modes = [("lerp", "noise"), ("slerp", "noise"), ("slerp", "class"), ("slerp", "both")]
    rows = [g.interpolate((5, 3), (9, 7), steps, method=m, vary=v) for m, v in modes]
    assert np.array_equal(image[::2, ::2], make_grid(np.concatenate(rows), nrow=steps))
    assert f"4 rows x {steps} steps" in stdout and str(out) in stdout
    labels = ["lerp z (class fixed)", "slerp z (class fixed)", "class mix (z fixed)"]
    positions = [stdout.index(label) for label in [*labels, "slerp z + class mix"]]
    assert positions == sorted(positions)


def test_output_that_is_a_directory_is_refused(tmp_path, capsys, tiny_model):
    (tmp_path / "grid.png").mkdir()
    code, _, err = run(
        capsys, "sample", str(tiny_model.artifact.path), "-o", f"{tmp_path}/grid.png"
    )
    assert_one_line_error(code, err, "output", "grid.png", "directory")
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temporary file left


def test_tampered_model_is_refused(tmp_path, capsys, tiny_model):
    import shutil

    model = tmp_path / "m"
    shutil.copytree(tiny_model.artifact.path, model)
    with open(model / GENERATOR_WEIGHTS, "ab") as f:
        f.write(b"\0")
    for argv in (["info", str(model)], ["sample", str(model), "-o", str(tmp_path / "x.png")]):
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, "generator.safetensors", "checksum")
    assert not (tmp_path / "x.png").exists()


def test_parser_has_the_commands():
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert {"train", "sample", "info"} <= set(choices)
