import json
import re
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


@pytest.mark.parametrize("command", ["generate", "serve", "sample", "train", "export"])
def test_help_states_each_default_once(capsys, command):
    code, text, _ = run(capsys, command, "--help")
    assert code == 0
    assert "(default: None)" not in text
    options = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    for option in options:
        assert option.count("default") <= 1, option


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
        (["sample", "{model}", "--scale", "100000", "-o", "{tmp}/x.png"], ["scale", "1..1024"]),
        (["sample", "{model}", "--scale", "1000", "-o", "{tmp}/x.png"], ["scale", "pixels"]),
        (["train", "--threads", "-1", "--out", "{tmp}/t"], ["threads"]),
        (["interpolate", "{model}", "--from", "5"], ["from", "SEED:CLASS"]),
        (["interpolate", "{model}", "--to", "x:3"], ["to"]),
        (["interpolate", "{model}", "--to", "3:eleven"], ["to", "eleven"]),
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


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", "--n", "99999999999999999999"], ["n", "batch limit"]),
        (["sample", "--seed", str(2**64 - 1), "--n", "2"], ["seed", "run past 2**64 - 1"]),
        (["sample", "--seed", str(2**64)], ["seed", "2**64"]),
        (["sample", "--truncation", "1e400"], ["truncation", "finite"]),
        (["sample", "--steer", "thickness=1e400"], ["steer.thickness", "finite"]),
        (["sample", "--steer", "thickness=5000"], ["steer.thickness", "1000"]),
        (["interpolate", "--from", "-5:3"], ["from", "-5"]),
        (["interpolate", "--to", f"{2**64}:3"], ["to", "2**64"]),
        (["traverse", "--seed", "-1"], ["seed"]),
        (["traverse", "--alphas", "-3,-1.5,1e400"], ["alphas", "finite"]),
        (["bench", "--batch-sizes", "-1,64"], ["batch sizes must be >= 1"]),
        (["bench", "--batch-sizes", "10000000"], ["batch_sizes", "65536"]),
        (["bench", "--rounds", "100000000"], ["rounds", "10..100000"]),
        (["directions", "--samples", "10000000000"], ["samples", "20..1000000"]),
        (["directions", "--method", "gradient", "--grad-steps", "0"], ["grad_steps"]),
        (["sample", "--backend", "cuda-magic"], ["backend", "torch, onnxruntime"]),
        (["train", "--threads", "100000", "--out", "{tmp}/t"], ["threads", "cores"]),
        (["train", "--resume", "--out", "{tmp}/t"], ["resume", "no checkpoint"]),
        (["train", "--z-dim", "5000", "--out", "{tmp}/t"], ["z_dim", "1..4096"]),
        (["train", "--g-channels", "100000", "--out", "{tmp}/t"], ["g_channels", "1..1024"]),
        (["train", "--data", "shapes", "--n-data", "10000000000", "--out", "{tmp}/t"], ["n_data"]),
        (["generate", "--per-class", "99999999999999", "--out", "{tmp}/j"], ["per_class", "1.."]),
        (
            ["generate", "--per-class", "10000000", "--shard-size", "1", "--out", "{tmp}/j"],
            ["shard_size", "shards"],
        ),
        (
            ["generate", "--per-class", "10", "--shard-size", "9999999", "--out", "{tmp}/j"],
            ["shard_size", "MiB"],
        ),
        (["generate", "--per-class", "200000000", "--out", "{tmp}/j"], ["per_class", "job limit"]),
    ],
)
def test_messages_name_the_right_field_and_nothing_is_written(tmp_path, capsys, argv, words):
    argv = [a.format(tmp=tmp_path) for a in argv]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *words)
    assert not list(tmp_path.iterdir())  # no run directory, no job directory, no image


def test_negative_numbers_are_values_not_options(tmp_path, capsys):
    out = tmp_path / "t.png"
    argv = ["traverse", "digits", "--alphas", "-2,-1,0", "--feature", "size", "-o", str(out)]
    argv += ["--scale", "1"]
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert Image.open(out).size == (3 * 18 + 2, 18 + 2)


def test_help_describes_the_tool_in_full(capsys):
    code, text, _ = run(capsys, "--help")
    assert code == 0
    description = " ".join(text.split("\n\n")[1].split())
    assert description.endswith("batch-generate images from it.")


def _ctrlgan(*argv, limit_bytes=None, **kwargs):
    """The CLI in a fresh process; with ``limit_bytes``, no file may grow past it (writes
    then fail with EFBIG, as they would with ENOSPC on a full disk)."""
    import resource
    import signal
    import subprocess
    import sys

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    cmd = [sys.executable, "-m", "ctrlgan.cli", *argv]
    return subprocess.run(
        cmd, text=True, timeout=300, preexec_fn=limit if limit_bytes else None, **kwargs
    )


