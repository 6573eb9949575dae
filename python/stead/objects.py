"""``DurableObject``, the base class of every stead object, and its RPC surface."""

from __future__ import annotations

import dis
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from stead import codec
from stead.errors import SerializationError
from stead.messages import Request, Response

if TYPE_CHECKING:
    from stead.alarms import AlarmInfo
    from stead.context import ObjectContext
    from stead.runtime import Env

__all__ = ["DurableObject", "RpcMethod", "call_maybe_async", "can_suspend", "rpc_methods"]


class DurableObject:
    """A single-threaded, addressable object with its own storage and alarm.

    Subclass it and bind the class to a name in a ``stead.Runtime({"NAME":
    Class})``; ``runtime.env.NAME.get_by_name(...)`` returns a ``Stub`` for one
    object. Every public method (sync or async, not starting with ``_``) is an
    RPC method callable through the stub; it cannot be named ``id``, which is
    the stub's own attribute (``TypeError`` when the class is defined).
    ``fetch``, ``alarm`` and ``on_start`` are the optional event handlers.

    Each instance gets:

    - ``self.ctx``: its :class:`~stead.ObjectContext`: ``ctx.id`` (its
      ``ObjectId``), ``ctx.storage`` (its transactional :class:`~stead.Storage`,
      with the alarm), ``ctx.wait_until``, ``ctx.block_concurrency_while``,
      ``ctx.abort``;
    - ``self.env``: the runtime's ``Env``: one ``Namespace`` per binding
      (``self.env.OTHER.get_by_name(...)`` to call other objects) and the
      runtime's ``vars``.

    An object runs one event at a time. Set the class attribute ``reentrant =
    True`` to let other events of the same object run while one awaits
    (Cloudflare's input-gate model: a read-await-write can then lose updates);
    the default ``False`` holds them until it returns. Override ``__init__(self,
    ctx, env)`` only to set up in-memory state, calling
    ``super().__init__(ctx, env)`` first.

    The guide is docs/objects.md in stead's source repository.
    """

    #: Let other events interleave at this object's awaits (Cloudflare's input-gate model).
    reentrant: ClassVar[bool] = False

    def __init__(self, ctx: ObjectContext, env: Env) -> None:
        """Keep ``ctx`` (``self.ctx``) and ``env`` (``self.env``)."""
        self.ctx = ctx
        self.env = env

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse an RPC method named like a stub attribute (``id``): ``TypeError``."""
        super().__init_subclass__(**kwargs)
        _refuse_stub_names(cls)

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
    """What stead knows about one RPC method of a class.

    Arguments and results are copied through the codec and decoded into the
    method's type hints where they have them, so a ``list[Struct]`` result
    arrives as structs and a wrongly typed argument fails with
    ``SerializationError``, as it would over HTTP.
    """

    __slots__ = (
        "async_def",
        "function",
        "is_async",
        "keyword_types",
        "name",
        "passthrough_results",
        "positional_types",
        "result_type",
        "suspends",
    )

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        self.name = name
        self.function = function
        self.is_async = _is_async_function(function)
        #: Whether the result is always a coroutine (the method's own code is an
        #: ``async def``). A decorator's sync wrapper around an async method may
        #: also return a plain value (a cache hit, say): the dispatcher awaits
        #: the result of such a method only if it is awaitable.
        self.async_def = self.is_async and _is_async_def(function)
        #: Whether a call can suspend midway (an async method whose body awaits).
        #: One that cannot runs on the caller's task like a sync method; one that
        #: can runs as a task of its own, so a caller giving up never interrupts it.
        #: A decorated method's own code is not the code that runs: it can.
        self.suspends = self.is_async and (not _is_async_def(function) or can_suspend(function))
        hints = _type_hints(function)
        parameters = list(inspect.signature(function).parameters.values())[1:]  # skip self
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self.positional_types = [
            _decodable(hints.get(p.name)) for p in parameters if p.kind in positional
        ]
        self.keyword_types = _keyword_types(parameters, hints)
        self.result_type = _decodable(hints.get("return"))
        # Result classes whose codec copy is the value itself (ints only within
        # MessagePack's range): the dispatcher's hot path skips the copy call.
        self.passthrough_results = codec.passthrough_types(self.result_type)

    def copy_args(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        """Codec copies of the call's arguments, decoded into the parameter types."""
        types = self.positional_types
        copied = [
            codec.copy(value, types[i] if i < len(types) else None) for i, value in enumerate(args)
        ]
        keywords = self.keyword_types
        extra = keywords.get(_EXTRA_KEYWORDS)  # the **kwargs hint, for names it takes
        named = {key: codec.copy(value, keywords.get(key, extra)) for key, value in kwargs.items()}
        return copied, named

    def copy_result(self, result: Any) -> Any:
        """A codec copy of the result, decoded into the return type."""
        try:
            return codec.copy(result, self.result_type)
        except SerializationError:
            if inspect.isawaitable(result):
                raise self._returned_awaitable(result) from None
            raise

    def _returned_awaitable(self, result: Any) -> TypeError:
        # A sync method returning a coroutine: a decorator stead cannot see through.
        if inspect.iscoroutine(result):
            result.close()  # never awaited, and no warning saying so
        return TypeError(
            f"RPC method {self.name!r} is not a coroutine function but returned "
            f"{type(result).__name__}; a decorator around an async method must keep it "
            "recognisable: functools.wraps, or inspect.markcoroutinefunction (Python 3.12+)"
        )


