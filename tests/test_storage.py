"""The Storage facade: coalescing, transactions, listing, limits (DESIGN §2-3)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timezone
from typing import Any

import msgspec
import pytest

import stead
from stead._core import Engine
from stead.storage import Storage

pytestmark = pytest.mark.anyio


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Note:
    text: str
    at: datetime


class Box(stead.DurableObject):
    def put_many_keys(self, count: int) -> None:
        for i in range(count):
            self.ctx.storage.put(f"k{i:03}", i)

    def write_then_raise(self) -> None:
        self.ctx.storage.put("kept", True)
        raise ValueError("after the write")

    def transaction_that_raises(self) -> None:
        self.ctx.storage.put("outside", 1)
        with self.ctx.storage.transaction():
            self.ctx.storage.put("inside", 1)
            self.ctx.storage.delete("outside")
            raise RuntimeError("roll back")

    def get(self, key: str) -> Any:
        return self.ctx.storage.get(key)

    def get_point(self) -> Point:
        value: Point = self.ctx.storage.get("point", type=Point)
        return value

    def put(self, key: str, value: Any) -> None:
        self.ctx.storage.put(key, value)

    def store_values(self) -> None:
        s = self.ctx.storage
        s.put("point", Point(1, 2))
        s.put("note", Note("hi", datetime(2026, 1, 2, tzinfo=timezone.utc)))
        s.put("bytes", b"\x00\x01")

    def read_note(self) -> str:
        note: Note = self.ctx.storage.get("note", type=Note)
        return f"{note.text}@{note.at.year}"

    def listing(self, options: dict[str, Any]) -> list[str]:
        return list(self.ctx.storage.list(**options))

    def write_and_list(self) -> list[str]:
        s = self.ctx.storage
        s.put("b", 1)
        s.delete("a")
        s.put("d", 1)
        return list(s.list())

    def delete_all_then_put(self) -> list[str]:
        self.ctx.storage.delete_all()
        self.ctx.storage.put("fresh", 1)
        return list(self.ctx.storage.list())

    def many(self) -> dict[str, Any]:
        s = self.ctx.storage
        s.put_many({"m1": 1, "m2": 2})
        deleted = s.delete_many(["m1", "nope"])
        return {"deleted": deleted, "left": s.get_many(["m1", "m2", "nope"])}

    def bad_put(self, key: Any, size: int) -> None:
        self.ctx.storage.put(key, b"x" * size)


async def test_all_writes_of_a_turn_are_one_batch(data_dir: str) -> None:
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        box = rt.env.B.get_by_name("b")
        await box.put("warm", 0)
        before = rt.engine.last_seq()
        await box.put_many_keys(100)
        assert rt.engine.last_seq() == before + 1
        assert await box.listing({"prefix": "k", "limit": 3}) == ["k000", "k001", "k002"]


async def test_a_raising_handler_keeps_its_earlier_writes(data_dir: str) -> None:
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        box = rt.env.B.get_by_name("b")
        with pytest.raises(ValueError, match="after the write"):
            await box.write_then_raise()
        assert await box.get("kept") is True


async def test_a_raising_transaction_rolls_back_its_writes(data_dir: str) -> None:
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        box = rt.env.B.get_by_name("b")
        with pytest.raises(RuntimeError):
            await box.transaction_that_raises()
        assert await box.get("outside") == 1
        assert await box.get("inside") is None
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        box = rt.env.B.get_by_name("b")
        assert await box.get("outside") == 1
        assert await box.get("inside") is None


async def test_values_round_trip_with_their_types(data_dir: str) -> None:
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        await rt.env.B.get_by_name("b").store_values()
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        box = rt.env.B.get_by_name("b")
        assert await box.get_point() == Point(1, 2)
        assert await box.get("point") == {"x": 1, "y": 2}
        assert await box.read_note() == "hi@2026"
        assert await box.get("bytes") == b"\x00\x01"


async def test_list_sees_this_turns_writes_in_key_order(data_dir: str) -> None:
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        box = rt.env.B.get_by_name("b")
        await box.put("a", 1)
        await box.put("c", 1)
        assert await box.write_and_list() == ["b", "c", "d"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, ["a", "ab", "b", "é", "日本"]),
        ({"prefix": "a"}, ["a", "ab"]),
        ({"start": "ab"}, ["ab", "b", "é", "日本"]),
        ({"start_after": "ab"}, ["b", "é", "日本"]),
        ({"end": "b"}, ["a", "ab"]),
        ({"reverse": True, "limit": 2}, ["日本", "é"]),
        ({"start": "a", "end": "é", "reverse": True}, ["b", "ab", "a"]),
        ({"limit": 0}, []),
    ],
)
async def test_list_options(data_dir: str, options: dict[str, Any], expected: list[str]) -> None:
    async with stead.Runtime({"B": Box}, durability="none", data_dir=data_dir) as rt:
        box = rt.env.B.get_by_name("b")
        for key in ["b", "日本", "a", "é", "ab"]:
            await box.put(key, 0)
        assert await box.listing(options) == expected


async def test_delete_all_clears_stored_keys(data_dir: str) -> None:
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        box = rt.env.B.get_by_name("b")
        await box.put("old", 1)
        assert await box.delete_all_then_put() == ["fresh"]
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        assert await rt.env.B.get_by_name("b").listing({}) == ["fresh"]


async def test_put_many_delete_many_get_many(data_dir: str) -> None:
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        result = await rt.env.B.get_by_name("b").many()
        assert result == {"deleted": 1, "left": {"m2": 2}}


@pytest.mark.parametrize(
    ("key", "size", "error"),
    [
        ("", 1, stead.LimitError),
        ("k" * 2049, 1, stead.LimitError),
        ("é" * 1025, 1, stead.LimitError),  # 2050 UTF-8 bytes
        ("big", 2 * 1024 * 1024 + 1, stead.LimitError),
    ],
)
async def test_limits_raise_before_anything_is_written(
    data_dir: str, key: str, size: int, error: type[Exception]
) -> None:
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        box = rt.env.B.get_by_name("b")
        before = rt.engine.last_seq()
        with pytest.raises(error):
            await box.bad_put(key, size)
        assert rt.engine.last_seq() == before


class Unencodable(stead.DurableObject):
    def put_each(self, kind: str) -> str:
        self.ctx.storage.put("before", 1)
        value = {"object": object(), "huge int": 2**70, "set of objects": {object()}}[kind]
        try:
            self.ctx.storage.put("bad", value)
        except stead.SerializationError as error:
            return str(error)
        return "stored"

    def get(self, key: str) -> Any:
        return self.ctx.storage.get(key)


@pytest.mark.parametrize("kind", ["object", "huge int", "set of objects"])
async def test_unencodable_values_raise_serialization_error_and_write_nothing(
    data_dir: str, kind: str
) -> None:
    async with stead.Runtime({"U": Unencodable}, data_dir=data_dir) as rt:
        obj = rt.env.U.get_by_name("u")
        message = await obj.put_each(kind)
        assert message.startswith("cannot encode")
        assert await obj.get("bad") is None
        assert await obj.get("before") == 1  # the turn's valid write is committed


class Keys(stead.DurableObject):
    def put_get(self, key: Any) -> Any:
        self.ctx.storage.put(key, 1)
        return self.ctx.storage.get(key)

    def get(self, key: Any) -> Any:
        return self.ctx.storage.get(key)


class Label(str):
    pass


@pytest.mark.parametrize("key", [b"bytes", 7, None, ["list"]])
async def test_non_str_keys_raise_type_error_every_time(data_dir: str, key: Any) -> None:
    # Also after the same text was used as a str key (encoded keys are cached).
    async with stead.Runtime({"K": Keys}, data_dir=data_dir) as rt:
        keys = rt.env.K.get_by_name("k")
        await keys.put_get("bytes")
        for _ in range(2):
            with pytest.raises(TypeError, match="storage keys are str"):
                await keys.get(key)


async def test_str_subclass_keys_address_the_same_value(data_dir: str) -> None:
    class Tagged(stead.DurableObject):
        def put_tagged(self) -> None:
            self.ctx.storage.put(Label("name"), "v")

        def get_plain(self) -> Any:
            return self.ctx.storage.get("name")

    async with stead.Runtime({"T": Tagged}, data_dir=data_dir) as rt:
        tagged = rt.env.T.get_by_name("t")
        await tagged.put_tagged()
        assert await tagged.get_plain() == "v"


async def test_max_length_key_is_accepted(data_dir: str) -> None:
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        box = rt.env.B.get_by_name("b")
        await box.put("k" * 2048, 1)
        assert await box.get("k" * 2048) == 1


async def test_internal_keys_never_appear_in_list(data_dir: str) -> None:
    async with stead.Runtime({"B": Box}, data_dir=data_dir) as rt:
        box = rt.env.B.get_by_name("named")  # the name is stored internally
        await box.put("user", 1)
        assert await box.listing({}) == ["user"]
        assert await box.listing({"reverse": True}) == ["user"]


_engine_of_sync_test: list[Any] = []


class Syncer(stead.DurableObject):
    def write(self, value: int) -> None:
        self.ctx.storage.put("value", value)

    async def sync_then_check_durable(self) -> bool:
        # No writes of its own: it must still wait for the earlier turns' batches.
        engine = _engine_of_sync_test[0]
        committed = engine.last_seq()
        await self.ctx.storage.sync()
        return bool(engine.durable_seq() >= committed)


async def test_sync_waits_for_the_writes_of_earlier_turns(data_dir: str) -> None:
    async with stead.Runtime({"S": Syncer}, data_dir=data_dir) as rt:
        _engine_of_sync_test[:] = [rt.dispatcher.engine]
        stub = rt.env.S.get_by_name("s")
        calls = [stub.write(i) if i % 2 == 0 else stub.sync_then_check_durable() for i in range(60)]
        results = await asyncio.gather(*calls)
    assert all(results[1::2])


class ReadCountingEngine:
    """The real (in-memory) engine, counting the reads that reach it past the cache."""

    def __init__(self) -> None:
        self.engine = Engine(None)
        self.reads = 0

    def get(self, object_key: bytes, key: bytes) -> bytes | None:
        self.reads += 1
        return self.engine.get(object_key, key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def test_rewriting_one_large_value_keeps_the_rest_of_the_cache() -> None:
    engine = ReadCountingEngine()
    storage = Storage(engine, b"object", name=None, max_value_bytes=1 << 20)  # type: ignore[arg-type]
    assert storage.get("small") is None  # one read: absent, now known absent
    storage.put("small", 1)
    storage.commit()
    for turn in range(30):  # 30 x 200 KB through one key: 200 KB held, not 6 MB
        storage.put("big", bytes(200_000) + bytes([turn]))
        storage.commit()
    assert storage.get("small") == 1
    assert engine.reads == 1


def test_the_cache_still_drops_values_past_its_budget() -> None:
    engine = ReadCountingEngine()
    storage = Storage(engine, b"object", name=None, max_value_bytes=1 << 20)  # type: ignore[arg-type]
    storage.put("first", bytes(200_000))
    storage.commit()
    for i in range(10):  # 2 MB of distinct values: over the 1 MiB budget
        storage.put(f"key{i}", bytes(200_000))
        storage.commit()
    assert storage.get("first") == bytes(200_000)  # read back from the engine
    assert engine.reads == 1
