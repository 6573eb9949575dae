"""A runtime whose disk can be made to fill up: ``stead serve tests._apps.diskfull:runtime``.

``DISK.fill()`` stops this process's files from growing past their current size
(``RLIMIT_FSIZE``), so the storage engine's next log write fails as on a full
disk. Its data dir comes from ``STEAD_TEST_DATA_DIR``.
"""

from __future__ import annotations

import os
import resource
import signal
from pathlib import Path

import stead


class Disk(stead.DurableObject):
    def fill(self) -> None:
        data_dir = Path(os.environ["STEAD_TEST_DATA_DIR"])
        largest = max(path.stat().st_size for path in data_dir.iterdir() if path.is_file())
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write then fails with EFBIG
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (largest, hard))

    def write(self, size: int) -> int:
        self.ctx.storage.put("blob", "x" * size)
        return size


runtime = stead.Runtime(
    {"DISK": Disk}, data_dir=os.environ.get("STEAD_TEST_DATA_DIR"), durability="fsync"
)
