"""``CommitWaiter``: callers are released exactly when their commit is durable."""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import os
import subprocess
import sys
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stead._core import DurableFutures, Engine
from stead.durability import CommitWaiter
from stead.errors import StorageError

pytestmark = pytest.mark.anyio


@pytest.fixture
async def engine_and_waiter(data_dir: str) -> AsyncIterator[tuple[Engine, CommitWaiter]]:
    """An fsync engine and the commit waiter watching it on the test's loop."""
    engine = Engine(data_dir, "fsync")
    waiter = CommitWaiter(engine)
    try:
        yield engine, waiter
    finally:
        waiter.close()
        engine.close()


async def test_waiters_in_any_order_are_released_once_durable(
    engine_and_waiter: tuple[Engine, CommitWaiter],
) -> None:
    engine, waiter = engine_and_waiter
    seqs = [engine.commit(b"o", [(b"k", str(i).encode())]) for i in range(200)]
    # Newest first: every later request is for an older seq (the ordered insert).
    futures = [waiter.future_for(seq) for seq in reversed(seqs)]
    for seq, future in zip(reversed(seqs), futures, strict=True):
        if future is not None:
            await future
        assert engine.durable_seq() >= seq
    assert len(waiter) == 0
    assert waiter.future_for(seqs[-1]) is None  # already durable: nothing to wait for


async def test_a_waiter_is_not_released_before_its_group_is_durable(
    engine_and_waiter: tuple[Engine, CommitWaiter],
) -> None:
    engine, waiter = engine_and_waiter
    released: list[int] = []

    async def wait(seq: int) -> None:
        await waiter.wait(seq)
        assert engine.durable_seq() >= seq
        released.append(seq)

    for _ in range(20):
        seqs = [engine.commit(b"o", [(b"k", b"v")]) for _ in range(10)]
        await asyncio.gather(*(wait(seq) for seq in seqs))
    assert len(released) == 200


async def test_a_cancelled_waiter_does_not_stop_the_others(
    engine_and_waiter: tuple[Engine, CommitWaiter],
) -> None:
    engine, waiter = engine_and_waiter
    seqs = [engine.commit(b"o", [(b"k", b"v")]) for _ in range(3)]
    # Registered before the loop can drain a wakeup, so none is released yet.
    futures = [waiter.future_for(seq) for seq in seqs]
    assert futures[1] is not None
    futures[1].cancel()
    for future in (futures[0], futures[2]):
        if future is not None:
            await future
    assert futures[1].cancelled()
    assert len(waiter) == 0


async def test_closing_fails_pending_waiters_and_later_ones() -> None:
    loop = asyncio.get_running_loop()
    futures = DurableFutures(asyncio.Future, loop, durable=0)
    pending = [futures.future_for(seq) for seq in (1, 2)]
    error = StorageError("engine closed")
    assert futures.fail(error) == 2
    for future in pending:
        assert future is not None
        with pytest.raises(StorageError, match="engine closed"):
            await future
    with pytest.raises(StorageError, match="engine closed"):
        futures.future_for(3)
    with pytest.raises(TypeError):
        futures.fail("not an exception")  # type: ignore[arg-type]


def _record(order: list[int], seq: int, _: object) -> None:
    order.append(seq)


async def test_durable_futures_release_in_seq_order_and_skip_cancelled() -> None:
    loop = asyncio.get_running_loop()
    futures = DurableFutures(asyncio.Future, loop, durable=10)
    assert futures.future_for(10) is None  # at or below the watermark: nothing to wait for
    order: list[int] = []
    waiting: dict[int, asyncio.Future[None]] = {}
    for seq in (14, 11, 13, 12):  # out of order: inserted at their place
        future = futures.future_for(seq)
        assert future is not None
        future.add_done_callback(functools.partial(_record, order, seq))
        waiting[seq] = future
    waiting[13].cancel()
    assert futures.release(12) == 2
    assert futures.durable == 12 and len(futures) == 2
    assert futures.release(11) == 0 and futures.durable == 12  # the watermark never goes back
    assert futures.release(20) == 1  # 14; the cancelled 13 is skipped
    await asyncio.sleep(0)
    assert order == [13, 11, 12, 14]  # 13 ran its callbacks when cancelled, first
    assert len(futures) == 0


async def test_waiting_futures_in_a_reference_cycle_are_collected() -> None:
    loop = asyncio.get_running_loop()

    class Holder:
        def __init__(self) -> None:
            self.futures = DurableFutures(asyncio.Future, loop, durable=0)

        def on_durable(self, future: asyncio.Future[None]) -> None:
            pass

    holder = Holder()
    future = holder.futures.future_for(1)
    assert future is not None
    # holder -> futures -> future -> callback (bound method) -> holder
    future.add_done_callback(holder.on_durable)
    alive = weakref.ref(holder)
    del holder, future
    gc.collect()
    assert alive() is None


