"""The micro-batcher: each request gets exactly its own images, bit-equal to an unbatched call,
however requests are coalesced; full queues, timeouts, close, bad input and backend errors.

Tests that need a request to stay queued hold the backend with a Gate (an Event) instead of
sleeping: the worker's first call blocks inside the backend until the test opens the gate.
"""

import asyncio
import shutil
import threading
import time

import numpy as np
import pytest

import ctrlgan
from ctrlgan.errors import InvalidRequest, Overloaded
from ctrlgan.runtime.batcher import BatcherStats, BatchingGenerator

WAIT = 20.0  # seconds: a bound on waits that only a bug reaches


@pytest.fixture(scope="module")
def g(tiny_model):
    return ctrlgan.load(tiny_model.artifact.path, backend="torch")


class Gate:
    """Stands in for ``g.run``: records each call's seeds, blocks until ``opened`` is set."""

    def __init__(self, run):
        self._run = run
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.calls: list[list[int]] = []

    def __call__(self, rows):
        self.calls.append(rows.seeds.tolist())
        self.entered.set()
        assert self.opened.wait(WAIT), "the test never opened the gate"
        return self._run(rows)

    def ran(self, seed: int) -> bool:
        return any(seed in call for call in self.calls)


@pytest.fixture
def gate(g, monkeypatch):
    gate = Gate(g.run)
    monkeypatch.setattr(g, "run", gate)
    yield gate
    gate.opened.set()  # never leave a worker blocked


def hold_worker(b: BatchingGenerator, gate: Gate, seed: int = 10_000):
    """Submit one request and wait until the worker is blocked computing it."""
    future = b.submit(classes=0, seeds=[seed])
    assert gate.entered.wait(WAIT)
    return future


def random_requests(rng, count: int) -> list[dict]:
    requests = []
    for _ in range(count):
        size = int(rng.integers(1, 6))
        classes = [int(c) for c in rng.integers(0, 10, size)]
        if rng.random() < 0.2:
            classes[0] = (classes[0], int(rng.integers(0, 10)), float(rng.random()))  # a mix
        requests.append(
            {
                "classes": classes,
                "seeds": [int(s) for s in rng.integers(0, 2**63, size)],
                "steer": [None, {}][int(rng.integers(0, 2))],
                "truncation": [None, 1.0, 1.5][int(rng.integers(0, 3))],
            }
        )
    return requests


def test_many_threads_each_get_exactly_their_own_images(g, monkeypatch):
    rng = np.random.default_rng()
    threads, per_thread = 32, 4
    requests = [random_requests(rng, per_thread) for _ in range(threads)]
    expected = [[g.sample(**r) for r in rs] for rs in requests]  # unbatched, before the gate
    gate = Gate(g.run)
    monkeypatch.setattr(g, "run", gate)
    submitted = threading.Barrier(threads + 1)
    results: list = [None] * threads

    def client(k: int) -> None:
        futures = [b.submit(**r) for r in requests[k]]
        submitted.wait(WAIT)
        results[k] = [f.result(WAIT) for f in futures]

    with BatchingGenerator(g, max_batch_size=16, max_delay_ms=5.0) as b:
        workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
        for w in workers:
            w.start()
        submitted.wait(WAIT)  # everything is queued (or computing) before any call returns
        gate.opened.set()
        for w in workers:
            w.join(WAIT)
    for k in range(threads):
        assert len(results[k]) == per_thread
        for got, want in zip(results[k], expected[k], strict=True):
            assert got.dtype == np.float32 and got.shape == want.shape
            assert np.array_equal(got, want)
    stats = b.stats
    n_requests = threads * per_thread
    n_images = sum(len(r["seeds"]) for rs in requests for r in rs)
    assert stats.requests == n_requests and stats.images == stats.batched_images == n_images
    assert stats.backend_calls == len(gate.calls) < n_requests / 2  # coalesced
    assert max(len(call) for call in gate.calls) <= 16
    assert stats.mean_batch_size == pytest.approx(n_images / stats.backend_calls)
    assert stats.rejected == stats.timed_out == stats.failed == 0


