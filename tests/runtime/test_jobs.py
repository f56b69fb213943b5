import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import ctrlgan
from ctrlgan.runtime.jobs import JobSpec, read_shard, run_job
from tests.test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def model(tiny_model):
    return str(tiny_model.artifact.path)


@pytest.fixture(scope="module")
def g(model):
    return ctrlgan.load(model, backend="torch")


def tree(directory):
    """Every file under ``directory``: relative path -> bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def small_job(model, out, *extra):
    return ["generate", model, "--classes", "7,2,5", "--per-class", "7", "--shard-size", "4",
            "--seed", "100", "--out", str(out), "--quiet", *extra]  # fmt: skip


@pytest.mark.parametrize("fmt, extra", [("npz", []), ("png", ["--truncation", "1.5"])])
def test_small_job_holds_the_samples_of_its_seeds(tmp_path, capsys, model, g, fmt, extra):
    out = tmp_path / "job"
    code, text, err = run(capsys, *small_job(model, out, "--format", fmt, *extra))
    assert code == 0, err
    assert "wrote 6 shard(s)" in text and "21 images" in text
    names = [f"shard_{k:05d}" + (".npz" if fmt == "npz" else "") for k in range(6)]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "job.json"])
    shards = [read_shard(out / name) for name in names]
    assert [len(s["labels"]) for s in shards] == [4, 4, 4, 4, 4, 1]
    labels = np.concatenate([s["labels"] for s in shards])
    seeds = np.concatenate([s["seeds"] for s in shards])
    images = np.concatenate([s["images"] for s in shards])
    # Seed rule: image i of the class at position p gets 100 + p * 7 + i.
    np.testing.assert_array_equal(labels, [7] * 7 + [2] * 7 + [5] * 7)
    np.testing.assert_array_equal(seeds, np.arange(100, 121))
    assert labels.dtype == np.int64 and seeds.dtype == np.uint64 and images.dtype == np.uint8
    tau = 1.5 if extra else None
    expected = g.sample(labels.tolist(), seeds.tolist(), truncation=tau, output="uint8")
    np.testing.assert_array_equal(images, expected)
    job = json.loads((out / "job.json").read_text())
    assert job["complete"] and sorted(job["shards"]) == names
    assert job["classes"] == [7, 2, 5] and job["per_class"] == 7 and job["seed"] == 100
    assert job["total_images"] == 21 and job["shard_size"] == 4 and job["truncation"] == tau
    weights = g.artifact.manifest.files["generator.safetensors"]
    assert job["model_files"]["generator.safetensors"] == weights
    assert job["ctrlgan_version"] == ctrlgan.__version__ and job["backend"] == "torch"
    if fmt == "npz":
        with zipfile.ZipFile(out / names[0]) as zf:  # no wall-clock timestamps in the bytes
            assert sorted(zf.namelist()) == ["images.npy", "labels.npy", "seeds.npy"]
            assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    else:
        files = sorted(p.name for p in (out / names[1]).iterdir())
        assert files == sorted(["labels.csv", "7_104.png", "7_105.png", "7_106.png", "2_107.png"])
        assert (out / names[1] / "labels.csv").read_text().splitlines()[:2] == [
            "file,label,seed",
            "7_104.png,7,104",
        ]


def test_python_api_takes_class_names(tmp_path, g):
    spec = JobSpec(classes=["3", 8], per_class=3, seed=5, shard_size=10, batch_size=2)
    result = run_job(g, spec, tmp_path / "job", progress=False)
    assert result.complete and result.written == ["shard_00000.npz"] and result.n_shards == 1
    shard = read_shard(tmp_path / "job" / "shard_00000.npz")
    np.testing.assert_array_equal(shard["labels"], [3, 3, 3, 8, 8, 8])
    np.testing.assert_array_equal(
        shard["images"], g.sample([3, 3, 3, 8, 8, 8], range(5, 11), output="uint8")
    )


def _kill_mid_job(argv, out):
    """Start the job in a subprocess, SIGKILL it once job.json lists a shard; the record."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctrlgan", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if json.loads((out / "job.json").read_text())["shards"]:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    return proc.returncode, json.loads((out / "job.json").read_text())


