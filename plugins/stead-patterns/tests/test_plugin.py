"""The distribution: one entry point per pattern (group ``stead``), each a ``stead_bindings``."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points

import httpx
import pytest

import stead
import stead_patterns
from stead.plugins import Plugins

CATALOG_BINDINGS = {
    "RATE_LIMITER",
    "SESSION_MANAGER",
    "FEATURE_FLAGS",
    "COUNTER",
    "LEADER_ELECTION",
    "CACHE_COORDINATOR",
    "WORKFLOW_CHECKPOINT",
    "RAW_COUNTER",
    "SERVER_COUNTER",
    "RPC_COUNTER",
    "AGENT_COUNTER",
    "STORAGE_SIDECAR",
    "BUDGET_GOVERNOR",
    "ENRICHMENT_CONTROLLER",
    "BRAND_AGENT",
}


def test_one_entry_point_per_pattern_each_providing_one_binding() -> None:
    points = [ep for ep in entry_points(group="stead") if ep.value.startswith("stead_patterns.")]
    assert len(points) == len(CATALOG_BINDINGS)
    provided: dict[str, type[stead.DurableObject]] = {}
    for point in points:
        module = point.load()
        bindings = module.stead_bindings()
        assert len(bindings) == 1, point.name
        provided.update(bindings)
    assert provided == stead_patterns.bindings()
    assert set(provided) == CATALOG_BINDINGS


def test_every_module_has_all() -> None:
    for name in (
        "stead_patterns",
        *(f"stead_patterns.{point.name}" for point in entry_points(group="stead")),
    ):
        module = import_module(name)
        assert sorted(module.__all__) == sorted(set(module.__all__))
        for public in module.__all__:
            assert hasattr(module, public), f"{name}.{public}"


def test_the_plugin_manager_finds_every_binding() -> None:
    bindings = Plugins.load(autoload=True).bindings()
    for binding, cls in stead_patterns.bindings().items():
        assert bindings[binding] is cls


@pytest.mark.anyio
async def test_runtime_with_plugins_serves_the_catalog() -> None:
    async with stead.Runtime(plugins=True, data_dir=None) as runtime:
        assert set(runtime.bindings) >= CATALOG_BINDINGS
        counter = runtime.env.RPC_COUNTER.get_by_name("x")
        assert await counter.increment() == 1


@pytest.mark.anyio
async def test_stead_testing_fixtures_serve_the_installed_patterns(
    stead_client: httpx.AsyncClient,
) -> None:
    # What a plugin author gets from `stead.testing`: installed plugins, over HTTP, in process.
    path = "/objects/RATE_LIMITER/k/fetch/check?limit=1&window=60000"
    assert (await stead_client.get(path)).status_code == 200
    denied = await stead_client.get(path)
    assert denied.status_code == 429
    assert denied.headers["Retry-After"] == "60"