def test_asample_from_many_tasks(g, gate):
    requests = random_requests(np.random.default_rng(), 48)

    async def main(b):
        tasks = [asyncio.ensure_future(b.asample(**r)) for r in requests]
        # The backend is blocked in the worker thread, yet the event loop keeps running.
        await asyncio.get_running_loop().run_in_executor(None, gate.entered.wait, WAIT)
        for _ in range(3):
            await asyncio.sleep(0)
        assert not any(t.done() for t in tasks)
        gate.opened.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), WAIT)

    with BatchingGenerator(g, max_batch_size=32, max_delay_ms=1.0) as b:
        results = asyncio.run(main(b))
    gate.opened.set()
    for got, r in zip(results, requests, strict=True):
        assert np.array_equal(got, g.sample(**r))
    assert b.stats.backend_calls < len(requests)


def test_full_queue_raises_overloaded_at_once(g, gate):
    with BatchingGenerator(g, max_batch_size=4, max_queue=6, max_delay_ms=0) as b:
        running = hold_worker(b, gate)  # taken off the queue: not counted
        queued = [b.submit(classes=1, seeds=[1, 2]), b.submit(classes=2, n=4, seed=3)]
        with pytest.raises(Overloaded, match="queue full"):
            b.submit(classes=3, seeds=[7])
        with pytest.raises(InvalidRequest, match="queue limit") as err:
            b.submit(classes=3, n=7)  # could never fit: not a "retry later"
        assert err.value.field == "n"
        assert b.stats.rejected == 1 and b.stats.requests == 3
        gate.opened.set()
        assert running.result(WAIT).shape == (1, 1, 16, 16)
        assert np.array_equal(queued[0].result(WAIT), g.sample(classes=1, seeds=[1, 2]))
        assert np.array_equal(queued[1].result(WAIT), g.sample(classes=2, n=4, seed=3))
        b.submit(classes=3, seeds=[7]).result(WAIT)  # room again


def test_timeout_fails_a_queued_request_without_running_it(g, gate):
    with BatchingGenerator(g, max_delay_ms=0) as b:
        running = hold_worker(b, gate)
        late = b.submit(classes=1, seeds=[111], timeout=0.05)
        patient = b.submit(classes=1, seeds=[222], timeout=60)
        # fails at its deadline although the worker is still blocked in the backend
        assert isinstance(late.exception(WAIT), TimeoutError)
        assert not patient.done()
        gate.opened.set()
        assert running.result(WAIT).shape == (1, 1, 16, 16)
        assert np.array_equal(patient.result(WAIT), g.sample(classes=1, seeds=[222]))
    assert not gate.ran(111) and gate.ran(222)
    assert b.stats.timed_out == 1


def test_close_runs_everything_queued(g):
    b = BatchingGenerator(g, max_batch_size=8, max_delay_ms=2.0)
    futures = [b.submit(classes=k % 10, seeds=[k, k + 1]) for k in range(40)]
    b.close()
    assert b.closed and all(f.done() for f in futures)
    for k, f in enumerate(futures):
        assert np.array_equal(f.result(0), g.sample(classes=k % 10, seeds=[k, k + 1]))
    with pytest.raises(Overloaded, match="closed"):
        b.submit(classes=1, seeds=[1])
    with pytest.raises(Overloaded, match="closed"):
        asyncio.run(b.asample(classes=1, seeds=[1]))
    assert b.stats.rejected == 2
    b.close()  # again: nothing to do


def test_close_waits_for_pending_requests(g, gate):
    b = BatchingGenerator(g, max_delay_ms=0)
    running = hold_worker(b, gate)
    queued = b.submit(classes=4, seeds=[44])
    closer = threading.Thread(target=b.close)
    closer.start()
    deadline = time.monotonic() + WAIT
    while not b.closed and time.monotonic() < deadline:  # close() has begun
        time.sleep(0.001)
    with pytest.raises(Overloaded):
        b.submit(classes=1, seeds=[1])
    assert closer.is_alive() and not queued.done()
    gate.opened.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert running.done() and np.array_equal(queued.result(0), g.sample(classes=4, seeds=[44]))


