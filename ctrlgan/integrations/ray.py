"""Batch jobs on Ray Data: ``ctrlgan generate ... --ray [ADDRESS]`` (needs ``ctrlgan[ray]``).

The job is runtime/jobs.py's, unchanged: the same plan (classes, per-class counts, seeds,
steering, truncation, shard size), the same shards, job.json and checksums, byte for byte,
however many actors make it and in whatever order they finish. Only who makes the shards
differs:

    driver   checks the job and opens OUT (jobs.open_job: job.json, the lock, the shards that
             are done and verified), then runs a Ray Data pipeline
                 from_items(one row per shard still to make: shard, start, stop)
                   .map_batches(_ShardMaker, batch_size=1, compute=ActorPoolStrategy(size=N))
             and records each finished shard's digest in job.json as its row comes back
             (a writer thread: shards that finish during a rewrite go into the next one)
    actors   N Ray actors, each loads the model once (a ctrlgan Generator: one per GPU when
             the backend is triton, else one per node by default with the node's CPUs as
             threads; see _actor_pool), and per row computes the shard's images and writes
             the shard itself (jobs.make_shard: a temporary name, fsync, rename)

A task makes one shard, or several in jobs of more than MAX_BLOCKS shards; its rows come back
when it ends. Actors write the shards, so OUT must be a directory every actor can write at the
same path (one machine, or a file system shared by the nodes), and the model a bundled name or
a path every node can read.

Failures. A killed driver leaves job.json listing the shards whose rows came back; the same
command continues from those (a shard written but not yet recorded is made again, to the same
bytes). An actor that dies is restarted by Ray and its shard retried (Ray Data's actor pools
retry without limit); the shard is written atomically, so a retry replaces, never duplicates,
and the driver records each shard once. An error inside an actor (a full disk; a model, or a
Pillow or pyarrow version, that differs on a node: other bytes) ends the job with that error,
one line; what was recorded stays.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import threading
import time
from pathlib import Path

from ctrlgan import validate
from ctrlgan.errors import ArtifactError, BackendUnavailable, CtrlganError, InvalidRequest
from ctrlgan.runtime.jobs import (
    JOB_FILE,
    JobResult,
    JobSpec,
    describe,
    make_shard,
    open_job,
    progress_bar,
)
from ctrlgan.runtime.shards import encoders

EXTRA = "ctrlgan[ray]"
MAX_BLOCKS = 4096  # blocks (tasks) at most: beyond as many shards, a task makes several
CONNECT_TIMEOUT_S = 5.0


def require_ray():
    """The ray module with Ray Data, or BackendUnavailable naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise BackendUnavailable(
            f"--ray needs Ray Data, which is not installed here ({e}): pip install '{EXTRA}'"
        ) from None
    return ray


def load(model, backend: str = "auto"):
    """The driver's Generator for a Ray job and the backend the actors will use.

    The driver checks the job against the model (classes, features, limits) and records the
    backend; the actors load the model themselves. A backend that cannot run on the driver
    (triton on a head node without a GPU) is described with the torch backend here and run
    with the named one on the actors."""
    import ctrlgan

    if isinstance(model, ctrlgan.Generator):
        return model, (model.backend if backend == "auto" else backend)
    try:
        g = ctrlgan.load(model, backend=backend)
    except BackendUnavailable:
        if backend == "auto":
            raise
        return ctrlgan.load(model, backend="torch"), backend
    return g, g.backend


