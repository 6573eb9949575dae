"""Child process for the engine crash test.

Commits batches forever (fsync mode, small segments so that segments roll and
background compaction runs) and prints each batch number once its commit is
durable. Batch ``b`` goes to object ``o<b % 4>`` and writes, atomically, the
marker ``m<b>``, the keys ``k0``..``k4`` all set to ``b``, and the alarm ``b``.
Runs until killed.
"""

from __future__ import annotations

import sys

from stead._core import Engine

KEYS = 5
OBJECTS = 4


def batch_puts(batch: int) -> list[tuple[bytes, bytes]]:
    number = b"%d" % batch
    return [(b"m%012d" % batch, b"1")] + [(b"k%d" % i, number) for i in range(KEYS)]


def main(data_dir: str, first_batch: int) -> None:
    engine = Engine(data_dir, "fsync", segment_bytes=32 * 1024)
    print("ready", flush=True)
    batch = first_batch
    while True:
        seq = engine.commit(b"o%d" % (batch % OBJECTS), batch_puts(batch), alarm=batch)
        engine.wait_durable(seq)
        print(batch, flush=True)
        batch += 1


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