def test_sigkill_then_resume_is_byte_identical(tmp_path, capsys, model):
    # 300 shards; the kill comes as soon as job.json lists one (here: after 1 or 2).
    per_class, shard_size = 300, 10
    for attempt in range(4):  # 4x longer shards if the job finished before the kill
        out = tmp_path / f"killed{attempt}"
        argv = ["generate", model, "--classes", "0-9", "--per-class", str(per_class),
                "--shard-size", str(shard_size), "--out", str(out), "--quiet"]  # fmt: skip
        code, record = _kill_mid_job(argv, out)
        if code == -signal.SIGKILL and record["shards"] and not record["complete"]:
            break
        per_class, shard_size = 4 * per_class, 4 * shard_size
    else:
        pytest.fail("the job always finished before it could be killed")
    n_shards = record["n_shards"]
    assert 0 < len(record["shards"]) < n_shards  # killed mid-job, with work to keep
    code, text, err = run(capsys, *argv, "--batch-size", "7")  # resume; batching is free
    assert code == 0, err
    assert f"resumed after {len(record['shards'])} done" in text
    ref = tmp_path / "uninterrupted"
    code, _, err = run(capsys, *argv[:-3], "--out", str(ref), "--quiet")
    assert code == 0, err
    resumed, uninterrupted = tree(out), tree(ref)
    assert len(resumed) == n_shards + 1  # the shards and job.json; no temporary files
    assert sorted(resumed) == sorted(uninterrupted)
    for name, data in uninterrupted.items():
        assert resumed[name] == data, name


