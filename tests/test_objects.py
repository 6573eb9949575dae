"""RPC surface of a DurableObject class: which methods can suspend (stead.objects)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import stead
from stead.objects import can_suspend, rpc_methods


async def _returns() -> int:
    return 1


async def _awaits() -> None:
    await asyncio.sleep(0)


async def _async_with(lock: asyncio.Lock) -> None:
    async with lock:
        pass


async def _async_for(items: AsyncIterator[int]) -> list[int]:
    return [item async for item in items]


async def _await_in_comprehension(items: list[Awaitable[int]]) -> list[int]:
    return [await item for item in items]


async def _await_only_in_a_nested_function() -> Callable[[], Awaitable[None]]:
    async def later() -> None:
        await asyncio.sleep(0)

    return later


@pytest.mark.parametrize(
    ("function", "suspends"),
    [
        (_returns, False),
        (_awaits, True),
        (_async_with, True),
        (_async_for, True),
        (_await_in_comprehension, True),
        (_await_only_in_a_nested_function, False),
    ],
)
def test_can_suspend_finds_every_await_of_the_body(
    function: Callable[..., Any], suspends: bool
) -> None:
    assert can_suspend(function) is suspends


def test_rpc_methods_know_which_can_suspend() -> None:
    class Mixed(stead.DurableObject):
        def plain(self) -> int:
            return 1

        async def quick(self) -> int:
            return 1

        async def slow(self) -> int:
            await asyncio.sleep(0)
            return 1

    methods = rpc_methods(Mixed)
    assert {name: method.suspends for name, method in methods.items()} == {
        "plain": False,
        "quick": False,
        "slow": True,
    }
