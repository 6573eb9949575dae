"""``DurableObject``, the base class of every stead object, and its RPC surface."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from stead.messages import Request, Response

if TYPE_CHECKING:
    from stead.alarms import AlarmInfo
    from stead.context import ObjectContext
    from stead.runtime import Env

__all__ = ["DurableObject", "RpcMethod", "rpc_methods"]


class DurableObject:
    """A single-threaded, addressable object with its own storage and alarm.

    Subclass it; every public method (sync or async, not starting with ``_``)
    is callable through a ``Stub``. ``fetch``, ``alarm`` and ``on_start`` are
    the optional event handlers.
    """

    #: Let other events interleave at this object's awaits (Cloudflare's input-gate model).
    reentrant: ClassVar[bool] = False

    def __init__(self, ctx: ObjectContext, env: Env) -> None:
        self.ctx = ctx
        self.env = env

    async def on_start(self) -> None:
        """Runs before any other event of a new instance, with the input closed."""

    async def fetch(self, request: Request) -> Response:
        """Serve an HTTP-like request. The default answers 501."""
        return Response.json(
            {"error": {"type": "NotImplemented", "message": "this object has no fetch handler"}},
            status=501,
        )

    async def alarm(self, info: AlarmInfo) -> None:
        """Runs when the alarm set with ``ctx.storage.set_alarm`` is due."""


class RpcMethod:
    """What stead knows about one RPC method of a class."""

    __slots__ = ("function", "is_async", "name")

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        self.name = name
        self.function = function
        self.is_async = inspect.iscoroutinefunction(function)


# Names that are part of the base classes' machinery, never RPC methods.
_FRAMEWORK_MODULES = frozenset({__name__, "stead.agent"})
_rpc_cache: dict[type, dict[str, RpcMethod]] = {}


def _is_framework_name(cls: type, name: str) -> bool:
    # fetch, alarm, on_start, Agent's set_state...: handlers and machinery, even when overridden.
    return any(
        klass.__module__ in _FRAMEWORK_MODULES and name in vars(klass) for klass in cls.__mro__
    )


def rpc_methods(cls: type[DurableObject]) -> dict[str, RpcMethod]:
    """The public RPC methods of ``cls``, by name (cached)."""
    methods = _rpc_cache.get(cls)
    if methods is None:
        methods = {}
        for name in dir(cls):
            if name.startswith("_") or _is_framework_name(cls, name):
                continue
            attribute = inspect.getattr_static(cls, name)
            if isinstance(attribute, (staticmethod, classmethod, property)):
                continue
            if inspect.isfunction(attribute):
                methods[name] = RpcMethod(name, attribute)
        _rpc_cache[cls] = methods
    return methods