def test_rerun_of_a_finished_job_does_nothing_and_repairs_damage(tmp_path, capsys, model):
    out = tmp_path / "job"
    argv = small_job(model, out, "--format", "png")
    assert run(capsys, *argv)[0] == 0
    before = tree(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, text, err = run(capsys, *argv)
    assert code == 0, err
    assert "already complete" in text and "nothing to do" in text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
    # A damaged shard, a missing one and a stale temporary file: only those are redone.
    (out / "shard_00001" / "7_104.png").write_bytes(b"not a png")
    for p in (out / "shard_00003").iterdir():
        p.unlink()
    (out / "shard_00003").rmdir()
    (out / ".ctrlgan-tmp-x").write_bytes(b"left by a crash")
    code, text, err = run(capsys, *argv)
    assert code == 0, err
    assert "shard_00001, shard_00003" in text and "wrote 2 shard(s), resumed after 4 done" in text
    assert tree(out) == before


def test_other_arguments_on_a_job_directory_are_refused(tmp_path, capsys, model):
    out = tmp_path / "job"
    assert run(capsys, *small_job(model, out))[0] == 0
    before = tree(out)
    for extra, words in [
        (["--per-class", "8"], ["another job", "per_class: 7 there, 8 now"]),
        (["--format", "png"], ["another job", "format"]),
        (["--seed", "0"], ["another job", "seed"]),
        (["--truncation", "2"], ["another job", "truncation"]),
    ]:
        code, _, err = run(capsys, *small_job(model, out, *extra))
        assert_one_line_error(code, err, str(out), *words)
    code, _, err = run(capsys, *small_job(model, out, "--classes", "0-2"))
    assert_one_line_error(code, err, "another job", "classes")
    assert tree(out) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    code, _, err = run(capsys, *small_job(model, foreign))
    assert_one_line_error(code, err, "out", "not empty", "notes.txt")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_a_directory_in_use_is_refused(tmp_path, capsys, model):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "job"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        code, _, err = run(capsys, *small_job(model, out))
    finally:
        os.close(fd)
    assert_one_line_error(code, err, "out", "in use")
    assert not list(out.iterdir())


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--classes", "12"], ["class", "12"]),
        (["--classes", "3-1"], ["class"]),
        (["--classes", "seven"], ["class", "seven"]),
        (["--steer", "thickness=2"], ["steer", "thickness"]),
        (["--steer", "thickness"], ["steer"]),
        (["--per-class", "0"], ["per_class", "1.."]),
        (["--shard-size", "0"], ["shard_size", "1.."]),
        (["--batch-size", "0"], ["batch_size", ">= 1"]),
        (["--seed", "-1"], ["seed"]),
        (["--seed", str(2**64 - 20)], ["seed", "2**64"]),
        (["--truncation", "-1"], ["truncation"]),
        (["--format", "jpg"], ["--format", "jpg"]),
        (["--per-class", "x"], ["--per-class"]),
        (["--out", "{tmp}/a_file"], ["out", "a_file", "is a file"]),
        (["--out", "{tmp}/a_file/job"], ["out", "a_file/job"]),
        (["--backend", "cuda-magic"], ["backend"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, model, extra, words):
    (tmp_path / "a_file").write_text("")
    extra = [e.format(tmp=tmp_path) for e in extra]
    code, _, err = run(capsys, *small_job(model, tmp_path / "job"), *extra)
    assert_one_line_error(code, err, *[w.format(tmp=tmp_path) for w in words])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing written


def test_unknown_model_and_missing_arguments(tmp_path, capsys):
    code, _, err = run(capsys, "generate", "no-such-model", "--per-class", "1", "--out", "x")
    assert_one_line_error(code, err, "model", "no-such-model")
    code, _, err = run(capsys, "generate", "--out", str(tmp_path / "job"))
    assert_one_line_error(code, err, "--per-class")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_unwritable_out_is_refused(tmp_path, capsys, model):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for out in (locked, locked / "job"):
            code, _, err = run(capsys, *small_job(model, out))
            assert_one_line_error(code, err, "out", str(out))
    finally:
        locked.chmod(0o755)
    assert not list(locked.iterdir())


def test_a_job_that_cannot_fit_on_the_disk_is_refused_before_anything_is_written(
    g, tmp_path, monkeypatch
):
    from ctrlgan.runtime import jobs

    monkeypatch.setattr(jobs, "free_bytes", lambda path: 10_000)
    out = tmp_path / "job"
    spec = JobSpec(classes=[1, 2], per_class=100, shard_size=50)
    with pytest.raises(ctrlgan.errors.InvalidRequest, match="out: 200 images need"):
        run_job(g, spec, out, progress=False)
    assert not out.exists()
    monkeypatch.setattr(jobs, "free_bytes", lambda path: 10**9)
    run_job(g, JobSpec(classes=[1, 2], per_class=30, shard_size=50), out, progress=False)


def test_the_cli_lists_the_jobs_formats():
    from ctrlgan.cli import generate
    from ctrlgan.runtime import jobs

    assert generate.FORMATS == jobs.FORMATS


@pytest.mark.parametrize("kind", ["fifo", "link", "deep"])
def test_a_job_file_that_is_not_a_job_manifest_is_refused_at_once(g, tmp_path, kind):
    """job.json as a FIFO (would block), a link to /dev/zero (would fill memory) or JSON too
    deep for the parser: one InvalidRequest, nothing read past a bound, nothing written."""
    out = tmp_path / "job"
    out.mkdir()
    job = out / "job.json"
    if kind == "fifo":
        os.mkfifo(job)
    elif kind == "link":
        job.symlink_to("/dev/zero")
    else:
        job.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ctrlgan.errors.InvalidRequest, match="not a ctrlgan job manifest"):
        run_job(g, JobSpec(classes=[1], per_class=2), out, progress=False)
    assert [p.name for p in out.iterdir()] == ["job.json"]
