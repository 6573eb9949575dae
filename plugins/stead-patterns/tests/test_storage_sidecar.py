"""STORAGE_SIDECAR: the catalog's method-routed key-value API and its RPC variant."""

from __future__ import annotations

import pytest
from patterns_harness import Patterns

pytestmark = pytest.mark.anyio

B = "STORAGE_SIDECAR"


async def test_put_get_append_delete(patterns: Patterns) -> None:
    status = {"phase": "started", "startedAt": 1}
    put = await patterns.fetch(B, "entity-1", "/?key=status", method="PUT", json=status)
    assert put.json() == {"key": "status", "written": True}
    got = await patterns.fetch(B, "entity-1", "/?key=status")
    assert got.json() == {"key": "status", "value": status}

    for n, source in enumerate(["a", "b"], start=1):
        item = {"source": source, "data": [1, 2]}
        appended = await patterns.fetch(B, "entity-1", "/?key=rawData", method="POST", json=item)
        assert appended.json() == {"key": "rawData", "length": n}
    everything = (await patterns.fetch(B, "entity-1", "/")).json()
    assert everything == {
        "rawData": [{"source": "a", "data": [1, 2]}, {"source": "b", "data": [1, 2]}],
        "status": status,
    }

    deleted = await patterns.fetch(B, "entity-1", "/?key=status", method="DELETE")
    assert deleted.json() == {"key": "status", "deleted": True}
    missing = await patterns.fetch(B, "entity-1", "/?key=status")
    assert (missing.status, missing.body) == (404, b"")
    cleared = await patterns.fetch(B, "entity-1", "/", method="DELETE")
    assert cleared.json() == {"cleared": True}
    assert (await patterns.fetch(B, "entity-1", "/")).json() == {}
    assert await patterns.names(B) == []


async def test_falsy_values_are_found(patterns: Patterns) -> None:
    await patterns.fetch(B, "e", "/?key=n", method="PUT", json=0)
    await patterns.fetch(B, "e", "/?key=z", method="PUT", body=b"null")
    assert (await patterns.fetch(B, "e", "/?key=n")).json() == {"key": "n", "value": 0}
    assert (await patterns.fetch(B, "e", "/?key=z")).json() == {"key": "z", "value": None}


async def test_errors(patterns: Patterns) -> None:
    for method in ("PUT", "POST"):
        reply = await patterns.fetch(B, "e", "/", method=method, json=1)
        assert (reply.status, reply.text()) == (400, "Missing key parameter")
    assert (await patterns.fetch(B, "e", "/?key=k", method="PATCH")).status == 405
    assert (await patterns.fetch(B, "e", "/?key=k", method="PUT", body=b"{")).status == 400
    await patterns.fetch(B, "e", "/?key=k", method="PUT", json={"not": "a list"})
    not_array = await patterns.fetch(B, "e", "/?key=k", method="POST", json=1)
    assert not_array.status == 400
    too_long = await patterns.fetch(B, "e", "/?key=" + "k" * 3000, method="PUT", json=1)
    assert too_long.status == 400
    assert (await patterns.fetch(B, "e", "/")).json() == {"k": {"not": "a list"}}


async def test_rpc_variant(patterns: Patterns) -> None:
    assert await patterns.rpc(B, "e", "set", "k", {"foo": "bar"}) is None
    assert await patterns.rpc(B, "e", "get", "k") == {"foo": "bar"}
    assert await patterns.rpc(B, "e", "append", "list", 1) == 1
    assert await patterns.rpc(B, "e", "append", "list", 2) == 2
    assert await patterns.rpc(B, "e", "get", "list") == [1, 2]
    assert await patterns.rpc(B, "e", "clear") is None
    assert await patterns.rpc(B, "e", "get", "k") is None


async def test_rpc_append_to_a_non_array_is_a_type_error(patterns: Patterns) -> None:
    # As the catalog's RPC variant throws; the HTTP frontend answers every exception a
    # method raises with 500 (docs/http.md), where fetch's POST answers 400.
    assert await patterns.rpc(B, "e", "set", "k", {"not": "a list"}) is None
    if patterns.via == "inprocess":
        stub = patterns.runtime.namespace(B).get_by_name("e")
        with pytest.raises(TypeError, match="is not an array"):
            await stub.append("k", 1)
    else:
        reply = await patterns.client.post(f"/objects/{B}/e/rpc/append", json={"args": ["k", 1]})
        assert reply.status_code == 500
        assert reply.json()["error"]["type"] == "TypeError"
    assert await patterns.rpc(B, "e", "get", "k") == {"not": "a list"}


async def test_state_survives_a_restart(patterns: Patterns) -> None:
    await patterns.fetch(B, "e", "/?key=rawData", method="POST", json={"x": 1})
    await patterns.restart()
    assert (await patterns.fetch(B, "e", "/?key=rawData")).json()["value"] == [{"x": 1}]
