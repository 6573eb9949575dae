"""The one exception hierarchy of stead.

Every error stead raises is a :class:`SteadError`. Where the meaning matches a
builtin, the class also subclasses it (``InvalidIdError`` is a ``ValueError``),
so ``except ValueError`` keeps working for callers that do not know stead.
The Rust core raises these same classes (see ``rust/bindings/src/errors.rs``).
"""

from __future__ import annotations

__all__ = [
    "CorruptionError",
    "DataDirLockedError",
    "DeadlockError",
    "InvalidIdError",
    "LimitError",
    "OverloadedError",
    "RemoteError",
    "SerializationError",
    "SteadError",
    "StorageError",
    "UnknownBindingError",
    "UnknownMethodError",
]


class SteadError(Exception):
    """Base class of every error stead raises."""


class OverloadedError(SteadError):
    """An object already has ``max_pending`` queued events; retry later."""


class StorageError(SteadError):
    """A commit or read failed; nothing of the failed turn was acknowledged."""


class InvalidIdError(SteadError, ValueError):
    """An id string is malformed, forged, or belongs to another binding."""


class LimitError(SteadError, ValueError):
    """A key or value is over its size limit; nothing was written."""


class SerializationError(SteadError, TypeError):
    """A value cannot be encoded or decoded by the codec."""


class DeadlockError(SteadError):
    """A call would wait on an object that is (transitively) waiting on the caller."""


class RemoteError(SteadError):
    """A handler raised an exception that cannot be rebuilt as its own class."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str]]:
        return (type(self), (self.type_name, self.message))


class DataDirLockedError(SteadError):
    """Another process holds the data dir (one process per data dir)."""


class CorruptionError(SteadError):
    """The log holds a damaged record before valid ones; nothing was opened."""


class UnknownBindingError(SteadError, KeyError, AttributeError):
    """No object class is bound under this name (nor a var, for ``env.NAME``).

    An ``AttributeError`` too, so ``getattr(env, "NAME", default)`` and
    ``hasattr(env, "NAME")`` work for optional vars.
    """

    def __str__(self) -> str:
        # KeyError.__str__ quotes its argument; show the plain message instead.
        return str(self.args[0]) if self.args else ""


class UnknownMethodError(SteadError, AttributeError):
    """The object has no public method of this name."""
