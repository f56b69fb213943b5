"""Dynamic micro-batching: many small concurrent requests, few large backend calls.

    batcher = BatchingGenerator(ctrlgan.load("digits"))
    x = batcher.sample(classes=3, seeds=[7])              # from any thread: blocks for the result
    fut = batcher.submit(classes=[1, 2], seeds=[5, 6])    # a concurrent.futures.Future
    x = await batcher.asample(classes=3, seeds=[7])       # asyncio, without blocking the loop
    batcher.close()                                       # or: with BatchingGenerator(g) as b: ...

``submit`` validates a request at once, in the caller's thread, with ``Generator.prepare``: bad
input raises InvalidRequest there and nothing is queued (given noise ``z`` is copied then, so
the caller may reuse its array). Requests with given noise batch with each other, requests
with seeds with each other (``Rows.key``). One worker thread takes the oldest
queued request, waits until ``max_delay_ms`` after that request arrived (or less, once
``max_batch_size`` images with the same ``Rows.key`` are queued), then packs queued requests
of that key, oldest first, into one ``Generator.run`` call of at most ``max_batch_size``
images, and hands each request its own rows of the result. A row's image does not depend on
the rows it shares the call with (runtime/backends.py), so a batched sample equals the
unbatched one bit for bit on the torch and onnxruntime backends. A backend error fails exactly
the requests of its call.

The contract:
- Queue limit, in images: at most ``max_queue`` images wait (the batch being computed is not
  counted). A request that would go over it raises Overloaded at once ("retry later"); a single
  request of more than ``max_queue`` images could never fit and raises InvalidRequest instead.
- A request of more than ``max_batch_size`` images is allowed (up to the generator's
  ``max_batch``): it runs alone, passed whole to ``Generator.run`` (which bounds memory by
  chunking), as one backend call.
- ``timeout`` (seconds, per request): a request still queued at its deadline fails with
  TimeoutError then (a timer thread watches deadlines while the worker computes) and is never
  run; once its batch has started it runs to the end.
- Cancelling a queued future (``Future.cancel``, or cancelling the task awaiting ``asample``)
  drops the request at once, frees its queue room, and notifies ``concurrent.futures.wait``
  and ``as_completed`` (the future goes to CANCELLED_AND_NOTIFIED, as an executor's would).
  Every future is claimed exactly once (``_claim``): by the worker that runs it, the timer
  that expires it, a close that drops it, or its own cancellation.
- ``close(wait=True)`` stops accepting requests, runs everything already queued, waits for
  the worker to finish. ``close(wait=False)`` stops accepting, fails every queued request
  with Overloaded and returns at once (a batch already computing still delivers). After close,
  ``submit`` raises Overloaded: to a caller a closing runtime is one that cannot take more work,
  as with a full queue. No future is left pending.

Defaults (max_batch_size=64, max_delay_ms=0) come from benchmarks/bench_batcher.py with the
bundled digits model on onnxruntime, 2 CPU cores: under load requests pile up while the
previous call computes, so batches fill without waiting ("continuous batching"); any delay
makes the worker idle, and at 4 clients max_delay_ms=0.5 gave a third of the throughput of 0.
A delay pays where a backend call has a large fixed cost and requests arrive spread out in
time; set it per deployment. On 2 cores the batcher is bound by Python, not by the backend:
its worker and the threads (or the one event loop) that submit share the GIL, and every time
the worker gives the GIL up it may wait for all of them to get it back. Measured there
(2026-11-29, benchmarks/README.md): the worker's host-noise call took ~1 ms per batch instead of
11 µs while the clients it had just answered ran (the C noise no longer releases the GIL for
small calls), and onnxruntime's spinning pool threads halved the batcher's throughput under an
event loop (3,347 against 6,120 images/s; spinning is now off, runtime/ort.py); and
``asyncio.wrap_future`` woke the loop once per request (``asample`` now wakes it once per burst
of results). With those, 32-64 asyncio tasks got 1.76x the images/s of the same tasks calling
``Generator.sample`` in a thread pool; 32 client threads ~1.0x. onnxruntime's
own cost per image there stops falling at ~16 rows (~70-85 µs, against ~110-150 at one row),
which bounds what batching can win on such a machine.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import heapq
import threading
import time
from concurrent.futures import Future

from ctrlgan import validate
from ctrlgan.errors import InvalidRequest, Overloaded
from ctrlgan.runtime.generator import Generator, check_output, convert
from ctrlgan.runtime.request import Rows

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_DELAY_MS = 0.0
DEFAULT_MAX_QUEUE = 1024
MAX_DELAY_MS = 60_000.0  # a minute: far beyond any useful batching delay
MAX_TIMEOUT = 365 * 24 * 3600.0  # seconds; beyond it a deadline is no deadline


@dataclasses.dataclass(frozen=True)
class BatcherStats:
    """A snapshot of a BatchingGenerator's counters since it started."""

    requests: int  # accepted by submit
    images: int  # in the accepted requests
    backend_calls: int  # Generator.run calls made
    batched_images: int  # images those calls computed
    mean_batch_size: float  # batched_images / backend_calls (0.0 before the first call)
    rejected: int  # refused with Overloaded: queue full or closed
    timed_out: int  # failed with TimeoutError before running
    failed: int  # failed by a backend or conversion error


