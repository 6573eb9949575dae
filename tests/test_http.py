"""The HTTP frontend against the real runtime: every route, status code and error shape."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

import stead
from stead.http import create_app
from stead.plugins import Plugins
from tests._apps.counter import INVALID_RESPONSES, Counter, Faulty, Plain

pytestmark = pytest.mark.anyio

BASE = "http://test"


@pytest.fixture
def stead_runtime_options(data_dir: str) -> dict[str, Any]:
    return {
        "objects": {"COUNTER": Counter, "PLAIN": Plain, "FAULTY": Faulty},
        "data_dir": data_dir,
        "durability": "os",
    }


@pytest.fixture
def client(stead_client: httpx.AsyncClient) -> httpx.AsyncClient:
    return stead_client


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
    assert "Traceback" not in response.text
    return response.status_code, body["error"]["type"]


async def rpc(client: httpx.AsyncClient, method: str, name: str = "a", **body: Any) -> Any:
    response = await client.post(f"/objects/COUNTER/{name}/rpc/{method}", json=body or None)
    assert response.status_code == 200, response.text
    return response.json()["result"]


# -- RPC ---------------------------------------------------------------------


async def test_rpc_calls_a_method_and_persists(client: httpx.AsyncClient) -> None:
    assert await rpc(client, "increment") == 1
    assert await rpc(client, "increment", args=[5]) == 6
    assert await rpc(client, "increment", kwargs={"by": 10}) == 16
    assert await rpc(client, "get") == 16
    assert await rpc(client, "get", name="other") == 0


async def test_rpc_accepts_an_empty_body(client: httpx.AsyncClient) -> None:
    response = await client.post("/objects/COUNTER/a/rpc/increment", content=b"")
    assert response.status_code == 200
    assert response.json() == {"result": 1}
    assert response.headers["content-type"] == "application/json"


async def test_rpc_converts_arguments_by_type_hint(client: httpx.AsyncClient) -> None:
    assert await rpc(client, "weekday", args=["2024-01-01T12:00:00Z"]) == "Monday"
    assert await rpc(client, "shift", args=[{"x": 1, "y": 2}], kwargs={"dx": 3}) == {"x": 4, "y": 2}
    assert await rpc(client, "label", args=["hi"], kwargs={"upper": True}) == "HI"
    result = await rpc(client, "pick", args=["a", 1, 2], kwargs={"z": 1})
    assert result == {"mode": "a", "rest": [1, 2], "extra": {"z": 1.0}}
    assert await rpc(client, "echo", args=[{"nested": [1, "x", None]}]) == {
        "nested": [1, "x", None]
    }


async def test_rpc_converts_json_object_keys_to_int_keys(client: httpx.AsyncClient) -> None:
    # JSON object keys are strings; a dict[int, str] parameter gets ints (sorted as numbers).
    ranks = {"10": "ten", "2": "two", "1": "one"}
    assert await rpc(client, "by_rank", args=[ranks]) == ["one", "two", "ten"]


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("increment", {"args": ["one"]}),
        ("increment", {"args": [True]}),
        ("increment", {"kwargs": {"by": 1.5}}),
        ("increment", {"args": [1, 2]}),
        ("increment", {"kwargs": {"nope": 1}}),
        ("increment", {"args": [1], "kwargs": {"by": 1}}),
        ("label", {}),
        ("label", {"args": ["x", True]}),
        ("weekday", {"args": ["not a date"]}),
        ("shift", {"args": [{"x": 1}]}),
        ("shift", {"args": [{"x": 1, "y": 2}, -1]}),
        ("pick", {"args": ["c"]}),
        ("pick", {"args": ["a", "x"]}),
        ("echo", {"args": [2**70]}),
        ("by_rank", {"args": [{"first": "x"}]}),
        ("increment", {"args": {"by": 1}}),
        ("increment", {"kwargs": [1]}),
        ("increment", {"extra": 1}),
        ("increment", [1]),
    ],
)
async def test_bad_arguments_are_400(
    client: httpx.AsyncClient, method: str, body: dict[str, Any]
) -> None:
    response = await client.post(f"/objects/COUNTER/a/rpc/{method}", json=body)
    assert error_of(response) == (400, "InvalidArguments")


@pytest.mark.parametrize("raw", [b"{", b"not json", b"\xff\xfe", b'{"args": [1,]}', b"null"])
async def test_malformed_json_is_400(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post("/objects/COUNTER/a/rpc/increment", content=raw)
    assert response.status_code == 400
    assert error_of(response)[1] in {"MalformedJSON", "InvalidArguments"}


async def test_deeply_nested_json_is_400(client: httpx.AsyncClient) -> None:
    # 200 KB: too deep for every supported Python (3.13 decodes 1,000 levels fine).
    deep = b'{"args": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    response = await client.post("/objects/COUNTER/a/rpc/echo", content=deep)
    assert error_of(response) == (400, "MalformedJSON")
    nested: list[Any] = []
    for _ in range(50):
        nested = [nested]
    assert await rpc(client, "echo", args=[nested]) == nested  # reasonable nesting still works


async def test_unknown_binding_and_method_are_404(client: httpx.AsyncClient) -> None:
    cases = {
        "/objects/NOPE/a/rpc/increment": "UnknownBindingError",
        "/objects/COUNTER/a/rpc/nope": "UnknownMethodError",
        "/objects/COUNTER/a/rpc/_private": "UnknownMethodError",
        "/objects/COUNTER/a/rpc/fetch": "UnknownMethodError",
        "/objects/COUNTER/a/rpc/alarm": "UnknownMethodError",
        "/objects/COUNTER/a/rpc/on_start": "UnknownMethodError",
        "/objects/COUNTER/a/nope/x": "NotFound",
        "/nowhere": "NotFound",
    }
    for path, type_name in cases.items():
        assert error_of(await client.post(path)) == (404, type_name), path


async def test_invalid_names_are_400(client: httpx.AsyncClient) -> None:
    too_long = "x" * 2049
    for path in ("/objects/COUNTER//rpc/increment", f"/objects/COUNTER/{too_long}/rpc/increment"):
        assert error_of(await client.post(path)) == (400, "InvalidName")
    assert error_of(await client.get("/objects/COUNTER//fetch/count")) == (400, "InvalidName")
    multibyte = "é" * 1025  # 2050 UTF-8 bytes
    assert error_of(await client.post(f"/objects/COUNTER/{multibyte}/rpc/get")) == (
        400,
        "InvalidName",
    )
    longest = "x" * 2048
    assert await rpc(client, "increment", name=longest) == 1


async def test_names_that_are_not_utf8_are_400_not_one_object(client: httpx.AsyncClient) -> None:
    # %FF and %FE are not UTF-8; decoded leniently both became U+FFFD (%EF%BF%BD,
    # a real name) and reached one object under three names.
    for raw in ("%FF", "%FE", "a%C3"):
        for method, path in (("POST", "rpc/increment"), ("GET", "fetch/count")):
            response = await client.request(method, f"/objects/COUNTER/{raw}/{path}")
            assert error_of(response) == (400, "InvalidName"), (raw, path)
    assert await rpc(client, "increment", name="\ufffd") == 1
    assert await rpc(client, "increment", name="\ufffd") == 2


async def test_wrong_http_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    allowed = {
        ("GET", "/objects/COUNTER/a/rpc/increment"): {"POST"},
        ("PUT", "/objects/COUNTER/a/rpc/increment"): {"POST"},
        ("POST", "/healthz"): {"GET", "HEAD"},
        ("POST", "/objects/COUNTER"): {"GET", "HEAD"},
        ("DELETE", "/objects/COUNTER"): {"GET", "HEAD"},
    }
    for (method, path), methods in allowed.items():
        response = await client.request(method, path)
        assert error_of(response) == (405, "MethodNotAllowed"), (method, path)
        assert set(response.headers["allow"].split(", ")) == methods, (method, path)
    assert error_of(await client.post("/objects/NOPE")) == (404, "UnknownBindingError")


async def test_handler_errors_are_500_without_traceback(client: httpx.AsyncClient) -> None:
    response = await client.post("/objects/COUNTER/a/rpc/fail", json={"args": ["kaput"]})
    assert error_of(response) == (500, "ValueError")
    assert response.json()["error"]["message"] == "kaput"
    response = await client.post("/objects/COUNTER/a/rpc/unencodable")
    assert error_of(response)[0] == 500


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="Python 3.10 cannot tell a handler's CancelledError from the request's own",
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/objects/FAULTY/a/rpc/cancelled"),
        ("POST", "/objects/FAULTY/a/rpc/awaits_a_cancelled_task"),
        ("GET", "/objects/FAULTY/a/fetch/cancelled"),
    ],
)
async def test_a_handler_raising_cancelled_error_is_a_json_500(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, method: str, path: str
) -> None:
    with caplog.at_level(logging.ERROR, logger="stead.http"):
        response = await client.request(method, path)
    assert error_of(response) == (500, "CancelledError")
    assert "raised CancelledError" in caplog.text


async def _passing_through(request: Request, call_next: Any) -> Response:
    response: Response = await call_next(request)
    return response


def _with_middleware(app: Starlette, kind: str) -> Starlette:
    if kind == "base":  # runs the app below it in a task of its own
        app.add_middleware(BaseHTTPMiddleware, dispatch=_passing_through)
    elif kind == "cors":
        app.add_middleware(CORSMiddleware, allow_origins=["*"])
    return app


@pytest.mark.parametrize("middleware", ["none", "cors", "base"])
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/objects/COUNTER/a/rpc/hold"), ("GET", "/objects/COUNTER/a/fetch/hold")],
)
async def test_a_request_the_server_cancels_gets_a_json_503_and_ends_quietly(
    data_dir: str, caplog: pytest.LogCaptureFixture, method: str, path: str, middleware: str
) -> None:
    Counter.gate = asyncio.Event()
    sent: list[Message] = []

    first = True

    async def receive() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # no disconnect: only the cancellation ends the request
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [(b"origin", b"http://o")], "server": ("test", 80),
        "client": ("c", 1),
    }  # fmt: skip
    try:
        runtime = stead.Runtime({"COUNTER": Counter}, data_dir=data_dir)
        async with runtime:
            app = _with_middleware(create_app(runtime, token=""), middleware)
            request = asyncio.create_task(app(scope, receive, send))
            for _ in range(100_000):  # yield until the handler runs
                if runtime.stats()["running_events"] >= 1:
                    break
                await asyncio.sleep(0)
            with caplog.at_level(logging.WARNING):
                request.cancel()  # as uvicorn does at its graceful shutdown deadline
                if sys.version_info >= (3, 11):
                    await request  # answered: it ends, nothing for the server to log
                else:
                    with pytest.raises(asyncio.CancelledError):
                        await request
            Counter.gate.set()
    finally:
        Counter.gate = None
    assert sent[0]["status"] == 503
    assert (b"connection", b"close") in sent[0]["headers"]
    body = json.loads(b"".join(message.get("body", b"") for message in sent[1:]))
    assert body["error"]["type"] == "ShuttingDown"
    assert "may still complete" in body["error"]["message"]
    cut = [record for record in caplog.records if "was cancelled" in record.getMessage()]
    assert len(cut) == 1 and cut[0].levelno == logging.WARNING and cut[0].exc_info is None


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/objects/COUNTER/a/rpc/hold"), ("GET", "/objects/COUNTER/a/fetch/hold")],
)
async def test_a_request_whose_event_close_cancels_gets_503_shutting_down(
    data_dir: str, method: str, path: str
) -> None:
    # What a second SIGTERM does under `stead serve`: close() cancels the running event.
    Counter.gate = asyncio.Event()  # never set: only the cancellation ends the handler
    try:
        runtime = stead.Runtime({"COUNTER": Counter}, data_dir=data_dir)
        await runtime.start()
        try:
            async with client_for(create_app(runtime, token="")) as client:
                request = asyncio.create_task(client.request(method, path))
                for _ in range(100_000):  # yield until the handler runs
                    if runtime.stats()["running_events"] >= 1:
                        break
                    await asyncio.sleep(0)
                closing = asyncio.create_task(runtime.close(grace=0))
                response = await request
                await closing
        finally:
            await runtime.close()
    finally:
        Counter.gate = None
    assert error_of(response) == (503, "ShuttingDown")
    assert response.headers["connection"] == "close"


async def test_storage_failure_is_503_and_nothing_is_acknowledged(
    client: httpx.AsyncClient, stead_runtime: stead.Runtime
) -> None:
    assert await rpc(client, "increment") == 1
    stead_runtime.engine.fail_next_commit()
    response = await client.post("/objects/COUNTER/a/rpc/increment")
    assert error_of(response) == (503, "StorageError")
    assert await rpc(client, "get") == 1


async def test_overload_is_429_with_retry_after(data_dir: str) -> None:
    Counter.gate = asyncio.Event()
    try:
        runtime = stead.Runtime({"COUNTER": Counter}, data_dir=data_dir, max_pending=1)
        async with runtime, client_for(create_app(runtime, token="")) as client:
            path = "/objects/COUNTER/a/rpc/hold"
            running = asyncio.create_task(client.post(path))
            queued = asyncio.create_task(client.post(path))
            for _ in range(100_000):  # no event marks "queued": yield until the mailbox shows it
                if runtime.stats()["mailbox_depth"] >= 1:
                    break
                await asyncio.sleep(0)
            response = await client.post(path)
            assert error_of(response) == (429, "OverloadedError")
            assert response.headers["retry-after"] == "1"
            Counter.gate.set()
            assert (await running).json() == {"result": "released"}
            assert (await queued).json() == {"result": "released"}
    finally:
        Counter.gate = None


# -- body limit ---------------------------------------------------------------


async def test_bodies_over_the_limit_are_413(stead_runtime: stead.Runtime) -> None:
    async with client_for(create_app(stead_runtime, max_body_bytes=64, token="")) as client:
        big = {"args": ["x" * 100]}
        response = await client.post("/objects/COUNTER/a/rpc/label", json=big)
        assert error_of(response) == (413, "PayloadTooLarge")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while streaming
            yield b'{"args": ["'
            yield b"x" * 100
            yield b'"]}'

        response = await client.post("/objects/COUNTER/a/rpc/label", content=chunks())
        assert error_of(response) == (413, "PayloadTooLarge")
        response = await client.post("/objects/COUNTER/a/fetch/echo", content=b"y" * 65)
        assert error_of(response) == (413, "PayloadTooLarge")
        ok = await client.post("/objects/COUNTER/a/rpc/label", json={"args": ["small"]})
        assert ok.json() == {"result": "small"}


# -- fetch --------------------------------------------------------------------


async def test_fetch_forwards_the_request_and_returns_the_response_as_is(
    client: httpx.AsyncClient,
) -> None:
    response = await client.put(
        "/objects/COUNTER/a/fetch/echo?x=1&y=two", content=b"payload", headers={"x-test": "t"}
    )
    assert response.status_code == 201
    assert response.headers["x-from-object"] == "yes"
    assert response.json() == {
        "method": "PUT",
        "path": "/echo",
        "query": {"x": "1", "y": "two"},
        "body": "payload",
        "header": "t",
        "authorization": None,
    }
    await rpc(client, "increment", args=[3])
    assert (await client.get("/objects/COUNTER/a/fetch/count")).json() == {"count": 3}
    missing = await client.get("/objects/COUNTER/a/fetch/elsewhere")
    assert (missing.status_code, missing.text) == (404, "not here")
    assert missing.headers["content-type"] == "text/plain"


async def test_fetch_joins_repeated_request_headers(client: httpx.AsyncClient) -> None:
    headers = [
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("Cookie", "session=abc"),
        ("Cookie", "theme=dark"),
        ("Accept", "text/html"),
        ("Accept", "application/json;q=0.9"),
        ("X-Once", "1"),
    ]
    seen = (await client.get("/objects/COUNTER/a/fetch/headers", headers=headers)).json()
    assert seen["x-forwarded-for"] == "203.0.113.7, 10.0.0.1"  # RFC 9110 §5.3
    assert seen["cookie"] == "session=abc; theme=dark"  # RFC 6265 §5.4: one line, "; "
    assert seen["accept"] == "text/html, application/json;q=0.9"
    assert seen["x-once"] == "1"


@pytest.mark.parametrize("route", ["fetch/echo", "rpc/increment"])
async def test_a_client_leaving_during_the_upload_is_a_quiet_400(
    stead_runtime: stead.Runtime, caplog: pytest.LogCaptureFixture, route: str
) -> None:
    messages = iter([{"type": "http.request", "body": b"{", "more_body": True}])
    sent: list[Message] = []

    async def receive() -> Message:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: Message) -> None:
        sent.append(message)

    path = f"/objects/COUNTER/a/{route}"
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [], "server": ("test", 80), "client": ("c", 1),
    }  # fmt: skip
    with caplog.at_level(logging.WARNING):
        await create_app(stead_runtime, token="")(scope, receive, send)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["type"] == "Disconnected"
    assert caplog.records == []


@pytest.mark.parametrize("path", sorted(INVALID_RESPONSES))
async def test_an_invalid_fetch_response_is_a_json_500(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    with caplog.at_level(logging.ERROR, logger="stead.http"):
        response = await client.get(f"/objects/FAULTY/a/fetch{path}")
    assert error_of(response) == (500, "InvalidResponse")
    assert "invalid response" in response.json()["error"]["message"]
    assert "FAULTY.fetch returned an invalid response" in caplog.text


async def test_fetch_errors(client: httpx.AsyncClient) -> None:
    assert error_of(await client.get("/objects/COUNTER/a/fetch/boom")) == (500, "RuntimeError")
    assert (await client.get("/objects/PLAIN/a/fetch/")).status_code == 501
    assert (await client.get("/objects/PLAIN/a/fetch")).status_code == 501
    assert error_of(await client.get("/objects/NOPE/a/fetch/x")) == (404, "UnknownBindingError")


# -- listing ------------------------------------------------------------------


async def test_list_ids_with_names_and_paging(
    client: httpx.AsyncClient, stead_runtime: stead.Runtime
) -> None:
    names = [f"n{i}" for i in range(5)]
    for name in names:
        await rpc(client, "increment", name=name)
    listing = (await client.get("/objects/COUNTER")).json()
    assert sorted(entry["name"] for entry in listing["ids"]) == names
    assert listing["next"] is None
    expected = [str(i) for i in await stead_runtime.namespace("COUNTER").list_ids()]
    assert [entry["id"] for entry in listing["ids"]] == expected

    first = (await client.get("/objects/COUNTER", params={"limit": 2})).json()
    assert [entry["id"] for entry in first["ids"]] == expected[:2]
    rest = (await client.get("/objects/COUNTER", params={"after": first["next"]})).json()
    assert [entry["id"] for entry in rest["ids"]] == expected[2:]
    assert (await client.get("/objects/PLAIN")).json() == {"ids": [], "next": None}


async def test_list_ids_errors(client: httpx.AsyncClient) -> None:
    for params in ({"limit": "x"}, {"limit": "-1"}, {"limit": "100000"}):
        assert error_of(await client.get("/objects/COUNTER", params=params)) == (
            400,
            "InvalidQuery",
        )
    for after in ("zz", "00" * 32):
        response = await client.get("/objects/COUNTER", params={"after": after})
        assert error_of(response) == (400, "InvalidIdError")
    assert error_of(await client.get("/objects/NOPE")) == (404, "UnknownBindingError")


# -- health, metrics, OpenAPI --------------------------------------------------


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_healthz_is_503_while_the_runtime_is_not_running(data_dir: str) -> None:
    runtime = stead.Runtime({"COUNTER": Counter}, data_dir=data_dir)
    async with client_for(create_app(runtime, token="")) as client:  # no lifespan: not started
        assert error_of(await client.get("/healthz")) == (503, "NotStarted")


async def test_metrics_count_requests_and_expose_runtime_gauges(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        await rpc(client, "increment")
    await client.post("/objects/COUNTER/a/rpc/fail", json={"args": ["x"]})
    await client.post("/objects/COUNTER/a/rpc/no_such_method")
    text = (await client.get("/metrics")).text
    labels = 'binding="COUNTER",method="increment",route="rpc"'
    assert f'stead_http_requests_total{{{labels},status="200"}} 3.0' in text
    assert 'binding="COUNTER",method="fail",route="rpc",status="500"} 1.0' in text
    assert 'binding="",method="",route="rpc",status="404"} 1.0' in text
    assert "no_such_method" not in text
    assert f"stead_http_request_duration_seconds_count{{{labels}}} 3.0" in text
    assert "stead_resident_objects 1.0" in text
    for name in (
        "stead_mailbox_depth",
        "stead_running_events",
        "stead_commits_total",
        "stead_held_groups_total",
        "stead_fsync_duration_seconds_count",
    ):
        assert name in text


async def test_stead_keys_says_it_counts_internal_keys(client: httpx.AsyncClient) -> None:
    await rpc(client, "increment")  # one key of its own, plus the name stead records
    text = (await client.get("/metrics")).text
    assert "stead_keys 2.0" in text
    help_line = next(line for line in text.splitlines() if line.startswith("# HELP stead_keys"))
    assert "internal ones included" in help_line


async def test_fsync_latencies_reach_the_histogram(data_dir: str) -> None:
    runtime = stead.Runtime({"COUNTER": Counter}, data_dir=data_dir, durability="fsync")
    async with runtime, client_for(create_app(runtime, token="")) as client:
        await rpc(client, "increment")
        text = (await client.get("/metrics")).text
        count = next(
            line
            for line in text.splitlines()
            if line.startswith("stead_fsync_duration_seconds_count")
        )
        assert float(count.split()[-1]) >= 1


async def test_openapi_describes_rpc_methods_from_type_hints(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    increment = paths["/objects/COUNTER/{name}/rpc/increment"]["post"]
    body = increment["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["kwargs"]["properties"] == {"by": {"type": "integer"}}
    assert body["properties"]["args"]["prefixItems"] == [{"type": "integer"}]
    result = increment["responses"]["200"]["content"]["application/json"]["schema"]
    assert result["properties"]["result"] == {"type": "integer"}
    shift = paths["/objects/COUNTER/{name}/rpc/shift"]["post"]
    assert "Point" in document["components"]["schemas"]
    assert "$ref" in str(shift["responses"]["200"])
    assert "/objects/COUNTER/{name}/rpc/_private" not in paths
    assert "/objects/COUNTER/{name}/rpc/fetch" not in paths
    assert "/objects/PLAIN/{name}/rpc/ping" in paths
    assert set(increment["responses"]) >= {"200", "400", "404", "429", "500", "503"}


# Two Structs called Item from two modules, and a hint msgspec has no schema for.
SkuItem = msgspec.defstruct("Item", [("sku", str)], module="shop.a")
QtyItem = msgspec.defstruct("Item", [("qty", int)], module="shop.b")


# A user's Struct with the name of stead's error envelope.
UserError = msgspec.defstruct("Error", [("code", int), ("detail", str)])


class Opaque:
    pass


class Shop(stead.DurableObject):
    def add(self, item: SkuItem) -> None:  # type: ignore[valid-type]
        pass

    def count(self, item: QtyItem) -> None:  # type: ignore[valid-type]
        pass

    def take(self, thing: Opaque) -> None:
        pass

    def list(self) -> int:  # a method named like the listing
        return 0

    def report(self, error: UserError) -> UserError:  # type: ignore[valid-type]
        return error


@pytest.fixture
async def shop_openapi(data_dir: str) -> dict[str, Any]:
    async with (
        stead.Runtime({"SHOP": Shop}, data_dir=data_dir) as runtime,
        client_for(create_app(runtime, token="")) as client,
    ):
        document: dict[str, Any] = (await client.get("/openapi.json")).json()
    return document


async def test_openapi_errors_do_not_replace_a_users_struct_named_error(
    shop_openapi: dict[str, Any],
) -> None:
    operation = shop_openapi["paths"]["/objects/SHOP/{name}/rpc/report"]["post"]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    result = shop_openapi["components"]["schemas"][
        ok["properties"]["result"]["$ref"].rsplit("/", 1)[1]
    ]
    assert set(result["properties"]) == {"code", "detail"}
    failed = operation["responses"]["400"]["content"]["application/json"]["schema"]
    envelope = shop_openapi["components"]["schemas"][failed["$ref"].rsplit("/", 1)[1]]
    assert envelope["required"] == ["error"]
    assert "ShuttingDown" in operation["responses"]["503"]["description"]


async def test_openapi_requires_a_body_when_a_parameter_is_required(
    shop_openapi: dict[str, Any], data_dir: str
) -> None:
    paths = shop_openapi["paths"]
    assert paths["/objects/SHOP/{name}/rpc/add"]["post"]["requestBody"]["required"] is True
    assert paths["/objects/SHOP/{name}/rpc/list"]["post"]["requestBody"]["required"] is False
    async with (
        stead.Runtime({"SHOP": Shop}, data_dir=data_dir) as runtime,
        client_for(create_app(runtime, token="")) as client,
    ):
        assert error_of(await client.post("/objects/SHOP/a/rpc/add"))[0] == 400  # no body
        assert (await client.post("/objects/SHOP/a/rpc/list")).json() == {"result": 0}


async def test_openapi_operation_ids_are_unique(shop_openapi: dict[str, Any]) -> None:
    operations = [op for path in shop_openapi["paths"].values() for op in path.values()]
    ids = [operation["operationId"] for operation in operations]
    assert len(ids) == len(set(ids)), ids
    assert "SHOP.list" in ids and "SHOP.__list__" in ids
    listing = shop_openapi["paths"]["/objects/SHOP"]["get"]["parameters"]
    assert listing[0]["schema"]["maximum"] == 1000


async def test_openapi_keeps_same_named_structs_apart(shop_openapi: dict[str, Any]) -> None:
    def schema_of(method: str, parameter: str) -> dict[str, Any]:
        body = shop_openapi["paths"][f"/objects/SHOP/{{name}}/rpc/{method}"]["post"]
        schema = body["requestBody"]["content"]["application/json"]["schema"]
        found: dict[str, Any] = schema["properties"]["kwargs"]["properties"][parameter]
        if "$ref" in found:
            found = shop_openapi["components"]["schemas"][found["$ref"].rsplit("/", 1)[1]]
        return found

    assert set(schema_of("report", "error")["properties"]) == {"code", "detail"}
    assert set(schema_of("add", "item")["properties"]) == {"sku"}
    assert set(schema_of("count", "item")["properties"]) == {"qty"}
    assert schema_of("take", "thing") == {}  # no schema: any value


class Binding(stead.DurableObject):
    def mixed(self, a: int, /, b: int, *, c: int, d: int = 0) -> int:
        return a + b + c + d


BINDING_BODIES = [
    {"args": [1, 2], "kwargs": {"c": 3}},
    {"args": [1], "kwargs": {"b": 2, "c": 3, "d": 4}},
    {},
    {"args": [1, 2]},
    {"args": [1, 2], "kwargs": {"b": 2, "c": 3}},
    {"kwargs": {"b": 2, "c": 3}},
    {"args": [1, 2, 3], "kwargs": {"c": 3}},
]


async def test_the_openapi_body_schema_accepts_exactly_what_the_server_does(
    data_dir: str,
) -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")  # with schemathesis (dev extra)
    async with (
        stead.Runtime({"BINDING": Binding}, data_dir=data_dir) as runtime,
        client_for(create_app(runtime, token="")) as client,
    ):
        document = (await client.get("/openapi.json")).json()
        operation = document["paths"]["/objects/BINDING/{name}/rpc/mixed"]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        validator = jsonschema_rs.Draft202012Validator(schema)
        for body in BINDING_BODIES:
            response = await client.post("/objects/BINDING/a/rpc/mixed", json=body)
            assert response.status_code in (200, 400), response.text
            assert validator.is_valid(body) is (response.status_code == 200), body


async def test_openapi_before_the_runtime_started_is_503_and_not_kept(data_dir: str) -> None:
    runtime = stead.Runtime({"COUNTER": Counter}, data_dir=data_dir)
    async with client_for(create_app(runtime, token="")) as client:
        assert error_of(await client.get("/openapi.json")) == (503, "NotStarted")
        async with runtime:
            document = (await client.get("/openapi.json")).json()
    assert "/objects/COUNTER/{name}/rpc/increment" in document["paths"]


async def test_openapi_declares_the_bearer_token_and_the_mount_prefix(
    stead_runtime: stead.Runtime,
) -> None:
    host = Starlette(routes=[Mount("/stead", app=create_app(stead_runtime, token="t"))])
    async with client_for(host) as client:
        response = await client.get("/stead/openapi.json", headers={"Authorization": "Bearer t"})
    document = response.json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert document["security"] == [{"bearer": []}]
    assert document["paths"]["/healthz"]["get"]["security"] == []  # open
    assert document["servers"] == [{"url": "/stead"}]
    async with client_for(create_app(stead_runtime, token="")) as client:
        open_document = (await client.get("/openapi.json")).json()
    assert "security" not in open_document and "servers" not in open_document


async def test_objects_without_a_binding_is_a_json_404(client: httpx.AsyncClient) -> None:
    for path in ("/objects", "/objects/"):
        assert error_of(await client.get(path)) == (404, "NotFound"), path


async def test_a_negative_body_limit_is_refused(stead_runtime: stead.Runtime) -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(stead_runtime, max_body_bytes=-1)


# -- auth ---------------------------------------------------------------------


async def test_bearer_token_guards_every_route_but_healthz(stead_runtime: stead.Runtime) -> None:
    async with client_for(create_app(stead_runtime, token="s3cret")) as client:
        for path in ("/objects/COUNTER/a/rpc/get", "/metrics", "/openapi.json", "/objects/COUNTER"):
            method = client.post if "rpc" in path else client.get
            assert error_of(await method(path)) == (401, "Unauthorized")
            wrong = await method(path, headers={"Authorization": "Bearer nope"})
            assert error_of(wrong) == (401, "Unauthorized")
            right = await method(path, headers={"Authorization": "Bearer s3cret"})
            assert right.status_code == 200, path
        assert (await client.get("/healthz")).status_code == 200
        echoed = await client.get(
            "/objects/COUNTER/a/fetch/echo", headers={"Authorization": "Bearer s3cret"}
        )
        assert echoed.json()["authorization"] is None  # the server's token is not forwarded


async def test_the_auth_scheme_is_case_insensitive(stead_runtime: stead.Runtime) -> None:
    async with client_for(create_app(stead_runtime, token="s3cret")) as client:
        for value in ("bearer s3cret", "BEARER s3cret", "Bearer  s3cret"):
            headers = {"Authorization": value}
            response = await client.post("/objects/COUNTER/a/rpc/get", headers=headers)
            assert response.status_code == 200, value
            assert (await client.get("/metrics", headers=headers)).status_code == 200, value
        for value in ("Basic s3cret", "Bearers3cret", "bearer S3CRET", "s3cret"):
            response = await client.post(
                "/objects/COUNTER/a/rpc/get", headers={"Authorization": value}
            )
            assert error_of(response) == (401, "Unauthorized"), value


async def test_token_defaults_to_stead_token(
    stead_runtime: stead.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEAD_TOKEN", "from-env")
    async with client_for(create_app(stead_runtime)) as client:
        assert (await client.get("/metrics")).status_code == 401
        headers = {"Authorization": "Bearer from-env"}
        assert (await client.get("/metrics", headers=headers)).status_code == 200
    async with client_for(create_app(stead_runtime, token="")) as client:
        assert (await client.get("/metrics")).status_code == 200


# -- embedding and plugins ------------------------------------------------------


async def test_mounts_inside_another_starlette_app(stead_runtime: stead.Runtime) -> None:
    async def home(request: Request) -> Response:
        return PlainTextResponse("host app")

    host = Starlette(
        routes=[Route("/", home), Mount("/stead", app=create_app(stead_runtime, token="t"))]
    )
    async with client_for(host) as client:
        assert (await client.get("/")).text == "host app"
        assert (await client.get("/stead/healthz")).json() == {"status": "ok"}
        auth = {"Authorization": "Bearer t"}
        response = await client.post("/stead/objects/COUNTER/m/rpc/increment", headers=auth)
        assert response.json() == {"result": 1}
        assert (await client.post("/stead/objects/COUNTER/m/rpc/get")).status_code == 401
        fetched = await client.get("/stead/objects/COUNTER/m/fetch/count", headers=auth)
        assert fetched.json() == {"count": 1}


class ApiKeyMiddleware:
    """A user's auth middleware, added with ``app.add_middleware``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (b"x-api-key", b"k") not in scope["headers"]:
            await PlainTextResponse("forbidden", status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def test_user_middleware_wraps_rpc_calls_too(stead_runtime: stead.Runtime) -> None:
    app = create_app(stead_runtime, token="t")
    app.add_middleware(ApiKeyMiddleware)
    origin = "https://ui.example"
    app.add_middleware(CORSMiddleware, allow_origins=[origin], allow_methods=["*"])
    auth = {"Authorization": "Bearer t", "Origin": origin}
    async with client_for(app) as client:
        for path in ("/objects/COUNTER/a/rpc/increment", "/objects/COUNTER/a/fetch/count"):
            refused = await client.post(path, headers=auth)
            assert refused.status_code == 403, path
            assert refused.headers["access-control-allow-origin"] == origin
        allowed = await client.post(
            "/objects/COUNTER/a/rpc/increment", headers={**auth, "X-Api-Key": "k"}
        )
        assert allowed.json() == {"result": 1}  # the refused call did not write
        assert allowed.headers["access-control-allow-origin"] == origin
        no_token = await client.post(
            "/objects/COUNTER/a/rpc/get", headers={"Origin": origin, "X-Api-Key": "k"}
        )
        assert error_of(no_token) == (401, "Unauthorized")  # stead's own check still runs
        assert no_token.headers["access-control-allow-origin"] == origin


class RoutesPlugin:
    @stead.hookimpl
    def stead_routes(self, runtime: stead.Runtime) -> list[Route]:
        async def total(request: Request) -> Response:
            stub = runtime.namespace("COUNTER").get_by_name(request.path_params["name"])
            return PlainTextResponse(str(await stub.get()))

        return [Route("/total/{name}", total)]


async def test_plugin_routes_are_mounted_behind_auth(stead_runtime: stead.Runtime) -> None:
    plugins = Plugins.load(autoload=False, extra=[RoutesPlugin()])
    app = create_app(stead_runtime, token="t", plugins=plugins)
    async with client_for(app) as client:
        auth = {"Authorization": "Bearer t"}
        await client.post("/objects/COUNTER/p/rpc/increment", json={"args": [7]}, headers=auth)
        assert (await client.get("/total/p", headers=auth)).text == "7"
        assert (await client.get("/total/p")).status_code == 401


class WebSocketPlugin:
    @stead.hookimpl
    def stead_routes(self, runtime: stead.Runtime) -> list[WebSocketRoute]:
        async def feed(websocket: WebSocket) -> None:
            await websocket.accept()
            await websocket.send_text("secret data")
            await websocket.close()

        return [WebSocketRoute("/feed", feed)]


async def websocket_handshake(
    app: Any, path: str, headers: dict[str, str], *, denial_responses: bool
) -> list[dict[str, Any]]:
    """What ``app`` sends to a WebSocket client connecting to ``path``, as an ASGI
    server would drive it (with or without the denial-response extension)."""
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "http_version": "1.1",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}} if denial_responses else {},
    }
    incoming = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("denial_responses", [True, False])
