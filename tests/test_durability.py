"""``CommitWaiter``: callers are released exactly when their commit is durable."""

from __future__ import annotations

import asyncio

import pytest

from stead._core import Engine
from stead.durability import CommitWaiter

pytestmark = pytest.mark.anyio


async def test_waiters_in_any_order_are_released_once_durable(data_dir: str) -> None:
    engine = Engine(data_dir, "fsync")
    waiter = CommitWaiter(engine)
    try:
        seqs = [engine.commit(b"o", [(b"k", str(i).encode())]) for i in range(200)]
        # Newest first: every later request is for an older seq (the ordered insert).
        futures = [waiter.future_for(seq) for seq in reversed(seqs)]
        for seq, future in zip(reversed(seqs), futures, strict=True):
            if future is not None:
                await future
            assert engine.durable_seq() >= seq
        assert len(waiter) == 0
        assert waiter.future_for(seqs[-1]) is None  # already durable: nothing to wait for
    finally:
        waiter.close()
        engine.close()


async def test_a_waiter_is_not_released_before_its_group_is_durable(data_dir: str) -> None:
    engine = Engine(data_dir, "fsync")
    waiter = CommitWaiter(engine)
    try:
        released: list[int] = []

        async def wait(seq: int) -> None:
            await waiter.wait(seq)
            assert engine.durable_seq() >= seq
            released.append(seq)

        for _ in range(20):
            seqs = [engine.commit(b"o", [(b"k", b"v")]) for _ in range(10)]
            await asyncio.gather(*(wait(seq) for seq in seqs))
        assert len(released) == 200
    finally:
        waiter.close()
        engine.close()