def test_close_without_waiting_fails_queued_requests(g, gate):
    b = BatchingGenerator(g, max_delay_ms=0)
    running = hold_worker(b, gate)
    queued = [b.submit(classes=5, seeds=[55]), b.submit(classes=6, seeds=[66], timeout=60)]
    b.close(wait=False)  # returns while the backend is still blocked
    for f in queued:
        assert isinstance(f.exception(0), Overloaded)
    assert not running.done()
    gate.opened.set()
    assert running.result(WAIT).shape == (1, 1, 16, 16)  # the batch in flight delivers
    b.close()
    assert not gate.ran(55) and not gate.ran(66)


def test_context_manager_closes(g):
    with BatchingGenerator(g) as b:
        future = b.submit(classes=2, seeds=[3])
    assert b.closed and future.done()
    with pytest.raises(Overloaded):
        b.sample(classes=2, seeds=[3])


def test_cancelled_request_is_not_run(g, gate):
    with BatchingGenerator(g, max_delay_ms=0) as b:
        hold_worker(b, gate)
        dropped = b.submit(classes=7, seeds=[77])
        kept = b.submit(classes=7, seeds=[78])
        assert dropped.cancel()
        gate.opened.set()
        assert np.array_equal(kept.result(WAIT), g.sample(classes=7, seeds=[78]))
    assert not gate.ran(77)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"classes": 10, "seeds": [1]}, "classes"),
        ({"classes": "ten", "seeds": [1]}, "classes"),
        ({"classes": [1, 2], "seeds": [1]}, "seeds"),
        ({"classes": 1, "seeds": [-1]}, "seeds"),
        ({"classes": 1, "seeds": [1], "truncation": float("nan")}, "truncation"),
        ({"classes": 1, "seeds": [1], "steer": {"slant": 1.0}}, "steer"),
        ({"classes": 1, "seeds": [1], "output": "png"}, "output"),
        ({"classes": 1, "seeds": [1], "timeout": 0}, "timeout"),
        ({"classes": 1, "seeds": [1], "timeout": float("inf")}, "timeout"),
    ],
)
def test_bad_request_raises_at_submit_and_queues_nothing(g, request_, field):
    with BatchingGenerator(g) as b:
        with pytest.raises(InvalidRequest) as err:
            b.submit(**request_)
        assert err.value.field == field
        with pytest.raises(InvalidRequest):
            asyncio.run(b.asample(**request_))
        assert b.stats.requests == 0


@pytest.mark.parametrize(
    "options",
    [{"max_batch_size": 0}, {"max_queue": 1.5}, {"max_delay_ms": -1}, {"max_delay_ms": "1"}],
)
def test_bad_settings(g, options):
    with pytest.raises(InvalidRequest) as err:
        BatchingGenerator(g, **options)
    assert err.value.field == next(iter(options))


def test_backend_error_fails_only_its_batch(g, gate):
    def run(rows):
        if 666 in rows.seeds.tolist():
            raise RuntimeError("backend broke")
        return type(g).run(g, rows)  # the class's run: g.run is the gate

    gate._run = run
    with BatchingGenerator(g, max_delay_ms=0) as b:
        running = hold_worker(b, gate)
        bad = b.submit(classes=1, seeds=[666])
        other_key = b.submit(classes=1, seeds=[5], truncation=1.5)  # another call
        same_call = b.submit(classes=2, seeds=[6])  # joins the failing call
        gate.opened.set()
        assert running.result(WAIT).shape == (1, 1, 16, 16)
        for f in (bad, same_call):
            with pytest.raises(RuntimeError, match="backend broke"):
                f.result(WAIT)
        assert np.array_equal(
            other_key.result(WAIT), g.sample(classes=1, seeds=[5], truncation=1.5)
        )
        assert b.sample(classes=3, seeds=[7]).shape == (1, 1, 16, 16)  # the worker lives on
    assert gate.calls[1] == [666, 6]
    assert b.stats.failed == 2