async def test_plugin_websocket_routes_are_behind_auth(
    stead_runtime: stead.Runtime, denial_responses: bool
) -> None:
    plugins = Plugins.load(autoload=False, extra=[WebSocketPlugin()])
    app = create_app(stead_runtime, token="t", plugins=plugins)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        sent = await websocket_handshake(app, "/feed", headers, denial_responses=denial_responses)
        if denial_responses:  # refused with the usual JSON 401
            assert [m["type"] for m in sent] == [
                "websocket.http.response.start",
                "websocket.http.response.body",
            ]
            assert sent[0]["status"] == 401
            assert json.loads(sent[1]["body"])["error"]["type"] == "Unauthorized"
        else:  # refused before the handshake completes: servers answer 403
            assert [(m["type"], m["code"]) for m in sent] == [("websocket.close", 1008)]
    accepted = await websocket_handshake(
        app, "/feed", {"Authorization": "Bearer t"}, denial_responses=denial_responses
    )
    assert [m["type"] for m in accepted] == [
        "websocket.accept",
        "websocket.send",
        "websocket.close",
    ]
    assert accepted[1]["text"] == "secret data"


async def test_the_app_lifespan_starts_and_closes_an_unstarted_runtime(data_dir: str) -> None:
    runtime = stead.Runtime({"COUNTER": Counter}, data_dir=data_dir)
    app = create_app(runtime, token="")
    async with app.router.lifespan_context(app), client_for(app) as client:
        assert (await client.post("/objects/COUNTER/a/rpc/increment")).json() == {"result": 1}
    with pytest.raises(RuntimeError):
        runtime.engine  # noqa: B018  (closed again)