def generate(
    model,
    spec: JobSpec,
    out_dir: str | os.PathLike,
    *,
    backend: str = "auto",
    address: str | None = None,
    actors: int | None = None,
    progress: bool = True,
) -> JobResult:
    """Make (or continue) the job ``spec`` in ``out_dir`` on Ray; a JobResult, as jobs.run_job.

    model: a bundled model name, an artifact path or a loaded Generator; backend: what the
    actors run ("auto": the Generator's, or what "auto" picks on the driver); address: None or
    "local" start a local Ray (stopped at the end), "auto", host:port or ray://host:port join a
    cluster, and an already connected Ray session (``ray.init`` in this process) is used as it
    is; actors: the actor pool's size (default: one per GPU for triton, else one per node).
    """
    ray = require_ray()
    t0 = time.perf_counter()
    g, backend = load(model, backend)
    if actors is not None:
        actors = validate.integer(actors, "actors", 1, 100_000)
    describe(g, spec, backend)  # a bad job is refused before Ray starts
    with contextlib.ExitStack() as stack:
        job = None
        # A job begun before is opened (its shards verified, once) before Ray: a finished one
        # needs no Ray. A new one is created only once Ray answers: a bad address writes
        # nothing.
        if (Path(out_dir) / JOB_FILE).exists():
            job = stack.enter_context(open_job(g, spec, out_dir, backend=backend))
            if not job.todo:
                return job.result(time.perf_counter() - t0)
        started = connect(ray, address)
        try:
            n, resources, threads = _actor_pool(ray, backend, actors)  # before a new OUT is made
            if job is None:
                job = stack.enter_context(open_job(g, spec, out_dir, backend=backend))
        finally:
            # stopped before open_job's exit removes the temporaries: no actor of a failed
            # pipeline is left to write one after that
            if started:
                stack.callback(ray.shutdown)
        with progress_bar(job, progress) as bar:
            if job.todo:
                _run_pipeline(ray, g, job, spec.batch_size, backend, n, resources, threads, bar)
    return job.result(time.perf_counter() - t0)


class _ShardMaker:
    """One actor of the pool: loads the model once, then makes and writes whole shards."""

    def __init__(self, model, backend, max_batch, threads, plan, batch_size, out, encoders):
        import ctrlgan
        from ctrlgan.runtime import jobs, shards

        self.plan, self.batch_size, self.out = plan, batch_size, Path(out)
        # A failure here is raised by the first call instead: Ray reports an error in an
        # actor's constructor only as text, and a call's error as the error itself.
        self.error = None
        threads = min(threads, os.cpu_count() or 1)
        try:
            with _carried():
                self.g = ctrlgan.load(model, backend=backend, max_batch=max_batch, threads=threads)
                if jobs._model_files(self.g, backend) != plan["model_files"]:
                    raise ArtifactError(model, "differs on this node from the job's model")
                here = shards.encoders(plan["format"])
                if here != encoders:  # other PNG or parquet bytes than the driver's
                    raise InvalidRequest(
                        "ray",
                        f"{_versions(here)} on {socket.gethostname()} but "
                        f"{_versions(encoders)} on the driver: its {plan['format']} shards "
                        "would differ from the driver's; install the same versions on every node",
                    )
        except ActorError as e:
            self.error = e

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        if self.error is not None:
            raise self.error
        names, digests = [], []
        for k in batch["shard"].tolist():
            with _carried():
                digests.append(make_shard(self.g, self.plan, k, self.batch_size, self.out))
            names.append(_name(self.plan, k))
        return {
            "shard": batch["shard"],
            "name": np.array(names),
            "digest": np.array(digests),
            "images": batch["stop"] - batch["start"],
            "pid": np.full(len(names), os.getpid()),
        }


class ActorError(CtrlganError):
    """An error ctrlgan raised on purpose inside a Ray actor (a model that differs on a node),
    carried to the driver by its message; an actor's OSError (a full disk) travels as one too
    (``errno``, ``filename``) and is raised on the driver as an OSError again. ctrlgan's errors
    do not survive pickling, and Ray Data appends its retry advice to an error's arguments."""

    def __init__(self, message: str, errno: int | None = None, filename: str | None = None):
        super().__init__(message)
        self.errno, self.filename = errno, filename

    def __reduce__(self):
        return (ActorError, (self.args[0], self.errno, self.filename))

    def unwrapped(self) -> Exception:
        """The error to raise on the driver: the first line of the message (ours are one)."""
        message = str(self.args[0]).split("\n")[0]
        if self.errno is not None:
            return OSError(self.errno, message, self.filename)
        return ActorError(message)


