"""A pytest plugin for plugin authors (entry point ``pytest11: stead``).

Fixtures, for tests marked ``@pytest.mark.anyio`` (stead runs on asyncio; a test
marked ``@pytest.mark.asyncio`` for pytest-asyncio fails with a message saying so,
as pytest-asyncio would run it on another event loop than the runtime's):

- ``stead_runtime_options``: keyword arguments for the runtime; override it in
  your ``conftest.py`` (default: installed plugins, data in ``tmp_path``,
  durability ``"none"``).
- ``stead_runtime``: a started :class:`stead.Runtime`, closed after the test.
- ``stead_app``: ``stead.http.create_app(stead_runtime)`` (needs the ``server`` extra).
- ``stead_client``: an ``httpx.AsyncClient`` calling ``stead_app`` in process.

This module is imported by every pytest run where stead is installed, so it
imports nothing heavy at import time: the runtime, Starlette and httpx are
imported inside the fixtures.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import httpx
    from starlette.applications import Starlette

    from stead.runtime import Runtime

__all__ = ["BASE_URL", "stead_app", "stead_client", "stead_runtime", "stead_runtime_options"]

#: Where ``stead_client`` sends requests (nothing listens: the app is called in process).
BASE_URL = "http://stead.test"


@pytest.fixture
def stead_runtime_options(tmp_path: Path) -> dict[str, Any]:
    """Keyword arguments for ``stead.Runtime`` in ``stead_runtime``; override to change them.

    For example, to test classes that are not installed as a plugin::

        @pytest.fixture
        def stead_runtime_options():
            return {"objects": {"COUNTER": Counter}, "durability": "none"}
    """
    return {"plugins": True, "data_dir": str(tmp_path / "stead-data"), "durability": "none"}


#: Why a test marked for pytest-asyncio cannot use the fixtures (they are anyio's).
_ASYNCIO_MARKER_MESSAGE = (
    "stead's fixtures need tests marked @pytest.mark.anyio, not @pytest.mark.asyncio: "
    "anyio's plugin starts the runtime on its event loop, and pytest-asyncio runs the test "
    "on another one, where the runtime's objects cannot be called"
)

_ASYNCIO_AUTO_MODE_MESSAGE = (
    "stead's fixtures need tests run by anyio (@pytest.mark.anyio), but pytest-asyncio's "
    "asyncio_mode = auto runs every async test on an event loop of its own: set "
    "asyncio_mode = strict (pytest-asyncio's default) and mark stead's tests @pytest.mark.anyio"
)


@pytest.fixture
async def stead_runtime(
    stead_runtime_options: dict[str, Any], anyio_backend_name: str, request: pytest.FixtureRequest
) -> AsyncIterator[Runtime]:
    """A started runtime built from ``stead_runtime_options``; closed after the test."""
    _refuse_pytest_asyncio(request)
    if anyio_backend_name != "asyncio":
        pytest.skip("stead runs on asyncio only")
    from stead.runtime import Runtime

    async with Runtime(**stead_runtime_options) as runtime:
        yield runtime


@pytest.fixture
def stead_app(stead_runtime: Runtime) -> Starlette:
    """The HTTP app serving ``stead_runtime`` (no token, default body limit)."""
    from stead.http import create_app

    return create_app(stead_runtime, token="")


@pytest.fixture
async def stead_client(stead_app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` whose requests go to ``stead_app`` in process."""
    import httpx

    transport = httpx.ASGITransport(app=stead_app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
        yield client


def _refuse_pytest_asyncio(request: pytest.FixtureRequest) -> None:
    """Fail a test that pytest-asyncio runs with the fix, instead of a confusing
    "another event loop" error later."""
    node = request.node
    if _asyncio_auto_mode(request.config) and inspect.iscoroutinefunction(
        getattr(node, "obj", None)
    ):
        pytest.fail(_ASYNCIO_AUTO_MODE_MESSAGE, pytrace=False)
    if node.get_closest_marker("asyncio") is not None and node.get_closest_marker("anyio") is None:
        pytest.fail(_ASYNCIO_MARKER_MESSAGE, pytrace=False)


def _asyncio_auto_mode(config: pytest.Config) -> bool:
    """Whether pytest-asyncio (if installed) runs every async test itself."""
    try:
        mode: object = config.getoption("asyncio_mode", None) or config.getini("asyncio_mode")
    except ValueError:  # no pytest-asyncio: its setting is unknown
        return False
    return mode == "auto"