async def test_a_large_group_resumes_over_several_loop_iterations(
    engine_and_waiter: tuple[Engine, CommitWaiter],
) -> None:
    # 300 callers made durable by one group commit, each working 0.2 ms once
    # resumed: resuming them all in one loop iteration would hold every timer
    # back for 60 ms. They resume in batches of about ITERATION_BUDGET instead,
    # oldest first.
    engine, waiter = engine_and_waiter
    loop = asyncio.get_running_loop()
    iteration = 0
    counting = True

    def count_iterations() -> None:
        nonlocal iteration
        iteration += 1
        if counting:
            loop.call_soon(count_iterations)

    resumed: list[tuple[int, int]] = []

    async def caller(seq: int) -> None:
        await waiter.wait(seq)
        resumed.append((seq, iteration))
        time.sleep(0.0002)  # noqa: ASYNC251 -- blocking on purpose: a caller busy once resumed

    seqs = [engine.commit(b"o", [(b"k", str(i).encode())]) for i in range(300)]
    callers = [asyncio.ensure_future(caller(seq)) for seq in seqs]
    loop.call_soon(count_iterations)
    await asyncio.gather(*callers)
    counting = False
    per_iteration = collections.Counter(at for _, at in resumed)
    assert max(per_iteration.values()) <= 64  # the first batch; later ones fit the budget
    assert len(per_iteration) >= 300 // 64
    assert [seq for seq, _ in resumed] == seqs  # oldest first


async def _backlogged_callers(engine: Engine, waiter: CommitWaiter) -> int:
    """300 callers, each busy 0.1 ms once resumed before committing again; how
    many groups the engine held back meanwhile."""

    async def caller(index: int) -> None:
        for round_ in range(5):
            await waiter.wait(engine.commit(b"o%d" % index, [(b"k", b"%d" % round_)]))
            time.sleep(0.0001)  # noqa: ASYNC251 -- blocking on purpose: CPU-bound callers

    before = engine.stats()["held_groups"]
    await asyncio.gather(*(caller(index) for index in range(300)))
    return engine.stats()["held_groups"] - before


async def test_a_backlogged_loop_lets_the_next_group_commit_grow(
    engine_and_waiter: tuple[Engine, CommitWaiter],
) -> None:
    # The loop resumes durable callers in batches, so they queue behind it. It
    # reports that backlog to the engine, which then holds the next group back
    # (up to the group delay) instead of syncing every few commits at once.
    assert await _backlogged_callers(*engine_and_waiter) > 0


def test_a_zero_group_delay_never_holds_a_group(data_dir: str) -> None:
    # STEAD_ENGINE_GROUP_DELAY_US is read once per process: a fresh one.
    child = f"""
import asyncio
from stead._core import Engine
from stead.durability import CommitWaiter
from tests.test_durability import _backlogged_callers

async def main() -> None:
    engine = Engine({data_dir!r}, "fsync")
    waiter = CommitWaiter(engine)
    print(await _backlogged_callers(engine, waiter))
    waiter.close()
    engine.close()

asyncio.run(main())
"""
    env = {**os.environ, "STEAD_ENGINE_GROUP_DELAY_US": "0"}
    root = Path(__file__).parent.parent
    done = subprocess.run(
        [sys.executable, "-c", child], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "0"


async def test_a_lone_caller_never_holds_a_group_back(
    engine_and_waiter: tuple[Engine, CommitWaiter],
) -> None:
    engine, waiter = engine_and_waiter
    for round_ in range(50):
        await waiter.wait(engine.commit(b"o", [(b"k", b"%d" % round_)]))
    assert engine.stats()["held_groups"] == 0


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
async def test_a_backlog_must_be_a_finite_duration(
    engine_and_waiter: tuple[Engine, CommitWaiter], seconds: float
) -> None:
    engine, _ = engine_and_waiter
    with pytest.raises(ValueError, match="finite"):
        engine.consumer_backlog(seconds)


async def test_a_huge_backlog_is_accepted_and_can_be_withdrawn(
    engine_and_waiter: tuple[Engine, CommitWaiter],
) -> None:
    # Finite but beyond what a duration holds: "busy for ever", not a crash.
    engine, waiter = engine_and_waiter
    engine.consumer_backlog(1e30)
    engine.consumer_backlog(0.0)
    await waiter.wait(engine.commit(b"o", [(b"k", b"v")]))
