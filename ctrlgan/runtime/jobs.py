"""Batch jobs: many seeded images written to a directory as shards, resumable after any crash.

``ctrlgan generate MODEL --classes 0-9 --per-class N --out DIR`` calls ``run_job``.

Seeds. A job lists its images class by class, in the order the classes were requested, N per
class. Image j of the job is image i = j % N of the class at position p = j // N, and has

    class = classes[p]        seed = START + p * N + i  (= START + j)

so the images are fully determined by the job's arguments (and the model and backend).

Shards. Images [k*S, (k+1)*S) form shard k (the last one may be shorter), named shard_{k:05d}:
    npz   DIR/shard_00000.npz: images uint8 [n, H, W, C], labels int64 [n] (class indices),
          seeds uint64 [n]; an uncompressed zip that np.load reads, written with fixed entry
          timestamps (np.savez stamps the current time), so equal arrays give equal bytes
    png   DIR/shard_00000/: {label}_{seed}.png per image and labels.csv (file,label,seed)
A shard is assembled under a temporary name in DIR, fsync'd, renamed into place and the
directory fsync'd. Within a shard images are computed in batches from the shard's start, so a
shard's batches do not depend on where an earlier run stopped.

Completion. DIR/job.json, written atomically before the first shard, records the job: its
arguments, the model (path, and the sha256 of the files that make its images), the backend,
the ctrlgan version, the image count and the shard size. Its ``shards`` maps every completed
shard to its sha256 (of the .npz file; of a png shard, the sha256 of its sorted
"name NUL sha256-of-file" lines, labels.csv included). A shard counts as done only when
job.json lists it and its files still have that digest: one present but unlisted (a crash
between rename and job.json update) or altered is written again. job.json is rewritten
atomically after each shard, with no timestamps, so an interrupted and resumed job ends
byte-identical to an uninterrupted one.

Running the same job on the same DIR continues it (a complete job is verified and left as it
is); a DIR holding another job (different arguments, model files, backend or version) or
other files is refused with InvalidRequest, and so is one that another process is writing.

Limits, checked before anything is created or written: at most MAX_JOB_IMAGES images and
MAX_SHARDS shards (job.json lists every shard and is rewritten after each), a shard of at most
MAX_SHARD_BYTES of images (it is assembled in memory), and the images still to write must fit
in the free space of DIR's file system (npz: exactly; png: at a lower bound of PNG_MIN_BYTES
per image). A write that fails anyway (the disk filled up meanwhile) raises an OSError naming
the shard or job.json; the job resumes from the last complete shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctrlgan import __version__, validate
from ctrlgan._fs import TMP_PREFIX, free_bytes, fsync_path, make_readable, naming, write_atomic
from ctrlgan.artifact import DIRECTIONS, GENERATOR_ONNX, GENERATOR_WEIGHTS
from ctrlgan.errors import InvalidRequest
from ctrlgan.images import to_uint8
from ctrlgan.runtime import request

JOB_FILE = "job.json"
JOB_VERSION = 1
FORMATS = ("npz", "png")
LABELS_CSV = "labels.csv"
SEED_RULE = "seed of image i of the class at position p in classes: seed + p * per_class + i"
_TMP = TMP_PREFIX  # prefix of temporary shards and manifests; removed on every start
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp, for every entry
_MUTABLE = ("model", "shards", "complete")  # job.json fields that are not the job's identity
MAX_JOB_IMAGES = 10**9
MAX_SHARDS = 100_000
MAX_SHARD_BYTES = 1 << 30
MAX_CLASSES = 10_000  # entries of --classes (a class may be listed more than once)
NPZ_SHARD_OVERHEAD = 4096  # zip and .npy headers of one shard, rounded up
PNG_MIN_BYTES = 67  # the smallest possible PNG file: a lower bound per image
MAX_JOB_FILE_BYTES = 64 << 20  # job.json lists at most MAX_SHARDS digests: ~10 MB


@dataclass(frozen=True)
class JobSpec:
    """What a job makes: ``per_class`` images of each of ``classes`` (indices or names), seeds
    counting up from ``seed`` (see the module docstring), steered and truncated alike, in
    shards of ``shard_size``. ``batch_size`` (images per backend call) is not part of the job:
    on the CPU backends a row's image does not depend on its batch, so a job may be resumed
    with another (on CUDA keep it, for bytes equal to an uninterrupted run)."""

    classes: Sequence[int | str]
    per_class: int
    seed: int = 0
    steer: Mapping[str, float] = field(default_factory=dict)
    truncation: float | None = None
    format: str = "npz"
    shard_size: int = 1000
    batch_size: int = 1024


@dataclass
class JobResult:
    out_dir: Path
    total_images: int
    n_shards: int
    written: list[str]  # shards written by this run, in job order
    done_before: int  # shards found complete (listed and verified) at the start
    repaired: list[str]  # shards listed in job.json whose files no longer matched: rewritten
    images_written: int
    seconds: float

    @property
    def complete(self) -> bool:
        return self.done_before + len(self.written) == self.n_shards


def run_job(
    generator, spec: JobSpec, out_dir: str | os.PathLike, progress: bool = True
) -> JobResult:
    """Make (or continue) the job ``spec`` in ``out_dir`` with ``generator``; a JobResult.

    Every argument is checked before anything is written. ``progress`` shows a tqdm bar with
    images/s on stderr.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    job = _describe(generator, spec)
    out = Path(out_dir)
    if not (out / JOB_FILE).exists():  # a new job: all of it must fit before DIR is made
        _check_space(out, job, job["total_images"], job["n_shards"])
    created = not out.exists()
    _make_dir(out)
    with _locked(out):
        try:
            record = _open_job(out, generator, job)
        except BaseException:
            if created:  # e.g. a full disk on job.json: leave no empty directory behind
                shutil.rmtree(out, ignore_errors=True)
            raise
        _remove_temporaries(out)
        total, n_shards = job["total_images"], job["n_shards"]
        names = [shard_name(k, spec.format) for k in range(n_shards)]
        # Done: listed in job.json and the files still have the listed digest.
        listed = record["shards"]
        done = {n: listed[n] for n in names if n in listed}
        done = {n: d for n, d in done.items() if _shard_digest(out / n, spec.format) == d}
        repaired = [n for n in names if n in listed and n not in done]
        if done != listed or record.get("complete") != (len(done) == n_shards):
            record.update(shards=dict(done), complete=len(done) == n_shards)
            _write_json(out / JOB_FILE, record)
        todo = [k for k, name in enumerate(names) if name not in done]
        spans = {k: (k * spec.shard_size, min((k + 1) * spec.shard_size, total)) for k in todo}
        _check_space(out, job, sum(b - a for a, b in spans.values()), len(todo))
        bar = tqdm(
            total=total,
            initial=total - sum(stop - start for start, stop in spans.values()),
            unit="img",
            desc="generate",
            file=sys.stderr,
            disable=not (progress and todo),
            dynamic_ncols=True,
        )
        with bar:
            for k in todo:
                images, labels, seeds = _make_images(generator, spec, job, *spans[k], bar)
                digest = _write_shard(out, names[k], spec.format, images, labels, seeds)
                shards = dict(sorted({**record["shards"], names[k]: digest}.items()))
                record.update(shards=shards, complete=len(shards) == n_shards)
                _write_json(out / JOB_FILE, record)
    return JobResult(
        out_dir=out,
        total_images=total,
        n_shards=n_shards,
        written=[names[k] for k in todo],
        done_before=len(done),
        repaired=repaired,
        images_written=sum(stop - start for start, stop in spans.values()),
        seconds=time.perf_counter() - t0,
    )


