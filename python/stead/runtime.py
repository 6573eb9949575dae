"""``Runtime``: owns the engine, the dispatcher, alarms and the bindings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from stead._core import Engine
from stead.alarms import AlarmScheduler
from stead.dispatch import Dispatcher, context_outside_turns
from stead.durability import CommitWaiter
from stead.errors import StorageError, UnknownBindingError
from stead.ids import MAX_NAME_BYTES, IdFactory, load_or_create_secret
from stead.namespace import Namespace
from stead.objects import DurableObject

if TYPE_CHECKING:
    from stead.plugins import Plugins

__all__ = ["Env", "Runtime"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_DURABILITY_MODES = ("fsync", "os", "none")
MAX_VALUE_BYTES = 2 * 1024 * 1024
# The engine refuses a batch (a turn's writes) over 2 GiB: no one value can be larger.
MAX_BATCH_BYTES = 1 << 31


class Env:
    """``rt.env`` and ``self.env``: bindings (``Namespace``) and vars (``str``) as attributes."""

    def __init__(self, vars: Mapping[str, str]) -> None:
        self._namespaces: dict[str, Namespace] = {}
        self._vars = dict(vars)
        # ``await _wait_durable(seq)``: until the engine's batch ``seq`` is durable
        # (StorageError if it never will be). For stead's own layers (Agent).
        self._wait_durable: Callable[[int], Awaitable[None]] | None = None
        self.__dict__.update(self._vars)

    def _bind(self, namespace: Namespace) -> None:
        self._namespaces[namespace.binding] = namespace
        self.__dict__[namespace.binding] = namespace

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are neither a binding nor a var.
        if name.startswith("_"):
            raise AttributeError(name)
        raise UnknownBindingError(f"no binding or var named {name!r}")

    def __repr__(self) -> str:
        return f"Env(bindings={sorted(self._namespaces)}, vars={sorted(self._vars)})"


class Runtime:
    """Runs durable objects in this process; an async context manager.

    ``objects`` maps binding names to ``DurableObject`` classes. See
    docs/objects.md for every option.
    """

    def __init__(
        self,
        objects: Mapping[str, type[DurableObject]] | None = None,
        *,
        data_dir: str | None = None,
        durability: str = "fsync",
        vars: Mapping[str, str] | None = None,
        plugins: bool = False,
        idle_timeout: float = 10.0,
        max_resident: int | None = None,
        max_pending: int = 1000,
        alarm_retry_limit: int = 6,
        alarm_retry_base: float = 2.0,
        max_value_bytes: int = MAX_VALUE_BYTES,
    ) -> None:
        _check_options(
            durability,
            idle_timeout,
            max_resident,
            max_pending,
            alarm_retry_limit,
            alarm_retry_base,
            max_value_bytes,
            vars or {},
        )
        self._classes = _check_bindings(objects or {})
        self.data_dir = None if data_dir is None else str(data_dir)
        self.durability = durability
        self.vars = dict(vars or {})
        _check_no_shadowing(self._classes, self.vars)
        self.use_plugins = plugins
        self.idle_timeout = idle_timeout
        self.max_resident = max_resident
        self.max_pending = max_pending
        self.alarm_retry_limit = alarm_retry_limit
        self.alarm_retry_base = alarm_retry_base
        self.max_value_bytes = max_value_bytes
        self._plugins: Plugins | None = None
        self._engine: Engine | None = None
        self._env: Env | None = None
        self._waiter: CommitWaiter | None = None
        self._dispatcher: Dispatcher | None = None
        self._alarms: AlarmScheduler | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # A start() opening the engine, and the shutdown under way: a close()
        # waits for the first, and a second close() for the second.
        self._opening: asyncio.Future[None] | None = None
        self._closing: asyncio.Future[None] | None = None
        self._close_deadline = 0.0  # loop time; the earliest any close() asked for
        # The loop start() ran on: the only one close() can shut the runtime down from.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Whether the stead_startup hooks all ran (stead_shutdown runs only then).
        self._hooks_started = False

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> Runtime:
        """Open the data dir, recover, load alarms and plugins."""
        if self._engine is not None or self._opening is not None:
            raise RuntimeError("runtime already started")
        loop = self._loop = asyncio.get_running_loop()
        # A close() meanwhile waits for the engine to be open, then closes it.
        opening = self._opening = loop.create_future()
        try:
            if self.use_plugins:
                self._load_plugins()
            # Again: vars may have been added since construction (``stead serve --var``).
            _check_var_names(self.vars)
            _check_no_shadowing(self._classes, self.vars)
            engine = await asyncio.to_thread(
                Engine, self.data_dir, self.durability, max_value_bytes=_engine_value_limit(self)
            )
            try:
                self._wire(engine)
            except BaseException:
                engine.close()
                raise
            self._sweeper = asyncio.create_task(self._sweep_idle())
        finally:
            self._opening = None
            opening.set_result(None)
        if self._plugins is not None:
            try:
                self._plugins.startup(self)
            except BaseException:
                await self._abort_start()
                raise
            self._hooks_started = True
        return self

    async def _abort_start(self) -> None:
        """A ``stead_startup`` hook raised: release what ``start()`` acquired (the
        engine, the data dir lock, the sweeper) so nothing stays half-open; the
        hook's error is what the caller sees."""
        try:
            await self.close()
        except Exception:
            logger.exception("closing the runtime after a failed stead_startup hook failed too")

    def _load_plugins(self) -> None:
        from stead.plugins import Plugins

        self._plugins = Plugins.load()
        for binding, cls in self._plugins.bindings().items():
            self._classes.setdefault(binding, cls)
        _check_bindings(self._classes)

    def _wire(self, engine: Engine) -> None:
        holds_objects = bool(engine.objects(limit=1))
        ids = IdFactory(load_or_create_secret(self.data_dir, holds_objects=holds_objects))
        env = Env(self.vars)
        waiter = CommitWaiter(engine)
        env._wait_durable = waiter.wait
        dispatcher = Dispatcher(
            engine=engine,
            waiter=waiter,
            classes=self._classes,
            env=env,
            max_pending=self.max_pending,
            max_resident=self.max_resident,
            idle_timeout=self.idle_timeout,
            max_value_bytes=self.max_value_bytes,
            on_alarm_change=self._alarm_changed,
        )
        for binding in self._classes:
            env._bind(Namespace(binding, ids, dispatcher, engine))
        alarms = AlarmScheduler(
            engine=engine,
            ids=ids,
            dispatcher=dispatcher,
            retry_limit=self.alarm_retry_limit,
            retry_base=self.alarm_retry_base,
        )
        self._engine, self._env, self._waiter = engine, env, waiter
        self._dispatcher, self._alarms = dispatcher, alarms
        alarms.load()

    def _alarm_changed(self, key: bytes, when_ms: int | None) -> None:
        if self._alarms is not None:
            self._alarms.changed(key, when_ms)

    async def _sweep_idle(self) -> None:
        interval = min(max(self.idle_timeout / 4, 0.01), 1.0)
        while True:
            await asyncio.sleep(interval)
            if self._dispatcher is not None:
                self._dispatcher.evict_idle(time.monotonic())

    async def close(self, *, grace: float = 10.0) -> None:
        """Finish running events and background work, commit what is pending,
        release the data dir. Events and ``wait_until`` tasks still running after
        ``grace`` seconds are cancelled (what they wrote so far is committed, as
        for a handler that raised).

        Awaited from inside an object's event or ``wait_until`` work (which the
        shutdown waits for, so it cannot wait for the shutdown), it starts the
        shutdown and returns at once; the event then finishes as part of it."""
        if not grace >= 0:
            raise ValueError(f"grace is seconds >= 0, not {grace!r}")
        self._check_loop()
        if self._closing is None and self._opening is not None:
            await asyncio.shield(self._opening)  # a start() under way: close what it opens
        deadline = asyncio.get_running_loop().time() + grace
        if self._closing is not None:
            # A shutdown is under way: a shorter grace brings its deadline forward.
            self._close_deadline = min(self._close_deadline, deadline)
        else:
            if self._engine is None:
                return
            self._close_deadline = deadline
            # Not part of any event, even when an event asked for it.
            self._closing = context_outside_turns().run(asyncio.ensure_future, self._close())
        if self._dispatcher is not None and self._dispatcher.drains_current_task():
            return  # the shutdown waits for this caller: it cannot wait for the shutdown
        # Shielded: a caller cancelled while waiting does not stop the shutdown
        # other callers (and the data dir's next user) wait for.
        await asyncio.shield(self._closing)

    def _check_loop(self) -> None:
        """The runtime (its engine, sweeper, events) lives on the loop it started
        on: a close() from another loop would fail half-way and wedge it."""
        if (
            self._engine is not None or self._opening is not None or self._closing is not None
        ) and asyncio.get_running_loop() is not self._loop:
            raise RuntimeError(
                "this runtime lives on the event loop it was started on; await close() on "
                "that loop (from another thread: asyncio.run_coroutine_threadsafe(rt.close(), "
                "loop))"
            )

    async def _close(self) -> None:
        hook_error = self._shutdown_hooks()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        assert self._alarms is not None and self._dispatcher is not None
        assert self._waiter is not None and self._engine is not None
        engine = self._engine

        def deadline() -> float:
            return self._close_deadline

        await self._alarms.close(deadline)
        try:
            await self._dispatcher.drain(deadline)
        finally:
            self._dispatcher.close()
            # No turn can commit any more: callers still waiting for their
            # results get them once the last batch is durable, not an error
            # for writes that are on disk (unless the engine failed).
            with contextlib.suppress(StorageError):
                await self._waiter.wait(engine.last_seq())
            self._waiter.close()
            self._engine = None
            try:
                await asyncio.to_thread(engine.close)
            finally:
                self._closing = None
        if hook_error is not None:
            raise hook_error  # after the shutdown: the data dir is released either way

    def _shutdown_hooks(self) -> Exception | None:
        """Run the ``stead_shutdown`` hooks; a hook's error is returned, not raised,
        so that closing still drains, commits and releases the data dir."""
        if self._plugins is None or not self._hooks_started:
            return None
        self._hooks_started = False
        try:
            self._plugins.shutdown(self)
        except Exception as exc:
            logger.error("a stead_shutdown hook raised; closing anyway", exc_info=exc)
            return exc
        return None

    async def __aenter__(self) -> Runtime:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- access --------------------------------------------------------------

    @property
    def env(self) -> Env:
        """Bindings and vars as attributes (``rt.env.COUNTER``)."""
        if self._env is None:
            raise RuntimeError("the runtime is not started: use `async with Runtime(...)`")
        return self._env

    @property
    def started(self) -> bool:
        """Whether ``start()`` has run and ``close()`` has not."""
        return self._engine is not None

    @property
    def closing(self) -> bool:
        """Whether ``close()`` is under way: set before it cancels the events
        still running, so a caller they fail can tell a shutdown from a bug."""
        return self._closing is not None

    @property
    def plugins(self) -> Plugins | None:
        """The loaded plugins (``plugins=True``, once started), else ``None``."""
        return self._plugins

    @property
    def bindings(self) -> Mapping[str, type[DurableObject]]:
        """Binding name -> object class."""
        return dict(self._classes)

    @property
    def engine(self) -> Engine:
        """The storage engine (for tools and tests)."""
        if self._engine is None:
            raise RuntimeError("the runtime is not started")
        return self._engine

    @property
    def dispatcher(self) -> Dispatcher:
        """The event dispatcher (for tools and tests)."""
        if self._dispatcher is None:
            raise RuntimeError("the runtime is not started")
        return self._dispatcher

    def namespace(self, binding: str) -> Namespace:
        """The namespace of ``binding``; ``UnknownBindingError`` if there is none."""
        namespace = self.env._namespaces.get(binding)
        if namespace is None:
            raise UnknownBindingError(f"no binding named {binding!r}")
        return namespace

    def stats(self) -> dict[str, float]:
        """Gauges and counters for metrics."""
        dispatcher, engine = self.dispatcher, self.engine
        stored = engine.stats()
        return {
            "resident_objects": len(dispatcher.hosts),
            "mailbox_depth": dispatcher.mailbox.total_depth(),
            "running_events": len(dispatcher.events),
            "commits": stored.get("commits", 0),
            "syncs": stored.get("syncs", 0),
            "held_groups": stored.get("held_groups", 0),
            "keys": stored.get("keys", 0),
            "objects": stored.get("objects", 0),
            "pending_alarms": self._alarms.pending if self._alarms else 0,
        }

    def take_sync_latencies(self) -> list[int]:
        """Nanosecond fsync durations since the last call."""
        return self.engine.take_sync_latencies()


