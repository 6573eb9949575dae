"""The Storage facade: coalescing, transactions, listing, limits (DESIGN §2-3)."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from datetime import datetime, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import stead
import stead.storage as storage_module
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
        cycle: dict[str, Any] = {}
        cycle["self"] = cycle
        value = {
            "object": object(),
            "huge int": 2**70,
            "set of objects": {object()},
            "self-referencing": cycle,
        }[kind]
        try:
            self.ctx.storage.put("bad", value)
        except stead.SerializationError as error:
            return str(error)
        return "stored"

    def get(self, key: str) -> Any:
        return self.ctx.storage.get(key)


@pytest.mark.parametrize("kind", ["object", "huge int", "set of objects", "self-referencing"])
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


def test_get_many_returns_every_value_while_the_cache_is_over_budget() -> None:
    # Found by the model test below: remembering one fetched value dropped the other.
    engine = Engine(None)
    writer = Storage(engine, b"object", name=None, max_value_bytes=4 << 20)
    writer.put_many({"x": 1, "y": 2})
    writer.commit()
    storage = Storage(engine, b"object", name=None, max_value_bytes=4 << 20)  # evicted: no cache
    storage.put("big", bytes(1_200_000))  # pending, over the 1 MiB cache budget
    assert storage.get_many(["x", "y", "missing"]) == {"x": 1, "y": 2}


def _stored(engine: Engine, key: bytes = b"object") -> dict[bytes, Any]:
    return {k: msgspec.msgpack.decode(raw) for k, raw in engine.list(key)}


def test_a_midway_commit_keeps_a_later_delete_all_of_the_block() -> None:
    # delete_all before the block and again inside it: the midway commit sends
    # the first; the block's own one still wipes what that commit stored.
    engine = Engine(None)
    storage = Storage(engine, b"object", name=None, max_value_bytes=1 << 20)
    storage.put("old", 0)
    storage.commit()
    storage.delete_all()
    storage.put("a", 1)
    with storage.transaction():
        storage.delete_all()
        storage.put("b", 2)
        storage.commit_outside_transactions()  # an outbound call inside the block
        assert _stored(engine) == {b"a": 1}
        assert storage.list() == {"b": 2}
    storage.commit()
    assert _stored(engine) == {b"b": 2}


def test_a_batch_with_delete_all_records_the_name_again() -> None:
    # The name was recorded by a midway commit; the block's delete_all then
    # deleted it with everything else: the batch that stores again re-records it.
    engine = Engine(None)
    storage = Storage(engine, b"object", name="ada", max_value_bytes=1 << 20)
    storage.put("a", 1)
    with storage.transaction():
        storage.delete_all()
        storage.put("b", 2)
        storage.commit_outside_transactions()
        assert engine.get(b"object", storage_module.NAME_KEY) is not None
    storage.commit()
    assert _stored(engine) == {b"b": 2, storage_module.NAME_KEY: "ada"}


def test_a_midway_commit_inside_a_rolled_back_block_commits_each_write_once() -> None:
    engine = Engine(None)
    storage = Storage(engine, b"object", name=None, max_value_bytes=1 << 20)
    storage.put("a", 1)
    storage.set_alarm(5)
    try:
        with storage.transaction():
            storage.put("b", 2)
            storage.commit_outside_transactions()
            raise Rollback
    except Rollback:
        pass
    assert not storage.has_pending  # "a" and the alarm went with the midway commit
    assert _stored(engine) == {b"a": 1} and engine.get_alarm(b"object") == 5000


# -- model-based test (hypothesis) ------------------------------------------------
#
# Random sequences of the whole Storage API against a dict, over a real engine on
# disk: reads see this turn's writes, a raising transaction() leaves nothing behind,
# list() orders by UTF-8 bytes and honours every bound, commits reach the engine,
# and an evicted object (a fresh Storage over the same engine) reads back exactly
# what was committed, alarm included. The cache budget is tiny so values keep being dropped and
# read back from the engine.


_KEYS = st.sampled_from(["a", "ab", "abc", "b", "ba", "z", "é", "éa", "\u4e2d", "A", "0"])
_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=8),
    st.lists(st.integers(0, 9), max_size=3),
    st.binary(min_size=40, max_size=120),  # over the tiny cache budget before long
)
_OPTIONAL_KEY = st.none() | _KEYS
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _KEYS, _VALUES),
        st.tuples(st.just("delete"), _KEYS, st.none()),
    ),
    max_size=4,
)


class Rollback(Exception):
    pass


class StorageModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.saved_budget = storage_module._CACHE_BUDGET
        storage_module._CACHE_BUDGET = 256
        self.directory = tempfile.TemporaryDirectory()
        self.engine = Engine(f"{self.directory.name}/data", "none")
        self.storage = self._fresh()
        self.view: dict[str, Any] = {}  # what this turn reads
        self.committed: dict[str, Any] = {}  # what the engine holds
        self.alarm: int | None = None  # epoch ms, as this turn sees it
        self.committed_alarm: int | None = None

    def _fresh(self) -> Storage:
        return Storage(self.engine, b"model-object", name="model", max_value_bytes=1 << 20)

    def teardown(self) -> None:
        storage_module._CACHE_BUDGET = self.saved_budget
        self.engine.close()
        self.directory.cleanup()

    def _apply(self, ops: list[tuple[str, str, Any]], view: dict[str, Any]) -> None:
        for op, key, value in ops:
            if op == "put":
                self.storage.put(key, value)
                view[key] = value
            else:
                assert self.storage.delete(key) is (key in view)
                view.pop(key, None)

    @rule(key=_KEYS, value=_VALUES)
    def put(self, key: str, value: Any) -> None:
        self.storage.put(key, value)
        self.view[key] = value

    @rule(key=_KEYS)
    def delete(self, key: str) -> None:
        assert self.storage.delete(key) is (key in self.view)
        self.view.pop(key, None)

    @rule(entries=st.dictionaries(_KEYS, _VALUES, max_size=3))
    def put_many(self, entries: dict[str, Any]) -> None:
        self.storage.put_many(entries)
        self.view.update(entries)

    @rule(keys=st.lists(_KEYS, max_size=3))
    def delete_many(self, keys: list[str]) -> None:
        assert self.storage.delete_many(keys) == len(set(keys) & set(self.view))
        for key in keys:
            self.view.pop(key, None)

    @rule()
    def delete_all(self) -> None:
        self.storage.delete_all()
        self.view.clear()
        self.alarm = None

    @rule(when_ms=st.integers(0, 2**41))
    def set_alarm(self, when_ms: int) -> None:
        self.storage.set_alarm(when_ms / 1000)
        self.alarm = when_ms

    @rule()
    def delete_alarm(self) -> None:
        self.storage.delete_alarm()
        self.alarm = None

    @rule(ops=_OPS, when_ms=st.none() | st.integers(0, 2**41))
    def transaction_that_raises(self, ops: list[tuple[str, str, Any]], when_ms: int | None) -> None:
        try:
            with self.storage.transaction():
                self._apply(ops, dict(self.view))
                if when_ms is not None:
                    self.storage.set_alarm(when_ms / 1000)
                else:
                    self.storage.delete_all()
                raise Rollback
        except Rollback:
            pass

    @rule(ops=_OPS)
    def transaction_that_returns(self, ops: list[tuple[str, str, Any]]) -> None:
        with self.storage.transaction():
            self._apply(ops, self.view)

    @rule(
        levels=st.lists(
            st.tuples(_OPS, st.booleans(), st.sampled_from(["none", "delete_all", "alarm"]),
                      st.booleans()),
            min_size=1,
            max_size=3,
        )
    )  # fmt: skip
    def nested_transactions_with_midway_commits(
        self, levels: list[tuple[list[tuple[str, str, Any]], bool, str, bool]]
    ) -> None:
        # Each level: ops, whether an outbound call commits midway, an extra
        # change, whether the level raises. A midway commit sends exactly what
        # was written outside every open block.
        outside: tuple[dict[str, Any], int | None] = (dict(self.view), self.alarm)

        def run(depth: int) -> None:
            ops, commit_midway, extra, raises = levels[depth]
            entry = (dict(self.view), self.alarm)
            try:
                with self.storage.transaction():
                    self._apply(ops, self.view)
                    if extra == "delete_all":
                        self.storage.delete_all()
                        self.view.clear()
                        self.alarm = None
                    elif extra == "alarm":
                        self.storage.set_alarm(len(self.view) + depth)
                        self.alarm = (len(self.view) + depth) * 1000
                    if commit_midway:
                        self.storage.commit_outside_transactions()
                        self.committed, self.committed_alarm = dict(outside[0]), outside[1]
                    if depth + 1 < len(levels):
                        run(depth + 1)
                    if raises:
                        raise Rollback
            except Rollback:
                self.view, self.alarm = entry

        run(0)

    @rule()
    def midway_commit_outside_any_transaction(self) -> None:
        self.storage.commit_outside_transactions()
        self.committed = dict(self.view)
        self.committed_alarm = self.alarm

    @rule()
    def end_turn(self) -> None:
        self.storage.commit()
        self.committed = dict(self.view)
        self.committed_alarm = self.alarm

    @precondition(lambda self: not self.storage.has_pending)
    @rule()
    def evict(self) -> None:
        self.storage = self._fresh()

    @rule(keys=st.lists(_KEYS, max_size=4))
    def get_many(self, keys: list[str]) -> None:
        expected = {key: self.view[key] for key in keys if key in self.view}
        assert self.storage.get_many(keys) == expected

    @rule(
        prefix=_OPTIONAL_KEY,
        start=_OPTIONAL_KEY,
        start_after=_OPTIONAL_KEY,
        end=_OPTIONAL_KEY,
        reverse=st.booleans(),
        limit=st.none() | st.integers(0, 4),
    )
    def list(
        self,
        prefix: str | None,
        start: str | None,
        start_after: str | None,
        end: str | None,
        reverse: bool,
        limit: int | None,
    ) -> None:
        def wanted(key: str) -> bool:
            raw = key.encode()
            return (
                (prefix is None or raw.startswith(prefix.encode()))
                and (start is None or raw >= start.encode())
                and (start_after is None or raw > start_after.encode())
                and (end is None or raw < end.encode())
            )

        keys = sorted((key for key in self.view if wanted(key)), key=str.encode, reverse=reverse)
        if limit is not None:
            keys = keys[:limit]
        listed = self.storage.list(
            prefix=prefix, start=start, start_after=start_after, end=end, reverse=reverse,
            limit=limit,
        )  # fmt: skip
        assert list(listed.items()) == [(key, self.view[key]) for key in keys]

    @invariant()
    def reads_see_this_turn(self) -> None:
        for key in ["a", "é", "z", "\u4e2d"]:
            assert self.storage.get(key) == self.view.get(key)
        expected = sorted(self.view.items(), key=lambda item: item[0].encode())
        assert list(self.storage.list().items()) == expected

    @invariant()
    def the_alarm_is_what_this_turn_set(self) -> None:
        expected = None if self.alarm is None else self.alarm / 1000
        assert self.storage.get_alarm() == expected
        assert self.engine.get_alarm(b"model-object") == self.committed_alarm

    @invariant()
    def an_object_has_its_name_while_it_stores_something(self) -> None:
        # Recorded with the first batch that stores, deleted with one that
        # leaves nothing else: a lone name would keep the object in the engine.
        stores = bool(self.committed) or self.committed_alarm is not None
        named = self.engine.get(b"model-object", storage_module.NAME_KEY) is not None
        assert named is stores

    @invariant()
    def the_engine_holds_what_was_committed(self) -> None:
        stored = self.engine.list(b"model-object", end=storage_module.INTERNAL_PREFIX)
        assert {key.decode(): msgspec.msgpack.decode(raw) for key, raw in stored} == {
            key: (list(value) if isinstance(value, list) else value)
            for key, value in self.committed.items()
        }


StorageModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_storage_matches_a_dict_model = StorageModel.TestCase


def test_keys_and_bounds_that_utf8_cannot_hold_raise_limit_error() -> None:
    storage = Storage(Engine(None), b"obj", name=None, max_value_bytes=1024)
    lone_surrogate = "\udc80"
    for call in (
        lambda: storage.put(lone_surrogate, 1),
        lambda: storage.get(lone_surrogate),
        lambda: storage.delete(lone_surrogate),
        lambda: storage.list(prefix=lone_surrogate),
        lambda: storage.list(start=lone_surrogate),
        lambda: storage.list(end=lone_surrogate),
    ):
        with pytest.raises(stead.LimitError, match="valid UTF-8"):
            call()


@pytest.mark.parametrize("option", ["prefix", "start", "start_after", "end"])
def test_list_bounds_of_the_wrong_type_raise_type_error(option: str) -> None:
    storage = Storage(Engine(None), b"obj", name=None, max_value_bytes=1024)
    with pytest.raises(TypeError, match=f"list\\({option}=...\\) takes a str, not int"):
        storage.list(**{option: 1})


def test_a_raw_value_that_does_not_decode_raises_serialization_error_on_get() -> None:
    # msgspec.Raw is stored as given; what does not decode fails as list() does.
    storage = Storage(Engine(None), b"obj", name=None, max_value_bytes=1024)
    storage.put("k", msgspec.Raw(b"\xc1"))
    storage.commit()
    for read in (lambda: storage.get("k"), lambda: storage.list()):
        with pytest.raises(stead.SerializationError):
            read()


async def test_a_long_name_fits_under_a_small_value_limit(data_dir: str) -> None:
    # The object's name is stored with its first write: the runtime's own
    # bookkeeping, which the user's value limit must not refuse.
    name = "n" * 2048
    async with stead.Runtime({"B": Box}, data_dir=data_dir, max_value_bytes=8) as rt:
        box = rt.env.B.get_by_name(name)
        await box.put("small", 1)
        with pytest.raises(stead.LimitError):
            await box.put("big", "x" * 8)
    async with stead.Runtime({"B": Box}, data_dir=data_dir, max_value_bytes=8) as rt:
        assert await rt.env.B.get_by_name(name).get("small") == 1
        assert [object_id.name for object_id in await rt.env.B.list_ids()] == [name]


def _rolls_back(storage: Storage, write: Any = None) -> None:
    """A transaction() block that writes, lets ``write`` run inside it, and rolls back."""
    with pytest.raises(ValueError), storage.transaction():
        storage.put("block", 1)
        if write is not None:
            write()
        raise ValueError("roll back")


def test_a_rollback_concerns_a_watched_writer_only_through_another_writer() -> None:
    # Two writers share the storage (a call back and its turn): the watched one
    # is concerned by another's block rolling back, or by its own block taking
    # the other's writes with it; not by its own block holding only its writes.
    writer: list[str] = ["call back"]
    storage = Storage(
        Engine(None), b"obj", name=None, max_value_bytes=1024, writer=lambda: writer[0]
    )
    watch = storage.watch_rollbacks("call back")
    _rolls_back(storage)  # its own block, its own writes
    assert not watch.hit

    def turn_writes() -> None:
        writer[0] = "turn"
        storage.put("turn", 1)
        writer[0] = "call back"

    _rolls_back(storage, turn_writes)  # its own block took the turn's write
    assert watch.hit
    storage.unwatch_rollbacks(watch)
    watch = storage.watch_rollbacks("call back")
    writer[0] = "turn"
    _rolls_back(storage)  # the turn's block
    assert watch.hit
    storage.unwatch_rollbacks(watch)


def test_a_busy_object_reading_missing_keys_keeps_its_cache_bounded() -> None:
    # An idempotency check reads a key that almost never exists; a busy object
    # is never evicted, so its cache must stay within budget on misses too.
    import tracemalloc

    engine = Engine(None)
    storage = Storage(engine, b"object", name=None, max_value_bytes=1 << 20)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for request in range(100_000):
            assert storage.get(f"request:{request}") is None
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4 * storage_module._CACHE_BUDGET, f"{grown:,} bytes"


def test_tiny_values_count_against_the_cache_budget() -> None:
    engine = Engine(None)
    storage = Storage(engine, b"object", name=None, max_value_bytes=1 << 20)
    storage.put_many({f"flag:{n}": True for n in range(50_000)})
    storage.commit()
    reader = Storage(engine, b"object", name=None, max_value_bytes=1 << 20)
    for n in range(50_000):
        assert reader.get(f"flag:{n}") is True
    assert len(reader._cache) < 20_000  # 1 MiB holds ~9k such entries with their keys


@pytest.mark.parametrize("limit", ["2", 1.5, True])
def test_list_refuses_a_limit_that_is_not_an_int(limit: Any) -> None:
    storage = Storage(Engine(None), b"object", name=None, max_value_bytes=1 << 20)
    storage.put("a", 1)
    with pytest.raises(TypeError, match="limit must be an int"):
        storage.list(limit=limit)
