"""The parquet and webdataset shard formats of `ctrlgan generate` (runtime/shards.py), read
back the ways docs/generate-at-scale.md shows: pandas, pyarrow and a PyTorch DataLoader."""

import io
import json
import sys
import tarfile

import numpy as np
import pytest

import ctrlgan
from ctrlgan.runtime import shards
from ctrlgan.runtime.jobs import JobSpec, read_shard, run_job
from tests.runtime.test_jobs import small_job, tree
from tests.test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def g(model):
    return ctrlgan.load(model, backend="torch")


def job_arrays(out, fmt, n_shards=6):
    parts = [read_shard(out / shards.shard_name(k, fmt)) for k in range(n_shards)]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_a_job_in_each_format_holds_the_samples_of_its_seeds(tmp_path, capsys, model, g, fmt):
    out = tmp_path / "job"
    argv = small_job(str(model), out, "--format", fmt, "--steer", "up=1.5", "--truncation", "2",
                   "--backend", "torch")  # fmt: skip
    code, text, err = run(capsys, *argv)
    assert code == 0, err
    assert "wrote 6 shard(s)" in text
    suffix = {"parquet": ".parquet", "webdataset": ".tar"}[fmt]
    names = [f"shard_{k:05d}{suffix}" for k in range(6)]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "job.json"])
    got = job_arrays(out, fmt)
    labels = [7] * 7 + [2] * 7 + [5] * 7
    np.testing.assert_array_equal(got["labels"], labels)
    np.testing.assert_array_equal(got["seeds"], np.arange(100, 121))
    expected = g.sample(labels, range(100, 121), steer={"up": 1.5}, truncation=2.0, output="uint8")
    np.testing.assert_array_equal(got["images"], expected)
    job = json.loads((out / "job.json").read_text())
    assert job["format"] == fmt and job["complete"] and sorted(job["shards"]) == names
    for name in names:  # the recorded digest is the file's sha256
        assert job["shards"][name] == shards.shard_digest(out / name, fmt)
    # Resuming after a lost shard rewrites it to the same bytes: the writers are deterministic.
    before = tree(out)
    (out / names[2]).unlink()
    code, text, err = run(capsys, *argv)
    assert code == 0 and "wrote 1 shard(s), resumed after 5 done" in text, err
    assert tree(out) == before


def test_parquet_rows_read_with_pandas_and_pyarrow(tmp_path, g):
    import pandas as pd
    import pyarrow.parquet as pq

    spec = JobSpec(classes=[3, 1], per_class=3, seed=9, steer={"left": -1.0}, format="parquet")
    run_job(g, spec, tmp_path, progress=False)
    path = tmp_path / "shard_00000.parquet"
    df = pd.read_parquet(path)
    assert list(df.columns) == list(shards.PARQUET_COLUMNS)
    assert df["label"].tolist() == [3, 3, 3, 1, 1, 1]
    assert df["class_name"].tolist() == ["3"] * 3 + ["1"] * 3
    assert df["seed"].tolist() == list(range(9, 15)) and str(df["seed"].dtype) == "uint64"
    assert {json.loads(s)["left"] for s in df["steer"]} == {-1.0}
    assert df["truncation"].isna().all()
    images = np.stack([shards.decode_png(b) for b in df["png"]])
    expected = g.sample([3, 3, 3, 1, 1, 1], range(9, 15), steer={"left": -1.0}, output="uint8")
    np.testing.assert_array_equal(images, expected)
    meta = pq.ParquetFile(path).metadata  # one row group, as written
    assert meta.num_row_groups == 1 and meta.num_rows == 6
    # A job of several shards, read whole as docs/generate-at-scale.md shows.
    run_job(g, JobSpec([5], 7, seed=1, format="parquet", shard_size=3), tmp_path / "b",
            progress=False)  # fmt: skip
    df = pd.read_parquet(sorted(str(p) for p in (tmp_path / "b").glob("*.parquet")))
    assert df["seed"].tolist() == list(range(1, 8)) and set(df["label"]) == {5}