# -- mistakes a newcomer makes ----------------------------------------------------


class StatusFirst(stead.DurableObject):
    """A fetch handler that puts the status where the body goes."""

    async def fetch(self, request: stead.Request) -> stead.Response:
        if request.path == "/dict":
            return stead.Response({"ok": True})  # type: ignore[arg-type]
        return stead.Response(404)  # type: ignore[arg-type]


async def test_a_response_with_a_status_as_its_body_is_a_500_not_a_200_of_nul_bytes(
    data_dir: str,
) -> None:
    runtime = stead.Runtime({"API": StatusFirst}, data_dir=data_dir, durability="none")
    app = create_app(runtime, token="")
    async with app.router.lifespan_context(app), client_for(app) as client:
        missing = await client.get("/objects/API/a/fetch/missing")
        assert error_of(missing) == (500, "TypeError")
        assert "not int" in missing.json()["error"]["message"]
        assert "status=404" in missing.json()["error"]["message"]
        as_dict = await client.get("/objects/API/a/fetch/dict")
        assert error_of(as_dict) == (500, "TypeError")
        assert "Response.json" in as_dict.json()["error"]["message"]


async def test_every_object_route_is_503_not_started_once_the_runtime_closed(
    data_dir: str,
) -> None:
    runtime = stead.Runtime({"COUNTER": Counter}, data_dir=data_dir, durability="none")
    app = create_app(runtime, token="")
    async with client_for(app) as client:
        async with runtime:
            assert (await client.post("/objects/COUNTER/a/rpc/increment")).status_code == 200
        # The closed runtime's data dir is free for another process: nothing here
        # may read it (listing) or answer a plain 500 (rpc, fetch).
        for method, path in (
            ("POST", "/objects/COUNTER/a/rpc/increment"),
            ("GET", "/objects/COUNTER/a/fetch/hello"),
            ("GET", "/objects/COUNTER"),
            ("GET", "/healthz"),
        ):
            response = await client.request(method, path)
            assert error_of(response) == (503, "NotStarted"), (method, path, response.text)


