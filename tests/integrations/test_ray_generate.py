"""`ctrlgan generate --ray` (ctrlgan/integrations/ray.py) on a local Ray of 2 CPUs
(tests/integrations/conftest.py): the same shards, job.json and checksums as the local
`generate`, byte for byte, with 1 and 2 actors; a killed actor and a killed driver; the
formats read by Ray Data; and the failures that must be one line (no Ray, bad addresses)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import psutil
import pytest

import ctrlgan
from ctrlgan.integrations import ray as ray_jobs
from ctrlgan.runtime import jobs, shards
from ctrlgan.runtime.jobs import JobSpec, describe, read_shard, run_job
from tests.runtime.conftest import steered_model
from tests.runtime.test_jobs import tree
from tests.test_cli import assert_one_line_error, run

# 6 shards of 4 (the last of 1), steered and truncated: the plan of every identity test.
SPEC = JobSpec(classes=[7, 2, 5], per_class=7, seed=100, steer={"up": 1.5}, truncation=1.8,
               shard_size=4)  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_model):
    """The tiny model with two directions, exported: "auto" picks onnxruntime here, whose
    actors start without importing torch (1-2 s less per actor on 2 busy cores)."""
    return str(steered_model(tmp_path_factory, tiny_model, seed=5))


@pytest.fixture(scope="module")
def g(model):
    g = ctrlgan.load(model)
    assert g.backend == "onnxruntime"
    return g


@pytest.fixture(scope="module")
def local(tmp_path_factory, g):
    """The local jobs every Ray run is compared with, per (format, spec)."""
    made = {}

    def make(spec: JobSpec):
        key = repr(spec)
        if key not in made:
            out = tmp_path_factory.mktemp("local") / "job"
            run_job(g, spec, out, progress=False)
            made[key] = tree(out)
        return made[key]

    return make


def with_(spec: JobSpec, **changes) -> JobSpec:
    return JobSpec(**{**spec.__dict__, **changes})


def actor_pids() -> set[int]:
    """The live processes of this job's Ray actors (their title names the UDF): only those of
    this test session's Ray, whose processes descend from this one (never another user's)."""
    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "_ShardMaker" in " ".join(p.cmdline()):
                pids.add(p.pid)
        except psutil.Error:
            pass
    return pids


def test_actor_pids_are_this_sessions_only():
    """A process titled like an actor that this session did not start (another user's Ray,
    e.g. a CI run of these tests beside this one) is never a candidate for SIGKILL."""
    orphan = "import subprocess as s, sys; print(s.Popen([sys.executable, '-c', 'import time; " \
        "time.sleep(60)', '_ShardMaker'], stdout=s.DEVNULL, stderr=s.DEVNULL).pid)"  # fmt: skip
    pid = int(subprocess.run([sys.executable, "-c", orphan], capture_output=True).stdout)
    try:  # its parent exited: it is nobody's child here, as a foreign Ray's actor would be
        assert "_ShardMaker" in " ".join(psutil.Process(pid).cmdline())
        assert pid not in actor_pids()
    finally:
        os.kill(pid, signal.SIGKILL)


def recorded(out) -> dict:
    try:
        return json.loads((out / "job.json").read_text())
    except (OSError, ValueError):
        return {"shards": {}, "complete": False}


# Failures first: they need no Ray session (none is started for them). ------------------------


def test_ray_missing_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch, model):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    out = tmp_path / "job"
    code, _, err = run(capsys, "generate", model, "--per-class", "2", "--out", str(out), "--ray")
    assert_one_line_error(code, err, "--ray", "pip install 'ctrlgan[ray]'")
    with pytest.raises(ctrlgan.errors.BackendUnavailable, match=r"ctrlgan\[ray\]"):
        ray_jobs.generate(model, SPEC, out, progress=False)
    assert not out.exists()


@pytest.mark.parametrize(
    "address, words",
    [
        ("127.0.0.1:1", ["ray", "no Ray cluster answers at 127.0.0.1:1", "ray start --head"]),
        ("no-port", ["ray", "'no-port' is not a Ray address", "host:port"]),
        ("host:99999", ["ray", "is not a Ray address"]),
        ("ray://127.0.0.1:1", ["ray", "no Ray cluster answers at ray://127.0.0.1:1"]),
        ("ray://nowhere", ["ray", "'ray://nowhere' is not a Ray address"]),
    ],
)
def test_a_bad_address_is_one_line_and_writes_nothing(
    tmp_path, capsys, monkeypatch, model, address, words
):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as a fresh driver would be
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init must not be reached"))
    out = tmp_path / "job"
    argv = ["generate", model, "--per-class", "2", "--out", str(out), "--ray", address]
    t0 = time.monotonic()
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, *words)
    assert time.monotonic() - t0 < ray_jobs.CONNECT_TIMEOUT_S + 5 and not out.exists()


def test_other_bad_arguments_are_one_line(tmp_path, capsys, model):
    out = str(tmp_path / "job")
    base = ["generate", model, "--per-class", "2", "--out", out]
    code, _, err = run(capsys, *base, "--actors", "2")
    assert_one_line_error(code, err, "--actors", "--ray")
    code, _, err = run(capsys, *base, "--ray", "--format", "hdf5")
    assert_one_line_error(code, err, "--format", "hdf5")
    code, _, err = run(capsys, *base, "--ray", "--actors", "x")
    assert_one_line_error(code, err, "--actors")
    code, _, err = run(capsys, *base, "--ray", "--steer", "nope=1")  # before Ray starts
    assert_one_line_error(code, err, "steer", "nope")
    code, _, err = run(capsys, *base, "--ray", "--shard-size", "0")
    assert_one_line_error(code, err, "shard_size")
    assert not os.path.exists(out)


def test_a_failed_job_stops_its_ray_before_removing_temporaries(tmp_path, monkeypatch, model):
    """A Ray this call started is shut down (its actors with it) before the job's exit removes
    the temporaries: an actor of a failed pipeline cannot leave one behind afterwards."""
    import ray

    calls = []
    monkeypatch.setattr(ray_jobs, "connect", lambda ray, address: True)  # "started" a Ray
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("ray.shutdown"))
    monkeypatch.setattr(ray_jobs, "_actor_pool", lambda *a: (1, {"num_cpus": 1}, 1))
    real = jobs._remove_temporaries
    monkeypatch.setattr(jobs, "_remove_temporaries",
                        lambda out: (calls.append("remove temporaries"), real(out)))  # fmt: skip

    def fail(*args):
        raise OSError(28, "No space left on device", "shard_00000.npz")

    monkeypatch.setattr(ray_jobs, "_run_pipeline", fail)
    with pytest.raises(OSError, match="No space"):
        ray_jobs.generate(model, SPEC, tmp_path / "job", progress=False)
    assert calls == ["remove temporaries", "ray.shutdown", "remove temporaries"]


def test_no_module_imports_ray_at_module_level():
    """Ray is an optional extra: no module of ctrlgan imports it when imported itself (only
    inside the functions that need it), so that everything else works without it and
    `generate --ray` can say which extra is missing. integrations/ray_serve.py, a Ray Serve
    application by nature, is the exception."""
    import ast
    from pathlib import Path

    def module_level(node):
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield child
                yield from module_level(child)

    def imported(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            return [node.module]
        return []

    package = Path(ctrlgan.__file__).parent
    checked = 0
    for path in package.rglob("*.py"):
        if path == package / "integrations" / "ray_serve.py":
            continue
        names = [n for node in module_level(ast.parse(path.read_text())) for n in imported(node)]
        assert not [n for n in names if n == "ray" or n.startswith("ray.")], path
        checked += 1
    assert checked > 20 and (package / "integrations" / "ray.py").exists()


class Cluster:
    """What _actor_pool reads of a Ray cluster: its resources and its nodes."""

    def __init__(self, cpus: list[int], gpus: int = 0):
        self.cpus, self.gpus = cpus, gpus

    def cluster_resources(self):
        return {"CPU": float(sum(self.cpus)), **({"GPU": float(self.gpus)} if self.gpus else {})}

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": float(c)}} for c in self.cpus]


def test_the_actor_pool_fits_the_cluster():
    pool = ray_jobs._actor_pool
    # CPU backends: one actor per node, the node's CPUs as threads; or N actors sharing them.
    assert pool(Cluster([8, 8]), "onnxruntime", None) == (2, {"num_cpus": 8}, 8)
    assert pool(Cluster([2]), "torch", 2) == (2, {"num_cpus": 1}, 1)
    assert pool(Cluster([8, 8]), "torch", 3) == (3, {"num_cpus": 4}, 4)  # 2 + 1 fit; 5 + 5 not
    assert pool(Cluster([8, 2]), "torch", 10) == (10, {"num_cpus": 1}, 1)
    # triton: one actor per GPU, or k actors to a GPU with 1/k of it and a core each.
    assert pool(Cluster([16, 16], gpus=8), "triton", None) == (8, {"num_gpus": 1, "num_cpus": 1}, 1)
    assert pool(Cluster([16], gpus=4), "triton", 8) == (8, {"num_gpus": 0.5, "num_cpus": 1}, 1)
    assert pool(Cluster([16], gpus=4), "triton", 9)[1]["num_gpus"] == pytest.approx(1 / 3)
    with pytest.raises(ctrlgan.errors.InvalidRequest, match="actors: 17 actors sharing 4 GPU"):
        pool(Cluster([16], gpus=4), "triton", 17)
    with pytest.raises(ctrlgan.errors.BackendUnavailable, match="triton needs GPUs"):
        pool(Cluster([16]), "triton", None)
    with pytest.raises(ctrlgan.errors.InvalidRequest, match="actors: 3 actors of a CPU each"):
        pool(Cluster([2]), "torch", 3)


def test_an_actor_with_other_png_or_parquet_libraries_than_the_driver_refuses(tmp_path, g,
                                                                              model):  # fmt: skip
    """A node whose Pillow, zlib or pyarrow differs from the driver's would write other bytes:
    its actor's first call raises, naming the versions, and writes nothing. (The actor class,
    run here in-process: the check needs no cluster.)"""
    plan = describe(g, with_(SPEC, format="parquet"))
    driver = {**shards.encoders("parquet"), "pyarrow": "0.0.1"}
    maker = ray_jobs._ShardMaker(model, "onnxruntime", g.max_batch, 1, plan, 4, str(tmp_path),
                                 driver)  # fmt: skip
    with pytest.raises(ray_jobs.ActorError, match=r"pyarrow 0\.0\.1 on the driver"):
        maker({"shard": np.array([0]), "start": np.array([0]), "stop": np.array([4])})
    assert list(tmp_path.iterdir()) == []
    same = ray_jobs._ShardMaker(model, "onnxruntime", g.max_batch, 1, plan, 4, str(tmp_path),
                                shards.encoders("parquet"))  # fmt: skip
    assert same({"shard": np.array([0]), "start": np.array([0]), "stop": np.array([4])})["name"]
    assert shards.encoders("npz") == {} and "pyarrow" not in shards.encoders("webdataset")


# On Ray -----------------------------------------------------------------------------------


def test_ray_listens_on_loopback_only(ray_local):
    """The tests' Ray (conftest.py): its GCS address and every socket its processes (GCS,
    raylet, workers) listen on are 127.0.0.1, never the machine's other addresses."""
    ray_local.get(ray_local.remote(lambda: 0).remote())  # a worker process too
    assert ray_local.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    listening = set()
    for child in psutil.Process().children(recursive=True):
        try:
            conns = child.connections(kind="inet")
        except psutil.Error:
            continue
        listening |= {(child.name(), c.laddr.ip) for c in conns if c.status == psutil.CONN_LISTEN}
    assert {name for name, _ in listening} >= {"gcs_server", "raylet"}, listening
    assert {ip for _, ip in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening


def test_actors_beyond_the_cluster_are_refused(ray_local, tmp_path, capsys, model):
    out = tmp_path / "job"
    argv = ["generate", model, "--per-class", "2", "--out", str(out), "--ray", "--actors"]
    for actors, words in (("3", ["actors", "3 actors", "has 2"]), ("0", ["actors", "1.."])):
        code, _, err = run(capsys, *argv, actors)
        assert_one_line_error(code, err, *words)
    if not ray_local.cluster_resources().get("GPU"):  # the triton backend's actors need GPUs
        code, _, err = run(capsys, *argv, "1", "--backend", "triton")
        assert_one_line_error(code, err, "triton needs GPUs", "the Ray cluster has none")
    assert not out.exists()


def test_a_model_that_differs_where_the_actors_load_it_is_one_error(ray_local, tmp_path, model):
    """The actors check the model they load against job.json: here its weights change after
    the driver loaded and described it. The actor's ArtifactError reaches the driver as one
    error naming the file, and no shard is made."""
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    g = ctrlgan.load(str(copy))
    weights = copy / "generator.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ray_jobs.ActorError, match=r"generator.safetensors: checksum mismatch"):
        ray_jobs.generate(g, SPEC, tmp_path / "job", actors=1, progress=False)
    assert recorded(tmp_path / "job")["shards"] == {}
    assert sorted(p.name for p in (tmp_path / "job").iterdir()) == ["job.json"]


def test_one_actor_makes_the_local_jobs_bytes(ray_local, tmp_path, model, local):
    spec = with_(SPEC, format="parquet")
    result = ray_jobs.generate(model, spec, tmp_path / "job", actors=1, progress=False)
    assert result.complete and result.images_written == 21 and len(result.written) == 6
    assert tree(tmp_path / "job") == local(spec)


def test_two_actors_from_the_cli_make_the_local_jobs_bytes(ray_local, tmp_path, capsys, model,
                                                           local, monkeypatch):  # fmt: skip
    out = tmp_path / "job"
    argv = ["generate", model, "--classes", "7,2,5", "--per-class", "7", "--seed", "100",
            "--steer", "up=1.5", "--truncation", "1.8", "--shard-size", "4", "--format",
            "webdataset", "--out", str(out), "--quiet", "--ray", "--actors", "2"]  # fmt: skip
    code, text, err = run(capsys, *argv)
    assert code == 0, err
    assert "wrote 6 shard(s)" in text and "21 images" in text
    assert tree(out) == local(with_(SPEC, format="webdataset"))
    # A complete job is verified without Ray: no session is started or joined for it.
    monkeypatch.setattr(ray_jobs, "connect", lambda *a: pytest.fail("Ray was not needed"))
    code, text, err = run(capsys, *argv)
    assert code == 0 and "already complete" in text, err


def test_a_killed_actor_is_retried_without_losing_or_duplicating_a_shard(
    ray_local, tmp_path, model, local
):
    """One actor, SIGKILLed once job.json lists a shard: Ray restarts it and retries its
    shard; the job ends complete and equal to the local one. batch_size=1 (the same bytes on
    the CPU) makes the job slow enough to be killed in the middle."""
    import threading

    for attempt in range(3):
        spec = with_(SPEC, classes=list(range(10)), per_class=1000 * 4**attempt, shard_size=50,
                     batch_size=1)  # fmt: skip
        out = tmp_path / f"job{attempt}"
        before = actor_pids()
        box = {}

        def job(spec=spec, out=out, box=box):
            box["r"] = ray_jobs.generate(model, spec, out, actors=1, progress=False)

        worker = threading.Thread(target=job)
        worker.start()
        deadline = time.monotonic() + 60
        while not recorded(out)["shards"] and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        killed = actor_pids() - before
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        at_kill = recorded(out)
        worker.join(120)
        assert not worker.is_alive()
        if len(killed) == 1 and not at_kill["complete"]:
            break
    else:
        pytest.fail("the job always finished before its actor could be killed")
    result = box["r"]
    assert result.complete and len(result.written) == result.n_shards == 200 * 4**attempt
    assert tree(out) == local(with_(spec, batch_size=1024))


def test_a_killed_driver_resumes_from_the_recorded_shards(ray_local, tmp_path, capsys, model,
                                                          local, monkeypatch):  # fmt: skip
    """A driver joins this Ray by its address, is SIGKILLed once job.json lists a shard; the
    same job continued (here from Python, with 2 actors) ends equal to the local one, having
    read each recorded shard once to verify it (a job may be terabytes)."""
    address = ray_local.get_runtime_context().gcs_address
    for attempt in range(3):
        out = tmp_path / f"job{attempt}"
        per_class = 1000 * 4**attempt
        argv = ["generate", model, "--classes", "0-9", "--per-class", str(per_class), "--seed",
                "100", "--steer", "up=1.5", "--truncation", "1.8", "--shard-size", "50",
                "--batch-size", "1", "--out", str(out), "--quiet", "--ray", address,
                "--actors", "1"]  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "ctrlgan", *argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while proc.poll() is None and time.monotonic() < deadline:
                if recorded(out)["shards"]:
                    break
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            _, err = proc.communicate()
        at_kill = recorded(out)
        assert at_kill["shards"], err.decode()[-2000:]
        if proc.returncode == -signal.SIGKILL and not at_kill["complete"]:
            break
    else:
        pytest.fail("the driver always finished before it could be killed")
    spec = with_(SPEC, classes=list(range(10)), per_class=per_class, shard_size=50)
    verified = Counter()

    def digest(path, fmt, real=jobs.shard_digest):
        verified[path.name] += 1
        return real(path, fmt)

    monkeypatch.setattr(jobs, "shard_digest", digest)
    result = ray_jobs.generate(model, spec, out, actors=2, progress=False)
    assert set(verified) == set(at_kill["shards"]) and set(verified.values()) == {1}, verified
    assert result.done_before == len(at_kill["shards"]) and result.complete
    assert result.done_before + len(result.written) == result.n_shards
    assert tree(out) == local(spec)


def test_an_actors_error_ends_the_job_as_one_line_and_keeps_what_was_recorded(
    ray_local, tmp_path, capsys, model, g
):
    """A shard an actor cannot write (here a directory holds its name, as a full disk would
    fail it): the CLI prints the actor's OSError, naming the shard, as one line; job.json
    keeps the shards made, and the job completes once the obstacle is gone."""
    out = tmp_path / "job"
    run_job(g, SPEC, out, progress=False)
    complete = tree(out)
    (out / "shard_00002.npz").unlink()
    (out / "shard_00002.npz").mkdir()
    (out / "shard_00002.npz" / "x").write_text("in the way")
    argv = ["generate", model, "--classes", "7,2,5", "--per-class", "7", "--seed", "100",
            "--steer", "up=1.5", "--truncation", "1.8", "--shard-size", "4", "--out", str(out),
            "--quiet", "--ray", "--actors", "1"]  # fmt: skip
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, "shard_00002.npz")
    assert len(recorded(out)["shards"]) == 5 and not recorded(out)["complete"]
    shutil.rmtree(out / "shard_00002.npz")
    assert run_job(g, SPEC, out, progress=False).written == ["shard_00002.npz"]  # locally, too
    assert tree(out) == complete


