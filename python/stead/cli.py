"""The ``stead`` command line: serve, plugins, inspect, bench.

Its guide is docs/cli.md in stead's source repository (the docs are not part of
the installed package).

Options read ``STEAD_*`` environment variables through ``envvar=``; plugins
can add commands through the ``stead_cli`` hook.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect as pyinspect
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from stead import config as cfg
from stead.errors import DataDirLockedError, SteadError, StorageError

if TYPE_CHECKING:
    from stead.runtime import Runtime

__all__ = ["cli", "main"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

T = TypeVar("T")

_DURABILITY = click.Choice(["fsync", "os", "none"])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="stead", prog_name="stead")
def cli() -> None:
    """stead: Durable Objects for Python.

    Serve durable objects over HTTP, list installed plugins, look into a data
    dir, or measure this machine. The serve options can also be set with
    the STEAD_* environment variable shown in their help.
    """
    _check_environment()


def _check_environment() -> None:
    """A malformed ``STEAD_*`` variable is a usage error naming it (exit status 2)."""
    try:
        cfg.Config.from_env()
    except ValueError as exc:
        raise click.UsageError(f"invalid environment: {exc}") from None


# -- serve -------------------------------------------------------------------


@cli.command()
@click.argument("target", required=False)
@click.option(
    "--host",
    default=cfg.DEFAULT_HOST,
    show_default=True,
    envvar=cfg.ENV_HOST,
    show_envvar=True,
    help="Interface to bind.",
)
@click.option(
    "--port",
    default=cfg.DEFAULT_PORT,
    show_default=True,
    envvar=cfg.ENV_PORT,
    show_envvar=True,
    type=click.IntRange(0, 65535),
    help="TCP port (0: any free port).",
)
@click.option(
    "--data-dir",
    default=cfg.DEFAULT_DATA_DIR,
    show_default=True,
    envvar=cfg.ENV_DATA_DIR,
    show_envvar=True,
    type=click.Path(file_okay=False),
    help="Where objects are stored (with TARGET, the runtime's own data_dir applies: "
    "a different one is refused).",
)
@click.option(
    "--durability",
    default="fsync",
    show_default=True,
    envvar=cfg.ENV_DURABILITY,
    show_envvar=True,
    type=_DURABILITY,
    help="fsync: survives power loss; os: survives a crash; none: tests only (with "
    "TARGET, the runtime's own applies: a different one is refused).",
)
@click.option(
    "--token",
    envvar=cfg.ENV_TOKEN,
    show_envvar=True,
    default=None,
    help="Require 'Authorization: Bearer TOKEN' on every route but /healthz.",
)
@click.option(
    "--max-body-bytes",
    envvar=cfg.ENV_MAX_BODY_BYTES,
    show_envvar=True,
    default=cfg.DEFAULT_MAX_BODY_BYTES,
    show_default=True,
    type=click.IntRange(0),
    help="Largest request body accepted (413 above).",
)
@click.option(
    "--var",
    "var_items",
    multiple=True,
    metavar="NAME=VALUE",
    callback=lambda ctx, param, items: _parse_vars(items),
    help=f"A var for the objects' env (repeatable); {cfg.ENV_VAR_PREFIX}<NAME> variables "
    "set more (--var wins).",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="Log every request (costs throughput).",
)
@click.option(
    "--proxy-headers/--no-proxy-headers",
    default=False,
    show_default=True,
    help="Trust X-Forwarded-* headers from 127.0.0.1 (behind a reverse proxy).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
)
def serve(
    target: str | None,
    host: str,
    port: int,
    data_dir: str,
    durability: str,
    token: str | None,
    max_body_bytes: int,
    var_items: dict[str, str],
    access_log: bool,
    proxy_headers: bool,
    log_level: str,
) -> None:
    """Serve objects over HTTP until interrupted.

    TARGET is module:attribute naming a stead.Runtime (or a function returning
    one), e.g. myapp.objects:runtime. Without it, stead serves every binding
    that installed plugins register, with data in --data-dir. Needs the server
    extra: pip install 'stead[server]'.

    \b
    Example (with the pattern catalog installed: pip install ./plugins/stead-patterns
    in stead's source repository):
      stead serve --port 8787
      curl -X POST localhost:8787/objects/RPC_COUNTER/a/rpc/increment
    """
    uvicorn, create_app, http_protocol, uvicorn_server = _server_imports()
    variables = {**cfg.Config.from_env().vars, **var_items}
    with _logging_to_stderr(log_level):
        runtime = _load_target(target) if target else _plugin_runtime(data_dir, durability)
    if target:
        _refuse_overridden_options(runtime, data_dir, durability)
    _add_vars(runtime, variables)
    if not runtime.bindings and not runtime.use_plugins:
        raise click.UsageError(f"{target} has no bindings to serve")
    with _logging_to_stderr(log_level):
        app = _create_app(create_app, runtime, max_body_bytes=max_body_bytes, token=token or "")
    server = uvicorn_server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            lifespan="on",
            http=http_protocol(),
            proxy_headers=proxy_headers,
            timeout_graceful_shutdown=10,
        )
    )
    with _logging_to_stderr(log_level):
        _run(_serve(runtime, server), _loop_factory(server.config))


# The packages of the ``server`` extra that serve imports (as in stead.http).
_SERVER_EXTRA = frozenset({"starlette", "uvicorn", "prometheus_client", "httpx"})


def _server_imports() -> tuple[Any, Callable[..., Any], Callable[[], Any], Callable[..., Any]]:
    """uvicorn and stead.http's parts, or ``Error: ...`` naming the extra to install."""
    try:
        import uvicorn

        from stead.http import create_app
        from stead.http.server import http_protocol, uvicorn_server
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in _SERVER_EXTRA:
            raise  # not a missing extra: a bug, shown as it is
        message = (
            f"stead serve needs the server extra ({missing} is not installed): "
            "pip install 'stead[server]'"
        )
        raise click.ClickException(message) from None
    return uvicorn, create_app, http_protocol, uvicorn_server


@contextlib.contextmanager
def _logging_to_stderr(level: str) -> Iterator[None]:
    """Show the records of stead's loggers at ``level`` and above on stderr, next to
    uvicorn's (handler tracebacks, server errors, storage failures); undone after."""
    from uvicorn.logging import DefaultFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(name)s: %(message)s"))
    stead_logger = logging.getLogger("stead")
    saved = stead_logger.level, stead_logger.propagate
    stead_logger.addHandler(handler)
    stead_logger.setLevel(level.upper())
    stead_logger.propagate = False  # as uvicorn's loggers: not twice if the root logs too
    try:
        yield
    finally:
        stead_logger.removeHandler(handler)
        stead_logger.level, stead_logger.propagate = saved


def _loop_factory(config: Any) -> Callable[[], Any] | None:
    """uvicorn's event loop choice (uvloop when installed)."""
    get_factory = getattr(config, "get_loop_factory", None)
    if get_factory is not None:  # uvicorn >= 0.36
        factory: Callable[[], Any] | None = get_factory()
        return factory
    config.setup_event_loop()  # older uvicorn: sets the event loop policy instead
    return None


def _plugin_runtime(data_dir: str, durability: str) -> Runtime:
    from stead.runtime import Runtime

    return Runtime(data_dir=data_dir, durability=durability, plugins=True)


def _parse_vars(items: Sequence[str]) -> dict[str, str]:
    try:
        return dict(cfg.parse_var(item) for item in items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--var") from None


def _add_vars(runtime: Runtime, variables: dict[str, str]) -> None:
    """Give the runtime the command line's vars, over a TARGET's own of the same name
    (a var named like a binding fails the start, naming it)."""
    runtime.vars.update(variables)


def _load_target(target: str) -> Runtime:
    from stead.runtime import Runtime

    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter("expected module:attribute", param_hint="TARGET")
    sys.path.insert(0, os.getcwd())  # as uvicorn does: TARGET modules live in the project
    try:
        value: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot load {target}: {exc}", param_hint="TARGET") from exc
    except Exception as exc:  # the module's own code raised while importing
        logger.debug("importing %s failed", module_name, exc_info=exc)
        raise click.ClickException(f"importing {module_name} failed: {_describe(exc)}") from None
    if pyinspect.iscoroutinefunction(value):
        # Not called: the runtime it made would belong to a loop of its own.
        message = f"{target} is an async function; a TARGET factory must be a plain function"
        raise click.BadParameter(message, param_hint="TARGET")
    if pyinspect.isfunction(value) or pyinspect.ismethod(value):  # a factory
        try:
            made = value()
        except Exception as exc:
            logger.debug("%s() failed", target, exc_info=exc)
            raise click.ClickException(f"{target}() failed: {_describe(exc)}") from None
        if not isinstance(made, Runtime):
            if pyinspect.iscoroutine(made):
                made.close()  # a factory hiding its async def: no "never awaited" warning
            message = f"{target}() returned {_a(type(made).__name__)}, not a stead.Runtime"
            raise click.BadParameter(message, param_hint="TARGET")
        return made
    if not isinstance(value, Runtime):
        raise click.BadParameter(_not_a_runtime(target, value), param_hint="TARGET")
    return value


def _not_a_runtime(target: str, value: Any) -> str:
    from stead.objects import DurableObject

    if isinstance(value, type) and issubclass(value, DurableObject):
        # A classic first try: serve the class itself.
        binding = value.__name__.upper()
        return (
            f"{target} is a DurableObject class, not a stead.Runtime; serve a runtime "
            f"that binds it, e.g. runtime = stead.Runtime({{{binding!r}: {value.__name__}}}, "
            f"data_dir='./stead-data') in {target.partition(':')[0]}, then "
            f"stead serve {target.partition(':')[0]}:runtime"
        )
    kind = "class" if isinstance(value, type) else type(value).__name__
    return f"{target} is {_a(kind)}, not a stead.Runtime"


def _a(noun: str) -> str:
    """``noun`` with its indefinite article ("an int", "a str")."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _refuse_overridden_options(runtime: Runtime, data_dir: str, durability: str) -> None:
    """A --data-dir or --durability (or its STEAD_* variable) that a TARGET's runtime
    does not use is a usage error: silently ignored, the data would go elsewhere."""
    ctx = click.get_current_context()
    given = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)
    own_dir = runtime.data_dir
    if ctx.get_parameter_source("data_dir") in given and (
        own_dir is None or os.path.realpath(own_dir) != os.path.realpath(data_dir)
    ):
        where = "keeps its objects in memory" if own_dir is None else f"uses {own_dir!r}"
        raise click.UsageError(
            f"--data-dir/{cfg.ENV_DATA_DIR} {data_dir!r} does not apply with a TARGET: its "
            f"runtime {where} (set data_dir= in stead.Runtime(...), or serve without TARGET)"
        )
    if ctx.get_parameter_source("durability") in given and runtime.durability != durability:
        raise click.UsageError(
            f"--durability/{cfg.ENV_DURABILITY} {durability!r} does not apply with a TARGET: "
            f"its runtime uses {runtime.durability!r} (set durability= in stead.Runtime(...))"
        )


def _create_app(create_app: Callable[..., Any], runtime: Runtime, **options: Any) -> Any:
    """The app, or ``Error: ...`` if building it failed: it loads the plugins (for
    their routes), so a plugin that fails to import is reported here."""
    from stead.plugins import PluginError

    try:
        return create_app(runtime, **options)
    except PluginError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # a stead_routes hook raised
        logger.debug("building the app failed", exc_info=exc)
        raise click.ClickException(f"building the HTTP app failed: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc} (--log-level debug shows the traceback)"


async def _serve(runtime: Runtime, server: Any) -> None:
    from stead.http.server import StopSignals

    stop = StopSignals(runtime, server, say=lambda text: click.echo(f"stead: {text}", err=True))
    with stop.installed():
        await _start(runtime)
        stop.started()
        try:
            if not stop.requested:
                _print_bindings(runtime)
                await _serve_http(server)
        finally:
            await stop.close(lambda: _close(runtime))


async def _start(runtime: Runtime) -> None:
    try:
        await runtime.start()
    except DataDirLockedError as exc:
        raise click.ClickException(f"{exc} (is another `stead serve` using it?)") from None
    except SteadError as exc:  # a corrupt log, two plugins claiming one binding, ...
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # a plugin's stead_startup hook raised (start() released all)
        logger.debug("starting the runtime failed", exc_info=exc)
        raise click.ClickException(f"starting the runtime failed: {_describe(exc)}") from None


def _print_bindings(runtime: Runtime) -> None:
    if runtime.bindings:
        click.echo(f"stead: serving bindings {', '.join(sorted(runtime.bindings))}", err=True)
    else:
        click.echo(
            "stead: warning: no bindings to serve; install a plugin (the pattern catalog: "
            "pip install ./plugins/stead-patterns in stead's source repository) or pass a TARGET",
            err=True,
        )


async def _serve_http(server: Any) -> None:
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn could not start: a port in use, a bad --host, ...
        message = f"the HTTP server did not start (uvicorn's error is above; status {exc.code})"
        raise click.ClickException(message) from None


async def _close(runtime: Runtime) -> None:
    try:
        await runtime.close()
    except StorageError as exc:  # the engine failed while serving (a full disk, say)
        message = f"{exc} (nothing written after the failure was saved)"
        raise click.ClickException(message) from None
    except Exception as exc:  # a plugin's stead_shutdown hook raised (close() released all)
        logger.debug("closing the runtime failed", exc_info=exc)
        raise click.ClickException(f"closing the runtime failed: {_describe(exc)}") from None


def _run(coroutine: Coroutine[Any, Any, T], loop_factory: Callable[[], Any] | None = None) -> T:
    """``asyncio.run(coroutine)`` with uvicorn's loop factory (``loop_factory=`` is
    Python 3.12+). As there, the first Ctrl+C cancels the coroutine, so it can clean
    up (a runtime closes and releases its data dir), then raises KeyboardInterrupt."""
    loop: asyncio.AbstractEventLoop = (
        loop_factory() if loop_factory is not None else asyncio.new_event_loop()
    )
    task = loop.create_task(coroutine)
    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal interrupted
        if interrupted or task.done():
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        interrupted = True
        task.cancel()
        loop.call_soon_threadsafe(lambda: None)  # wake the loop up

    cancel_on_sigint = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if cancel_on_sigint:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        return loop.run_until_complete(task)
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if cancel_on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    pending = asyncio.all_tasks(loop)
    if not pending:
        return
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    for task in pending:
        if not task.cancelled() and task.exception() is not None:
            logger.error("a task failed while being cancelled", exc_info=task.exception())


# -- plugins -----------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List installed plugins and the bindings they register.

    Set STEAD_DISABLE_PLUGIN_AUTOLOAD=1 to skip plugins installed as packages.
    """
    from stead.plugins import PluginError, Plugins

    try:
        infos = Plugins.load().describe()
    except PluginError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(
            json.dumps([info.__dict__ | {"bindings": list(info.bindings)} for info in infos])
        )
        return
    rows = [
        (info.name, info.distribution or "-", info.version or "-", ", ".join(info.bindings) or "-")
        for info in infos
    ]
    _table(("plugin", "distribution", "version", "bindings"), rows)


# -- inspect -----------------------------------------------------------------


@cli.command(short_help="Show what a data dir holds (read-only).")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--binding", "-b", help="Only objects of this binding.")
@click.option("--name", "-n", help="Only objects of this name.")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Show at most this many objects.",
)
@click.option(
    "--max-keys",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="Show at most this many keys per object.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
def inspect(
    data_dir: str, binding: str | None, name: str | None, limit: int, max_keys: int, as_json: bool
) -> None:
    """Show the objects, keys, values and alarms in DATA_DIR (read-only).

    Binding names come from installed plugins and --binding; objects of other
    bindings are shown with their binding's 8-byte prefix. A running server
    holds the data dir: stop it first, or query it over HTTP.
    """
    if not (Path(data_dir) / "secret").exists():
        raise click.ClickException(f"{data_dir} is not a stead data dir (it has no secret file)")
    bindings = _known_bindings() | ({binding} if binding else set())
    try:
        engine = _open_read_only(data_dir)
    except DataDirLockedError:
        raise click.ClickException(
            f"{data_dir} is in use by a running stead process (one process per data dir): "
            "stop it, or query the server over HTTP instead"
        ) from None
    except SteadError as exc:  # a corrupt log, ...
        raise click.ClickException(f"cannot read {data_dir}: {exc}") from None
    try:
        views = _object_views(engine, bindings, binding, name, max_keys)
        for view in _take(views, limit):
            click.echo(_json_line(view) if as_json else _render_object(view))
    except SteadError as exc:
        raise click.ClickException(f"cannot read {data_dir}: {exc}") from None
    finally:
        engine.close()


def _known_bindings() -> set[str]:
    from stead.plugins import PluginError, Plugins

    try:
        return set(Plugins.load().bindings())
    except PluginError as exc:
        click.echo(f"warning: {exc}", err=True)
        return set()


def _open_read_only(data_dir: str) -> Any:
    from stead._core import Engine

    # Read-only: recovery changes no file (a torn tail a crash left is read past,
    # not truncated: the server it belongs to does that when it starts).
    return Engine(data_dir, "none", read_only=True)


def _object_views(
    engine: Any, bindings: set[str], binding: str | None, name: str | None, max_keys: int
) -> Iterator[dict[str, Any]]:
    from stead.ids import binding_prefix

    names = {binding_prefix(b): b for b in bindings}
    prefix = binding_prefix(binding) if binding else None
    after = None
    while batch := engine.objects(prefix=prefix, after=after, limit=500):
        for key in batch:
            view = _object_view(engine, key, names, max_keys)
            if name is None or view["name"] == name:
                yield view
        after = batch[-1]


def _object_view(engine: Any, key: bytes, names: dict[bytes, str], max_keys: int) -> dict[str, Any]:
    from stead.storage import INTERNAL_PREFIX, NAME_KEY

    raw_name = engine.get(key, NAME_KEY)
    alarm = engine.get_alarm(key)
    entries = [(k, v) for k, v in engine.list(key, end=INTERNAL_PREFIX, limit=max_keys + 1)]
    return {
        "binding": names.get(key[:8], f"<prefix {key[:8].hex()}>"),
        "id": key[8:].hex(),
        "name": None if raw_name is None else _decode(raw_name),
        "alarm": None if alarm is None else _iso(alarm / 1000),
        "values": {k.decode("utf-8", "replace"): _decode(v) for k, v in entries[:max_keys]},
        "truncated": len(entries) > max_keys,
        **_agent_view(engine, key, max_keys),
    }


def _agent_view(engine: Any, key: bytes, max_keys: int) -> dict[str, Any]:
    """An Agent's state and schedules (stored under internal keys, which the
    values leave out); nothing for other objects."""
    from stead.agent import _SCHEDULE_PREFIX, _STATE_KEY
    from stead.storage import INTERNAL_PREFIX

    view: dict[str, Any] = {}
    state = engine.get(key, INTERNAL_PREFIX + _STATE_KEY)
    if state is not None:
        view["state"] = _decode(state)
    prefix = INTERNAL_PREFIX + _SCHEDULE_PREFIX
    stored = engine.list(key, prefix=prefix, limit=max_keys + 1)
    if stored:
        view["schedules"] = [_schedule_view(_decode(raw)) for _, raw in stored[:max_keys]]
        view["schedules_truncated"] = len(stored) > max_keys
    return view


def _schedule_view(schedule: Any) -> Any:
    """A stored Schedule (a dict once decoded), its time as an ISO date."""
    if isinstance(schedule, dict) and isinstance(schedule.get("time"), (int, float)):
        return {**schedule, "time": _iso(schedule["time"])}
    return schedule


def _decode(raw: bytes) -> Any:
    from stead import codec

    try:
        return codec.decode(raw)
    except SteadError:
        return f"<{len(raw)} undecodable bytes>"


def _json_line(view: dict[str, Any]) -> str:
    """``view`` as strict JSON: what JSON has no form for (tuple keys, NaN, bytes)
    is shown as its ``repr``."""
    return json.dumps(_jsonable(view), default=repr, allow_nan=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return _jsonable_dict(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf', '-inf'
    return value


def _jsonable_dict(value: dict[Any, Any]) -> Any:
    """A JSON object, keys not ``str`` as their ``repr``; a list of ``[key,
    value]`` pairs if two keys would then meet (``1`` and ``"1"``): none is lost."""
    named = {key if isinstance(key, str) else repr(key): item for key, item in value.items()}
    if len(named) == len(value):
        return {key: _jsonable(item) for key, item in named.items()}
    return [[_jsonable(key), _jsonable(item)] for key, item in value.items()]


def _render_object(view: dict[str, Any]) -> str:
    alarm = f"  alarm={view['alarm']}" if view["alarm"] else ""
    lines = [f"{view['binding']}  name={view['name']!r}  id={view['id']}{alarm}"]
    for key, value in view["values"].items():
        lines.append(f"    {key!r}: {_shortened(repr(value))}")
    if view["truncated"]:
        lines.append("    ... (more keys; raise --max-keys)")
    if "state" in view:
        lines.append(f"    agent state: {_shortened(repr(view['state']))}")
    for schedule in view.get("schedules", []):
        lines.append(f"    agent schedule: {_shortened(_schedule_line(schedule))}")
    if view.get("schedules_truncated"):
        lines.append("    ... (more schedules; raise --max-keys)")
    return "\n".join(lines)


def _schedule_line(schedule: Any) -> str:
    if not isinstance(schedule, dict):
        return repr(schedule)
    when = f"cron {schedule.get('cron')!r}, next" if schedule.get("cron") else "at"
    retries = schedule.get("retry_count") or 0
    retrying = f" (retry {retries})" if retries else ""
    return (
        f"{schedule.get('callback')}({schedule.get('payload')!r}) {when} "
        f"{schedule.get('time')}{retrying}  id={schedule.get('id')}"
    )


def _shortened(text: str) -> str:
    return text if len(text) <= 200 else text[:197] + "..."


def _iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc).isoformat(timespec="milliseconds")


def _take(items: Iterator[T], limit: int) -> Iterator[T]:
    for index, item in enumerate(items):
        if index >= limit:
            return
        yield item


# -- bench -------------------------------------------------------------------


@cli.command()
@click.option(
    "--objects",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Distinct counter objects.",
)
@click.option(
    "--requests",
    "total",
    default=20_000,
    show_default=True,
    type=click.IntRange(1),
    help="Increments to send.",
)
@click.option(
    "--concurrency",
    default=50,
    show_default=True,
    type=click.IntRange(1),
    help="Increments in flight at once.",
)
@click.option("--durability", default="fsync", show_default=True, type=_DURABILITY)
@click.option(
    "--data-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Where to store the counters (default: a temporary dir, removed after).",
)
def bench(
    objects: int, total: int, concurrency: int, durability: str, data_dir: str | None
) -> None:
    """Measure durable increments on this machine (in process, no HTTP).

    Each request is one RPC that reads, increments and writes a counter; it
    returns once the write is durable under --durability.
    """
    with tempfile.TemporaryDirectory(prefix="stead-bench-") as scratch:
        directory = data_dir or os.path.join(scratch, "data")
        with click.progressbar(length=total, label="increments", file=sys.stderr) as bar:
            try:
                result = _run(
                    _bench(directory, durability, objects, total, concurrency, bar.update)
                )
            except SteadError as exc:  # the data dir is in use or corrupt, a disk failed, ...
                raise click.ClickException(str(exc)) from None
    _table(("measure", "value"), result)


def _counter_class() -> type[Any]:
    from stead.objects import DurableObject

    class BenchCounter(DurableObject):
        async def increment(self) -> int:
            count: int = self.ctx.storage.get("count", 0) + 1
            self.ctx.storage.put("count", count)
            return count

    return BenchCounter


async def _bench(
    data_dir: str,
    durability: str,
    objects: int,
    total: int,
    concurrency: int,
    progress: Callable[[int], None],
) -> list[tuple[str, str]]:
    from stead.runtime import Runtime

    async with Runtime({"BENCH": _counter_class()}, data_dir=data_dir, durability=durability) as rt:
        stubs = [rt.env.BENCH.get_by_name(f"counter-{i}") for i in range(objects)]
        before = rt.stats()
        started = time.perf_counter()
        latencies = await _drive(stubs, total, concurrency, progress)
        elapsed = time.perf_counter() - started
        after = rt.stats()
    return _bench_rows(objects, total, concurrency, durability, elapsed, latencies, before, after)


async def _drive(
    stubs: Sequence[Any], total: int, concurrency: int, progress: Callable[[int], None]
) -> list[float]:
    latencies: list[float] = []
    step = max(total // 100, 1)
    issued = iter(range(total))

    async def worker() -> None:
        for index in issued:
            started = time.perf_counter()
            await stubs[index % len(stubs)].increment()
            latencies.append(time.perf_counter() - started)
            if len(latencies) % step == 0:
                progress(step)
                # Calls that never suspend (durability none) would otherwise keep
                # one worker running to the end: no other worker, no Ctrl+C.
                await asyncio.sleep(0)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    progress(total % step)
    return latencies


def _bench_rows(
    objects: int,
    total: int,
    concurrency: int,
    durability: str,
    elapsed: float,
    latencies: list[float],
    before: dict[str, float],
    after: dict[str, float],
) -> list[tuple[str, str]]:
    latencies.sort()
    syncs = after.get("syncs", 0) - before.get("syncs", 0)
    return [
        ("requests", f"{total:,}"),
        ("objects / concurrency", f"{objects:,} / {concurrency}"),
        ("durability", durability),
        ("elapsed", f"{elapsed:.2f} s"),
        ("throughput", f"{total / elapsed:,.0f} req/s"),
        ("latency p50", f"{_percentile(latencies, 0.50) * 1e3:.2f} ms"),
        ("latency p99", f"{_percentile(latencies, 0.99) * 1e3:.2f} ms"),
        ("syncs", f"{syncs:,.0f} ({total / syncs:.1f} increments per sync)" if syncs else "0"),
    ]


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    return ordered[min(int(len(ordered) * fraction), len(ordered) - 1)] if ordered else 0.0


# -- shared ------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    for line in (headers, ["-" * width for width in widths], *rows):
        click.echo(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)
            ).rstrip()
        )


def main(argv: Sequence[str] | None = None) -> None:
    """The ``stead`` console script: plugins may add commands, then click runs."""
    from stead.plugins import PluginError, Plugins

    try:
        _check_environment()  # loading plugins reads it too
    except click.UsageError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    try:
        Plugins.load().extend_cli(cli)
    except PluginError as exc:
        click.echo(f"warning: plugins not loaded: {exc}", err=True)
    cli.main(args=list(argv) if argv is not None else None, prog_name="stead")


if __name__ == "__main__":  # python -m stead.cli
    main()
