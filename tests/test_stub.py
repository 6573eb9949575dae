"""RPC through stubs: copying, errors, fetch (DESIGN §2 Isolation)."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

import stead

pytestmark = pytest.mark.anyio


class QuotaExceeded(Exception):
    pass


class Unbuildable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


class Item(msgspec.Struct):
    name: str
    tags: list[str]


class Shop(stead.DurableObject):
    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.items: list[Any] = []

    def add(self, item: Any) -> int:
        self.items.append(item)
        return len(self.items)

    def first(self) -> Any:
        return self.items[0]

    def echo(self, value: Any) -> Any:
        return value

    async def fail(self) -> None:
        raise QuotaExceeded("over quota")

    def fail_oddly(self) -> None:
        raise Unbuildable(1, 2)

    def give_unencodable(self) -> Any:
        return object()

    def _private(self) -> int:
        return 1

    async def fetch(self, request: stead.Request) -> stead.Response:
        if request.path == "/echo":
            return stead.Response.json(
                {"method": request.method, "q": request.query, "body": request.text()},
                headers={"X-Shop": "1"},
            )
        return stead.Response("nope", status=404)


async def test_arguments_and_results_are_copies(data_dir: str) -> None:
    async with stead.Runtime({"S": Shop}, data_dir=data_dir) as rt:
        shop = rt.env.S.get_by_name("s")
        tags = ["a"]
        await shop.add(Item("x", tags))
        tags.append("mutated after the call")
        first = await shop.first()
        assert first == Item("x", ["a"])
        first.tags.append("mutated result")
        assert await shop.first() == Item("x", ["a"])


async def test_user_exception_arrives_as_its_own_class(data_dir: str) -> None:
    async with stead.Runtime({"S": Shop}, data_dir=data_dir) as rt:
        with pytest.raises(QuotaExceeded, match="over quota"):
            await rt.env.S.get_by_name("s").fail()


async def test_unrebuildable_exception_arrives_as_remote_error(data_dir: str) -> None:
    async with stead.Runtime({"S": Shop}, data_dir=data_dir) as rt:
        with pytest.raises(stead.RemoteError) as caught:
            await rt.env.S.get_by_name("s").fail_oddly()
        assert caught.value.type_name == "Unbuildable"
        assert caught.value.message == "1/2"


async def test_non_encodable_arguments_and_results_raise_serialization_error(
    data_dir: str,
) -> None:
    async with stead.Runtime({"S": Shop}, data_dir=data_dir) as rt:
        shop = rt.env.S.get_by_name("s")
        with pytest.raises(stead.SerializationError):
            await shop.echo(object())
        with pytest.raises(stead.SerializationError):
            await shop.echo(2**70)
        cycle: list[Any] = []
        cycle.append(cycle)
        with pytest.raises(stead.SerializationError, match="contains itself"):
            await shop.echo(cycle)
        with pytest.raises(stead.SerializationError):
            await shop.give_unencodable()
        assert isinstance(stead.SerializationError("x"), TypeError)


class Typed(stead.DurableObject):
    def count(self, value: Any) -> int:
        return value  # type: ignore[no-any-return]

    def ratio(self, value: Any) -> float:
        return value  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("method", "value", "expected"),
    [
        ("count", 3, 3),
        ("count", 2**64 - 1, 2**64 - 1),
        ("ratio", 0.5, 0.5),
        ("ratio", 2, 2.0),  # msgspec accepts an int where a float is declared
    ],
)
async def test_results_arrive_as_the_declared_type(
    data_dir: str, method: str, value: Any, expected: Any
) -> None:
    async with stead.Runtime({"T": Typed}, data_dir=data_dir) as rt:
        result = await getattr(rt.env.T.get_by_name("t"), method)(value)
        assert result == expected
        assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("method", "value"), [("count", True), ("count", 2**64), ("count", "3"), ("ratio", "x")]
)
async def test_results_that_do_not_fit_the_declared_type_raise(
    data_dir: str, method: str, value: Any
) -> None:
    async with stead.Runtime({"T": Typed}, data_dir=data_dir) as rt:
        with pytest.raises(stead.SerializationError):
            await getattr(rt.env.T.get_by_name("t"), method)(value)


async def test_unknown_and_private_methods(data_dir: str) -> None:
    async with stead.Runtime({"S": Shop}, data_dir=data_dir) as rt:
        shop = rt.env.S.get_by_name("s")
        with pytest.raises(stead.UnknownMethodError):
            await shop.nope()
        with pytest.raises(AttributeError):
            shop._private()
        with pytest.raises(stead.UnknownMethodError):
            await stead.stub.invoke(shop, "fetch", [], {})
        assert await stead.stub.invoke(shop, "echo", [3], {}) == 3


async def test_fetch(data_dir: str) -> None:
    async with stead.Runtime({"S": Shop}, data_dir=data_dir) as rt:
        shop = rt.env.S.get_by_name("s")
        response = await shop.fetch("/echo?a=1", method="POST", body="hi")
        assert response.status == 200
        assert response.headers["x-shop"] == "1"
        assert response.json() == {"method": "POST", "q": {"a": "1"}, "body": "hi"}
        assert (await shop.fetch(stead.Request("GET", "/other"))).status == 404
        response = await shop.fetch("/echo", method="PUT", json={"k": 1})
        assert response.json()["body"] == '{"k":1}'


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"body": b"data", "json": {"a": 1}}, "fetch() takes body= or json=, not both"),
        ({"headers": {"X-Count": 5}}, "header value of 'X-Count' must be str, not int"),
        ({"headers": {"X-Tag": b"v"}}, "header value of 'X-Tag' must be str, not bytes"),
        ({"headers": {b"x-raw": "v"}}, "header name must be str, not bytes"),
    ],
)
async def test_fetch_refuses_arguments_it_would_drop_or_pass_on_wrongly(
    data_dir: str, call: dict[str, Any], message: str
) -> None:
    async with stead.Runtime({"S": Shop}, data_dir=data_dir) as rt:
        shop = rt.env.S.get_by_name("s")
        with pytest.raises(TypeError, match=re.escape(message)):
            await shop.fetch("/echo", method="POST", **call)


@pytest.mark.parametrize(
    "keywords",
    [{"method": "POST"}, {"headers": {}}, {"body": b"data"}, {"json": None, "body": ""}],
)
async def test_fetch_of_a_request_refuses_keywords_it_would_ignore(
    data_dir: str, keywords: dict[str, Any]
) -> None:
    async with stead.Runtime({"S": Shop}, data_dir=data_dir) as rt:
        shop = rt.env.S.get_by_name("s")
        with pytest.raises(TypeError, match=r"fetch\(Request\(\.\.\.\)\) takes no method="):
            await shop.fetch(stead.Request("GET", "/echo"), **keywords)
        bad = stead.Request("GET", "/echo", {"x-count": 5})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="header value of 'x-count' must be str, not int"):
            await shop.fetch(bad)
