"""Batch jobs: many seeded images written to a directory as shards, resumable after any crash.

``ctrlgan generate MODEL --classes 0-9 --per-class N --out DIR`` calls ``run_job``.

Seeds. A job lists its images class by class, in the order the classes were requested, N per
class. Image j of the job is image i = j % N of the class at position p = j // N, and has

    class = classes[p]        seed = START + p * N + i  (= START + j)

so the images are fully determined by the job's arguments (and the model and backend).

Shards. Images [k*S, (k+1)*S) form shard k (the last one may be shorter), named shard_{k:05d}
plus the format's suffix: npz (arrays), png (a folder of PNGs and labels.csv), parquet (one row
per image) or webdataset (a tar); shards.py defines each. A shard is assembled under a temporary
name in DIR, fsync'd, renamed into place and the directory fsync'd. Within a shard images are
computed in batches from the shard's start, so a shard's batches do not depend on where an
earlier run stopped, nor on which process made it: ctrlgan.integrations.ray runs the same job
(``open_job`` and ``make_shard``) with its shards made by Ray actors.

Completion. DIR/job.json, written atomically before the first shard, records the job: its
arguments, the model (path, and the sha256 of the files that make its images), the backend,
the ctrlgan version, the image count and the shard size. Its ``shards`` maps every completed
shard to its digest (shards.py: the sha256 of the file; of a png folder, of its files'
sha256s). A shard counts as done only when job.json lists it and its files still have that
digest: one present but unlisted (a crash between rename and job.json update) or altered is
written again. job.json is rewritten atomically after each shard, with no timestamps and its
keys sorted, so an interrupted and resumed job ends byte-identical to an uninterrupted one.

Running the same job on the same DIR continues it (a complete job is verified and left as it
is); a DIR holding another job (different arguments, model files, backend or version) or
other files is refused with InvalidRequest, and so is one that another process is writing.

Limits, checked before anything is created or written: at most MAX_JOB_IMAGES images and
MAX_SHARDS shards (job.json lists every shard and is rewritten after each), a shard of at most
MAX_SHARD_BYTES of images (it is assembled in memory), and the images still to write must fit
in the free space of DIR's file system (npz: exactly; the others: at a lower bound,
shards.min_bytes). A write that fails anyway (the disk filled up meanwhile) raises an OSError
naming the shard or job.json; the job resumes from the last complete shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctrlgan import __version__, validate
from ctrlgan._fs import TMP_PREFIX, free_bytes, write_atomic
from ctrlgan.artifact import DIRECTIONS, GENERATOR_ONNX, GENERATOR_WEIGHTS
from ctrlgan.errors import InvalidRequest
from ctrlgan.images import to_uint8
from ctrlgan.runtime import request
from ctrlgan.runtime.shards import (  # noqa: F401  (read_shard and LABELS_CSV: public here too)
    FORMATS,
    LABELS_CSV,
    min_bytes,
    read_shard,
    require_writer,
    shard_digest,
    shard_name,
    write_shard,
)

JOB_FILE = "job.json"
JOB_VERSION = 1
SEED_RULE = "seed of image i of the class at position p in classes: seed + p * per_class + i"
_TMP = TMP_PREFIX  # prefix of temporary shards and manifests; removed on every start
_MUTABLE = ("model", "shards", "complete")  # job.json fields that are not the job's identity
MAX_JOB_IMAGES = 10**9
MAX_SHARDS = 100_000
MAX_SHARD_BYTES = 1 << 30
MAX_CLASSES = 10_000  # entries of --classes (a class may be listed more than once)
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


@dataclass
class Job:
    """An open job directory (``open_job``): its plan, its record and the shards left to make.
    ``plan`` is the job's identity (job.json less the mutable fields); it and a shard index
    are all ``make_shard`` needs, so any process that loads the same model can make a shard."""

    out: Path
    plan: dict
    record: dict
    todo: list[int]  # shard indices still to make, in job order
    done_before: int
    repaired: list[str]

    def name(self, k: int) -> str:
        return shard_name(k, self.plan["format"])

    def span(self, k: int) -> tuple[int, int]:
        return shard_span(self.plan, k)

    @property
    def images_todo(self) -> int:
        return sum(b - a for a, b in map(self.span, self.todo))

    def record_shard(self, name: str, digest: str) -> None:
        """Note a finished shard in job.json (rewritten atomically, keys sorted: the file does
        not depend on the order in which shards finish)."""
        self.add_shard(name, digest)
        self.save(self.manifest_bytes())

    def add_shard(self, name: str, digest: str) -> None:
        """Note a finished shard in memory only (O(1): job.json's keys are sorted when it is
        written); ``save`` writes it."""
        shards = self.record["shards"]
        shards[name] = digest
        self.record["complete"] = len(shards) == self.plan["n_shards"]

    def manifest_bytes(self) -> bytes:
        """job.json's bytes as the record stands."""
        return _json_bytes(self.record)

    def save(self, data: bytes) -> None:
        write_atomic(self.out / JOB_FILE, data)

    def result(self, seconds: float) -> JobResult:
        return JobResult(
            out_dir=self.out,
            total_images=self.plan["total_images"],
            n_shards=self.plan["n_shards"],
            written=[self.name(k) for k in self.todo],
            done_before=self.done_before,
            repaired=self.repaired,
            images_written=self.images_todo,
            seconds=seconds,
        )


