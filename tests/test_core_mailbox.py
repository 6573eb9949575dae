"""The Rust mailbox through its Python binding (``stead._core.Mailbox``)."""

from __future__ import annotations

import threading
import time

import pytest

import stead
from stead._core import Mailbox


def test_first_push_runs_later_ones_queue_in_fifo_order() -> None:
    mailbox = Mailbox(max_pending=10)
    assert mailbox.state(b"a") == "idle"
    assert mailbox.push(b"a", 1) is True
    assert mailbox.state(b"a") == "running"
    assert [mailbox.push(b"a", t) for t in (2, 3, 4)] == [False, False, False]
    assert mailbox.state(b"a") == "queued"
    assert mailbox.push(b"b", 5) is True
    assert (mailbox.depth(b"a"), mailbox.total_depth(), len(mailbox)) == (3, 3, 2)
    assert [mailbox.finish(b"a") for _ in range(4)] == [2, 3, 4, None]
    assert mailbox.state(b"a") == "idle" and len(mailbox) == 1


def test_push_beyond_max_pending_is_overloaded() -> None:
    mailbox = Mailbox(max_pending=2)
    assert mailbox.push(b"a", 1)
    assert not mailbox.push(b"a", 2) and not mailbox.push(b"a", 3)
    with pytest.raises(stead.OverloadedError):
        mailbox.push(b"a", 4)
    assert mailbox.depth(b"a") == 2
    assert mailbox.finish(b"a") == 2
    assert mailbox.push(b"a", 5) is False  # room again after a hand-over
    assert [mailbox.finish(b"a") for _ in range(3)] == [3, 5, None]


def test_cancel_removes_only_a_queued_token() -> None:
    mailbox = Mailbox()
    for token in (1, 2, 3):
        mailbox.push(b"a", token)
    assert mailbox.cancel(b"a", 2) is True
    assert mailbox.cancel(b"a", 2) is False
    assert mailbox.cancel(b"a", 1) is False  # running, not queued
    assert mailbox.cancel(b"idle", 1) is False
    assert [mailbox.finish(b"a"), mailbox.finish(b"a")] == [3, None]


def test_idle_objects_are_forgotten() -> None:
    mailbox = Mailbox()
    for n in range(5_000):
        key = n.to_bytes(32, "big")
        assert mailbox.push(key, n) is True
        assert mailbox.finish(key) is None
    assert len(mailbox) == 0 and mailbox.total_depth() == 0


@pytest.mark.parametrize("kwargs", [{"max_pending": 0}, {"shards": 0}])
def test_bad_bounds_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        Mailbox(**kwargs)


class _Runner:
    """Runs events handed out by a shared mailbox and records violations."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self.lock = threading.Lock()
        self.holding: set[bytes] = set()
        self.ran: dict[bytes, list[int]] = {}
        self.overlaps = 0

    def run_all(self, key: bytes, token: int | None) -> None:
        while token is not None:
            with self.lock:
                self.overlaps += key in self.holding
                self.holding.add(key)
                self.ran.setdefault(key, []).append(token)
            time.sleep(0)  # give up the GIL so an overlapping start could happen
            with self.lock:
                self.holding.discard(key)
            token = self.mailbox.finish(key)


def test_threads_share_a_mailbox_one_event_per_object_at_a_time() -> None:
    runner = _Runner(Mailbox(max_pending=1_000_000, shards=8))
    events = 2_000

    def worker(thread_no: int) -> None:
        for n in range(events):
            key, token = b"k%d" % ((n + thread_no) % 3), thread_no << 32 | n
            if runner.mailbox.push(key, token):
                runner.run_all(key, token)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert runner.overlaps == 0
    assert sum(len(tokens) for tokens in runner.ran.values()) == 4 * events
    for tokens in runner.ran.values():
        for thread_no in range(4):
            mine = [t for t in tokens if t >> 32 == thread_no]
            assert mine == sorted(mine)  # each pusher's events in its order
    assert len(runner.mailbox) == 0
