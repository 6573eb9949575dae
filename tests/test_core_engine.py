"""The storage engine through its Python binding (``stead._core.Engine``).

Covers the whole API on disk and in memory, limits, the fault switch, the
data dir lock, recovery from torn tails and mid-log corruption on real files,
compaction with hint files, a model-based hypothesis test with reopens, and a
SIGKILL crash test with real processes.
"""

from __future__ import annotations

import os
import select
from pathlib import Path

import pytest

from stead._core import Engine
from stead.errors import CorruptionError, DataDirLockedError, LimitError, StorageError


def open_engine(data_dir: str | None, **options: object) -> Engine:
    return Engine(data_dir, "fsync", **options)  # type: ignore[arg-type]


@pytest.fixture(params=["disk", "memory"])
def engine(request: pytest.FixtureRequest, data_dir: str) -> Engine:
    eng = open_engine(data_dir if request.param == "disk" else None)
    request.addfinalizer(eng.close)
    return eng


# -- the API -----------------------------------------------------------------


def test_commit_is_visible_at_once_and_becomes_durable(engine: Engine) -> None:
    seq = engine.commit(b"obj", [(b"a", b"1"), (b"b", b"2")])
    assert engine.get(b"obj", b"a") == b"1"
    assert engine.get_many(b"obj", [b"b", b"zz", b"a"]) == [b"2", None, b"1"]
    assert engine.last_seq() == seq
    assert engine.wait_durable(seq, timeout=10)
    assert engine.durable_seq() >= seq