def run_job(
    generator, spec: JobSpec, out_dir: str | os.PathLike, progress: bool = True
) -> JobResult:
    """Make (or continue) the job ``spec`` in ``out_dir`` with ``generator``; a JobResult.

    Every argument is checked before anything is written. ``progress`` shows a tqdm bar with
    images/s on stderr.
    """
    t0 = time.perf_counter()
    with open_job(generator, spec, out_dir) as job, progress_bar(job, progress) as bar:
        for k in job.todo:
            digest = make_shard(generator, job.plan, k, spec.batch_size, job.out, bar.update)
            job.record_shard(job.name(k), digest)
    return job.result(time.perf_counter() - t0)


@contextlib.contextmanager
def open_job(
    generator, spec: JobSpec, out_dir: str | os.PathLike, backend: str | None = None
) -> Iterator[Job]:
    """Check ``spec``, create or reopen ``out_dir`` and hold its lock while the block runs;
    yields the Job with the shards still to make (listed and verified ones are kept).

    ``backend`` names the backend that will make the images when it is not ``generator``'s
    own (a Ray driver that describes the job for workers of another kind)."""
    plan = describe(generator, spec, backend)
    out = Path(out_dir)
    if not (out / JOB_FILE).exists():  # a new job: all of it must fit before DIR is made
        _check_space(out, plan, plan["total_images"], plan["n_shards"])
    created = not out.exists()
    _make_dir(out)
    with _locked(out):
        try:
            record = _open_record(out, generator, plan)
        except BaseException:
            if created:  # e.g. a full disk on job.json: leave no empty directory behind
                shutil.rmtree(out, ignore_errors=True)
            raise
        _remove_temporaries(out)
        n_shards, fmt = plan["n_shards"], plan["format"]
        names = [shard_name(k, fmt) for k in range(n_shards)]
        # Done: listed in job.json and the files still have the listed digest.
        listed = record["shards"]
        done = {n: listed[n] for n in names if n in listed}
        done = {n: d for n, d in done.items() if shard_digest(out / n, fmt) == d}
        repaired = [n for n in names if n in listed and n not in done]
        if done != listed or record.get("complete") != (len(done) == n_shards):
            record.update(shards=dict(done), complete=len(done) == n_shards)
            _write_json(out / JOB_FILE, record)
        todo = [k for k, name in enumerate(names) if name not in done]
        job = Job(out, plan, record, todo, len(done), repaired)
        _check_space(out, plan, job.images_todo, len(todo))
        try:
            yield job
        finally:
            _remove_temporaries(out)  # left by shard writers that died (Ray workers)


def progress_bar(job: Job, progress: bool):
    """A tqdm bar of the job's images on stderr (images/s), starting at those already done."""
    from tqdm import tqdm

    total = job.plan["total_images"]
    return tqdm(
        total=total,
        initial=total - job.images_todo,
        unit="img",
        desc="generate",
        file=sys.stderr,
        disable=not (progress and job.todo),
        dynamic_ncols=True,
    )


def shard_span(plan: dict, k: int) -> tuple[int, int]:
    """Images [start, stop) of shard k."""
    size = plan["shard_size"]
    return k * size, min((k + 1) * size, plan["total_images"])


def make_shard(generator, plan: dict, k: int, batch_size: int, out: Path, advance=None) -> str:
    """Compute and write shard k of the job ``plan`` into ``out``; its digest. ``advance(n)``
    is called after each batch of n images."""
    start, stop = shard_span(plan, k)
    images, labels, seeds = _make_images(generator, plan, start, stop, batch_size, advance)
    meta = {key: plan[key] for key in ("class_names", "steer", "truncation")}
    return write_shard(Path(out), shard_name(k, plan["format"]), plan["format"], images, labels,
                       seeds, meta)  # fmt: skip


def _make_images(g, plan: dict, start: int, stop: int, batch_size: int, advance):
    """Images [start, stop) of the job, uint8 NHWC, with their labels and seeds; computed in
    batches of batch_size counted from ``start``."""
    index = np.arange(start, stop, dtype=np.int64)
    labels = np.array(plan["classes"], np.int64)[index // plan["per_class"]]
    seeds = np.uint64(plan["seed"]) + index.astype(np.uint64)
    images = np.empty((stop - start, *plan["image_shape"]), np.uint8)
    for b in range(0, stop - start, batch_size):
        e = min(b + batch_size, stop - start)
        rows = g.prepare(
            labels[b:e].tolist(),
            seeds[b:e].tolist(),
            steer=plan["steer"],
            truncation=plan["truncation"],
        )
        images[b:e] = to_uint8(g.run(rows))
        if advance is not None:
            advance(e - b)
    return images, labels, seeds


# The job's description and its manifest -----------------------------------------------------


def describe(g, spec: JobSpec, backend: str | None = None) -> dict:
    """Check the spec against the generator; the job's plan: its identity (job.json less
    _MUTABLE). ``backend``: the one that makes the images, when not ``g``'s."""
    validate.choice(spec.format, "format", FORMATS)
    require_writer(spec.format)
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
        "model_files": _model_files(g, backend or g.backend),
        "backend": backend or g.backend,
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
    need = min_bytes(job["format"], images, shards, job["image_shape"])
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


def _model_files(g, backend: str) -> dict[str, str]:
    """sha256 of the artifact files that make this job's images on ``backend``."""
    used = [GENERATOR_WEIGHTS, DIRECTIONS]
    if backend == "onnxruntime":
        used.append(GENERATOR_ONNX)
    files = g.artifact.manifest.files
    return {name: files[name] for name in sorted(used) if name in files}


def _open_record(out: Path, g, job: dict) -> dict:
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


def _write_json(path: Path, record: dict) -> None:
    write_atomic(path, _json_bytes(record))


def _json_bytes(record: dict) -> bytes:
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