def _make_images(g, spec: JobSpec, job: dict, start: int, stop: int, bar):
    """Images [start, stop) of the job, uint8 NHWC, with their labels and seeds; computed in
    batches of spec.batch_size counted from ``start``."""
    index = np.arange(start, stop, dtype=np.int64)
    labels = np.array(job["classes"], np.int64)[index // spec.per_class]
    seeds = np.uint64(spec.seed) + index.astype(np.uint64)
    images = np.empty((stop - start, *job["image_shape"]), np.uint8)
    for b in range(0, stop - start, spec.batch_size):
        e = min(b + spec.batch_size, stop - start)
        rows = g.prepare(
            labels[b:e].tolist(),
            seeds[b:e].tolist(),
            steer=job["steer"],
            truncation=job["truncation"],
        )
        images[b:e] = to_uint8(g.run(rows))
        bar.update(e - b)
    return images, labels, seeds


def shard_name(k: int, fmt: str) -> str:
    return f"shard_{k:05d}.npz" if fmt == "npz" else f"shard_{k:05d}"


def read_shard(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A shard's images (uint8 NHWC), labels and seeds, from either format."""
    path = Path(path)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in ("images", "labels", "seeds")}
    from PIL import Image

    lines = (path / LABELS_CSV).read_text().splitlines()[1:]
    entries = [line.split(",") for line in lines]
    images = []
    for file, _, _ in entries:
        im = np.asarray(Image.open(path / file))
        images.append(im[:, :, None] if im.ndim == 2 else im)
    return {
        "images": np.stack(images),
        "labels": np.array([int(e[1]) for e in entries], np.int64),
        "seeds": np.array([int(e[2]) for e in entries], np.uint64),
    }


# The job's description and its manifest -----------------------------------------------------


def _describe(g, spec: JobSpec) -> dict:
    """Check the spec against the generator; the job's identity (job.json less _MUTABLE)."""
    validate.choice(spec.format, "format", FORMATS)
    per_class = validate.integer(spec.per_class, "per_class", 1, MAX_JOB_IMAGES)
    shard_size = validate.integer(spec.shard_size, "shard_size", 1, MAX_JOB_IMAGES)
    batch_size = validate.integer(spec.batch_size, "batch_size", 1)
    if batch_size > g.max_batch:
        raise InvalidRequest(
            "batch_size", f"{batch_size} exceeds the generator's batch limit {g.max_batch}"
        )
    if isinstance(spec.classes, (str, int)) or not isinstance(spec.classes, Sequence):
        raise InvalidRequest("classes", f"expected a list of classes, got {spec.classes!r}")
    entries = validate.items(spec.classes, "classes", MAX_CLASSES, what="classes")
    classes = [request.class_index(c, g.classes) for c in entries]
    total = len(classes) * per_class
    if total > MAX_JOB_IMAGES:
        raise InvalidRequest(
            "per_class",
            f"{len(classes)} classes x {per_class} = {total:,} images exceed the job limit "
            f"{MAX_JOB_IMAGES:,}",
        )
    c, h, w = g.image_shape
    if shard_size * c * h * w > MAX_SHARD_BYTES:
        raise InvalidRequest(
            "shard_size",
            f"{shard_size:,} images of {h}x{w}x{c} exceed {MAX_SHARD_BYTES >> 20} MiB per shard "
            "(a shard is assembled in memory)",
        )
    n_shards = -(-total // shard_size)
    if n_shards > MAX_SHARDS:
        raise InvalidRequest(
            "shard_size",
            f"{total:,} images in shards of {shard_size:,} make {n_shards:,} shards, over the "
            f"limit {MAX_SHARDS:,}: give a larger shard size",
        )
    if not validate.is_int(spec.seed) or not 0 <= spec.seed < request.MAX_SEED:
        raise InvalidRequest("seed", f"must be an int in [0, 2**64), got {spec.seed!r}")
    if spec.seed + total > request.MAX_SEED:
        raise InvalidRequest(
            "seed", f"seeds {spec.seed}..{spec.seed}+{total - 1} run past 2**64 - 1"
        )
    steer = {}
    if not isinstance(spec.steer or {}, Mapping):
        raise InvalidRequest("steer", f"expected a dict of feature -> alpha, got {spec.steer!r}")
    for name, value in dict(spec.steer or {}).items():
        steer[name] = validate.real(value, f"steer.{name}", -request.MAX_ALPHA, request.MAX_ALPHA)
    # The generator's own checks: unknown features, a bad truncation.
    g.prepare([classes[0]], [int(spec.seed)], steer=steer, truncation=spec.truncation)
    return {
        "job_version": JOB_VERSION,
        "ctrlgan_version": __version__,
        "model_files": _model_files(g),
        "backend": g.backend,
        "class_names": list(g.classes),
        "classes": classes,
        "per_class": per_class,
        "seed": int(spec.seed),
        "seed_rule": SEED_RULE,
        "steer": dict(sorted(steer.items())),
        "truncation": request.parse_truncation(spec.truncation),
        "format": spec.format,
        "shard_size": shard_size,
        "image_shape": [h, w, c],
        "total_images": total,
        "n_shards": n_shards,
    }


def _check_space(out: Path, job: dict, images: int, shards: int) -> None:
    """Refuse a job whose images cannot fit on the disk (a lower bound for png)."""
    h, w, c = job["image_shape"]
    if job["format"] == "npz":
        need = images * (h * w * c + 16) + shards * NPZ_SHARD_OVERHEAD
    else:
        need = images * PNG_MIN_BYTES
    free = free_bytes(out)
    if need > free:
        raise InvalidRequest(
            "out",
            f"{images:,} images need {_size(need)} and {out} has {_size(free)} free: free "
            "space, pick another --out, or make a smaller job",
        )


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} PiB"


def _model_files(g) -> dict[str, str]:
    """sha256 of the artifact files that make this job's images on this backend."""
    used = [GENERATOR_WEIGHTS, DIRECTIONS]
    if g.backend == "onnxruntime":
        used.append(GENERATOR_ONNX)
    files = g.artifact.manifest.files
    return {name: files[name] for name in sorted(used) if name in files}


def _open_job(out: Path, g, job: dict) -> dict:
    """The job record of ``out``: the existing one if it is this job, else a new one."""
    path = out / JOB_FILE
    if not path.exists():
        others = sorted(p.name for p in out.iterdir() if not p.name.startswith(_TMP))
        if others:
            raise InvalidRequest(
                "out",
                f"{out} is not empty and holds no {JOB_FILE} ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}): give a new or empty directory",
            )
        record = {**job, "model": str(Path(g.artifact.path).resolve()), "shards": {}}
        record["complete"] = False
        _write_json(path, record)
        return record
    try:
        # a regular file of a plausible size (100,000 shards are ~10 MB): never a FIFO, a
        # device or a link to one, which would block or fill memory
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_JOB_FILE_BYTES:
            raise ValueError
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("shards"), dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError, RecursionError, OSError):
        raise InvalidRequest("out", f"{path} is not a ctrlgan job manifest") from None
    theirs = {k: v for k, v in record.items() if k not in _MUTABLE}
    ours = json.loads(json.dumps(job))
    if theirs != ours:
        keys = list(ours) + [k for k in theirs if k not in ours]
        diffs = [_difference(k, theirs.get(k), ours.get(k)) for k in keys]
        raise InvalidRequest(
            "out",
            f"{out} holds another job (different {', '.join(d for d in diffs if d)}): "
            "rerun it with its own arguments or give another --out",
        )
    return record