# The longest name as stored with an object's first write (a MessagePack str
# header is at most 5 bytes): the runtime's own bookkeeping, not a user value.
_STORED_NAME_BYTES = MAX_NAME_BYTES + 5


def _engine_value_limit(runtime: Runtime) -> int:
    """The engine's value limit: the user's (which ``Storage`` enforces on every
    value written) or more, so an object's long name fits under a small limit."""
    return max(runtime.max_value_bytes, _STORED_NAME_BYTES)


def _check_options(
    durability: str,
    idle_timeout: float,
    max_resident: int | None,
    max_pending: int,
    alarm_retry_limit: int,
    alarm_retry_base: float,
    max_value_bytes: int,
    vars: Mapping[str, str],
) -> None:
    _check_type("idle_timeout", idle_timeout, (int, float))
    _check_type("alarm_retry_base", alarm_retry_base, (int, float))
    for name, count in (
        ("max_pending", max_pending),
        ("alarm_retry_limit", alarm_retry_limit),
        ("max_value_bytes", max_value_bytes),
    ):
        _check_type(name, count, (int,))
    if max_resident is not None:
        _check_type("max_resident", max_resident, (int,))
    if not isinstance(vars, Mapping):
        raise TypeError(f"vars must be a mapping of names to str values, not {type(vars).__name__}")
    for name, value in vars.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"vars maps names to str values, not {name!r}: {value!r}")
    _check_var_names(vars)
    if durability not in _DURABILITY_MODES:
        raise ValueError(f"durability must be one of {_DURABILITY_MODES}, not {durability!r}")
    if not idle_timeout > 0:  # NaN too
        raise ValueError(f"idle_timeout must be > 0, not {idle_timeout!r}")
    if not 0 <= alarm_retry_base < math.inf:
        raise ValueError(f"alarm_retry_base must be finite seconds >= 0, not {alarm_retry_base!r}")
    if not 1 <= max_value_bytes <= MAX_BATCH_BYTES:
        raise ValueError(f"max_value_bytes must be 1 to {MAX_BATCH_BYTES}, not {max_value_bytes}")
    if max_resident is not None and max_resident < 1:
        raise ValueError("max_resident must be >= 1 or None")
    if max_pending < 1:
        raise ValueError("max_pending must be >= 1")
    if alarm_retry_limit < 0:
        raise ValueError("alarm_retry_limit must be >= 0")


