"""TARGETs for ``stead serve`` tests: a factory, and one that raises."""

from __future__ import annotations

import stead
from tests._apps.counter import Plain


def fresh() -> stead.Runtime:
    """A new in-memory runtime per call (a module-level one could be started only once)."""
    return stead.Runtime({"PLAIN": Plain}, data_dir=None)


def failing() -> stead.Runtime:
    raise RuntimeError("the factory failed on purpose")


async def made_async() -> stead.Runtime:
    return stead.Runtime({"PLAIN": Plain}, data_dir=None)


def hides_async() -> object:
    """A factory that returns a coroutine: refused, with no "never awaited" warning."""
    return made_async()
