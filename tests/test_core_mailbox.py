"""The Rust mailbox through its Python binding."""

from __future__ import annotations

import threading

import pytest

import stead
from stead._core import Mailbox


def test_fifo_handoff_and_states() -> None:
    mailbox = Mailbox(max_pending=3)
    assert mailbox.push(b"a", 1) is True
    assert mailbox.state(b"a") == "running"
    assert [mailbox.push(b"a", t) for t in (2, 3, 4)] == [False, False, False]
    with pytest.raises(stead.OverloadedError):
        mailbox.push(b"a", 5)
    assert mailbox.depth(b"a") == 3 and mailbox.total_depth() == 3
    assert mailbox.cancel(b"a", 3) is True
    assert mailbox.finish(b"a") == 2
    assert mailbox.finish(b"a") == 4
    assert mailbox.finish(b"a") is None
    assert mailbox.state(b"a") == "idle" and len(mailbox) == 0


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Mailbox(max_pending=0)


def test_threads_share_a_mailbox_without_double_running() -> None:
    mailbox = Mailbox(max_pending=1_000_000, shards=8)
    running: dict[bytes, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def worker(offset: int) -> None:
        for i in range(2000):
            key = b"k%d" % (i % 4)
            if mailbox.push(key, offset + i):
                while True:
                    with lock:
                        running[key] = running.get(key, 0) + 1
                        if running[key] != 1:
                            errors.append("two events ran at once")
                        running[key] -= 1
                    if mailbox.finish(key) is None:
                        break

    threads = [threading.Thread(target=worker, args=(n * 100_000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(mailbox) == 0