def test_shards_read_back_with_ray_data(ray_local, tmp_path, g):
    """The reading recipes of docs/generate-at-scale.md for Ray Data: parquet rows with the
    PNG bytes, webdataset samples decoded to arrays."""
    import ray.data

    spec = JobSpec(classes=[1, 6], per_class=5, seed=3, shard_size=4, steer={"left": 0.5})
    expected = g.sample([1] * 5 + [6] * 5, range(3, 13), steer={"left": 0.5}, output="uint8")
    for fmt in ("parquet", "webdataset"):
        run_job(g, with_(spec, format=fmt), tmp_path / fmt, progress=False)
    rows = ray.data.read_parquet(str(tmp_path / "parquet")).take_all()
    rows.sort(key=lambda r: r["seed"])
    assert [r["label"] for r in rows] == [1] * 5 + [6] * 5
    images = np.stack([read_png(r["png"]) for r in rows])
    np.testing.assert_array_equal(images, expected)
    samples = ray.data.read_webdataset(
        str(tmp_path / "webdataset"), file_extensions=["tar"]
    ).take_all()
    samples.sort(key=lambda s: s["json"]["seed"])
    assert [s["cls"] for s in samples] == [1] * 5 + [6] * 5
    images = np.stack([np.asarray(s["png"]).reshape(expected.shape[1:]) for s in samples])
    np.testing.assert_array_equal(images, expected)
    shard = read_shard(tmp_path / "webdataset" / "shard_00000.tar")  # and ctrlgan's own reader
    np.testing.assert_array_equal(shard["images"], expected[:4])


def read_png(data: bytes) -> np.ndarray:
    from ctrlgan.runtime.shards import decode_png

    return decode_png(data)