def test_oversize_request_runs_alone_and_small_ones_pack_around_it(g, gate):
    with BatchingGenerator(g, max_batch_size=4, max_delay_ms=0) as b:
        hold_worker(b, gate)
        small = b.submit(classes=1, seeds=[1])
        big = b.submit(classes=2, seeds=list(range(100, 110)))
        small2 = b.submit(classes=3, seeds=[3, 4])
        gate.opened.set()
        assert np.array_equal(big.result(WAIT), g.sample(classes=2, seeds=list(range(100, 110))))
        assert np.array_equal(small.result(WAIT), g.sample(classes=1, seeds=[1]))
        assert np.array_equal(small2.result(WAIT), g.sample(classes=3, seeds=[3, 4]))
    # oldest first; the big request does not fit beside the first, the next small one does
    assert [len(c) for c in gate.calls[1:3]] == [3, 10]
    assert gate.calls[1] == [1, 3, 4]


def test_output_forms_in_one_batch(g, gate):
    with BatchingGenerator(g, max_delay_ms=0) as b:
        hold_worker(b, gate)
        as_u8 = b.submit(classes=[1, 2], seeds=[1, 2], output="uint8")
        as_f32 = b.submit(classes=[3], seeds=[3])
        as_torch = b.submit(classes=[4], seeds=[4], output="torch")
        gate.opened.set()
        u8, f32, tensor = (f.result(WAIT) for f in (as_u8, as_f32, as_torch))
    assert len(gate.calls) == 2  # the three shared one call
    assert u8.dtype == np.uint8 and u8.shape == (2, 16, 16, 1)
    assert np.array_equal(u8, g.sample(classes=[1, 2], seeds=[1, 2], output="uint8"))
    assert np.array_equal(u8, ctrlgan.to_uint8(g.sample(classes=[1, 2], seeds=[1, 2])))
    assert np.array_equal(f32, g.sample(classes=[3], seeds=[3]))
    assert np.array_equal(tensor.numpy(), g.sample(classes=[4], seeds=[4]))


def test_stats_is_a_snapshot(g):
    with BatchingGenerator(g) as b:
        before = b.stats
        b.sample(classes=1, n=3)
    assert isinstance(before, BatcherStats) and before.requests == 0
    assert before.mean_batch_size == 0.0
    assert (b.stats.requests, b.stats.images, b.stats.backend_calls) == (1, 3, 1)


def test_onnxruntime_backend_is_bit_identical_through_the_batcher(tiny_model, tmp_path):
    from ctrlgan.export import onnx as export

    path = tmp_path / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    export.export(path)
    ort = ctrlgan.load(path, backend="onnxruntime", threads=1)
    requests = random_requests(np.random.default_rng(), 64)
    expected = [ort.sample(**r) for r in requests]
    with BatchingGenerator(ort, max_batch_size=16, max_delay_ms=2.0) as b:
        futures = [b.submit(**r) for r in requests]
        results = [f.result(WAIT) for f in futures]
    for got, want in zip(results, expected, strict=True):
        assert np.array_equal(got, want)
    assert b.stats.backend_calls < len(requests)


def test_close_from_a_done_callback_does_not_deadlock(g, gate):
    b = BatchingGenerator(g, max_delay_ms=0)
    running = hold_worker(b, gate)
    queued = b.submit(classes=1, seeds=[1])
    running.add_done_callback(lambda _: b.close())  # will run in the worker thread
    gate.opened.set()
    assert running.result(WAIT).shape == (1, 1, 16, 16)
    b.close()
    assert b.closed and queued.result(0).shape == (1, 1, 16, 16)


def test_served_requests_do_not_linger_in_the_deadline_heap(g):
    with BatchingGenerator(g, max_delay_ms=0) as b:
        for seed in range(300):
            b.sample(classes=1, seeds=[seed], timeout=600)
        assert len(b._deadlines) <= 65  # pruned, though no deadline has passed


