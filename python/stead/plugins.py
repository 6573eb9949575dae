"""Loading plugins and calling their hooks through one small typed facade.

Built-in plugins are registered first, then the entry points of group
``"stead"`` (unless autoload is off), then ``check_pending()`` refuses hook
implementations that match no hookspec. Everything else in stead talks to
plugins through :class:`Plugins`, never through ``pm.hook`` directly.

Whatever goes wrong in a plugin while it is loaded or its bindings are read
(an import error, an unknown hook, a hook that raises) is a
:class:`PluginError` naming the plugin and its distribution: the ``stead``
command line reports those as one line instead of a traceback.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pluggy

from stead import hookspecs
from stead._core import __version__
from stead.config import Config
from stead.errors import SteadError

if TYPE_CHECKING:
    import click
    from pluggy import HookImpl
    from starlette.routing import BaseRoute

    from stead.objects import DurableObject
    from stead.runtime import Runtime

__all__ = ["BUILTIN_PLUGINS", "PluginError", "PluginInfo", "Plugins"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


class PluginError(SteadError):
    """A plugin failed to load, or two plugins register the same binding."""


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin, as ``stead plugins`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    bindings: tuple[str, ...]


class _CorePlugin:
    """The built-in plugin: stead itself. It registers no bindings; it exists so
    that ``stead plugins`` shows the core and hooks always have one implementation."""

    @hookspecs.hookimpl
    def stead_bindings(self) -> dict[str, type[DurableObject]]:
        return {}


#: Built-in plugins, registered before entry points, by plugin name.
BUILTIN_PLUGINS: dict[str, object] = {"stead": _CorePlugin()}


@dataclass(frozen=True)
class _Origin:
    distribution: str | None
    version: str | None


class Plugins:
    """The loaded plugins of one process (or one runtime), with typed hook calls."""

    def __init__(self, manager: pluggy.PluginManager, origins: dict[str, _Origin]) -> None:
        self._pm = manager
        self._origins = origins
        self._bindings: dict[str, dict[str, type[DurableObject]]] | None = None

    @classmethod
    def load(cls, *, autoload: bool | None = None, extra: Iterable[object] = ()) -> Plugins:
        """Register the built-ins, ``extra`` plugin objects, then entry points.

        :param autoload: load entry points of group ``"stead"``; ``None`` means
            yes unless ``STEAD_DISABLE_PLUGIN_AUTOLOAD`` is set.
        :param extra: more plugin objects (modules, instances) to register
            after the built-ins, e.g. from tests.
        """
        if autoload is None:
            autoload = not Config.from_env().disable_plugin_autoload
        manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        manager.add_hookspecs(hookspecs)
        origins: dict[str, _Origin] = {}
        for name, plugin in BUILTIN_PLUGINS.items():
            manager.register(plugin, name=name)
            origins[name] = _Origin("stead", __version__)
        for plugin in extra:
            registered = _register(manager, plugin, None, f"plugin {plugin!r}")
            if registered is not None:
                origins[registered] = _Origin(None, None)
        if autoload:
            _load_entry_points(manager, origins)
        _check_pending(manager, origins)
        return cls(manager, origins)

    @property
    def manager(self) -> pluggy.PluginManager:
        """The underlying pluggy manager (for tools; prefer the typed methods)."""
        return self._pm

    def bindings(self) -> dict[str, type[DurableObject]]:
        """Every binding that plugins register; ``PluginError`` on a duplicate name."""
        merged: dict[str, type[DurableObject]] = {}
        owner: dict[str, str] = {}
        for plugin_name, bindings in self._bindings_by_plugin().items():
            for binding, object_class in bindings.items():
                if binding in merged:
                    raise PluginError(
                        f"binding {binding!r} is registered by both plugin "
                        f"{owner[binding]!r} and plugin {plugin_name!r}"
                    )
                merged[binding], owner[binding] = object_class, plugin_name
        return merged

    def routes(self, runtime: Runtime) -> list[BaseRoute]:
        """Extra HTTP routes from ``stead_routes``, in plugin registration order."""
        results: list[list[BaseRoute]] = self._pm.hook.stead_routes(runtime=runtime)
        # pluggy calls the last registered plugin first; serve in registration order.
        return [route for routes in reversed(results) for route in routes]

    def extend_cli(self, cli: click.Group) -> None:
        """Let plugins add commands to the ``stead`` click group; ``PluginError``
        naming the plugin if its ``stead_cli`` hook raises."""
        for impl in _implementations(self._pm, "stead_cli"):
            try:
                impl.function(**{name: cli for name in impl.argnames})
            except Exception as exc:
                who = _who(impl.plugin_name, self._origins)
                raise PluginError(f"{who}: stead_cli raised {_describe(exc)}") from exc

    def startup(self, runtime: Runtime) -> None:
        """Run every ``stead_startup`` hook."""
        self._pm.hook.stead_startup(runtime=runtime)

    def shutdown(self, runtime: Runtime) -> None:
        """Run every ``stead_shutdown`` hook."""
        self._pm.hook.stead_shutdown(runtime=runtime)

    def describe(self) -> list[PluginInfo]:
        """Each registered plugin with its distribution, version and bindings."""
        by_plugin = self._bindings_by_plugin()
        infos = []
        for name, _plugin in self._pm.list_name_plugin():
            origin = self._origins.get(name, _Origin(None, None))
            bindings = tuple(sorted(by_plugin.get(name, {})))
            infos.append(PluginInfo(name, origin.distribution, origin.version, bindings))
        return infos

    def _bindings_by_plugin(self) -> dict[str, dict[str, type[DurableObject]]]:
        if self._bindings is None:
            self._bindings = _collect_bindings(self._pm, self._origins)
        return self._bindings


def _collect_bindings(
    manager: pluggy.PluginManager, origins: dict[str, _Origin]
) -> dict[str, dict[str, type[DurableObject]]]:
    # Call each implementation on its own so a binding can be traced to its plugin.
    collected: dict[str, dict[str, type[DurableObject]]] = {}
    for impl in _implementations(manager, "stead_bindings"):
        who = _who(impl.plugin_name, origins)
        try:
            result: Any = impl.function()
        except Exception as exc:
            raise PluginError(f"{who}: stead_bindings raised {_describe(exc)}") from exc
        if not isinstance(result, dict):
            raise PluginError(f"{who}: stead_bindings returned {type(result).__name__}")
        collected[impl.plugin_name] = _checked_bindings(who, result)
    return collected


def _implementations(manager: pluggy.PluginManager, hook_name: str) -> list[HookImpl]:
    """The plain implementations of a hook (no wrappers) in pluggy's call order, to
    call one by one so that an error can be traced to its plugin."""
    impls = getattr(manager.hook, hook_name).get_hookimpls()
    return [impl for impl in reversed(impls) if not (impl.hookwrapper or impl.wrapper)]


def _who(plugin_name: str, origins: dict[str, _Origin]) -> str:
    distribution = origins.get(plugin_name, _Origin(None, None)).distribution
    return f"plugin {plugin_name!r}" + (f" (from {distribution})" if distribution else "")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _checked_bindings(who: str, bindings: dict[Any, Any]) -> dict[str, type[DurableObject]]:
    """The plugin's bindings, checked here so the error names the plugin (a bad
    binding found later, by the runtime, could belong to any plugin)."""
    from stead.objects import DurableObject

    for binding, cls in bindings.items():
        if not isinstance(binding, str) or not binding or "/" in binding:
            raise PluginError(
                f"{who}: stead_bindings returned the binding name {binding!r}; "
                "binding names are non-empty strings without '/'"
            )
        if not (isinstance(cls, type) and issubclass(cls, DurableObject)):
            raise PluginError(
                f"{who}: binding {binding!r} must be a stead.DurableObject subclass, not {cls!r}"
            )
    return dict(bindings)


def _load_entry_points(manager: pluggy.PluginManager, origins: dict[str, _Origin]) -> None:
    for entry_point in importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME):
        name, origin = entry_point.name, _origin(entry_point)
        if manager.is_blocked(name):
            continue
        holder = origins.get(name) if manager.get_plugin(name) is not None else None
        if holder is not None and holder.distribution is not None:
            _check_same_distribution(name, holder.distribution, origin.distribution)
            continue  # the same distribution seen twice on sys.path
        plugin = _load(entry_point, origin.distribution)
        registered = manager.get_name(plugin)
        if registered is not None:
            # Also passed as Plugins.load(extra=[...]), as a plugin's author does to
            # test it while it is installed: load it once, and now we know its origin.
            origins[registered] = origin
            continue
        if holder is not None:  # an extra plugin of that name, another object
            _check_same_distribution(name, None, origin.distribution)
        _register(manager, plugin, name, _who(name, {name: origin}))
        origins[name] = origin
        logger.debug("loaded plugin %s from %s", name, origin.distribution)


def _origin(entry_point: importlib.metadata.EntryPoint) -> _Origin:
    dist = entry_point.dist
    return _Origin(None, None) if dist is None else _Origin(dist.metadata["Name"], dist.version)


def _load(entry_point: importlib.metadata.EntryPoint, distribution: str | None) -> object:
    try:
        return entry_point.load()
    except Exception as exc:
        raise PluginError(
            f"plugin {entry_point.name!r} (from {distribution or 'an unknown distribution'}) "
            f"failed to import {entry_point.value!r}: {exc}"
        ) from exc


def _register(
    manager: pluggy.PluginManager, plugin: object, name: str | None, who: str
) -> str | None:
    """``manager.register`` with its refusals as ``PluginError``: a hook whose
    arguments are not the hookspec's, or a plugin (or name) registered twice."""
    try:
        return manager.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        reason = "; ".join(line.strip() for line in str(exc).splitlines())  # one line for the CLI
        raise PluginError(f"{who} cannot be registered: {reason}") from exc