def _check_type(name: str, value: object, types: tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, types):
        wanted = " or ".join(t.__name__ for t in types)
        raise TypeError(f"{name} must be an {wanted}, not {type(value).__name__}")


def _check_bindings(
    objects: Mapping[str, type[DurableObject]],
) -> dict[str, type[DurableObject]]:
    if not isinstance(objects, Mapping):
        raise TypeError(_not_a_mapping(objects))
    classes: dict[str, type[DurableObject]] = {}
    for binding, cls in objects.items():
        if not isinstance(binding, str) or not binding or "/" in binding:
            raise ValueError(f"binding names are non-empty strings without '/', not {binding!r}")
        if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
            raise TypeError(f"binding {binding!r} must be a DurableObject subclass, not {cls!r}")
        classes[binding] = cls
    return classes


def _check_var_names(vars: Mapping[str, str]) -> None:
    # env keeps its own state under "_" names: a var there would overwrite it.
    reserved = sorted(name for name in vars if name.startswith("_") or not name)
    if reserved:
        raise ValueError(
            f"var name {reserved[0]!r} is reserved: names must not be empty or start with '_'"
        )


def _check_no_shadowing(classes: Mapping[str, object], vars: Mapping[str, str]) -> None:
    # env.NAME can be one or the other: a var the binding hid would be lost silently.
    both = sorted(set(classes) & set(vars))
    if both:
        raise ValueError(f"{both[0]!r} is both a binding and a var: env.{both[0]} must be one")


def _not_a_mapping(objects: object) -> str:
    # Runtime(Counter) is a classic first mistake: show the dict it should be.
    if isinstance(objects, type):
        example = f"{{{objects.__name__.upper()!r}: {objects.__name__}}}"
        return f"objects must be a mapping such as {example}, not the class {objects.__name__}"
    kind = type(objects).__name__
    return f"objects must be a mapping of binding names to DurableObject classes, not {kind}"
