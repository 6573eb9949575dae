"""Fixtures: the catalog bindings in a real runtime, reached in-process or over HTTP.

Every behaviour test takes ``patterns`` (or ``make_patterns``), which runs it
twice: once through ``Stub.fetch``/RPC in the same process, once through the
HTTP app (``stead.http.create_app`` over ``httpx.ASGITransport``) with the
``/objects/{binding}/{name}/fetch/{path}`` and ``/rpc/{method}`` routes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from patterns_harness import VIAS, MakePatterns, Patterns

import stead


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=VIAS)
async def patterns(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Patterns]:
    """The catalog bindings, reached in-process and (second run) over HTTP."""
    harness = await Patterns(tmp_path / "data", request.param).start()
    try:
        yield harness
    finally:
        await harness.close()


@pytest.fixture(params=VIAS)
async def make_patterns(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MakePatterns]:
    """A factory for a harness with custom ``objects``, ``vars`` and ``max_value_bytes``."""
    made: list[Patterns] = []

    async def make(
        objects: Mapping[str, type[stead.DurableObject]] | None = None,
        vars: Mapping[str, str] | None = None,
        max_value_bytes: int | None = None,
    ) -> Patterns:
        data_dir = tmp_path / f"data{len(made)}"
        harness = Patterns(data_dir, request.param, objects, vars, max_value_bytes)
        made.append(harness)
        return await harness.start()

    try:
        yield make
    finally:
        for harness in made:
            await harness.close()