def test_cancelled_requests_free_their_queue_room(g, gate):
    with BatchingGenerator(g, max_delay_ms=0, max_queue=2) as b:
        hold_worker(b, gate)
        first, second = b.submit(classes=1, seeds=[1]), b.submit(classes=1, seeds=[2])
        with pytest.raises(Overloaded):
            b.submit(classes=1, seeds=[3])
        assert first.cancel() and second.cancel()
        third = b.submit(classes=1, seeds=[3])  # room again, without waiting for the worker
        gate.opened.set()
        assert np.array_equal(third.result(WAIT), g.sample(classes=1, seeds=[3]))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_killed_by_a_base_exception_leaves_nothing_pending(g, gate):
    def run(rows):
        raise SystemExit("backend called exit")

    gate._run = run
    b = BatchingGenerator(g, max_delay_ms=0)
    running = hold_worker(b, gate)
    queued = b.submit(classes=1, seeds=[5])
    gate.opened.set()
    with pytest.raises(SystemExit):
        running.result(WAIT)
    with pytest.raises(Overloaded, match="worker stopped"):
        queued.result(WAIT)
    with pytest.raises(Overloaded):
        b.submit(classes=1, seeds=[6])
    b.close()


def test_cancelled_futures_notify_wait_and_as_completed(g, gate):
    """concurrent.futures.wait and as_completed return for cancelled requests at once, while
    the worker is still busy: a cancelled future is CANCELLED_AND_NOTIFIED, as an executor's."""
    import concurrent.futures as cf

    with BatchingGenerator(g, max_batch_size=8, max_queue=1000) as b:
        held = hold_worker(b, gate)
        futures = [b.submit(classes=1, seeds=[i]) for i in range(300)]
        cancelled = futures[:200]
        assert all(f.cancel() for f in cancelled)
        start = time.monotonic()
        _, not_done = cf.wait(cancelled, timeout=WAIT)
        assert not not_done and time.monotonic() - start < 1.0  # not after the worker
        assert list(cf.as_completed(cancelled, timeout=WAIT)) and not gate.opened.is_set()
        assert b.stats.requests == 301
        gate.opened.set()
        _, not_done = cf.wait([held, *futures], timeout=WAIT)
        assert not not_done
        assert sum(1 for _ in cf.as_completed(futures, timeout=WAIT)) == 300
    ran = {s for call in gate.calls for s in call}
    assert not ran & set(range(200)) and set(range(200, 300)) <= ran
    for f in futures[200:]:
        assert f.result().shape == (1, 1, 16, 16)


def test_cancel_races_with_the_worker_leave_every_future_resolved(g):
    """Cancels from another thread while the worker takes batches: every future ends
    cancelled or with its image, and no state error is raised anywhere."""
    import concurrent.futures as cf

    with BatchingGenerator(g, max_batch_size=4, max_queue=10_000) as b:
        futures = [b.submit(classes=2, seeds=[i]) for i in range(400)]
        canceller = threading.Thread(target=lambda: [f.cancel() for f in futures[::2]])
        canceller.start()
        canceller.join()
        _, not_done = cf.wait(futures, timeout=WAIT)
    assert not not_done
    for f in futures:
        assert f.cancelled() or f.result().shape == (1, 1, 16, 16)


def test_flush_runs_queued_requests_without_waiting_out_the_delay(g):
    """A draining server calls flush(): a request queued behind a 60 s batching delay runs at
    once, and later ones do not wait either."""
    with BatchingGenerator(g, max_batch_size=64, max_delay_ms=60_000) as b:
        future = b.submit(classes=[2], seeds=[11])
        time.sleep(0.05)
        assert not future.done()  # held for the delay
        start = time.monotonic()
        b.flush()
        got = future.result(WAIT)
        later = b.submit(classes=[3], seeds=[12]).result(WAIT)
        assert time.monotonic() - start < WAIT / 2
    np.testing.assert_array_equal(got, g.sample(classes=[2], seeds=[11]))
    np.testing.assert_array_equal(later, g.sample(classes=[3], seeds=[12]))