def _difference(key: str, theirs, ours) -> str:
    if theirs == ours:
        return ""
    if key == "model_files":
        return "model weights"
    a, b = json.dumps(theirs), json.dumps(ours)
    return f"{key}: {a} there, {b} now" if len(a) + len(b) <= 48 else key


# Files ------------------------------------------------------------------------------------


def _make_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InvalidRequest("out", f"{out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidRequest("out", f"cannot create {out} ({e.strerror or e})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InvalidRequest("out", f"{out} is not writable")


@contextlib.contextmanager
def _locked(out: Path):
    """Hold an exclusive lock on the directory: one writer per job."""
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock here (Windows): run unlocked
            pass
        except OSError:
            raise InvalidRequest(
                "out", f"{out} is in use: another ctrlgan generate is writing there"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_temporaries(out: Path) -> None:
    for p in out.iterdir():
        if p.name.startswith(_TMP):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dir_digest(entries: list[tuple[str, str]]) -> str:
    """A png shard's digest: sha256 of its sorted 'name NUL sha256' lines."""
    return _sha256("".join(f"{n}\0{d}\n" for n, d in sorted(entries)).encode())


def _shard_digest(path: Path, fmt: str) -> str | None:
    """The digest of a shard on disk, or None when it is missing or unreadable."""
    try:
        if fmt == "npz":
            return _sha256(path.read_bytes()) if path.is_file() else None
        if not path.is_dir():
            return None
        return _dir_digest([(p.name, _sha256(p.read_bytes())) for p in path.iterdir()])
    except OSError:
        return None


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """What np.savez writes, less the varying timestamps: an uncompressed zip of .npy files."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(value), allow_pickle=False)
    return buf.getvalue()


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buf, format="PNG")
    return buf.getvalue()


def _write_shard(out: Path, name: str, fmt: str, images, labels, seeds) -> str:
    """Write one shard atomically (temporary name, fsync, rename, fsync DIR); its digest. An
    OSError (a full disk) names the shard and leaves no temporary behind."""
    target = out / name
    if fmt == "npz":
        data = _npz_bytes({"images": images, "labels": labels, "seeds": seeds})
        write_atomic(target, data)
        return _sha256(data)
    with naming(target):
        tmp = Path(tempfile.mkdtemp(prefix=_TMP, dir=out))
        try:
            entries = []
            rows = ["file,label,seed"]
            for image, label, seed in zip(images, labels.tolist(), seeds.tolist(), strict=True):
                file = f"{label}_{seed}.png"
                data = _png_bytes(image)
                (tmp / file).write_bytes(data)
                entries.append((file, _sha256(data)))
                rows.append(f"{file},{label},{seed}")
            data = ("\n".join(rows) + "\n").encode()
            (tmp / LABELS_CSV).write_bytes(data)
            entries.append((LABELS_CSV, _sha256(data)))
            make_readable(tmp)
            for file, _ in entries:  # all written first: far faster than one fsync per write
                fsync_path(tmp / file)
            fsync_path(tmp)
            if target.is_dir() and not target.is_symlink():  # an unlisted or altered earlier try
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_path(out)
    return _dir_digest(entries)


def _write_json(path: Path, record: dict) -> None:
    write_atomic(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
