"""RPC surface of a DurableObject class: which methods can suspend (stead.objects)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
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


def _logged(function: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator as logging, metrics or retry decorators are written: a sync
    wrapper that returns what the method returns (here a coroutine)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        Decorated.calls += 1
        return function(*args, **kwargs)

    return wrapper


def _unwrapped(function: Callable[..., Any]) -> Callable[..., Any]:
    """The same without functools.wraps: nothing says the method is async."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    return wrapper


class Decorated(stead.DurableObject):
    calls = 0

    @_logged
    async def add(self, by: int) -> int:
        count: int = self.ctx.storage.get("count", 0) + by
        self.ctx.storage.put("count", count)
        return count

    @_logged
    async def quick(self) -> str:
        return "quick"

    @_unwrapped
    async def hidden(self) -> int:
        return 1


def test_a_decorated_async_method_is_async_and_can_suspend() -> None:
    methods = rpc_methods(Decorated)
    assert methods["add"].is_async and methods["quick"].is_async
    # The wrapper's code is not what runs: whether the method awaits is unknown.
    assert methods["add"].suspends and methods["quick"].suspends


@pytest.mark.anyio
async def test_a_decorated_async_method_is_awaited() -> None:
    async with stead.Runtime({"DECORATED": Decorated}, data_dir=None) as runtime:
        stub = runtime.namespace("DECORATED").get_by_name("a")
        assert await stub.add(2) == 2
        assert await stub.add(3) == 5
        assert await stub.quick() == "quick"
    assert Decorated.calls == 3


@pytest.mark.anyio
async def test_an_async_method_hidden_by_a_decorator_is_a_clear_error() -> None:
    async with stead.Runtime({"DECORATED": Decorated}, data_dir=None) as runtime:
        stub = runtime.namespace("DECORATED").get_by_name("a")
        with pytest.raises(TypeError, match=r"functools\.wraps"):
            await stub.hidden()  # and no "coroutine was never awaited" warning


def _memoized(function: Callable[..., Any]) -> Callable[..., Any]:
    """A memoizing decorator: a coroutine on a miss, the value itself on a hit."""
    cache: dict[str, Any] = {}

    @functools.wraps(function)
    def wrapper(self: Any, key: str) -> Any:
        if key in cache:
            return cache[key]

        async def fill() -> Any:
            cache[key] = value = await function(self, key)
            return value

        return fill()

    return wrapper


class Memoized(stead.DurableObject):
    @_memoized
    async def lookup(self, key: str) -> str:
        await asyncio.sleep(0)
        return key.upper()


@pytest.mark.anyio
async def test_a_decorated_async_method_may_return_a_plain_value() -> None:
    async with stead.Runtime({"MEMO": Memoized}, data_dir=None) as runtime:
        stub = runtime.namespace("MEMO").get_by_name("a")
        assert await stub.lookup("k") == "K"  # a miss: the wrapper returns a coroutine
        assert await stub.lookup("k") == "K"  # a hit: the value itself, not awaited


@pytest.mark.skipif(sys.version_info < (3, 12), reason="inspect.markcoroutinefunction is 3.12+")
@pytest.mark.anyio
async def test_a_method_marked_as_a_coroutine_function_is_awaited() -> None:
    async def later(value: int) -> int:
        await asyncio.sleep(0)
        return value

    def marked(self: stead.DurableObject, value: int) -> Any:
        return later(value)

    class Marked(stead.DurableObject):
        echo = inspect.markcoroutinefunction(marked)  # type: ignore[attr-defined,unused-ignore]

    assert rpc_methods(Marked)["echo"].suspends
    async with stead.Runtime({"MARKED": Marked}, data_dir=None) as runtime:
        assert await runtime.namespace("MARKED").get_by_name("a").echo(7) == 7


class Labelled(stead.DurableObject):
    def tag(self, a: int, /, *rest: int, **labels: str) -> dict[str, str]:
        return labels


@pytest.mark.anyio
async def test_a_keyword_named_like_a_positional_only_parameter_goes_to_kwargs() -> None:
    # Python's own rule: tag(1, a="x") gives labels={"a": "x"}, decoded with **labels' hint.
    assert Labelled.tag(Labelled.__new__(Labelled), 1, a="x") == {"a": "x"}
    async with stead.Runtime({"L": Labelled}, data_dir=None) as runtime:
        stub = runtime.namespace("L").get_by_name("a")
        assert await stub.tag(1, a="x", rest="y") == {"a": "x", "rest": "y"}
        with pytest.raises(stead.errors.SerializationError):
            await stub.tag(1, other=2)  # **labels: str still checks the extra keywords


def test_an_rpc_method_named_like_a_stub_attribute_is_refused_when_defined() -> None:
    for body in ("def id(self) -> str: ...", "async def id(self) -> str: ..."):
        with pytest.raises(TypeError, match=r"User\.id: an RPC method cannot be named 'id'"):
            exec(f"class User(stead.DurableObject):\n    {body}", {"stead": stead})

    class Fine(stead.DurableObject):  # not RPC methods: allowed
        @property
        def id(self) -> str:
            return str(self.ctx.id)

        def _id(self) -> str:
            return "private"

    assert "id" not in rpc_methods(Fine)


def test_the_refused_names_are_the_stubs_own_public_attributes(data_dir: str) -> None:
    from stead.objects import _STUB_ATTRIBUTES

    async def stub_attributes() -> set[str]:
        class Plain(stead.DurableObject):
            pass

        async with stead.Runtime({"P": Plain}, data_dir=data_dir) as runtime:
            stub = runtime.env.P.get_by_name("p")
        return {name for name in dir(stub) if not name.startswith("_")}

    handlers = {"fetch"}  # DurableObject's own: the stub's fetch calls it
    assert asyncio.run(stub_attributes()) - handlers == set(_STUB_ATTRIBUTES)


def test_help_on_durable_object_explains_ctx_env_and_reentrant() -> None:
    doc = inspect.getdoc(stead.DurableObject) or ""
    for words in ("self.ctx", "ctx.storage", "self.env", "reentrant", "Stub", "stead.Runtime("):
        assert words in doc, words
    assert "Initialize self" not in (inspect.getdoc(stead.DurableObject.__init__) or "")
