"""An object's constructor that raises or aborts: its caller's error, as for a handler's."""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

import pytest

import stead

pytestmark = pytest.mark.anyio


class Misconfigured(stead.DurableObject):
    """A config check in the constructor: ``bad`` aborts, ``broken`` raises."""

    raised: ClassVar[list[BaseException]] = []

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        if ctx.id.name == "bad":
            ctx.abort("B is misconfigured")
        if ctx.id.name == "broken":
            error = KeyError("missing config")
            self.raised.append(error)
            raise error

    def ping(self) -> int:
        return 1

    async def slow_ping(self) -> int:
        await asyncio.sleep(0)
        return 1


class CallsMisconfigured(stead.DurableObject):
    built: ClassVar[int] = 0

    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        CallsMisconfigured.built += 1

    async def go(self) -> str:
        self.ctx.storage.put("went", True)
        try:
            await self.env.B.get_by_name("bad").ping()
        except Exception as error:  # B's failure is A's to handle
            return repr(error)
        return "no error"

    def went(self) -> bool:
        return bool(self.ctx.storage.get("went", False))


@pytest.mark.parametrize("method", ["ping", "slow_ping", "fetch"])
async def test_abort_in_a_constructor_fails_the_caller_with_remote_error(
    data_dir: str, method: str
) -> None:
    async with stead.Runtime({"B": Misconfigured}, data_dir=data_dir) as rt:
        stub = rt.env.B.get_by_name("bad")
        call = stub.fetch("/") if method == "fetch" else getattr(stub, method)()
        with pytest.raises(stead.RemoteError) as raised:
            await asyncio.wait_for(call, 5)
        assert (raised.value.type_name, raised.value.message) == ("Aborted", "B is misconfigured")
        assert not rt.dispatcher.hosts  # the instance was discarded


async def test_abort_in_a_callees_constructor_does_not_reset_the_caller(data_dir: str) -> None:
    # A calls B, whose constructor aborts: A's own `except Exception` handles it,
    # and A's instance (and the write it made) is kept.
    CallsMisconfigured.built = 0
    bindings = {"A": CallsMisconfigured, "B": Misconfigured}
    async with stead.Runtime(bindings, data_dir=data_dir) as rt:
        a = rt.env.A.get_by_name("a")
        assert await asyncio.wait_for(a.go(), 5) == "RemoteError('Aborted: B is misconfigured')"
        assert await asyncio.wait_for(a.go(), 5) == "RemoteError('Aborted: B is misconfigured')"
        assert await a.went()
        assert CallsMisconfigured.built == 1


async def test_a_constructor_error_is_logged_and_copied_as_a_handlers(
    data_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    Misconfigured.raised.clear()
    async with stead.Runtime({"B": Misconfigured}, data_dir=data_dir) as rt:
        with (
            caplog.at_level(logging.INFO, logger="stead.dispatch"),
            pytest.raises(KeyError, match="missing config") as raised,
        ):
            await asyncio.wait_for(rt.env.B.get_by_name("broken").ping(), 5)
    assert raised.value is not Misconfigured.raised[0]  # a copy: no reference into the object
    assert raised.value.__context__ is None
    assert "raised in its constructor" in caplog.text
    assert "KeyError: 'missing config'" in caplog.text  # with its traceback