@dataclasses.dataclass(eq=False)  # compared by identity: deque.remove must not compare arrays
class _Request:
    rows: Rows
    output: str
    future: Future
    arrived: float  # time.monotonic()
    deadline: float | None
    queued: bool = True
    claimed: bool = False  # set_running_or_notify_cancel was called (see _claim)


class _LoopWaker:
    """Hands finished futures to one asyncio loop: the first of a burst schedules a flush, the
    others join it, so a batch of results costs the loop one wake-up."""

    def __init__(self, loop):
        self.loop = loop
        self.lock = threading.Lock()
        self.ready: list = []

    def add(self, waiter, future: Future) -> None:
        """From any thread (a future's done callback)."""
        with self.lock:
            first = not self.ready
            self.ready.append((waiter, future))
        if first:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits these
                self.loop.call_soon_threadsafe(self.flush)

    def flush(self) -> None:
        """In the loop: resolve every waiter handed over so far."""
        with self.lock:
            ready, self.ready = self.ready, []
        for waiter, future in ready:
            if waiter.done():
                continue
            if future.cancelled():
                waiter.cancel()
            elif (error := future.exception()) is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(future.result())


class BatchingGenerator:
    """Coalesces concurrent sample requests to one Generator into batched backend calls."""

    def __init__(
        self,
        generator: Generator,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_delay_ms: float = DEFAULT_MAX_DELAY_MS,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ):
        if not isinstance(generator, Generator):
            raise InvalidRequest(
                "generator",
                f"expected a Generator (ctrlgan.load(...)), got {validate.show(generator)}",
            )
        max_batch_size = validate.integer(max_batch_size, "max_batch_size", lo=1)
        max_queue = validate.integer(max_queue, "max_queue", lo=1)
        max_delay_ms = validate.real(max_delay_ms, "max_delay_ms", 0.0, MAX_DELAY_MS)
        self.generator = generator
        # a joined batch must pass Generator.run's own limit
        self.max_batch_size = min(max_batch_size, generator.max_batch)
        self.max_delay_ms = float(max_delay_ms)
        self.max_queue = max_queue
        self._delay = self.max_delay_ms / 1000.0

        # One lock guards everything below; the worker and the timer wait on their own
        # conditions of it. Futures are resolved outside the lock: their callbacks may submit.
        self._lock = threading.Lock()
        self._claim_lock = threading.Lock()  # taken after self._lock, never before it
        self._work = threading.Condition(self._lock)
        self._tick = threading.Condition(self._lock)
        self._queue: collections.deque[_Request] = collections.deque()
        self._queued_images = 0
        self._queued_by_key: collections.Counter = collections.Counter()
        self._deadlines: list[tuple[float, int, _Request]] = []  # heap; stale entries skipped
        self._seq = 0
        self._closed = False
        self._counts = dict.fromkeys(
            ("requests", "images", "backend_calls", "batched_images", "rejected", "timed_out",
             "failed"), 0,
        )  # fmt: skip
        self._worker = threading.Thread(target=self._work_loop, name="ctrlgan-batcher", daemon=True)
        self._timer: threading.Thread | None = None  # started by the first request with a timeout
        self._wakers: dict = {}  # asyncio loop -> _LoopWaker (asample)
        # Called by the worker after each successful backend call with (images, seconds of the
        # call, the queue wait in seconds of each request in it): the server's metrics.
        self.on_batch = None
        self._worker.start()

    # Public API ---------------------------------------------------------------------------
    def submit(
        self,
        classes=None,
        seeds=None,
        *,
        n: int | None = None,
        seed: int | None = None,
        steer=None,
        truncation: float | None = None,
        z=None,
        output: str = "float32",
        timeout: float | None = None,
    ) -> Future:
        """Queue a sample request (arguments as ``Generator.sample``); a Future of its images.

        Raises InvalidRequest for a bad request and Overloaded when the queue is full or the
        batcher is closed, at once and with nothing queued. ``timeout``: seconds the request
        may wait in the queue before its future fails with TimeoutError.
        """
        check_output(output)
        if timeout is not None:
            timeout = validate.real(timeout, "timeout", hi=MAX_TIMEOUT, above=0.0)
        rows = self.generator.prepare(
            classes, seeds, n=n, seed=seed, steer=steer, truncation=truncation, z=z
        )
        size = len(rows)
        if size > self.max_queue:
            field = (
                "z" if z is not None else "seeds" if seeds is not None
                else "n" if n is not None else "classes"
            )  # fmt: skip
            raise InvalidRequest(
                field, f"{size} images exceed the batcher's queue limit {self.max_queue}"
            )
        now = time.monotonic()
        req = _Request(rows, output, Future(), now, None if timeout is None else now + timeout)
        req.future.add_done_callback(lambda _, req=req: self._on_done(req))
        with self._lock:
            if self._closed:
                self._counts["rejected"] += 1
                raise Overloaded("the batcher is closed and accepts no new requests")
            if self._queued_images + size > self.max_queue:
                self._drop_cancelled()  # cancelled requests wait for the worker otherwise
            if self._queued_images + size > self.max_queue:
                self._counts["rejected"] += 1
                raise Overloaded(
                    f"queue full: {self._queued_images} of {self.max_queue} images waiting, "
                    f"no room for {size} more; retry later"
                )
            key = rows.key
            self._queue.append(req)
            self._queued_images += size
            self._queued_by_key[key] += size
            self._counts["requests"] += 1
            self._counts["images"] += size
            # Wake the worker only when it has something new to decide: the queue was empty,
            # or a full batch of this key is now waiting.
            if len(self._queue) == 1 or self._queued_by_key[key] >= self.max_batch_size:
                self._work.notify()
            if req.deadline is not None:
                heap = self._deadlines
                if len(heap) > 2 * len(self._queue) + 64:
                    # Drop entries of requests that left the queue: they hold finished futures,
                    # and with them their images, until their deadlines would have passed.
                    heap[:] = [entry for entry in heap if entry[2].queued]
                    heapq.heapify(heap)
                self._seq += 1
                heapq.heappush(heap, (req.deadline, self._seq, req))
                if self._timer is None:
                    self._timer = threading.Thread(
                        target=self._timer_loop, name="ctrlgan-batcher-timer", daemon=True
                    )
                    self._timer.start()
                elif heap[0][2] is req:
                    self._tick.notify()
        return req.future

    def sample(
        self,
        classes=None,
        seeds=None,
        *,
        n: int | None = None,
        seed: int | None = None,
        steer=None,
        truncation: float | None = None,
        z=None,
        output: str = "float32",
        timeout: float | None = None,
    ):
        """``submit(...).result()``: blocks until the images are ready."""
        future = self.submit(
            classes, seeds, n=n, seed=seed, steer=steer, truncation=truncation, z=z,
            output=output, timeout=timeout,
        )  # fmt: skip
        return future.result()

    async def asample(
        self,
        classes=None,
        seeds=None,
        *,
        n: int | None = None,
        seed: int | None = None,
        steer=None,
        truncation: float | None = None,
        z=None,
        output: str = "float32",
        timeout: float | None = None,
    ):
        """``submit(...)`` awaited from asyncio without blocking the event loop.

        Results reach the loop through one ``call_soon_threadsafe`` per burst (a batch's
        results arrive together), not one per request as ``asyncio.wrap_future`` would: each
        such call wakes the loop and makes the worker give up the GIL for a write.
        """
        import asyncio  # here, not at the top: 25 ms of every cold start otherwise

        loop = asyncio.get_running_loop()
        waker = self._wakers.get(loop)
        if waker is None:
            with self._lock:
                for old in [k for k in self._wakers if k.is_closed()]:
                    del self._wakers[old]
                waker = self._wakers.setdefault(loop, _LoopWaker(loop))
        future = self.submit(
            classes, seeds, n=n, seed=seed, steer=steer, truncation=truncation, z=z,
            output=output, timeout=timeout,
        )  # fmt: skip
        waiter = loop.create_future()
        # the task's cancellation cancels the request (a no-op once it has run)
        waiter.add_done_callback(lambda w: future.cancel() if w.cancelled() else None)
        future.add_done_callback(lambda f: waker.add(waiter, f))
        return await waiter

    def flush(self) -> None:
        """From now on, run queued requests without waiting out ``max_delay_ms`` (a server
        that drains wants its accepted requests answered at once)."""
        with self._lock:
            self._delay = 0.0
            self._work.notify_all()

    def close(self, wait: bool = True) -> None:
        """Stop accepting requests. wait=True: run the queued ones and wait for the worker;
        wait=False: fail the queued ones with Overloaded and return at once."""
        with self._lock:
            self._closed = True
            dropped = [] if wait else self._drain()
            self._work.notify_all()
            self._tick.notify_all()
        error = Overloaded("the batcher was closed before this request ran")
        for req in dropped:
            if self._claim(req):
                req.future.set_exception(error)
        # From a future's callback (run by the worker or the timer) there is nothing to wait
        # for that does not wait for this very thread: return, the work still completes.
        if wait and threading.current_thread() not in (self._worker, self._timer):
            for thread in (self._worker, self._timer):
                if thread is not None:
                    thread.join()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def queued_images(self) -> int:
        """Images waiting in the queue now (the batch being computed is not counted)."""
        return self._queued_images

    @property
    def stats(self) -> BatcherStats:
        with self._lock:
            c = dict(self._counts)
        mean = c["batched_images"] / c["backend_calls"] if c["backend_calls"] else 0.0
        return BatcherStats(mean_batch_size=mean, **c)

    def __enter__(self) -> BatchingGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close(wait=True)

    def __repr__(self) -> str:
        return (
            f"BatchingGenerator({self.generator!r}, max_batch_size={self.max_batch_size}, "
            f"max_delay_ms={self.max_delay_ms}, max_queue={self.max_queue})"
        )

    # The worker ---------------------------------------------------------------------------
    def _work_loop(self) -> None:
        try:
            self._work_loop_inner()
        except BaseException as error:  # e.g. SystemExit from a backend: leave nothing pending
            with self._lock:
                self._closed = True
                dropped = self._drain()
                self._tick.notify_all()
            for req in dropped:
                if self._claim(req):
                    req.future.set_exception(Overloaded(f"the batcher's worker stopped: {error!r}"))
            raise

    def _work_loop_inner(self) -> None:
        while True:
            with self._lock:
                batch, expired = self._next_batch()
            self._fail_expired(expired)
            if batch is None:
                with self._lock:
                    self._tick.notify_all()  # the timer may sleep on a deadline far away
                return
            if batch:
                self._run(batch)

    def _next_batch(self) -> tuple[list[_Request] | None, list[_Request]]:
        """Under the lock: wait for work, then take one batch (None: closed and drained)."""
        while True:
            while self._queue and self._queue[0].future.cancelled():
                req = self._queue.popleft()
                self._unqueue(req)
                self._claim(req)
            if not self._queue:
                if self._closed:
                    return None, []
                self._work.wait()
                continue
            first = self._queue[0]
            key = first.rows.key
            if not self._closed and self._queued_by_key[key] < self.max_batch_size:
                left = first.arrived + self._delay - time.monotonic()
                if left > 0:
                    self._work.wait(left)
                    continue
            return self._take(key)

    def _take(self, key) -> tuple[list[_Request], list[_Request]]:
        """Under the lock: queued requests of ``key``, oldest first, packed into one batch of
        at most max_batch_size images (the first alone if it is larger); expired ones apart."""
        batch, expired, skipped, total = [], [], [], 0
        now = time.monotonic()
        while self._queue and total < self.max_batch_size:
            req = self._queue.popleft()
            size = len(req.rows)
            if req.rows.key != key or (batch and total + size > self.max_batch_size):
                skipped.append(req)
                continue
            self._unqueue(req)
            if req.deadline is not None and now >= req.deadline:
                expired.append(req)
            elif self._claim(req):  # False: cancelled, drop it
                batch.append(req)
                total += size
        self._queue.extendleft(reversed(skipped))
        return batch, expired

    def _run(self, batch: list[_Request]) -> None:
        """Outside the lock: one backend call for the batch, then each future its rows."""
        started = time.monotonic()
        try:
            rows = batch[0].rows if len(batch) == 1 else Rows.concat([r.rows for r in batch])
            images = self.generator.run(rows)
        except BaseException as error:  # a backend failure fails exactly this call's requests
            with self._lock:
                self._counts["backend_calls"] += 1
                self._counts["failed"] += len(batch)
            for req in batch:
                req.future.set_exception(error)
            if not isinstance(error, Exception):
                raise  # SystemExit, KeyboardInterrupt: the worker stops (see _work_loop)
            return
        with self._lock:
            self._counts["backend_calls"] += 1
            self._counts["batched_images"] += len(rows)
        if self.on_batch is not None:
            try:
                waits = [started - req.arrived for req in batch]
                self.on_batch(len(rows), time.monotonic() - started, waits)
            except Exception:  # an observer's failure must not fail the requests
                pass
        start = 0
        for req in batch:
            stop = start + len(req.rows)
            part = images[start:stop]
            if len(batch) > 1 and req.output in ("float32", "torch"):
                part = part.copy()  # so that a small result does not keep the batch alive
            start = stop
            try:
                result = convert(part, req.output)
            except Exception as error:
                with self._lock:
                    self._counts["failed"] += 1
                req.future.set_exception(error)
            else:
                req.future.set_result(result)

    # The deadline timer -------------------------------------------------------------------
    def _timer_loop(self) -> None:
        """Fails queued requests at their deadlines, also while the worker computes."""
        while True:
            with self._lock:
                heap = self._deadlines
                while heap and not heap[0][2].queued:
                    heapq.heappop(heap)
                if self._closed and not self._queue:  # nothing left to expire, ever
                    return
                expired = []
                now = time.monotonic()
                while heap and (heap[0][0] <= now or not heap[0][2].queued):
                    req = heapq.heappop(heap)[2]
                    if req.queued:
                        self._queue.remove(req)
                        self._unqueue(req)
                        expired.append(req)
                if not expired:
                    self._tick.wait(heap[0][0] - now if heap else None)
            self._fail_expired(expired)

    # Helpers ------------------------------------------------------------------------------
    def _unqueue(self, req: _Request) -> None:
        """Under the lock: the accounting of a request leaving the queue."""
        req.queued = False
        size = len(req.rows)
        self._queued_images -= size
        key = req.rows.key
        self._queued_by_key[key] -= size
        if not self._queued_by_key[key]:
            del self._queued_by_key[key]

    def _claim(self, req: _Request) -> bool:
        """Call the future's set_running_or_notify_cancel, once in its life (a second call
        raises): True if it is now RUNNING and ours to resolve, False if it was cancelled (and
        its waiters are now notified) or claimed before."""
        with self._claim_lock:
            if req.claimed:
                return False
            req.claimed = True
            return req.future.set_running_or_notify_cancel()

    def _on_done(self, req: _Request) -> None:
        """Every future's done callback: a cancelled one leaves the queue now, its room freed,
        and is claimed so that wait() and as_completed() see it (otherwise they would wait
        until the worker reached it)."""
        if not req.future.cancelled():
            return
        with self._lock:
            if req.queued:
                self._queue.remove(req)
                self._unqueue(req)
        self._claim(req)

    def _drop_cancelled(self) -> None:
        """Under the lock: remove cancelled requests from the queue, freeing their room."""
        cancelled = [req for req in self._queue if req.future.cancelled()]
        for req in cancelled:
            self._queue.remove(req)
            self._unqueue(req)
            self._claim(req)

    def _drain(self) -> list[_Request]:
        """Under the lock: every queued request, removed from the queue."""
        dropped = list(self._queue)
        self._queue.clear()
        for req in dropped:
            self._unqueue(req)
        return dropped

    def _fail_expired(self, expired: list[_Request]) -> None:
        if not expired:
            return
        timed_out = 0
        for req in expired:
            if self._claim(req):
                waited = time.monotonic() - req.arrived
                req.future.set_exception(
                    TimeoutError(f"request timed out after {waited:.3f} s in the queue")
                )
                timed_out += 1
        with self._lock:
            self._counts["timed_out"] += timed_out