def test_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "ctrlgan.cli", "info", "digits"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line (as `| head -0`)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert err == b""


def _file_too_large(proc, path) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "File too large" in lines[0] and str(path) in lines[0], lines[0]


@pytest.mark.parametrize("fmt", ["npz", "png"])
def test_a_full_disk_is_one_line_naming_the_path(tmp_path, tiny_model, fmt):
    """Every command that writes: one line naming the file or directory it could not write,
    exit 2, nothing half-written in place (temporaries removed, the artifact unchanged)."""
    import shutil

    capture = {"capture_output": True}
    png = tmp_path / "grid.png"
    proc = _ctrlgan("sample", "--class", "0-9", "--n", "16", "-o", str(png), limit_bytes=4096,
                    **capture)  # fmt: skip
    _file_too_large(proc, png)
    assert not list(tmp_path.iterdir())

    job = tmp_path / "job"
    argv = ["generate", "--classes", "0-9", "--per-class", "50", "--shard-size", "500"]
    proc = _ctrlgan(*argv, "--format", fmt, "--out", str(job), "--quiet", limit_bytes=4096,
                    **capture)  # fmt: skip
    _file_too_large(proc, job / "shard_00000" if fmt == "png" else job / "shard_00000.npz")
    assert sorted(p.name for p in job.iterdir()) == ["job.json"]  # resumable, nothing partial

    model = tmp_path / "model"
    shutil.copytree(tiny_model.artifact.path, model)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    proc = _ctrlgan("export", str(model), limit_bytes=200_000, **capture)
    _file_too_large(proc, model)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    run_dir = tmp_path / "run"
    argv = ["train", "--out", str(run_dir), "--steps", "2", "--batch-size", "8", "--z-dim", "6",
            "--g-channels", "8", "--d-channels", "8", "--eval-per-class", "0",
            "--feature-steps", "0", "--sample-every", "1000", "--quiet"]  # fmt: skip
    proc = _ctrlgan(*argv, limit_bytes=4096, **capture)
    _file_too_large(proc, run_dir)  # the last step's sample grid, then the checkpoint
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]


def test_training_shows_progress_for_every_phase(tmp_path):
    """Evaluation and the feature network report progress too (they are minutes at the
    defaults), each as its own tqdm bar on stderr."""
    argv = ["train", "--out", str(tmp_path / "r"), "--steps", "2", "--batch-size", "8",
            "--z-dim", "6", "--g-channels", "8", "--d-channels", "8", "--eval-per-class", "3",
            "--feature-steps", "30"]  # fmt: skip
    proc = _ctrlgan(*argv, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    for phase in ("train: 100%", "evaluate: 100%", "30/30", "feature network: 100%"):
        assert phase in proc.stderr, phase


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", "--class", "0-99999999999"], ["class", "more than"]),
        (["interpolate", "--from", "5:²"], ["from", "²"]),
        (["interpolate", "--from", "5:99"], ["from", "99"]),
        (["traverse", "--class", "99"], ["class", "99"]),
    ],
)
def test_messages_keep_the_option_the_user_typed(capsys, argv, words):
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *words)


def test_a_path_with_a_newline_is_still_one_line(tmp_path, capsys):
    odd = tmp_path / "new\nline"
    odd.mkdir()
    code, _, err = run(capsys, "info", str(odd))
    assert_one_line_error(code, err, "new\\nline", "not a ctrlgan model")
    (tmp_path / "a\nfile").write_text("")
    code, _, err = run(capsys, "generate", "--per-class", "1", "--out", str(tmp_path / "a\nfile"))
    assert_one_line_error(code, err, "out", "a\\nfile", "is a file")


def test_a_first_write_that_fails_leaves_no_job_directory(tmp_path):
    job = tmp_path / "g"
    proc = _ctrlgan("generate", "--per-class", "1", "--out", str(job), "--quiet",
                    limit_bytes=100, capture_output=True)  # fmt: skip
    _file_too_large(proc, job / "job.json")
    assert not job.exists()


def test_a_run_that_cannot_fit_in_memory_is_refused_before_it_starts(tmp_path):
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ctrlgan.cli", "train", "--g-channels", "512", "--image-size",
           "64", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "g_channels" in lines[0] and "GiB" in lines[0]
    assert not out.exists()
    cmd = [sys.executable, "-m", "ctrlgan.cli", "train", "--data", "shapes", "--n-data",
           "1000000", "--image-size", "64", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, timeout=120)
    assert proc.returncode == 2 and "n_data" in proc.stderr and not out.exists()
