"""stead: Durable Objects for Python.

Single-threaded, addressable objects with transactional storage and durable
alarms, embedded in your process. Start with :class:`Runtime` and
:class:`DurableObject`; see docs/objects.md.
"""

from __future__ import annotations

from stead._core import __version__
from stead.agent import Agent, Schedule
from stead.alarms import AlarmInfo
from stead.context import ObjectContext
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
from stead.hookspecs import hookimpl
from stead.ids import ObjectId
from stead.messages import Request, Response
from stead.namespace import Namespace
from stead.objects import DurableObject
from stead.runtime import Env, Runtime
from stead.storage import Storage
from stead.stub import Stub

__all__ = [
    "Agent",
    "AlarmInfo",
    "CorruptionError",
    "DataDirLockedError",
    "DeadlockError",
    "DurableObject",
    "Env",
    "InvalidIdError",
    "LimitError",
    "Namespace",
    "ObjectContext",
    "ObjectId",
    "OverloadedError",
    "RemoteError",
    "Request",
    "Response",
    "Runtime",
    "Schedule",
    "SerializationError",
    "SteadError",
    "Storage",
    "StorageError",
    "Stub",
    "UnknownBindingError",
    "UnknownMethodError",
    "__version__",
    "hookimpl",
]
