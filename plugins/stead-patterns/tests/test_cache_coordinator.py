"""CACHE_COORDINATOR: register/invalidate/invalidate-tag against a real purge server."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from patterns_harness import MakePatterns, Patterns, serving
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

pytestmark = pytest.mark.anyio

B = "CACHE_COORDINATOR"


class PurgeServer:
    """A real HTTP server recording the purge calls it receives; the stores in ``down``
    (``broken``) answer 500."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.down = {"broken"}
        self.app = Starlette(routes=[Route("/{store}/purge", self._purge, methods=["POST"])])
        self.base = ""

    async def _purge(self, request: Request) -> JSONResponse:
        store = request.path_params["store"]
        self.calls.append((store, await request.json()))
        if store in self.down:
            return JSONResponse({"error": "down"}, status_code=500)
        return JSONResponse({"purged": True})

    def purged(self, store: str) -> list[str]:
        return [key for called, body in self.calls if called == store for key in body["keys"]]


@pytest.fixture
async def purge_server() -> AsyncIterator[PurgeServer]:
    server = PurgeServer()
    async with serving(server.app) as base:
        server.base = base
        yield server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def register(patterns: Patterns, key: str, store: str, tags: list[str]) -> None:
    body = {"key": key, "store": store, "tags": tags}
    assert (await patterns.post(B, "cdn", "/register", body)).json() == {"registered": True}


async def test_invalidate_purges_every_store(
    make_patterns: MakePatterns, purge_server: PurgeServer
) -> None:
    patterns = await make_patterns(vars={"CACHE_PURGE_BASE": purge_server.base + "/"})
    await register(patterns, "/products/1", "kv-eu", ["products"])
    await register(patterns, "/products/1", "kv-us", ["products"])
    await register(patterns, "/products/1", "kv-us", ["products"])  # idempotent
    reply = await patterns.post(B, "cdn", "/invalidate", {"key": "/products/1"})
    assert reply.status == 200
    assert reply.json() == {"invalidated": True, "stores": ["kv-eu", "kv-us"], "failed": []}
    assert purge_server.purged("kv-eu") == ["/products/1"]
    assert purge_server.purged("kv-us") == ["/products/1"]
    # Purged stores are forgotten, so a second invalidation has nothing to do.
    again = await patterns.post(B, "cdn", "/invalidate", {"key": "/products/1"})
    assert again.json()["stores"] == []
    assert len(purge_server.calls) == 2
    entry = await patterns.rpc(B, "cdn", "get_entry", "/products/1")
    assert entry["stores"] == [] and entry["tags"] == ["products"]
    assert entry["invalidatedAt"] > 0


async def test_invalidate_tag(make_patterns: MakePatterns, purge_server: PurgeServer) -> None:
    patterns = await make_patterns(vars={"CACHE_PURGE_BASE": purge_server.base})
    await register(patterns, "a", "s1", ["t"])
    await register(patterns, "b", "s1", ["t", "u"])
    await register(patterns, "b", "s2", [])
    await register(patterns, "c", "s2", ["u"])
    reply = await patterns.post(B, "cdn", "/invalidate-tag", {"tag": "t"})
    assert reply.json() == {
        "invalidated": True,
        "tag": "t",
        "keysInvalidated": 2,
        "details": {"a": ["s1"], "b": ["s1", "s2"]},
        "failed": {},
    }
    assert sorted(purge_server.purged("s1")) == ["a", "b"]
    assert purge_server.purged("s2") == ["b"]
    # The tag mapping is cleaned up; other tags are untouched.
    empty = await patterns.post(B, "cdn", "/invalidate-tag", {"tag": "t"})
    assert empty.json()["keysInvalidated"] == 0
    other = await patterns.post(B, "cdn", "/invalidate-tag", {"tag": "u"})
    assert other.json()["details"] == {"b": [], "c": ["s2"]}


async def test_failed_purge_is_recorded_and_retried(
    make_patterns: MakePatterns, purge_server: PurgeServer
) -> None:
    patterns = await make_patterns(vars={"CACHE_PURGE_BASE": purge_server.base})
    await register(patterns, "k", "ok", [])
    await register(patterns, "k", "broken", [])
    reply = await patterns.post(B, "cdn", "/invalidate", {"key": "k"})
    assert reply.status == 200
    assert reply.json() == {"invalidated": True, "stores": ["ok"], "failed": ["broken"]}
    entry = await patterns.rpc(B, "cdn", "get_entry", "k")
    assert entry["stores"] == ["broken"]
    assert [(f["store"], f["error"]) for f in entry["failures"]] == [("broken", "HTTP 500")]
    retried = await patterns.post(B, "cdn", "/invalidate", {"key": "k"})
    assert retried.json()["failed"] == ["broken"]
    assert purge_server.purged("broken") == ["k", "k"]
    assert len((await patterns.rpc(B, "cdn", "get_entry", "k"))["failures"]) == 2


