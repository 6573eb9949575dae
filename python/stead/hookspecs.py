"""The plugin hooks of stead (pluggy project ``"stead"``, entry point group ``"stead"``).

Every hook a plugin can implement is declared here, prefixed ``stead_``.
Plugins mark their implementations with :data:`hookimpl` (re-exported as
``stead.hookimpl``) and are called through the typed facade in
:mod:`stead.plugins`, never through ``pm.hook`` directly. docs/plugins.md
documents every hook; a test fails when one is missing there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click
    from starlette.routing import BaseRoute

    from stead.objects import DurableObject
    from stead.runtime import Runtime

__all__ = [
    "PROJECT_NAME",
    "hookimpl",
    "hookspec",
    "stead_bindings",
    "stead_cli",
    "stead_routes",
    "stead_shutdown",
    "stead_startup",
]

#: The pluggy project name and the entry point group plugins register under.
PROJECT_NAME = "stead"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks a plugin's hook implementation: ``@stead.hookimpl def stead_bindings(): ...``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def stead_bindings() -> dict[str, type[DurableObject]]:
    """Return the durable object classes this plugin provides, by binding name.

    ``Runtime(plugins=True)`` and ``stead serve`` without a TARGET install every
    binding that plugins return here. Two plugins returning the same binding
    name is an error (the runtime refuses to guess which one to serve).

    :return: binding name (non-empty, no ``/``) -> ``DurableObject`` subclass.
    """
    raise NotImplementedError


@hookspec
def stead_routes(runtime: Runtime) -> list[BaseRoute]:
    """Return extra Starlette routes to mount in the HTTP app.

    Called once by ``stead.http.create_app``; the routes are added after the
    built-in ones, so they cannot shadow ``/objects/...``, ``/healthz``,
    ``/metrics`` or ``/openapi.json``. They sit behind the same bearer-token
    check and body limit as the built-in routes.

    :param runtime: the runtime the app serves (started before requests arrive);
        use it to reach objects, e.g. ``runtime.namespace("COUNTER")``.
    :return: Starlette routes (``Route``, ``Mount``, ...).
    """
    raise NotImplementedError


@hookspec
def stead_cli(cli: click.Group) -> None:
    """Add commands (or groups) to the ``stead`` command line.

    :param cli: the top-level ``stead`` click group; call ``cli.add_command``.
    """


@hookspec
def stead_startup(runtime: Runtime) -> None:
    """Called once when a runtime with ``plugins=True`` has started.

    Storage is open and alarms are loaded; objects can be called. Keep it
    quick: it runs on the event loop before the runtime is returned.

    :param runtime: the runtime that just started.
    """


@hookspec
def stead_shutdown(runtime: Runtime) -> None:
    """Called once when a runtime with ``plugins=True`` begins to close.

    Objects can still be called; pending work is drained after this returns.

    :param runtime: the runtime that is closing.
    """