def test_importing_stead_http_without_the_server_extra_names_the_extra() -> None:
    # A child, so the blocked import is a fresh one (what `pip install stead` gives).
    code = "import sys; sys.modules['starlette'] = None; import stead.http"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert child.returncode == 1
    last = child.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: stead.http needs the server extra"), last
    assert "pip install 'stead[server]'" in last


class PathEcho(stead.DurableObject):
    async def fetch(self, request: stead.Request) -> stead.Response:
        return stead.Response(request.url)


@pytest.mark.parametrize(
    "path",
    ["/files/a%2Fb", "/files/a/b", "/files/a%20b", "/q/x%3Fy%26z%3Dw", "/a%2fb/%25", "/", ""],
)
@pytest.mark.parametrize("mount", ["", "/mounted%20here"])
async def test_fetch_passes_the_path_as_sent_like_stub_fetch(
    data_dir: str, path: str, mount: str
) -> None:
    async with stead.Runtime({"P": PathEcho}, data_dir=data_dir) as runtime:
        app: Any = create_app(runtime, token="")
        if mount:
            app = Starlette(routes=[Mount("/mounted here", app=app)])
        async with client_for(app) as client:
            response = await client.get(f"{mount}/objects/P/n/fetch{path}?k=v%26w")
        in_process = await runtime.env.P.get_by_name("n").fetch(f"{path or '/'}?k=v%26w")
    assert response.status_code == 200, response.text
    # An encoded '/' stays encoded: "a%2Fb" and "a/b" are two different paths.
    assert response.text == in_process.text() == f"{path or '/'}?k=v%26w"