async def test_invalidating_a_tag_again_retries_its_failed_purges(
    make_patterns: MakePatterns, purge_server: PurgeServer
) -> None:
    patterns = await make_patterns(vars={"CACHE_PURGE_BASE": purge_server.base})
    await register(patterns, "product:1", "edge-us", ["product"])
    await register(patterns, "product:1", "edge-eu", ["product"])
    await register(patterns, "product:2", "edge-us", ["product"])
    purge_server.down = {"edge-eu"}
    first = (await patterns.post(B, "cdn", "/invalidate-tag", {"tag": "product"})).json()
    assert first["details"] == {"product:1": ["edge-us"], "product:2": ["edge-us"]}
    assert first["failed"] == {"product:1": ["edge-eu"]}
    purge_server.down = set()  # the store is back
    second = await patterns.post(B, "cdn", "/invalidate-tag", {"tag": "product"})
    assert second.json() == {
        "invalidated": True,
        "tag": "product",
        "keysInvalidated": 1,
        "details": {"product:1": ["edge-eu"]},
        "failed": {},
    }
    assert purge_server.purged("edge-eu") == ["product:1", "product:1"]
    done = await patterns.post(B, "cdn", "/invalidate-tag", {"tag": "product"})
    assert done.json()["keysInvalidated"] == 0  # nothing left to purge: the tag is gone


async def test_unreachable_purge_base_is_not_fatal(make_patterns: MakePatterns) -> None:
    base = f"http://127.0.0.1:{closed_port()}"
    patterns = await make_patterns(vars={"CACHE_PURGE_BASE": base})
    await register(patterns, "k", "s", ["t"])
    reply = await patterns.post(B, "cdn", "/invalidate-tag", {"tag": "t"})
    assert reply.status == 200
    assert reply.json()["details"] == {"k": []}
    assert reply.json()["failed"] == {"k": ["s"]}
    entry = await patterns.rpc(B, "cdn", "get_entry", "k")
    assert entry["failures"][0]["error"].startswith("ConnectError")


async def test_missing_purge_base_is_recorded(patterns: Patterns) -> None:
    await register(patterns, "k", "s", [])
    reply = await patterns.post(B, "cdn", "/invalidate", {"key": "k"})
    assert reply.json() == {"invalidated": True, "stores": [], "failed": ["s"]}
    entry = await patterns.rpc(B, "cdn", "get_entry", "k")
    assert entry["failures"][0]["error"] == "CACHE_PURGE_BASE is not set"


async def test_unknown_key_invalidates_nothing(patterns: Patterns) -> None:
    reply = await patterns.post(B, "cdn", "/invalidate", {"key": "nope"})
    assert reply.json() == {"invalidated": True, "stores": [], "failed": []}
    assert await patterns.rpc(B, "cdn", "get_entry", "nope") is None


async def test_registrations_survive_a_restart(patterns: Patterns) -> None:
    await register(patterns, "k", "s", ["t"])
    await patterns.restart()
    entry = await patterns.rpc(B, "cdn", "get_entry", "k")
    assert (entry["key"], entry["stores"], entry["tags"]) == ("k", ["s"], ["t"])


@pytest.mark.parametrize(
    ("path", "body"),
    [("/register", {"key": "k"}), ("/invalidate", {}), ("/invalidate-tag", {"tag": 1})],
)
async def test_bad_bodies_are_400(patterns: Patterns, path: str, body: Any) -> None:
    assert (await patterns.post(B, "cdn", path, body)).status == 400


async def test_over_long_names_are_400_and_write_nothing(patterns: Patterns) -> None:
    body = {"key": "k", "store": "s", "tags": ["ok", "t" * 600]}
    assert (await patterns.post(B, "cdn", "/register", body)).status == 400
    assert await patterns.rpc(B, "cdn", "get_entry", "k") is None
    assert (await patterns.post(B, "cdn", "/invalidate", {"key": "k" * 600})).status == 400