_EXTRA_KEYWORDS = "*"  # keyword_types' key for the **kwargs hint: no parameter's name


def _keyword_types(parameters: list[inspect.Parameter], hints: dict[str, Any]) -> dict[str, Any]:
    """Parameter name -> type for what a keyword argument can fill; only the
    parameters a keyword can name (a positional-only parameter's name or a
    ``*args`` name given as a keyword goes into ``**kwargs``), plus the
    ``**kwargs`` hint under ``_EXTRA_KEYWORDS``."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    types = {p.name: _decodable(hints.get(p.name)) for p in parameters if p.kind in named}
    for p in parameters:
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            types[_EXTRA_KEYWORDS] = _decodable(hints.get(p.name))
    return types


# The opcodes of every point where a coroutine can suspend: await (and the
# awaits inside async with / async for) across the CPython versions stead supports.
_SUSPENDING_OPCODES = frozenset(
    {"YIELD_VALUE", "GET_AWAITABLE", "SEND", "BEFORE_ASYNC_WITH", "GET_AITER", "GET_ANEXT"}
)


async def call_maybe_async(fn: Callable[[], Any]) -> Any:
    """``fn()``, awaited if it returned an awaitable: hooks (``on_start``,
    ``fetch``, ``alarm``) may be plain methods, as RPC methods may."""
    result = fn()
    if inspect.isawaitable(result):
        return await result
    return result


def _is_async_function(function: Callable[..., Any]) -> bool:
    """Whether calling ``function`` gives a coroutine to await: an ``async def``,
    one marked with ``inspect.markcoroutinefunction``, or a decorator's wrapper
    (``functools.wraps``) around one of those."""
    if inspect.iscoroutinefunction(function):
        return True
    try:
        unwrapped = inspect.unwrap(function)
    except ValueError:  # a __wrapped__ cycle
        return False
    return unwrapped is not function and inspect.iscoroutinefunction(unwrapped)


def _is_async_def(function: Callable[..., Any]) -> bool:
    """Whether ``function``'s own code is an ``async def`` body (not a sync wrapper)."""
    code = getattr(function, "__code__", None)
    return code is not None and bool(code.co_flags & inspect.CO_COROUTINE)


def can_suspend(function: Callable[..., Any]) -> bool:
    """Whether calling the async ``function`` can suspend before it returns: its
    own code awaits somewhere. (Awaits in nested functions do not count; an
    async comprehension is awaited by the body.) Unknown callables can."""
    code = getattr(function, "__code__", None)
    if code is None:
        return True
    return any(op.opname in _SUSPENDING_OPCODES for op in dis.get_instructions(code))


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # unresolvable forward references: copy without hints
        return {}


def _decodable(hint: Any) -> Any:
    """``hint`` if msgspec can decode into it, else ``None`` (copy by value type)."""
    if hint is None or hint is Any:
        return None
    return hint if codec.can_decode_into(hint) else None


# Public attributes of ``Stub`` other than the handlers (``fetch``): an RPC method of
# that name would be unreachable through a stub (``stub.id`` is the ObjectId).
_STUB_ATTRIBUTES = frozenset({"id"})


def _refuse_stub_names(cls: type) -> None:
    for name in _STUB_ATTRIBUTES:
        if inspect.isfunction(inspect.getattr_static(cls, name, None)):
            raise TypeError(
                f"{cls.__qualname__}.{name}: an RPC method cannot be named {name!r}, "
                f"which is the stub's own attribute (stub.{name} is the object's ObjectId); "
                f"rename it, or make it private ('_{name}') if it is not an RPC method"
            )


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
