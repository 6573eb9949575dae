"""Child process for the flush-failure test: a file size limit (RLIMIT_FSIZE)
makes the flusher's write fail for real, which must poison the engine.

Prints each acknowledged batch number, then ``poisoned`` once commits fail.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import sys
from collections.abc import Callable

from stead._core import Engine
from stead.errors import StorageError

LIMIT = 64 * 1024


def main(data_dir: str) -> None:
    engine = Engine(data_dir, "fsync")
    assert engine.failure is None
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a dead process
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
    batch = 0
    try:
        while True:
            seq = engine.commit(b"o", [(b"k%d" % batch, b"x" * 1000)])
            engine.wait_durable(seq)
            print(batch, flush=True)
            batch += 1
    except StorageError:
        pass
    attempts: list[Callable[[], object]] = [
        engine.drain_wakeup,
        lambda: engine.commit(b"o", [(b"late", b"x")]),
        lambda: engine.wait_durable(engine.last_seq()),
    ]
    for attempt in attempts:
        try:
            attempt()
        except StorageError:
            continue
        print("not poisoned", flush=True)
        return
    if engine.failure is None or "File too large" not in engine.failure:
        print(f"failure not reported: {engine.failure!r}", flush=True)
        return
    print("poisoned", flush=True)
    with contextlib.suppress(StorageError):
        engine.close()  # reports the failure again


if __name__ == "__main__":
    main(sys.argv[1])
