from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelfab.serving.batching import DEADLINE_SLACK_S, BatcherClosed, DynamicBatcher, plan

times = st.floats(min_value=0, max_value=1e6, allow_nan=False)
waits = st.floats(min_value=0, max_value=10, allow_nan=False)
sizes = st.integers(min_value=1, max_value=64)


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), timeout=20))


# --- plan: the pure decision ---------------------------------------------------------


@given(queued=st.integers(0, 200), age=waits, start=times, size=sizes, wait=waits)
def test_plan_never_takes_more_than_queued_or_the_batch_size(
    queued: int, age: float, start: float, size: int, wait: float
) -> None:
    d = plan(queued, start if queued else None, start + age, max_batch_size=size, max_wait_s=wait)
    assert 0 <= d.take <= min(queued, size)


@given(queued=st.integers(1, 200), age=waits, start=times, size=sizes, wait=waits)
def test_plan_never_waits_past_the_oldest_deadline(
    queued: int, age: float, start: float, size: int, wait: float
) -> None:
    now = start + age
    d = plan(queued, start, now, max_batch_size=size, max_wait_s=wait)
    if d.take == 0:
        assert d.wait_s is not None and 0 < d.wait_s <= wait + 1e-6  # float rounding
        assert now + d.wait_s <= start + wait + 1e-6
    else:
        assert d.wait_s == 0.0


@given(queued=st.integers(1, 200), age=waits, start=times, size=sizes, wait=waits)
def test_plan_takes_a_full_batch_at_once_and_everything_at_the_deadline(
    queued: int, age: float, start: float, size: int, wait: float
) -> None:
    d = plan(queued, start, start + age, max_batch_size=size, max_wait_s=wait)
    if queued >= size:
        assert d.take == size
    elif age >= wait:
        assert d.take == queued
    elif wait - age > 2 * DEADLINE_SLACK_S:
        assert d.take == 0  # a partial batch never leaves before its deadline


@given(queued=st.integers(1, 200), age=waits, start=times, size=sizes, wait=waits)
def test_plan_waiting_as_told_then_takes_something(
    queued: int, age: float, start: float, size: int, wait: float
) -> None:
    now = start + age
    d = plan(queued, start, now, max_batch_size=size, max_wait_s=wait)
    if d.take == 0:
        assert d.wait_s is not None
        later = plan(queued, start, now + d.wait_s, max_batch_size=size, max_wait_s=wait)
        assert later.take == queued


def test_plan_with_nothing_queued_waits_for_an_arrival() -> None:
    d = plan(0, None, 5.0, max_batch_size=8, max_wait_s=0.01)
    assert (d.take, d.wait_s) == (0, None)


@pytest.mark.parametrize(
    ("queued", "oldest", "size", "wait"),
    [(-1, None, 8, 0.1), (1, 0.0, 0, 0.1), (1, 0.0, 8, -1.0), (2, None, 8, 0.1)],
)
def test_plan_refuses_nonsense(queued: int, oldest: float | None, size: int, wait: float) -> None:
    with pytest.raises(ValueError):
        plan(queued, oldest, 1.0, max_batch_size=size, max_wait_s=wait)


# --- DynamicBatcher -----------------------------------------------------------------


class Recorder:
    """A run_batch that doubles its items and records every batch it saw."""

    def __init__(self, delay_s: float = 0.0, fail_on: object = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.batches.append(list(items))
        try:
            time.sleep(self.delay_s)
            if self.fail_on in items:
                raise RuntimeError(f"bad item {self.fail_on}")
            return [x * 2 for x in items]
        finally:
            with self._lock:
                self.active -= 1


def test_concurrent_submits_form_batches_and_keep_order() -> None:
    rec = Recorder(delay_s=0.01)

    async def main() -> list[list[int]]:
        batcher = DynamicBatcher(rec, max_batch_size=4, max_wait_s=0.05)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit([i, 100 + i]) for i in range(10)))
        await batcher.stop()
        return results

    results = run(main)
    assert results == [[2 * i, 200 + 2 * i] for i in range(10)]
    assert max(len(b) for b in rec.batches) == 4
    assert all(len(b) <= 4 for b in rec.batches)
    assert sum(len(b) for b in rec.batches) == 20
    assert rec.max_active == 1  # one batch at a time


def test_one_request_is_split_over_batches() -> None:
    rec = Recorder()

    async def main() -> list[int]:
        batcher = DynamicBatcher(rec, max_batch_size=2, max_wait_s=0)
        batcher.start()
        try:
            return await batcher.submit([1, 2, 3, 4, 5])
        finally:
            await batcher.stop()

    assert run(main) == [2, 4, 6, 8, 10]
    assert [len(b) for b in rec.batches] == [2, 2, 1]