def _check_pending(manager: pluggy.PluginManager, origins: dict[str, _Origin]) -> None:
    """``check_pending()``, as a ``PluginError`` naming the plugin: a hook
    implementation whose name matches no hook (a typo such as ``stead_binding``)."""
    hooks = sorted(name for name in dir(hookspecs) if name.startswith("stead_"))
    for hook_name, caller in vars(manager.hook).items():
        if hook_name.startswith("_") or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if not impl.optionalhook:
                raise PluginError(
                    f"{_who(impl.plugin_name, origins)} implements {hook_name!r}, which is "
                    f"no stead hook (the hooks are {', '.join(hooks)})"
                )
    try:  # pluggy's own check, should it ever refuse more than the loop above
        manager.check_pending()
    except pluggy.PluginValidationError as exc:
        name = manager.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(f"{_who(name, origins)}: {exc}") from exc


def _check_same_distribution(name: str, registered: str | None, found: str | None) -> None:
    """A plugin name seen again is fine from the same distribution (listed twice on
    sys.path); from another one, skipping it would silently drop its bindings."""
    if registered is not None and found is not None and _normalize(registered) == _normalize(found):
        return
    raise PluginError(
        f"plugin name {name!r} is used by two distributions: {registered or 'unknown'} and "
        f"{found or 'unknown'}; rename one's entry point in group {hookspecs.PROJECT_NAME!r}"
    )


def _normalize(distribution: str) -> str:
    # PEP 503: "Stead_Patterns", "stead.patterns" and "stead-patterns" are one project.
    return re.sub(r"[-_.]+", "-", distribution).lower()
