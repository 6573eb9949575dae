"""Child process for the compaction crash test.

Three threads overwrite a few keys of a dozen objects each (fsync mode, 8 KiB
segments, so segments roll and background compaction runs all the time), a
run of 1-40 commits at a time without waiting, then wait for the last one to
be durable and print every write of the run as ``object key generation``.
Commits are thus in flight while compaction snapshots the index: the shape in
which a compaction once dropped acknowledged values. Runs until killed.
"""

from __future__ import annotations

import random
import sys
import threading

from stead._core import Engine

SEGMENT_BYTES = 8 * 1024
PADDING = b"p" * 150


def writer(engine: Engine, thread: int, first_generation: int, out: threading.Lock) -> None:
    rng = random.Random(first_generation + thread)
    generation = first_generation + thread * 1_000_000
    while True:
        written = []
        seq = 0
        for _ in range(rng.randint(1, 40)):
            generation += 1
            object_id = b"o%d-t%d" % (rng.randrange(12), thread)
            key = b"key%d" % rng.randrange(3)
            seq = engine.commit(object_id, [(key, b"%d|" % generation + PADDING)])
            written.append(f"{object_id.decode()} {key.decode()} {generation}\n")
        engine.wait_durable(seq)
        with out:
            sys.stdout.write("".join(written))
            sys.stdout.flush()


def main(data_dir: str, first_generation: int) -> None:
    engine = Engine(data_dir, "fsync", segment_bytes=SEGMENT_BYTES)
    out = threading.Lock()
    print("ready", flush=True)
    for thread in range(3):
        threading.Thread(
            target=writer, args=(engine, thread, first_generation, out), daemon=True
        ).start()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