def test_the_next_batch_forms_while_one_runs() -> None:
    release = threading.Event()
    started = threading.Event()
    seen: list[list[int]] = []

    def run_batch(items: list[int]) -> list[int]:
        seen.append(items)
        started.set()
        release.wait(10)
        return items

    async def main() -> None:
        batcher = DynamicBatcher(run_batch, max_batch_size=8, max_wait_s=0)
        batcher.start()
        first = asyncio.create_task(batcher.submit([0]))
        await asyncio.to_thread(started.wait, 10)
        later = [asyncio.create_task(batcher.submit([i])) for i in (1, 2, 3)]
        await asyncio.sleep(0.05)
        assert batcher.queued == 3  # accepted while the first batch runs, not yet run
        assert batcher.in_flight == 1  # what the replica reports as running
        release.set()
        assert await first == [0]
        assert [await t for t in later] == [[1], [2], [3]]
        await batcher.stop()
        assert batcher.in_flight == 0

    run(main)
    assert seen == [[0], [1, 2, 3]]


def test_a_failing_batch_fails_exactly_its_requests() -> None:
    rec = Recorder(fail_on=13)

    async def main() -> None:
        batcher = DynamicBatcher(rec, max_batch_size=2, max_wait_s=0)
        batcher.start()
        ok, bad = await asyncio.gather(
            batcher.submit([1, 2]), batcher.submit([13, 3]), return_exceptions=True
        )
        assert ok == [2, 4]
        assert isinstance(bad, RuntimeError) and "bad item 13" in str(bad)
        assert await batcher.submit([5]) == [10]  # the batcher lives on
        await batcher.stop()

    run(main)
    assert rec.batches == [[1, 2], [13, 3], [5]]


def test_a_partial_batch_waits_for_max_wait_and_a_full_one_does_not() -> None:
    async def main() -> tuple[float, float]:
        batcher = DynamicBatcher(Recorder(), max_batch_size=2, max_wait_s=0.1)
        batcher.start()
        t0 = time.monotonic()
        await batcher.submit([1])
        partial = time.monotonic() - t0
        batcher.configure(max_wait_s=30)
        t0 = time.monotonic()
        await batcher.submit([1, 2])
        full = time.monotonic() - t0
        await batcher.stop()
        return partial, full

    partial, full = run(main)
    assert partial >= 0.09
    assert full < 10


def test_limits_change_per_submit_and_are_checked() -> None:
    rec = Recorder()

    async def main() -> None:
        batcher = DynamicBatcher(rec, max_batch_size=8, max_wait_s=0)
        batcher.start()
        await batcher.submit([1, 2, 3], max_batch_size=1)
        assert (batcher.max_batch_size, batcher.max_wait_s) == (1, 0)
        await batcher.submit([4], max_wait_s=0.001)
        assert batcher.max_wait_s == 0.001
        with pytest.raises(ValueError, match="max_batch_size"):
            await batcher.submit([5], max_batch_size=0)
        await batcher.stop()

    run(main)
    assert rec.batches == [[1], [2], [3], [4]]


def test_stop_drains_the_queue_without_waiting_and_then_refuses() -> None:
    rec = Recorder()

    async def main() -> None:
        batcher = DynamicBatcher(rec, max_batch_size=8, max_wait_s=30)
        batcher.start()
        pending = asyncio.create_task(batcher.submit([1, 2]))
        await asyncio.sleep(0.01)
        t0 = time.monotonic()
        await batcher.stop()
        assert time.monotonic() - t0 < 5
        assert await pending == [2, 4]
        with pytest.raises(BatcherClosed) as err:
            await batcher.submit([3])
        assert err.value.status == 503

    run(main)


def test_a_cancelled_request_is_not_run() -> None:
    rec = Recorder()

    async def main() -> None:
        batcher = DynamicBatcher(rec, max_batch_size=2, max_wait_s=30)
        batcher.start()
        gone = asyncio.create_task(batcher.submit([7]))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        assert await batcher.submit([1, 2]) == [2, 4]
        await batcher.stop()

    run(main)
    assert rec.batches == [[1, 2]]


def test_plan_does_not_wait_when_nothing_else_is_on_its_way() -> None:
    # One request alone (nothing being decoded) runs at once instead of after max_wait.
    assert plan(1, 10.0, 10.0, max_batch_size=8, max_wait_s=0.005, incoming=0).take == 1
    # Images still being decoded: wait for them, up to the oldest item's deadline.
    waiting = plan(1, 10.0, 10.0, max_batch_size=8, max_wait_s=0.005, incoming=3)
    assert waiting.take == 0 and waiting.wait_s is not None and waiting.wait_s > 0
    assert plan(1, 10.0, 10.0, max_batch_size=8, max_wait_s=0.005).take == 0  # unknown
