"""Turns, the mailbox, and the input and output gates.

Every event (RPC call, fetch, alarm) reaches an object through
:meth:`Dispatcher.deliver`. For a turn-based object the Rust ``Mailbox`` lets
one event run at a time: the caller whose push finds the object idle runs the
turn; later callers queue and are handed the object in FIFO order when the
running turn ends. A turn whose handler cannot suspend runs inline in the
caller's task (no task per call); one that can suspend runs as a task of its
own, so a caller that gives up (timeout, cancellation) abandons only the
result and never interrupts the turn midway.

When a turn ends, its pending writes are committed as one batch and the
object is handed on at once (pipelining); the caller's result is released
only once that batch is durable (the output gate). Calls a turn makes to other
objects are released only after the writes it made so far are durable.

Call cycles: each context knows the events on its call chain (``_Running``:
object keys and event tokens). A call to an object whose event on the chain is
still running re-enters it (runs nested); any other call queues, and first
checks the waits-for graph (turns wait for the objects they call, events of a
reentrant object for the events holding its input gate closed): a call that
would close a cycle raises ``DeadlockError`` instead of waiting forever.

``block_concurrency_while`` run outside an object's events (``wait_until``
work, a timer) claims a turn-based object's turn through the mailbox, as an
event does; a reentrant object's blocks close its input gate one event at a
time (``ObjectHost._hold_input``, ``ObjectHost._close_gate``). The event that
builds a reentrant instance holds its input gate until on_start has run
(``Dispatcher._claim_start``): on_start comes first, as on a turn-based object,
whose first event claims its turn before anything else can.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import itertools
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from stead import codec, errors
from stead._core import Engine, Mailbox
from stead.codec import INT_RANGE
from stead.context import ObjectAborted, ObjectContext
from stead.durability import CommitWaiter
from stead.errors import (
    DeadlockError,
    OverloadedError,
    RemoteError,
    SteadError,
    StorageError,
)
from stead.ids import ObjectId
from stead.objects import DurableObject, RpcMethod, call_maybe_async
from stead.storage import NAME_KEY, Storage

if TYPE_CHECKING:
    from stead.runtime import Env

__all__ = ["Dispatcher", "ObjectHost", "context_outside_turns", "finish_or_cancel"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

# A node of the waits-for graph: a turn-based object's key, or a reentrant event.
Node = bytes | int


class _Running(NamedTuple):
    """What runs in the current context: an event of ``host``, or its ``wait_until``
    work (``chain`` empty: outside any turn, but its calls pass ``host``'s output gate)."""

    # Engine keys of the objects whose events are on the call chain, innermost last.
    chain: tuple[bytes, ...]
    # The tokens of those events, and of the calls that started them (0: from
    # outside). A context can outlive its place on the chain (a caller that gave
    # up on its call): a call back re-enters an object only while its event on
    # the chain runs and every call after it on the chain is still awaited.
    events: tuple[int, ...]
    calls: tuple[int, ...]
    # The instance whose output gate the context's calls pass; once it is reset,
    # none leave.
    host: ObjectHost
    # The waits-for node charged with what this context waits for: a reentrant
    # object's event, wait_until work, a nested call back (its caller's node);
    # None for a turn, whose node is its event token (its object's key waits for
    # it while it runs, see ``_turn``).
    node: Node | None


# Where an event comes from: the context of the event that called (None: a
# call from outside) and the token of that call (0: none).
_Origin = tuple["_Running | None", int]


def _extended(origin: _Origin, host: ObjectHost, event: int, node: Node | None) -> _Running:
    """The context of a new event of ``host``: its caller's chain, extended."""
    outer, call = origin
    if outer is None:
        return _Running((host.key,), (event,), (call,), host, node)
    return _Running(
        (*outer.chain, host.key), (*outer.events, event), (*outer.calls, call), host, node
    )


# None outside events (callers, background tasks, timers).
_running: contextvars.ContextVar[_Running | None] = contextvars.ContextVar(
    "stead_running", default=None
)
# The classes stead itself raises: returned to a caller as they are, where a
# handler's own exception (a SteadError subclass too) is copied.
_OWN_ERRORS: frozenset[type] = frozenset(getattr(errors, name) for name in errors.__all__)
# Whatever a commit raises (the engine failed, or refused the batch as too large
# as a whole: keys and values were checked as they were written), the object is
# reset: left pending, its writes would fail every later turn the same way.
_REFUSED: tuple[type[Exception], ...] = (Exception,)

Invoke = Callable[["ObjectHost"], Awaitable[T]]
_DEFAULT_ON_START = DurableObject.on_start
AlarmListener = Callable[[bytes, "int | None"], None]


# The writer of an inline turn (see ObjectHost.current_writer).
_INLINE_TURN = object()


def _opened_by_other_work(committer: object, opener: object) -> bool:
    """Whether a transaction() block open now is another party's than the code
    committing mid-turn (the writer ``committer``): a block of work outside the
    object's events (``wait_until`` work, a task or timer outside turns) for a
    turn, and any block but its own for such work. Such a block holds none of
    the committer's own writes back. (A call back nested in a turn shares the
    turn's blocks.)"""
    if opener is committer:
        return False
    if isinstance(opener, asyncio.Task) or (isinstance(opener, _Running) and not opener.chain):
        return True
    running = _running.get()
    return running is None or not running.chain


class _NoLongerNested(Exception):
    """A call back waited to nest, and no event on its chain waits for it any more."""


class _ResetBeforeStart(Exception):
    """A reentrant object's event found its instance reset before it began."""


class ObjectHost:
    """A resident object: its instance, storage and gate state."""

    __slots__ = (
        "_dispatcher",
        "background",
        "block_node",
        "blocking",
        "broken",
        "ctx",
        "gate",
        "gate_node",
        "id",
        "inflight",
        "inline",
        "instance",
        "key",
        "last_used",
        "nested",
        "nested_ended",
        "outside",
        "ready",
        "reentrant",
        "start_hold",
        "started",
        "storage",
        "turn",
    )

    def __init__(self, dispatcher: Dispatcher, object_id: ObjectId, cls: type[DurableObject]):
        self._dispatcher = dispatcher
        self.id = object_id
        self.key = object_id.storage_key
        self.reentrant = cls.reentrant
        self.storage = Storage(
            dispatcher.engine,
            self.key,
            name=object_id.name,
            max_value_bytes=dispatcher.max_value_bytes,
            syncer=dispatcher.sync_storage,
            on_alarm_committed=dispatcher.on_alarm_change,
            # A write's writer (for transaction() blocks): the running event's context.
            writer=self.current_writer,
        )
        # What a new instance reads may stand on batches committed but not yet
        # durable (its previous instance's last, if evicted or reset before they
        # were; one the engine failed to write): its first result waits for
        # every batch committed so far, and fails if the engine has.
        self.storage.last_seq = dispatcher.engine.last_seq()
        self.ctx = ObjectContext(object_id, self.storage, dispatcher.hosts)
        self.started: asyncio.Future[None] | None = None
        # A reentrant object's event that will run on_start, holding the input
        # gate from the moment it was delivered to the new instance (0: none;
        # see Dispatcher._claim_start).
        self.start_hold = 0
        # on_start finished: events may run without the start check (hot path
        # flag). A class without its own on_start has nothing to run first.
        self.ready = cls.on_start is _DEFAULT_ON_START
        self.gate: asyncio.Event | None = None
        # block_concurrency_while blocks open (nested, or of overlapping events):
        # the input reopens when the last one ends.
        self.blocking = 0
        # The waits-for node of the block run outside events that holds a
        # turn-based object's input (0: none); its nested blocks pass.
        self.block_node = 0
        # The running turn's event token, and the nested call backs running in it,
        # innermost last, with the nodes that wait for them (see _reenter).
        self.turn = 0

        self.nested: tuple[int, ...] = ()  # a tuple: no list per object
        self.nested_ended: asyncio.Event | None = None
        # The gate's node in the waits-for graph (see block_concurrency_while).
        self.gate_node = next(dispatcher.tokens) if self.reentrant else 0
        self.inflight = 0
        # A handler runs inline (Dispatcher.call's fast path): its writes are the
        # turn's, not those of tasks an earlier inline turn spawned, which run
        # under the same context (see current_writer).
        self.inline = False
        self.broken = False
        # wait_until tasks still running (a count: no set per resident object).
        self.background = 0
        self.last_used = time.monotonic()
        # What a handler that cannot suspend runs under (see Dispatcher.call):
        # chain-less, so tasks it spawns pass this object's output gate without
        # re-entering it. One per host, not one per call; a reference cycle
        # that ``Dispatcher.evict`` breaks.
        self.outside: _Running | None = _Running((), (), (), self, None)
        # Built by Dispatcher.host once the host is registered: the constructor
        # may use ctx.wait_until.
        self.instance: DurableObject

    def current_writer(self) -> object:
        """Who writes now, for ``transaction()`` blocks (see ``Storage``): the
        running event, ``wait_until`` work, an inline turn; or, for tasks inline
        turns spawned (they all run under ``outside``), each task itself: they
        are separate work, whose rollbacks must not take back each other's."""
        if self.inline:
            return _INLINE_TURN
        running = _running.get()
        if running is self.outside and running is not None:
            return asyncio.current_task() or running
        return running

    def build(self, cls: type[DurableObject]) -> None:
        """Construct the instance (the host is registered: its ctx works)."""
        self.instance = cls(self.ctx, self._dispatcher.env)

    def reset(self) -> None:
        """Discard the instance (``ctx.abort``): see ``Dispatcher.reset``."""
        self._dispatcher.reset(self)

    def learn_name(self, object_id: ObjectId) -> None:
        """A name-derived id reached an instance first addressed by its hex id."""
        self.id = self.ctx.id = object_id
        self.storage.learn_name(object_id.name)

    async def block_concurrency_while(self, fn: Callable[[], Awaitable[T]]) -> T:
        dispatcher = self._dispatcher
        running = _running.get()
        if running is not None and running.host is self and dispatcher.in_event(running):
            if not self.reentrant:
                return await fn()  # its turn holds the input already
            node = dispatcher.waiting_node(running)
            assert isinstance(node, int)  # a reentrant object's event, or one nested in it
            return await self._close_gate(fn, running, node)
        # Outside the object's events (wait_until work, a task a turn spawned that
        # outlived it, a timer): the block is work of the object, with a waits-for
        # node of its own (wait_until work has one), and its calls pass the
        # object's output gate.
        if running is None or running.host is not self or running.chain or running.node is None:
            running = _Running((), (), (), self, next(dispatcher.tokens))
        node = running.node
        assert isinstance(node, int)
        if node == self.block_node:
            return await fn()  # nested in the block holding the input
        # close() waits for the block as for wait_until work (and cancels it at
        # its deadline): run from a plain task or a timer, nothing else tracks it.
        task = asyncio.current_task()
        tracked = task is not None and task not in dispatcher.background
        if tracked:
            assert task is not None
            dispatcher.background.add(task)
        token = _running.set(running)
        try:
            if self.reentrant:
                return await self._close_gate(fn, running, node, outside=True)
            return await self._hold_input(fn, node)
        finally:
            _running.reset(token)
            if tracked:
                assert task is not None
                dispatcher.background.discard(task)

    async def _hold_input(self, fn: Callable[[], Awaitable[T]], node: int) -> T:
        """A turn-based object's block run outside its events: it claims the
        object's turn as an event does (queued behind the running one, FIFO)."""
        dispatcher, key = self._dispatcher, self.key
        token = next(dispatcher.tokens)
        if not dispatcher.mailbox.push(key, token):
            dispatcher.add_wait(node, key)
            try:
                await dispatcher._wait_turn(key, token, node)
            finally:
                dispatcher.forget_wait(node, key)
        try:
            if self.broken:
                raise StorageError("the object was reset while the block waited for its turn")
            # Events queued for the object (waiting for its key) wait for the block.
            dispatcher.add_wait(key, node)
            self.block_node = node
            try:
                if not self.ready:
                    await dispatcher._start(self)  # on_start runs before anything else
                return await fn()
            finally:
                self.block_node = 0
                dispatcher.forget_wait(key, node)
        except ObjectAborted:
            dispatcher.reset(self)  # abort() in the block drops its writes, as in an event
            raise
        finally:
            self.last_used = time.monotonic()
            # Its writes go as a batch of their own before the next event starts:
            # riding with that event's batch, an abort there would drop them.
            if not self.broken and self.storage.has_pending:
                try:
                    dispatcher.commit(self, midway=True)  # resets the object if refused
                except _REFUSED:
                    logger.error("commit of %r's block failed", self.id, exc_info=True)
            dispatcher._hand_off(key)

    async def _close_gate(
        self, fn: Callable[[], Awaitable[T]], running: _Running, node: int, *, outside: bool = False
    ) -> T:
        """A reentrant object's block: it closes the input gate, once no block of
        another event holds it (blocks never overlap; the holder's own nested
        blocks and call backs pass). The wait is in the waits-for graph.

        A block run ``outside`` the object's events (work the constructor
        scheduled, a timer) also waits for on_start, which comes first: the event
        that built the instance holds the gate until on_start has run, and if no
        event runs it (that event never started), the block runs it itself."""
        dispatcher = self._dispatcher
        while True:
            if self.blocking and not self._passes_gate(running, node):
                assert self.gate is not None
                await dispatcher._wait_at_gate(self, self.gate, node)
            elif outside and not self.ready and self.started is None and not self.broken:
                await dispatcher._start(self)
            else:
                break
        if outside and self.broken:
            raise StorageError("the object was reset while the block waited for its input")
        gate = self.gate = self.gate or asyncio.Event()
        gate.clear()
        self.blocking += 1
        # The closed gate waits, in the waits-for graph, for the events holding
        # it: events waiting at it wait for the gate, and so for its holders.
        dispatcher.add_wait(self.gate_node, node)
        try:
            return await fn()
        finally:
            dispatcher.forget_wait(self.gate_node, node)
            self.blocking -= 1
            if not self.blocking:
                gate.set()

    def _passes_gate(self, running: _Running, node: int) -> bool:
        """Whether work on ``running``'s context is (or nests in) a gate holder."""
        dispatcher = self._dispatcher
        if dispatcher._holds_gate(self, node):
            return True
        events = dispatcher._waiting_events(running, self.key)
        return any(dispatcher._holds_gate(self, event) for event in events)

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        # Not part of a turn, but its calls leave through this object's output gate.
        context = contextvars.copy_context()
        work = _Running((), (), (), self, next(self._dispatcher.tokens))
        context.run(_running.set, work)
        future = context.run(asyncio.ensure_future, self._background(awaitable))
        self.background += 1
        self._dispatcher.background.add(future)
        future.add_done_callback(self._background_done)

    async def _background(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await awaitable
        except ObjectAborted as aborted:
            # ctx.abort() from the work has reset the object already (the writes
            # not yet committed are dropped); resetting here too covers an abort
            # raised by other code the work awaited.
            logger.info("wait_until task of %r aborted the object: %s", self.id, aborted.reason)
            self._dispatcher.reset(self)
            return None

    def _background_done(self, future: asyncio.Future[Any]) -> None:
        self.background -= 1
        self._dispatcher.background.discard(future)
        error = None if future.cancelled() else future.exception()
        if error is not None:
            logger.error("wait_until task of %r failed", self.id, exc_info=error)
        self._dispatcher.commit_between_events(self)


# Seconds between looks at a shutdown deadline that a later close() may bring forward.
_DEADLINE_POLL = 0.05


async def finish_or_cancel(
    running: Callable[[], list[asyncio.Future[Any]]],
    deadline: Callable[[], float],
    what: str,
    on_deadline: Callable[[], None] | None = None,
) -> None:
    """Wait until ``running()`` is empty; at ``deadline()`` (loop time, which may
    move earlier meanwhile), cancel what is left.

    Shutdown waits for work in flight, but a handler stuck on an await must not
    keep a process from stopping.
    """
    loop = asyncio.get_running_loop()
    while tasks := [task for task in running() if not task.done()]:
        remaining = deadline() - loop.time()
        if remaining > 0:
            await asyncio.wait(tasks, timeout=min(remaining, _DEADLINE_POLL))
            continue
        logger.warning("cancelling %d %s still running at close()'s deadline", len(tasks), what)
        if on_deadline is not None:
            on_deadline()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def context_outside_turns() -> contextvars.Context:
    """A copy of the current context with no call chain: work started from a
    turn but not part of it (background tasks, timers) must not count as
    re-entry into the objects whose turns happened to be running."""
    context = contextvars.copy_context()
    context.run(_running.set, None)
    return context


async def _invoke_rpc(
    method: RpcMethod, args: Sequence[Any], kwargs: Mapping[str, Any], host: ObjectHost
) -> Any:
    result = method.function(host.instance, *args, **kwargs)
    if method.is_async and (method.async_def or inspect.isawaitable(result)):
        result = await result
    return method.copy_result(result)


def rebuild_exception(error: BaseException) -> BaseException:
    """The exception a caller sees: the same class with copied args, else ``RemoteError``."""
    if isinstance(error, ObjectAborted):
        return RemoteError("Aborted", error.reason)
    if not isinstance(error, Exception):
        return error
    try:
        rebuilt = type(error)(*codec.copy(list(error.args)))
    except Exception:
        return RemoteError(type(error).__name__, str(error))
    if isinstance(error, RemoteError):
        return RemoteError(error.type_name, error.message)
    return rebuilt


class Dispatcher:
    """Delivers events to objects: mailbox, turns, gates, eviction."""

    def __init__(
        self,
        *,
        engine: Engine,
        waiter: CommitWaiter,
        classes: dict[str, type[DurableObject]],
        env: Env,
        max_pending: int,
        max_resident: int | None,
        idle_timeout: float,
        max_value_bytes: int,
        on_alarm_change: AlarmListener,
    ) -> None:
        self.engine = engine
        self.waiter = waiter
        self.classes = classes
        self.env = env
        self.max_pending = max_pending
        self.max_resident = max_resident
        self.idle_timeout = idle_timeout
        self.max_value_bytes = max_value_bytes
        # Told (object key, epoch ms or None) when a committed batch changes an alarm.
        self.on_alarm_change = on_alarm_change
        self.mailbox = Mailbox(max_pending)
        self.hosts: OrderedDict[bytes, ObjectHost] = OrderedDict()
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._waits_for: dict[Node, list[Node]] = {}
        self.tokens = itertools.count(1)
        self.background: set[asyncio.Future[Any]] = set()
        # Events running as tasks of their own (see ``_detached``).
        self.events: set[asyncio.Task[Any]] = set()
        # Tokens of the events running now, and of the calls events make that
        # are still awaited (see ``_Running``).
        self._live_events: set[int] = set()
        self._live_calls: set[int] = set()
        # Set once close()'s deadline cancels what still runs: the callers of
        # those events get an error, not a cancellation they did not ask for.
        self._cancelled_at_close = False
        # Objects live on the loop the runtime started on.
        self.loop = asyncio.get_running_loop()
        self.closed = False  # set by ``close``

    # -- hosts ---------------------------------------------------------------

    def host(self, object_id: ObjectId) -> ObjectHost:
        """The resident host of ``object_id``, creating the instance if needed."""
        if self.closed:
            raise RuntimeError("the runtime is closed")
        host = self.hosts.get(object_id.storage_key)
        if host is not None:
            if self.max_resident is not None:
                self.hosts.move_to_end(host.key)  # LRU order matters only when bounded
            if host.id.name is None and object_id.name is not None:
                host.learn_name(object_id)
            return host
        if object_id.name is None:
            object_id = self._with_stored_name(object_id)
        cls = self.classes[object_id.binding]
        host = ObjectHost(self, object_id, cls)
        # Registered before its constructor runs, which may use ctx.wait_until;
        # an instance whose constructor raises is discarded.
        self.hosts[host.key] = host
        failure = self._build(host, cls)
        if failure is not None:
            raise failure
        if self.max_resident is not None and len(self.hosts) > self.max_resident:
            self._evict_over_bound(keep=host)
        return host

    def _build(self, host: ObjectHost, cls: type[DurableObject]) -> BaseException | None:
        """Construct ``host``'s instance; if the constructor raised, the host is
        discarded and this is the error its caller gets, as for a handler's:
        logged and copied, ``ctx.abort(reason)`` as ``RemoteError("Aborted", reason)``
        (returned, not raised here: it must not chain the original)."""
        try:
            host.build(cls)
        except (ObjectAborted, Exception) as error:
            self.reset(host)
            return self._failure(host, error, "its constructor")
        except BaseException:
            self.reset(host)  # cancelled or interrupted
            raise
        return None

    def _with_stored_name(self, object_id: ObjectId) -> ObjectId:
        raw = self.engine.get(object_id.storage_key, NAME_KEY)
        if raw is None:
            return object_id
        name = codec.decode(raw)
        return ObjectId(object_id.raw, object_id.binding, name, object_id.storage_key)

    def is_idle(self, host: ObjectHost) -> bool:
        """No event running or queued, nothing uncommitted."""
        if (
            host.inflight
            or host.nested
            or host.blocking
            or host.block_node
            or host.storage.has_pending
            or host.background
        ):
            # host.nested: a call back still runs after its turn was handed on;
            # blocking/block_node: a block run outside events holds the input.
            return False
        return self.mailbox.state(host.key) == "idle"

    def evict(self, host: ObjectHost, *, why: str = "evicted") -> None:
        """Drop the instance and its cache; storage stays in the engine.

        Code of the dropped instance that still runs (a task a turn spawned, a
        timer) can no longer write: nothing would commit it, and a newer
        instance may hold newer values.
        """
        if self.hosts.get(host.key) is host:
            del self.hosts[host.key]
        host.outside = None  # the host's reference cycle: freed at once
        host.storage.detach(why)

    def _evict_over_bound(self, keep: ObjectHost) -> None:
        # ``keep`` is the instance just built for an event: idle until that event
        # starts, but evicting it would leave the event on an unlisted instance.
        assert self.max_resident is not None
        excess = len(self.hosts) - self.max_resident
        for host in list(self.hosts.values()):
            if excess <= 0:
                break
            if host is not keep and self.is_idle(host):
                self.evict(host)
                excess -= 1

    def commit_between_events(self, host: ObjectHost) -> None:
        """Commit writes made outside any event (``wait_until`` work, timers) as a
        batch of their own, if no event of the object is running to take them.

        Nobody waits on them, but left pending they would wait for the object's
        next event or shutdown (lost in a crash), and keep it from being evicted.
        """
        if (
            host.broken
            or not host.storage.has_pending
            or host.inflight
            or host.nested
            or self.hosts.get(host.key) is not host
            or self.mailbox.state(host.key) != "idle"
        ):
            return
        try:
            self.commit(host, midway=True)  # resets the object if refused
        except _REFUSED:
            logger.error("commit of %r's writes outside events failed", host.id, exc_info=True)

    def evict_idle(self, now: float) -> int:
        """Evict every host idle for ``idle_timeout``, after committing writes made
        outside events (see ``commit_between_events``); how many were evicted."""
        horizon = now - self.idle_timeout
        stale = []
        for host in list(self.hosts.values()):  # a failed commit removes its host
            if host.storage.has_pending:
                self.commit_between_events(host)
            if host.last_used <= horizon and self.is_idle(host):
                stale.append(host)
        for host in stale:
            self.evict(host)
        return len(stale)

    def reset(self, host: ObjectHost) -> None:
        """Discard the instance after a failed commit or an abort."""
        host.broken = True
        self.evict(host, why="reset (aborted, or a commit failed)")

    # -- commits -------------------------------------------------------------

    def commit(self, host: ObjectHost, *, midway: bool = False) -> int:
        """Hand the host's pending writes to the engine as one batch; the seq to
        wait for (see ``Storage.commit``; 0: nothing ever written). ``midway``
        (in the middle of a turn) leaves open ``transaction()`` blocks' writes
        pending (``Storage.commit_outside_transactions``).

        A refused batch resets the object. (Inlined in ``call``.)
        """
        storage = host.storage
        try:
            if midway:
                return storage.commit_outside_transactions(
                    partial(_opened_by_other_work, host.current_writer())
                )
            return storage.commit()
        except _REFUSED:
            self.reset(host)
            raise

    async def sync_storage(self, key: bytes, storage: Storage) -> None:
        """``storage.sync()``: commit and wait, for the resident object owning ``storage``."""
        host = self.hosts.get(key)
        if host is not None and host.storage is storage:
            await self.flush(host)
        elif storage.has_pending:
            raise StorageError(
                "the object was reset or evicted; its writes since its last commit were lost"
            )
        elif storage.last_seq:  # evicted while idle: only its last batch may be in flight
            await self.waiter.wait(storage.last_seq)

    async def flush(self, host: ObjectHost) -> None:
        """Commit the host's pending writes now (but those of open ``transaction()``
        blocks, which may still roll back) and wait until they, and the object's
        earlier batches, are durable.

        A reentrant object's events share one storage, and an open block may be
        another event's: all its writes go, or this event's own would be held back.
        """
        seq = self.commit(host, midway=not host.reentrant)
        if seq:
            await self._await_durable(host, seq)

    async def _release(self, host: ObjectHost, seq: int, outcome: Any, failed: bool) -> Any:
        """The output gate: hand the caller its result (or error) once ``seq`` is durable."""
        if seq:
            await self._await_durable(host, seq)
        if failed:
            raise outcome
        return outcome

    async def _await_durable(self, host: ObjectHost, seq: int) -> None:
        try:
            await self.waiter.wait(seq)
        except StorageError:
            self.reset(host)
            raise

    # -- delivery ------------------------------------------------------------

    async def call(
        self, object_id: ObjectId, method: RpcMethod, /, *args: Any, **kwargs: Any
    ) -> Any:
        """An RPC call: the hot path of ``deliver`` for a started, turn-based object
        called from outside any turn (no extra coroutine layers); else ``deliver``.

        Stubs bind it with ``functools.partial``, so ``stub.method(...)`` creates
        this coroutine without a Python frame of its own. The arguments are
        copied through the codec as the call starts, before anything can run.
        """
        if asyncio.get_running_loop() is not self.loop:
            raise self._foreign_loop()
        has_arguments = bool(args or kwargs)
        if has_arguments:
            args, kwargs = method.copy_args(args, kwargs)  # type: ignore[assignment]
        key = object_id.storage_key
        host = self.hosts.get(key)
        running = _running.get()
        if host is None and running is None:
            # A new instance (its constructor runs now, as in deliver): an object
            # without on_start takes the fast path from its first call.
            host = self.host(object_id)
        if (
            host is None
            or not host.ready
            or host.reentrant
            or method.suspends
            or running is not None
        ):
            invoke = partial(_invoke_rpc, method, args, kwargs)
            return await self.deliver(object_id, invoke, detach=method.suspends)
        if self.max_resident is not None:
            self.hosts.move_to_end(key)
        if host.id.name is None and object_id.name is not None:
            host.learn_name(object_id)
        # The handler cannot suspend (sync, or async without an await): on an
        # idle object its whole turn runs before any other event can start, so
        # it need not claim the mailbox, and nothing can observe the call chain
        # during it. Tasks it spawns run after the turn, outside it, but under
        # the object's chain-less context: their calls pass its output gate.
        claimed = not self.mailbox.is_idle(key)
        if claimed:
            token = next(self.tokens)
            if not self.mailbox.push(key, token):
                await self._wait_turn(key, token, None)
                if self.hosts.get(key) is not host:  # reset or evicted while we queued
                    invoke = partial(_invoke_rpc, method, args, kwargs)
                    host = self._host_for_turn(object_id)
                    turn = self._turn(host, (None, 0), invoke)
                    on_never_run = partial(self._hand_off, key)
                    return await self._run_event(host, turn, False, on_never_run)
        seq = 0
        context = _running.set(host.outside)
        host.inline = True
        try:
            try:
                # The class's function, not getattr(instance, name): no bound
                # method per call; a plain call when there is nothing to unpack.
                if has_arguments:
                    result = method.function(host.instance, *args, **kwargs)
                else:
                    result = method.function(host.instance)
                if method.is_async and (method.async_def or inspect.isawaitable(result)):
                    result = await result  # returns without suspending
                result_class = result.__class__
                if result_class in method.passthrough_results and (
                    result_class is not int or result in INT_RANGE
                ):
                    outcome = result  # immutable: its codec copy would be itself
                else:
                    outcome = method.copy_result(result)
                failed = False
            except (ObjectAborted, Exception) as error:
                outcome, failed = self._failure(host, error), True
            if host.broken:
                seq = self._end_turn(host, failed)
            else:  # self.commit(host), inlined: one frame fewer per call
                try:
                    seq = host.storage.commit()
                except _REFUSED:
                    self.reset(host)
                    raise
        finally:
            _running.reset(context)
            host.inline = False
            host.last_used = time.monotonic()
            if claimed:
                next_token = self.mailbox.finish(key)
                if next_token is not None:
                    self._wake(key, next_token)
        if seq:
            try:
                durable = self.waiter.future_for(seq)
                if durable is not None:
                    await durable
            except StorageError:
                self.reset(host)
                raise
        if failed:
            raise outcome
        return outcome

    async def deliver(self, object_id: ObjectId, invoke: Invoke[T], *, detach: bool = True) -> T:
        """Run ``invoke`` as an event of ``object_id`` and return its (gated) result.

        With ``detach`` (for events that can suspend) the event runs as a task of
        its own once it holds the object: a caller that gives up (a timeout, a
        cancelled task) abandons the result, never the event, so a handler is
        never interrupted midway by its caller, as when it is served over HTTP.
        """
        if asyncio.get_running_loop() is not self.loop:
            raise self._foreign_loop()
        key = object_id.storage_key
        running = _running.get()
        # Who waits for this event (its caller's node), and the event's call chain.
        caller: Node | None = None
        outer: _Running | None = None
        if running is not None:
            if running.host._dispatcher is not self:
                # A call from another runtime's object: it passes that object's
                # output gate, in that runtime; here it is a call from outside.
                await running.host._dispatcher._release_outbound(running.host)
            else:
                # The output gate, for a call back along the chain too: the
                # object called back may pass on what it learns (A -> B -> A ->
                # C), so the caller's writes must be durable first.
                await self._release_outbound(running.host)
                if key in running.chain and self._waiting_events(running, key):
                    with contextlib.suppress(_NoLongerNested):
                        return await self._reenter(key, running, invoke)
                # Not (or no longer) nested: a call like any other, queued.
                caller = self.waiting_node(running)
                if running.chain:
                    outer = running
        host = self.host(object_id)
        event_node = next(self.tokens) if host.reentrant else None
        target: Node = key if event_node is None else event_node
        if caller is not None:
            self.add_wait(caller, target)
        # This call, while awaited: what lets the event it starts call back along the chain.
        call = next(self.tokens) if outer is not None else 0
        if call:
            self._live_calls.add(call)
        try:
            if event_node is not None:
                return await self._deliver_interleaved(
                    host, (outer, call), invoke, detach, event_node
                )
            token = next(self.tokens)
            if not self.mailbox.push(key, token):
                await self._wait_turn(key, token, caller)
                host = self._host_for_turn(object_id)
            turn = self._turn(host, (outer, call), invoke)
            on_never_run = partial(self._hand_off, key)
            return await self._run_event(host, turn, detach, on_never_run)  # type: ignore[no-any-return]
        finally:
            self._live_calls.discard(call)
            if caller is not None:
                self.forget_wait(caller, target)

    def _waiting_events(self, running: _Running, key: bytes) -> list[int]:
        """The events of ``key`` on ``running``'s call chain, outermost first, that
        still run and wait for this context (every call after one on the chain is
        still awaited: a caller that gave up on its call and went on is not waiting)."""
        live_events, live_calls = self._live_events, self._live_calls
        chain, events, calls = running.chain, running.events, running.calls
        return [
            events[i]
            for i in range(len(chain))
            if chain[i] == key
            and events[i] in live_events
            and all(call in live_calls for call in calls[i + 1 :])
        ]

    def _host_for_turn(self, object_id: ObjectId) -> ObjectHost:
        """The host, for a caller just handed the object's turn: if the instance
        must be built anew and its constructor raises, the turn passes on."""
        try:
            return self.host(object_id)
        except BaseException:
            self._hand_off(object_id.storage_key)
            raise

    @staticmethod
    def _foreign_loop() -> RuntimeError:
        return RuntimeError(
            "this runtime's objects live on the event loop it was started on; call them "
            "from that loop (from another thread: asyncio.run_coroutine_threadsafe(..., loop))"
        )

    async def _release_outbound(self, caller: ObjectHost) -> None:
        # Output gate: a turn's calls leave only after its writes so far are durable.
        # Earlier turns' writes count too: this turn may have read them.
        if caller.broken:
            # Reset (aborted, or a commit failed) while this event or work ran on:
            # the writes behind the call are gone, so the call must not leave.
            raise StorageError("the calling object was reset; its outbound calls are dropped")
        if self.hosts.get(caller.key) is not caller:
            # Evicted (or the runtime closed) while a task of it ran on: a newer
            # instance may hold newer values than the ones behind the call.
            raise StorageError(
                f"this instance of {caller.id!r} was evicted; calls from code that "
                "outlives its event are dropped (run it as ctx.wait_until work)"
            )
        if caller.storage.has_pending or not self.waiter.is_durable(caller.storage.last_seq):
            await self.flush(caller)

    async def _wait_turn(self, key: bytes, token: int, caller: Node | None) -> None:
        if caller is not None and self._would_deadlock(caller, key):
            self.mailbox.cancel(key, token)
            raise DeadlockError(
                "call cycle: the target is waiting (directly or through other objects) "
                "on the caller's running turn"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[token] = future
        try:
            await future
        except asyncio.CancelledError:
            self._waiters.pop(token, None)
            if future.done() and not future.cancelled():
                self._hand_off(key)  # we were handed the object: pass it on
            else:
                self.mailbox.cancel(key, token)
            raise

    def _hand_off(self, key: bytes) -> None:
        """End the running event of ``key`` and wake the next queued caller, if any."""
        token = self.mailbox.finish(key)
        if token is not None:
            self._wake(key, token)

    def _wake(self, key: bytes, token: int | None) -> None:
        # The object stays running across the hand-over; callers that gave up
        # are skipped.
        mailbox, waiters = self.mailbox, self._waiters
        while token is not None:
            future = waiters.pop(token, None)
            if future is not None and not future.done():
                future.set_result(None)
                return
            token = mailbox.finish(key)

    def _would_deadlock(self, caller: Node, target: Node) -> bool:
        seen: set[Node] = set()
        stack: list[Node] = [target]
        while stack:
            node = stack.pop()
            if node == caller:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(self._waits_for.get(node, ()))
        return False

    def add_wait(self, waiter: Node, target: Node) -> None:
        """Record in the waits-for graph that ``waiter`` waits for ``target``."""
        self._waits_for.setdefault(waiter, []).append(target)

    def in_event(self, running: _Running) -> bool:
        """Whether ``running`` is the context of an event of its object that still
        runs (a turn, a reentrant object's event, a call back), not one that
        outlived it (a task it spawned) nor work outside events."""
        return bool(running.events) and running.events[-1] in self._live_events

    def waiting_node(self, running: _Running) -> Node | None:
        """The waits-for node charged with what ``running``'s context waits for: its
        reentrant event or wait_until work, else the innermost turn on its chain
        while that turn runs (None for a context that outlived its turn).

        A turn's node is its event, not its object's key: a call that outlives the
        turn (from a task it spawned, or shielded and given up on) stays charged to
        the finished turn, which nothing waits for, not to the object's later turns."""
        if running.node is not None:
            return running.node
        if running.events and running.events[-1] in self._live_events:
            return running.events[-1]
        return None

    def forget_wait(self, caller: Node, key: Node) -> None:
        targets = self._waits_for.get(caller)
        if targets is not None:
            targets.remove(key)
            if not targets:
                del self._waits_for[caller]

    async def _run_event(
        self,
        host: ObjectHost,
        event: Coroutine[Any, Any, tuple[Any, bool, int]],
        detach: bool,
        on_never_run: Callable[[], None],
    ) -> Any:
        """Run ``event`` (a ``_turn`` or ``_interleaved_event``) as its own task if it
        can suspend, else inline; then release its result through the output gate.
        ``on_never_run`` undoes what was claimed for the event if its task is
        cancelled before it starts."""
        if detach or not host.ready:  # on_start can suspend too
            outcome, failed, seq = await self._detached(event, on_never_run)
        else:
            outcome, failed, seq = await event
        return await self._release(host, seq, outcome, failed)

    async def _turn(
        self, host: ObjectHost, origin: _Origin, invoke: Invoke[Any]
    ) -> tuple[Any, bool, int]:
        """One event to its end: the handler, its commit, handing the object on."""
        event = next(self.tokens)
        token = _running.set(_extended(origin, host, event, None))
        self._live_events.add(event)
        host.turn = event
        # Callers queued for the object wait for this turn, and through it for
        # what it calls (see ``waiting_node``).
        self.add_wait(host.key, event)
        seq = 0
        try:
            outcome, failed = await self._invoke(host, invoke)
            if host.nested:
                await self._nested_ended(host)
            seq = self._end_turn(host, failed)
        finally:
            self.forget_wait(host.key, event)
            host.turn = 0
            self._live_events.discard(event)
            _running.reset(token)
            host.last_used = time.monotonic()
            self._hand_off(host.key)
        return outcome, failed, seq

    def _detached(
        self, event: Coroutine[Any, Any, T], on_never_run: Callable[[], None]
    ) -> asyncio.Future[T]:
        """The result of ``event``, run as a task of its own: cancelling the caller
        awaiting it abandons the result, never the event."""
        loop = self.loop
        reply: asyncio.Future[T] = loop.create_future()
        if sys.version_info >= (3, 12):
            # The event's first step runs now, as its own task: a loop iteration less.
            task = asyncio.Task(self._run_detached(event, reply), loop=loop, eager_start=True)
        else:
            task = loop.create_task(self._run_detached(event, reply))
        if not task.done():
            # Kept until done (the loop holds tasks weakly) and awaited by ``drain``.
            self.events.add(task)
            task.add_done_callback(partial(self._event_task_done, event, reply, on_never_run))
        return reply

    def _event_task_done(
        self,
        event: Coroutine[Any, Any, Any],
        reply: asyncio.Future[Any],
        on_never_run: Callable[[], None],
        task: asyncio.Task[Any],
    ) -> None:
        self.events.discard(task)
        if inspect.getcoroutinestate(event) == inspect.CORO_CREATED:
            # Cancelled before its first step (close()'s deadline): none of the
            # event ran, not even the cleanup its own code would have done.
            event.close()
            on_never_run()
            if not reply.done():
                reply.set_exception(RuntimeError("the runtime closed before the event started"))

    async def _run_detached(self, event: Coroutine[Any, Any, T], reply: asyncio.Future[T]) -> None:
        try:
            result = await event
        except Exception as error:
            if not reply.cancelled():
                reply.set_exception(error)
            elif not isinstance(error, _NoLongerNested):  # a call back that never ran
                logger.error("an event failed after its caller gave up", exc_info=True)
        except asyncio.CancelledError:
            if not reply.done():
                if self._cancelled_at_close:
                    # The caller cancelled nothing: it gets an error of its own.
                    reply.set_exception(
                        RuntimeError("the runtime closed before the event finished (cancelled)")
                    )
                else:  # the handler itself raised CancelledError
                    reply.cancel()
            raise
        except BaseException as error:  # KeyboardInterrupt, SystemExit, a handler's own
            if not reply.done():
                reply.set_exception(error)  # as a plain method's caller would see it
            if isinstance(error, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            if not reply.cancelled():
                reply.set_result(result)
        finally:
            # At once (the done callback comes an iteration later): the event is over.
            self.events.discard(asyncio.current_task())

    async def _invoke(self, host: ObjectHost, invoke: Invoke[Any]) -> tuple[Any, bool]:
        try:
            if not host.ready:
                await self._start(host)
            return await invoke(host), False
        except (ObjectAborted, Exception) as error:
            return self._failure(host, error), True
        except BaseException:
            # Cancelled (a shutdown cancels running events) or interrupted: what the
            # handler wrote so far is this turn's batch, as for a raising handler,
            # rather than riding along with the next turn's.
            if not host.broken:
                with contextlib.suppress(*_REFUSED):
                    self.commit(host)
            raise

    def _failure(
        self, host: ObjectHost, error: BaseException, where: str = "a handler"
    ) -> BaseException:
        """What the caller sees for an error raised by an event's handler (or the
        object's constructor, ``where``)."""
        if isinstance(error, ObjectAborted):
            self.reset(host)
        elif type(error) in _OWN_ERRORS:
            return error  # raised by stead itself (a nested call's error), nothing to copy
        elif isinstance(error, SteadError):
            pass  # a handler's own subclass: copied like any exception, but not logged
        else:
            logger.info("%r raised in %s", host.id, where, exc_info=True)
        return rebuild_exception(error)

    def _end_turn(self, host: ObjectHost, failed: bool, *, midway: bool = False) -> int:
        if host.broken:
            if failed:  # aborted, or the failure that broke it is already the outcome
                # The batches committed before the reset, which the event may have
                # read (an abort reason built from storage): its error waits for them.
                return host.storage.last_seq
            raise StorageError(
                "the object was reset (aborted, a commit failed, or a call back met a "
                "transaction() block); turn dropped"
            )
        return self.commit(host, midway=midway)

    async def _start(self, host: ObjectHost) -> None:
        running = _running.get()
        # The event that claimed on_start when it was delivered (see _claim_start).
        holder = host.start_hold if running is not None and running.node == host.start_hold else 0
        started = host.started
        if started is not None and not holder:
            await started  # another event of a reentrant object is starting it
            return
        if started is None:
            started = host.started = self.loop.create_future()
        try:
            await host.block_concurrency_while(partial(call_maybe_async, host.instance.on_start))
        except BaseException as error:
            self.reset(host)
            self._release_start(host, holder)
            started.set_exception(StorageError(f"on_start failed: {error!r}"))
            started.exception()  # mark retrieved; later waiters re-raise it
            raise
        host.ready = True
        started.set_result(None)
        self._release_start(host, holder)

    def _claim_start(self, host: ObjectHost, node: int) -> None:
        """The reentrant event ``node``, delivered to an instance whose on_start has
        not run, will run it: it holds the input gate from now on, so nothing of
        the object runs before on_start, not even work the constructor scheduled
        (before Python 3.12 that work's task starts before the event's)."""
        host.started = self.loop.create_future()
        host.start_hold = node
        gate = host.gate = host.gate or asyncio.Event()
        gate.clear()
        host.blocking += 1
        self.add_wait(host.gate_node, node)

    def _release_start(self, host: ObjectHost, node: int) -> None:
        """The claim of ``node`` (0: none) ends: on_start ran, or failed, or the
        event ended before running it."""
        if not node or host.start_hold != node:
            return
        host.start_hold = 0
        self.forget_wait(host.gate_node, node)
        host.blocking -= 1
        if not host.blocking:
            assert host.gate is not None
            host.gate.set()

    async def _reenter(self, key: bytes, running: _Running, invoke: Invoke[T]) -> T:
        """A call back into an object whose event on this call chain waits for it
        runs nested in that event, as an event of its own (its own waits-for node,
        waited for by its caller). ``_NoLongerNested`` if, by the time it could
        run, no event of the object on the chain waits for it any more."""
        host = self.hosts.get(key)
        if host is None:
            raise StorageError("the object was reset while this call chain was running")
        if not host.ready:
            # Its on_start is on this chain, waiting for this very call: it would
            # wait on itself forever.
            raise DeadlockError("call cycle: a call back into an object whose on_start is running")
        nested = next(self.tokens)
        waiter = self.waiting_node(running)
        if waiter is not None:
            self.add_wait(waiter, nested)
        try:
            await self._wait_to_nest(host, running, key, nested)
            if not host.reentrant and host.storage.in_transaction:
                # Its writes would land inside the turn's open block, which may still
                # roll back after this call was answered: it cannot run before the
                # block ends, and the block waits for it.
                raise DeadlockError(
                    "call cycle: a call back into an object inside its open transaction() block"
                )
            call = next(self.tokens)
            # Its calls leave through this object's output gate; calls back along
            # the chain may nest in it in turn.
            context = _extended((running, call), host, nested, nested)
            self._live_events.add(nested)
            self._live_calls.add(call)
            if host.reentrant:  # an event in flight: the object is not idle
                host.inflight += 1
            else:  # now, not when its task starts: siblings wait from here
                host.nested = (*host.nested, nested)
            done = partial(self._nested_done, host, nested, call)
            # As a task of its own, as any event that can suspend: a caller that
            # gives up abandons the result, never the call back midway (the turn
            # it nests in ends after it).
            return await self._detached(
                self._run_nested(host, running, context, done, invoke), done
            )
        finally:
            if waiter is not None:
                self.forget_wait(waiter, nested)

    async def _run_nested(
        self,
        host: ObjectHost,
        caller: _Running,
        context: _Running,
        done: Callable[[], None],
        invoke: Invoke[T],
    ) -> T:
        token = _running.set(context)
        storage = host.storage
        watch = storage.watch_rollbacks(context)
        try:
            if host.reentrant:
                # Checked again as the call back starts: before Python 3.12 its
                # task starts an iteration after the check in _reenter, and
                # another event's block may have closed the gate meanwhile.
                await self._wait_to_nest(host, caller, host.key, context.events[-1])
            outcome, failed = await self._invoke(host, invoke)
            if not host.reentrant and not host.broken:
                collision = self._collision(storage.in_transaction, watch.hit)
                if collision is not None:
                    # Its writes, sharing the turn's pending state, cannot be told
                    # from the turn's: the object is reset, so neither is committed.
                    self.reset(host)
                    outcome, failed = collision, True
            # The turn it is nested in goes on: its open transaction() blocks may
            # still roll back (a reentrant object's may be other events': see flush).
            seq = self._end_turn(host, failed, midway=not host.reentrant)
        finally:
            storage.unwatch_rollbacks(watch)
            _running.reset(token)
            done()
        return await self._release(host, seq, outcome, failed)  # type: ignore[no-any-return]

    @staticmethod
    def _collision(block_open: bool, rolled_back: bool) -> DeadlockError | None:
        """The error of a turn-based object's call back that met a transaction()
        block of code its turn ran alongside it (None if it did not)."""
        if block_open:
            # Its writes joined a block that may still roll back after it is answered.
            return DeadlockError(
                "a call back ended while its turn had a transaction() block open; the object "
                "is reset (its writes joined the block)"
            )
        if rolled_back:
            # A block of the turn's rolled back (its writes, or values it read,
            # may be gone), or its own block took writes the turn made meanwhile.
            return DeadlockError(
                "a transaction() block rolled back while a call back ran alongside its turn, "
                "taking back writes (or values read) of the other; the object is reset"
            )
        return None

    def _nested_done(self, host: ObjectHost, nested: int, call: int) -> None:
        self._live_events.discard(nested)
        self._live_calls.discard(call)
        if host.reentrant:
            host.inflight -= 1
        else:
            host.nested = tuple(entry for entry in host.nested if entry != nested)
            if host.nested_ended is not None:
                host.nested_ended.set()
        host.last_used = time.monotonic()

    async def _wait_to_nest(
        self, host: ObjectHost, running: _Running, key: bytes, nested: int
    ) -> None:
        """One event of an object at a time, nested ones too. A turn-based object's
        call back nests once the event it nests in is the object's innermost
        running one (a sibling call back, from a fan-out, runs to its end first);
        a reentrant object's waits at its closed input gate unless the event it
        nests in holds it. Waits are in the waits-for graph: a cycle raises
        ``DeadlockError``. ``_NoLongerNested`` once no event on the chain waits."""
        while True:
            waiting = self._waiting_events(running, key)
            if not waiting:
                raise _NoLongerNested
            entered = waiting[-1]  # the innermost: where the call back nests
            if host.reentrant:
                gate = host.gate
                if gate is None or gate.is_set():
                    return
                if any(self._holds_gate(host, event) for event in waiting):
                    return  # it nests (maybe deep) in the event holding the gate
                await self._wait_at_gate(host, gate, nested)
                continue
            if not host.nested:
                if host.turn == entered:
                    return
                raise _NoLongerNested
            holder = host.nested[-1]
            if holder == entered:
                return
            if self._would_deadlock(nested, holder):
                raise DeadlockError(
                    "call cycle: a call back waits for another call back into the same "
                    "object, which waits (directly or through other objects) on it"
                )
            self.add_wait(nested, holder)
            ended = host.nested_ended = host.nested_ended or asyncio.Event()
            ended.clear()
            try:
                await ended.wait()
            finally:
                self.forget_wait(nested, holder)

    async def _nested_ended(self, host: ObjectHost) -> None:
        """Wait for the call backs still nested in a turn that ends (its code gave
        up on the calls they came from): the object is handed on after them."""
        while host.nested:
            holder = host.nested[-1]
            if self._would_deadlock(host.key, holder):
                return  # it waits (through other objects) for this object: hand it on
            self.add_wait(host.key, holder)
            ended = host.nested_ended = host.nested_ended or asyncio.Event()
            ended.clear()
            try:
                await ended.wait()
            finally:
                self.forget_wait(host.key, holder)

    def _holds_gate(self, host: ObjectHost, event: int) -> bool:
        """Whether ``event`` (a reentrant object's) holds its input gate closed."""
        return event in self._waits_for.get(host.gate_node, ())

    async def _deliver_interleaved(
        self,
        host: ObjectHost,
        origin: _Origin,
        invoke: Invoke[T],
        detach: bool,
        node: int,
    ) -> T:
        """Reentrant objects: events interleave at awaits, bounded by ``max_pending``.
        ``node`` is the event in the waits-for graph."""
        while True:
            # As for a turn-based object: one running, max_pending more.
            if host.inflight > self.max_pending:
                raise OverloadedError(f"object overloaded: {host.inflight} events in flight")
            host.inflight += 1
            # The first event of a new instance runs on_start: it holds the input now.
            claim = node if not host.ready and host.started is None else 0
            if claim:
                self._claim_start(host, claim)
            event = self._interleaved_event(host, origin, invoke, node, claim)
            on_never_run = partial(self._never_ran_interleaved, host, claim)
            try:
                return await self._run_event(host, event, detach, on_never_run)  # type: ignore[no-any-return]
            except _ResetBeforeStart:
                # As a turn-based object's queued events do: run on a fresh instance.
                host = self.host(host.id)

    def _never_ran_interleaved(self, host: ObjectHost, claim: int) -> None:
        host.inflight -= 1
        if claim and host.start_hold == claim:
            host.started = None  # the next event, or a block waiting at the gate, runs it
            self._release_start(host, claim)

    async def _interleaved_event(
        self, host: ObjectHost, origin: _Origin, invoke: Invoke[Any], node: int, claim: int
    ) -> tuple[Any, bool, int]:
        """One event of a reentrant object; ``node`` is its token and waits-for node,
        ``claim`` is ``node`` if it runs on_start (it holds the input already)."""
        token = _running.set(_extended(origin, host, node, node))
        self._live_events.add(node)
        try:
            # The handler starts right after a check finds the gate open, with no
            # await in between: no other event's block can have closed it since.
            while not claim and not host.broken:
                gate = host.gate
                if gate is not None and not gate.is_set():
                    await self._wait_at_gate(host, gate, node)
                elif not host.ready and host.started is not None:
                    # Other work is starting it: wait for it to end either way.
                    with contextlib.suppress(Exception):
                        await asyncio.shield(host.started)
                else:
                    break
            if host.broken:  # reset (aborted, on_start failed) before this event began
                raise _ResetBeforeStart
            outcome, failed = await self._invoke(host, invoke)
            seq = self._end_turn(host, failed)
        finally:
            # Ended before on_start (reset before it began): the input reopens.
            self._release_start(host, claim)
            self._live_events.discard(node)
            _running.reset(token)
            host.inflight -= 1
            host.last_used = time.monotonic()
        return outcome, failed, seq

    async def _wait_at_gate(self, host: ObjectHost, gate: asyncio.Event, node: int) -> None:
        """Wait for a reentrant object's input gate to open: the event waits for the
        gate (whose node waits for the events holding it closed, as they come and
        go), and raises ``DeadlockError`` if they wait on this event."""
        if self._would_deadlock(node, host.gate_node):
            raise DeadlockError(
                "call cycle: the object's input is closed (block_concurrency_while or "
                "on_start) by an event waiting, directly or through other objects, on this call"
            )
        self.add_wait(node, host.gate_node)
        try:
            await gate.wait()
        finally:
            self.forget_wait(node, host.gate_node)

    # -- shutdown ------------------------------------------------------------

    def drains_current_task(self) -> bool:
        """Whether ``drain`` waits for the code running now: an event, code it
        awaits, or ``wait_until`` work (which therefore cannot wait for a drain)."""
        task = asyncio.current_task()
        if task in self.events or task in self.background:
            return True
        running = _running.get()
        return running is not None and running.host._dispatcher is self and self.in_event(running)

    def _cancelling_at_close(self) -> None:
        self._cancelled_at_close = True

    def close(self) -> None:
        """After ``drain``: drop every instance; later calls raise ``RuntimeError``."""
        self.closed = True
        for host in list(self.hosts.values()):
            self.evict(host, why="closed with its runtime")

    async def drain(self, deadline: Callable[[], float]) -> None:
        """Wait for background work and running events (cancelling what still runs
        at ``deadline()``, in loop time), then commit whatever is still pending."""
        await finish_or_cancel(
            lambda: [*self.background, *self.events],
            deadline,
            "events or wait_until tasks",
            on_deadline=self._cancelling_at_close,
        )
        for host in list(self.hosts.values()):
            if host.storage.has_pending and not host.broken:
                try:
                    await self.flush(host)
                except _REFUSED:  # the object is reset; the others still commit
                    logger.error("%r: last writes not committed", host.id, exc_info=True)