def _versions(libraries: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in libraries.items())


@contextlib.contextmanager
def _carried():
    try:
        yield
    except CtrlganError as e:
        raise ActorError(str(e)) from None
    except OSError as e:
        raise ActorError(e.strerror or str(e), e.errno, e.filename) from None


def _name(plan: dict, k: int) -> str:
    from ctrlgan.runtime.shards import shard_name

    return shard_name(k, plan["format"])


def _run_pipeline(ray, g, job, batch_size, backend, n, resources, threads, bar) -> None:
    """The shards of job.todo made by an actor pool of n; each recorded as it comes back."""
    rows = [{"shard": k, "start": a, "stop": b} for k in job.todo for a, b in [job.span(k)]]
    n = min(n, len(rows))  # no actor without a shard to make
    context = ray.data.DataContext.get_current()
    keys = ("enable_progress_bars", "print_on_execution_start", "raise_original_map_exception")
    saved = {key: getattr(context, key) for key in keys}
    context.enable_progress_bars = context.print_on_execution_start = False
    context.raise_original_map_exception = True  # an ActorError, not UserCodeException
    # Ray Data's console lines (its notes, an actor's traceback before we raise the error
    # itself as one line) stay off the terminal; its log file in the Ray session keeps them.
    consoles = [h for h in logging.getLogger("ray.data").handlers if getattr(h, "stream", None)]
    levels = [h.level for h in consoles]
    for h in consoles:
        h.setLevel(logging.CRITICAL + 1)
    try:
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), MAX_BLOCKS))
        ds = ds.map_batches(
            _ShardMaker,
            fn_constructor_kwargs={
                "model": str(Path(g.artifact.path).resolve()),
                "backend": backend,
                "max_batch": g.max_batch,
                "threads": threads,
                "plan": job.plan,
                "batch_size": batch_size,
                "out": str(job.out.resolve()),
                "encoders": encoders(job.plan["format"]),
            },
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=n),
            **resources,
        )
        expected = {job.name(k) for k in job.todo}
        recorded = {}
        with _Recorder(job) as recorder:
            for row in _rows(ds):
                name, digest = str(row["name"]), str(row["digest"])
                if name not in expected:
                    raise RuntimeError(f"a Ray actor returned {name}, not a shard to make")
                if recorded.setdefault(name, digest) != digest:  # a retry made other bytes
                    raise RuntimeError(f"{name} was made twice with different bytes")
                recorder.add(name, digest)
                bar.update(int(row["images"]))
        missing = sorted(expected - set(recorded))
        if missing:
            raise RuntimeError(f"the Ray pipeline ended without {', '.join(missing[:3])}")
    finally:
        for key, value in saved.items():
            setattr(context, key, value)
        for h, level in zip(consoles, levels, strict=True):
            h.setLevel(level)


class _Recorder:
    """Records finished shards in job.json from a thread of its own, so that the pipeline's
    rows never wait for a rewrite: shards that finish while job.json is being written go into
    the next write together (a job of 100,000 shards rewrites ~9 MB each time, ~0.1 s). On
    leaving, every added shard is written; a failed write (a full disk) is raised here."""

    def __init__(self, job):
        self.job = job
        self.lock = threading.Lock()
        self.dirty = threading.Condition(self.lock)
        self.pending = False
        self.closing = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write, name="ctrlgan-job-json", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def add(self, name: str, digest: str) -> None:
        with self.lock:
            if self.error is not None:
                raise self.error
            self.job.add_shard(name, digest)
            self.pending = True
            self.dirty.notify()

    def _write(self) -> None:
        while True:
            with self.lock:
                while not self.pending and not self.closing:
                    self.dirty.wait()
                if not self.pending:
                    return
                data, self.pending = self.job.manifest_bytes(), False
            try:
                self.job.save(data)  # outside the lock: rows keep coming meanwhile
            except BaseException as e:
                with self.lock:
                    self.error = e
                return

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.closing = True
            self.dirty.notify()
        self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error