def test_parquet_shards_load_in_a_torch_dataloader(tmp_path, g):
    """The map-style Dataset of docs/generate-at-scale.md over every shard of a job."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    class ParquetImages(torch.utils.data.Dataset):
        def __init__(self, paths):
            self.table = pa.concat_tables(pq.read_table(p, columns=["png", "label"]) for p in paths)

        def __len__(self):
            return self.table.num_rows

        def __getitem__(self, i):
            png = self.table["png"][i].as_py()
            image = np.asarray(Image.open(io.BytesIO(png))).copy()
            return torch.from_numpy(image), self.table["label"][i].as_py()

    spec = JobSpec(classes=[2, 9], per_class=3, seed=40, format="parquet", shard_size=4)
    run_job(g, spec, tmp_path, progress=False)
    dataset = ParquetImages(sorted(tmp_path.glob("*.parquet")))
    images, labels = zip(*torch.utils.data.DataLoader(dataset, batch_size=4), strict=True)
    assert torch.cat(labels).tolist() == [2, 2, 2, 9, 9, 9]
    expected = g.sample([2, 2, 2, 9, 9, 9], range(40, 46), output="uint8")[..., 0]
    np.testing.assert_array_equal(torch.cat(images).numpy(), expected)


def test_webdataset_tar_is_deterministic_and_loads_in_a_torch_dataloader(tmp_path, g):
    import torch
    from PIL import Image

    spec = JobSpec(classes=[4], per_class=5, seed=2, format="webdataset", shard_size=3)
    run_job(g, spec, tmp_path / "a", progress=False)
    with tarfile.open(tmp_path / "a" / "shard_00000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        f"4_{seed}.{ext}" for seed in (2, 3, 4) for ext in ("cls", "json", "png")
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }

    # The stdlib reader of docs/generate-at-scale.md ("PyTorch without webdataset").
    class TarImages(torch.utils.data.IterableDataset):
        def __init__(self, paths):
            self.paths = paths

        def __iter__(self):
            for path in self.paths:
                with tarfile.open(path) as tar:
                    sample = {}
                    for m in tar:
                        ext = m.name.split(".", 1)[1]
                        sample[ext] = tar.extractfile(m).read()
                        if ext == "png":  # the last file of each sample
                            image = np.asarray(Image.open(io.BytesIO(sample["png"])))
                            yield torch.from_numpy(image.copy()), int(sample["cls"])
                            sample = {}

    paths = sorted(str(p) for p in (tmp_path / "a").glob("*.tar"))
    batches = list(torch.utils.data.DataLoader(TarImages(paths), batch_size=4))
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    assert labels.tolist() == [4] * 5
    expected = g.sample([4] * 5, range(2, 7), output="uint8")[..., 0]
    np.testing.assert_array_equal(images.numpy(), expected)
    # The same job made again gives the same bytes.
    run_job(g, spec, tmp_path / "b", progress=False)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_parquet_bytes_do_not_depend_on_the_run(g, tmp_path):
    spec = JobSpec(classes=[0, 1], per_class=4, seed=5, format="parquet", batch_size=3)
    run_job(g, spec, tmp_path / "a", progress=False)
    run_job(g, JobSpec(**{**spec.__dict__, "batch_size": 8}), tmp_path / "b", progress=False)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")


def test_a_bad_format_is_one_line_naming_the_choices(tmp_path, capsys, model):
    code, _, err = run(capsys, *small_job(str(model), tmp_path / "job", "--format", "tfrecord"))
    assert_one_line_error(code, err, "--format", "tfrecord", "parquet", "webdataset")
    with pytest.raises(ctrlgan.errors.InvalidRequest, match="format"):
        run_job(ctrlgan.load(str(model), backend="torch"), JobSpec([1], 1, format="csv"),
                tmp_path / "api", progress=False)  # fmt: skip
    assert not (tmp_path / "job").exists() and not (tmp_path / "api").exists()


def test_parquet_without_pyarrow_is_one_line_and_writes_nothing(tmp_path, capsys, model,
                                                                monkeypatch):  # fmt: skip
    """pyarrow is not a dependency of ctrlgan: without it, --format parquet is refused before
    OUT is made (not an ImportError traceback after job.json was written)."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    out = tmp_path / "job"
    code, _, err = run(capsys, *small_job(str(model), out, "--format", "parquet"))
    assert_one_line_error(code, err, "format", "parquet needs pyarrow", "pip install pyarrow")
    assert not out.exists()
    code, _, err = run(capsys, *small_job(str(model), out, "--format", "webdataset"))
    assert code == 0, err  # the other formats need nothing more


def test_space_needed_by_the_new_formats_is_checked_before_writing(g, tmp_path, monkeypatch):
    from ctrlgan.runtime import jobs

    monkeypatch.setattr(jobs, "free_bytes", lambda path: 100_000)
    for fmt, ok in (("webdataset", 20), ("parquet", 1000)):
        with pytest.raises(ctrlgan.errors.InvalidRequest, match="out: .* images need"):
            run_job(g, JobSpec([1, 2], 1000, format=fmt), tmp_path / fmt, progress=False)
        assert not (tmp_path / fmt).exists()
        assert run_job(g, JobSpec([1], ok, format=fmt), tmp_path / fmt, progress=False).complete
