"""TARGETs for ``stead serve`` tests: a factory, and one that raises."""

from __future__ import annotations

import stead
from tests._apps.counter import Plain


def fresh() -> stead.Runtime:
    """A new in-memory runtime per call (a module-level one could be started only once)."""
    return stead.Runtime({"PLAIN": Plain}, data_dir=None)


def failing() -> stead.Runtime:
    raise RuntimeError("the factory failed on purpose")