def _rows(ds):
    """The pipeline's output rows; an error an actor carried (ActorError) is raised as what
    it was, one line, holding no reference to the pipeline: Ray Data releases a failed
    pipeline's actors (and their CPUs or GPUs) only once nothing refers to it any more."""
    rows = ds.iter_rows()
    carried = None
    try:
        yield from rows
    except Exception as e:
        carried = _carried_error(e)
        if carried is None:
            raise
    if carried is not None:
        error = carried.unwrapped()
        del rows, carried
        gc.collect()  # the failed executor and its actors, kept alive by reference cycles
        raise error


def _carried_error(error: BaseException) -> ActorError | None:
    """The ActorError in ``error``'s chain (Ray wraps it in a RayTaskError, a subclass of
    both, whose ``cause`` is the error itself)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ActorError) and not _is_ray_error(error):
            return error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def _is_ray_error(error: BaseException) -> bool:
    return type(error).__module__.startswith("ray.")


# The cluster ----------------------------------------------------------------------------------


def connect(ray, address: str | None) -> bool:
    """Connect to Ray as ``address`` says (None or "local": a new local Ray; "auto",
    host:port or ray://host:port: a running cluster); True when this call started the
    session. An address that does not answer is refused within CONNECT_TIMEOUT_S, as one
    InvalidRequest, before Ray's own retries (minutes for host:port, 30 s for ray://)."""
    if ray.is_initialized():
        return False
    address = "local" if address is None else address
    if not isinstance(address, str) or not address.strip():
        raise InvalidRequest("ray", f"expected a Ray address, got {address!r}")
    if address not in ("local", "auto"):
        _check_reachable(address)
    local = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=address, logging_level=logging.ERROR, **local)
    except (ConnectionError, RuntimeError, ValueError) as e:
        from ctrlgan.errors import summary

        raise InvalidRequest("ray", f"cannot connect to Ray at {address}: {summary(e)}") from None
    return True


def _check_reachable(address: str) -> None:
    """A host:port (or ray://host:port) that does not answer fails here in seconds."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest(
            "ray", f"{address!r} is not a Ray address: give host:port, auto or ray://host:port"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise InvalidRequest(
            "ray",
            f"no Ray cluster answers at {address} ({e.strerror or e}): start one with "
            "`ray start --head` or check the address",
        ) from None


def _actor_pool(ray, backend: str, actors: int | None) -> tuple[int, dict, int]:
    """The pool's size, each actor's Ray resources and its generator's threads.

    triton: one actor per GPU by default. More actors than GPUs share them, k = ceil(actors /
    GPUs) to a GPU with 1/k of it each: a shard's PNG encoding (0.1-0.2 ms an image on one
    core, benchmarks/README.md) then runs on k cores per GPU. Other backends: one actor per
    node by default, each with an equal share of the CPUs (one that packs onto the nodes) as
    its threads."""
    resources = ray.cluster_resources()
    total = int(resources.get("CPU", 0))
    if backend == "triton":
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise BackendUnavailable("backend triton needs GPUs, and the Ray cluster has none")
        n = actors or gpus
        if n > gpus and n > total:
            raise InvalidRequest(
                "actors",
                f"{n} actors sharing {gpus} GPU(s) need a CPU each; the cluster has {total}",
            )
        share = 1 / -(-n // gpus)
        return n, {"num_gpus": share, "num_cpus": 1 if total >= n else 0}, 1
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    node_cpus = [int(node["Resources"].get("CPU", 0)) for node in nodes]
    if total < 1:
        raise BackendUnavailable("the Ray cluster has no CPUs for generator actors")
    n = actors or max(1, sum(1 for c in node_cpus if c > 0))
    if n > total:
        raise InvalidRequest("actors", f"{n} actors of a CPU each; the cluster has {total}")
    # Equal shares that pack onto the nodes: ceil(n / nodes) actors on the smallest one.
    sizes = [c for c in node_cpus if c > 0]
    per_node = -(-n // len(sizes))
    cpus = max(1, min(total // n, min(sizes) // per_node))
    return n, {"num_cpus": cpus}, cpus
