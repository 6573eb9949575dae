"""stead: Durable Objects for Python."""

from __future__ import annotations

from stead.errors import (
    CorruptionError,
    DataDirLockedError,
    DeadlockError,
    InvalidIdError,
    LimitError,
    OverloadedError,
    RemoteError,
    SerializationError,
    SteadError,
    StorageError,
    UnknownBindingError,
    UnknownMethodError,
)

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
