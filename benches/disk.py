"""Raw disk figures measured in the same run as the benchmark they judge."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path


def fdatasync_p50_us(directory: str | Path, samples: int = 300) -> float:
    """Median microseconds of ``write(100 B) + fdatasync`` on a file in ``directory``."""
    path = Path(directory) / "fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        timings = []
        for _ in range(samples):
            os.write(fd, b"x" * 100)
            start = time.perf_counter()
            os.fdatasync(fd)
            timings.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(timings) * 1e6


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
