"""The test harness: the catalog bindings in a real runtime, reached in-process or over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
import uvicorn
from starlette.types import ASGIApp

import stead
import stead_patterns

VIAS = ("inprocess", "http")


@dataclass
class Reply:
    """A response, whichever way it came."""

    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode()


class Patterns:
    """A started runtime serving the catalog bindings (or ``objects``), reached ``via`` one way."""

    def __init__(
        self,
        data_dir: Path,
        via: str,
        objects: Mapping[str, type[stead.DurableObject]] | None = None,
        vars: Mapping[str, str] | None = None,
        max_value_bytes: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.via = via
        self.objects = dict(objects or stead_patterns.bindings())
        self.vars = dict(vars or {})
        #: The runtime's value limit (stead's 2 MiB when ``None``): a small one lets a
        #: test go over it with a request body under the HTTP frontend's body limit.
        self.max_value_bytes = max_value_bytes
        self._runtime: stead.Runtime | None = None
        self._client: httpx.AsyncClient | None = None

    @property
    def runtime(self) -> stead.Runtime:
        assert self._runtime is not None, "not started"
        return self._runtime

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client (``via == "http"`` only)."""
        assert self._client is not None, "not reached over HTTP"
        return self._client

    async def start(self) -> Patterns:
        options: dict[str, Any] = {"durability": "os", "vars": self.vars}
        if self.max_value_bytes is not None:
            options["max_value_bytes"] = self.max_value_bytes
        runtime = stead.Runtime(self.objects, data_dir=str(self.data_dir), **options)
        self._runtime = await runtime.start()
        if self.via == "http":
            from stead.http import create_app

            transport = httpx.ASGITransport(app=create_app(runtime, token=""))
            self._client = httpx.AsyncClient(transport=transport, base_url="http://stead")
        return self

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._runtime is not None:
            await self._runtime.close()
            self._runtime = None

    async def restart(self) -> None:
        """Close the runtime and open a new one on the same data dir."""
        await self.close()
        await self.start()

    async def fetch(
        self,
        binding: str,
        name: str,
        path: str,
        *,
        method: str = "GET",
        json: Any = None,
        body: bytes | None = None,
    ) -> Reply:
        """Send a request to the object's ``fetch`` (``path`` may carry a query)."""
        if self._client is None:
            stub = self.runtime.namespace(binding).get_by_name(name)
            answer = await stub.fetch(path, method=method, json=json, body=body)
            return Reply(answer.status, dict(answer.headers), answer.body)
        url = f"/objects/{binding}/{name}/fetch{path}"
        response = await self._client.request(method, url, json=json, content=body)
        headers = {key.lower(): value for key, value in response.headers.items()}
        return Reply(response.status_code, headers, response.content)

    async def post(self, binding: str, name: str, path: str, body: Any = None) -> Reply:
        """``POST`` a JSON body (the catalog's routes take JSON bodies)."""
        return await self.fetch(binding, name, path, method="POST", json=body)

    async def rpc(self, binding: str, name: str, method: str, *args: Any) -> Any:
        """Call an RPC method; its result as JSON-compatible data."""
        if self._client is None:
            stub = self.runtime.namespace(binding).get_by_name(name)
            result = await stead.stub.invoke(stub, method, args, {})
            return json.loads(msgspec.json.encode(result))
        url = f"/objects/{binding}/{name}/rpc/{method}"
        response = await self._client.post(url, json={"args": list(args)})
        assert response.status_code == 200, response.text
        return response.json()["result"]

    async def names(self, binding: str) -> list[str]:
        """The names of the objects of ``binding`` that have storage."""
        if self._client is None:
            ids = await self.runtime.namespace(binding).list_ids()
            return [object_id.name or "" for object_id in ids]
        response = await self._client.get(f"/objects/{binding}")
        assert response.status_code == 200, response.text
        return [entry["name"] for entry in response.json()["ids"]]


MakePatterns = Callable[..., Awaitable[Patterns]]


async def eventually(
    probe: Callable[[], Awaitable[bool]], *, within: float = 10.0, interval: float = 0.05
) -> float:
    """Poll ``probe`` until it is true; the seconds it took (fails after ``within`` s)."""
    started = time.monotonic()
    while not await probe():
        if time.monotonic() - started > within:
            pytest.fail(f"condition not reached within {within} s")
        await anyio.sleep(interval)
    return time.monotonic() - started


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free local port; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # raises why it could not start
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