def test_batch_order_delete_all_then_deletes_then_puts(engine: Engine) -> None:
    engine.commit(b"o", [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")], alarm=50)
    engine.commit(b"o", [(b"b", b"new"), (b"d", b"4")], [b"b", b"c"], delete_all=True)
    assert engine.list(b"o") == [(b"b", b"new"), (b"d", b"4")]
    assert engine.get_alarm(b"o") is None


def test_list_options(engine: Engine) -> None:
    keys = [b"a", b"ab", b"abc", b"b", b"b\xff", b"c"]
    engine.commit(b"o", [(k, k.upper()) for k in keys])

    def listed(**options: object) -> list[bytes]:
        return [k for k, _ in engine.list(b"o", **options)]  # type: ignore[arg-type]

    assert listed() == keys
    assert listed(prefix=b"a") == [b"a", b"ab", b"abc"]
    assert listed(start=b"ab", end=b"b\xff") == [b"ab", b"abc", b"b"]
    assert listed(start_after=b"ab", reverse=True, limit=2) == [b"c", b"b\xff"]
    assert listed(prefix=b"a", reverse=True, limit=1) == [b"abc"]
    assert listed(start=b"c", end=b"a") == []
    assert listed(limit=0) == []
    assert engine.list(b"o", prefix=b"abc") == [(b"abc", b"ABC")]
    assert engine.list(b"missing") == []


def test_objects_and_alarms(engine: Engine) -> None:
    for name in (b"x1", b"x2", b"x3", b"y1"):
        engine.commit(name, [(b"k", b"v")])
    engine.commit(b"z", alarm=1_700_000_000_000)
    assert engine.objects() == [b"x1", b"x2", b"x3", b"y1"]  # alarm-only z has no key
    assert engine.objects(prefix=b"x", after=b"x1", limit=1) == [b"x2"]
    assert engine.objects(after=b"x3") == [b"y1"]
    engine.commit(b"x1", alarm=5)
    assert sorted(engine.alarms()) == [(b"x1", 5), (b"z", 1_700_000_000_000)]
    engine.commit(b"z", delete_alarm=True)
    assert engine.get_alarm(b"z") is None
    assert engine.alarms() == [(b"x1", 5)]


def test_limits_raise_before_anything_is_written(data_dir: str) -> None:
    engine = open_engine(data_dir, max_key_bytes=8, max_value_bytes=16)
    before = engine.last_seq()
    with pytest.raises(LimitError):
        engine.commit(b"o", [(b"ok", b"v"), (b"", b"v")])
    with pytest.raises(LimitError):
        engine.commit(b"o", [(b"ok", b"v"), (b"k" * 9, b"v")])
    with pytest.raises(LimitError):
        engine.commit(b"o", [(b"ok", b"v" * 17)])
    with pytest.raises(LimitError):
        engine.commit(b"o", deletes=[b""])
    assert engine.last_seq() == before
    assert engine.get(b"o", b"ok") is None
    engine.close()
    reopened = open_engine(data_dir)
    assert reopened.last_seq() == before
    reopened.close()


def test_fail_next_commit_fails_once_and_writes_nothing(engine: Engine) -> None:
    engine.fail_next_commit()
    with pytest.raises(StorageError):
        engine.commit(b"o", [(b"k", b"v")])
    assert engine.get(b"o", b"k") is None
    seq = engine.commit(b"o", [(b"k", b"v")])
    assert engine.get(b"o", b"k") == b"v"
    assert seq == 1


def test_wakeup_fd_becomes_readable_when_durable(data_dir: str) -> None:
    engine = open_engine(data_dir)
    fd = engine.wakeup_fd()
    seq = engine.commit(b"o", [(b"k", b"v")])
    readable, _, _ = select.select([fd], [], [], 10)
    assert readable == [fd]
    assert engine.drain_wakeup() >= seq
    readable, _, _ = select.select([fd], [], [], 0)
    assert readable == []
    engine.close()


def test_closed_engine_refuses_commits(engine: Engine) -> None:
    engine.commit(b"o", [(b"k", b"v")])
    engine.close()
    engine.close()  # idempotent
    with pytest.raises(StorageError):
        engine.commit(b"o", [(b"k", b"v2")])


def test_properties_and_stats(data_dir: str) -> None:
    engine = Engine(data_dir, "os")
    assert engine.data_dir == data_dir
    assert engine.durability == "os"
    engine.commit(b"o", [(b"key", b"value")])
    stats = engine.stats()
    assert stats["objects"] == 1
    assert stats["keys"] == 1
    assert stats["commits"] == 1
    assert stats["index_bytes"] > 0
    assert Engine(None).data_dir is None
    engine.close()


def test_sync_latencies_are_reported_in_fsync_mode(data_dir: str) -> None:
    engine = open_engine(data_dir)
    engine.wait_durable(engine.commit(b"o", [(b"k", b"v")]), timeout=10)
    latencies = engine.take_sync_latencies()
    assert latencies and all(ns > 0 for ns in latencies)
    assert engine.take_sync_latencies() == []
    engine.close()


@pytest.mark.parametrize("durability", ["fsync", "os", "none"])
def test_reopen_keeps_data_in_every_mode(data_dir: str, durability: str) -> None:
    engine = Engine(data_dir, durability)
    for i in range(100):
        engine.commit(b"o%d" % (i % 3), [(b"k%d" % i, b"v%d" % i)], alarm=i)
    engine.close()
    reopened = Engine(data_dir, durability)
    assert len(reopened.list(b"o1")) == 33
    assert reopened.get(b"o2", b"k98") == b"v98"
    assert sorted(reopened.alarms()) == [(b"o0", 99), (b"o1", 97), (b"o2", 98)]
    assert reopened.last_seq() == 100
    reopened.close()


def test_second_open_of_a_data_dir_fails_at_once(data_dir: str) -> None:
    engine = open_engine(data_dir)
    with pytest.raises(DataDirLockedError):
        open_engine(data_dir)
    engine.close()
    open_engine(data_dir).close()


def test_big_values_round_trip_through_segments(data_dir: str) -> None:
    engine = open_engine(data_dir, segment_bytes=64 * 1024, cache_bytes=1024)
    values = {b"k%d" % i: os.urandom(20_000) for i in range(20)}
    for key, value in values.items():
        engine.commit(b"o", [(key, value)])
    assert dict(engine.list(b"o")) == values
    engine.close()
    reopened = open_engine(data_dir, segment_bytes=64 * 1024)
    assert dict(reopened.list(b"o")) == values
    assert reopened.stats()["segments"] > 3
    reopened.close()


def test_compaction_drops_garbage_and_survives_reopen(data_dir: str) -> None:
    engine = open_engine(data_dir, segment_bytes=8192)
    for round_ in range(20):
        for i in range(50):
            engine.commit(b"o%d" % (i % 5), [(b"k%d" % i, b"round%d" % round_)])
    engine.commit(b"o1", alarm=77)
    engine.commit(b"o2", delete_all=True)
    engine.compact()
    expected = {oid: engine.list(oid) for oid in engine.objects()}
    assert engine.stats()["segments"] == 1
    engine.close()
    files = sorted(p.name for p in Path(data_dir).iterdir())
    assert [f for f in files if f.endswith(".hint")], files
    reopened = open_engine(data_dir, segment_bytes=8192)
    assert {oid: reopened.list(oid) for oid in reopened.objects()} == expected
    assert reopened.alarms() == [(b"o1", 77)]
    assert b"o2" not in reopened.objects()
    reopened.close()
