"""``asgi_fetch``: an ASGI app as an object's ``fetch``, streamed answers and repeated headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from patterns_harness import MakePatterns
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response as StarletteResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route, Router

import stead
from stead import Request, Response
from stead_patterns._asgi import asgi_fetch

pytestmark = pytest.mark.anyio


async def numbers() -> AsyncIterator[str]:
    for number in range(5):
        yield f"{number}\n"
        await asyncio.sleep(0)  # a stream that awaits between chunks, as real ones do


async def stream(request: StarletteRequest) -> StarletteResponse:
    return StreamingResponse(numbers(), media_type="text/plain")


async def echo_stream(request: StarletteRequest) -> StarletteResponse:
    body = await request.body()

    async def twice() -> AsyncIterator[bytes]:
        for _ in range(2):
            yield body
            await asyncio.sleep(0)

    return StreamingResponse(twice())


async def repeated(request: StarletteRequest) -> StarletteResponse:
    response = StarletteResponse("ok")
    response.headers.append("Vary", "Accept")
    response.headers.append("Vary", "Accept-Encoding")
    response.headers.append("X-Trace", "a")
    response.headers.append("x-trace", "b")
    return response


async def cookies(request: StarletteRequest) -> StarletteResponse:
    response = StarletteResponse("ok")
    response.set_cookie("session", "s1")
    if request.query_params.get("two"):
        response.set_cookie("csrf", "c1")
    return response


class Served(stead.DurableObject):
    def __init__(self, ctx: stead.ObjectContext, env: stead.Env) -> None:
        super().__init__(ctx, env)
        self.app = Router(
            routes=[
                Route("/stream", stream),
                Route("/echo", echo_stream, methods=["POST"]),
                Route("/repeated", repeated),
                Route("/cookies", cookies),
            ]
        )

    async def fetch(self, request: Request) -> Response:
        return await asgi_fetch(self.app, request)


async def test_a_streamed_answer_comes_back_whole(make_patterns: MakePatterns) -> None:
    patterns = await make_patterns({"SERVED": Served})
    reply = await patterns.fetch("SERVED", "s", "/stream")
    assert (reply.status, reply.body) == (200, b"0\n1\n2\n3\n4\n")
    assert reply.headers["content-type"].startswith("text/plain")
    echoed = await patterns.fetch("SERVED", "s", "/echo", method="POST", body=b"ab")
    assert echoed.body == b"abab"


async def test_repeated_headers_are_joined(make_patterns: MakePatterns) -> None:
    patterns = await make_patterns({"SERVED": Served})
    reply = await patterns.fetch("SERVED", "s", "/repeated")
    assert reply.headers["vary"] == "Accept, Accept-Encoding"
    assert reply.headers["x-trace"] == "a, b"


async def test_one_cookie_passes_and_two_are_an_error(make_patterns: MakePatterns) -> None:
    patterns = await make_patterns({"SERVED": Served})
    one = await patterns.fetch("SERVED", "s", "/cookies")
    assert one.headers["set-cookie"].startswith("session=s1;")
    if patterns.via == "inprocess":
        with pytest.raises(ValueError, match="Set-Cookie twice"):
            await patterns.fetch("SERVED", "s", "/cookies?two=1")
    else:
        two = await patterns.fetch("SERVED", "s", "/cookies?two=1")
        assert two.status == 500
        assert two.json()["error"]["type"] == "ValueError"
        assert "Set-Cookie twice" in two.json()["error"]["message"]
