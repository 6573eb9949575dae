"""An API gateway in front of a Starlette app: a rate limit per user and a feature flag.

The gateway does what the catalog's Worker does: it asks the user's
RATE_LIMITER object before serving (passing a 429 and its Retry-After through)
and asks FEATURE_FLAGS which greeting the user gets. Both objects live in the
same process, with their data in DATA_DIR.

Run:  python examples/api_gateway/gateway.py [DATA_DIR]          (a scripted demo)
      python examples/api_gateway/gateway.py DATA_DIR --serve    (serve on 127.0.0.1:8788)
"""

from __future__ import annotations

import asyncio
import signal
import sys

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import stead
import stead_patterns

LIMIT = 3  # requests per user per minute
WINDOW_MS = 60_000
FLAG = {"name": "new-greeting", "enabled": True, "rolloutPercent": 50, "allowlist": ["alice"]}


def create_gateway(runtime: stead.Runtime) -> Starlette:
    """The gateway app; ``runtime`` must be started and serve the pattern bindings."""

    async def hello(request: Request) -> Response:
        user = request.headers.get("x-user", "anonymous")
        limiter = runtime.env.RATE_LIMITER.get_by_name(f"ratelimit:{user}")
        check = await limiter.fetch(f"/check?limit={LIMIT}&window={WINDOW_MS}")
        if check.status == 429:  # the limiter's own answer, Retry-After included
            return Response(check.body, check.status, headers=check.headers)
        flags = runtime.env.FEATURE_FLAGS.get_by_name("global")
        evaluation = {"flag": FLAG["name"], "entityId": user}
        decision = (await flags.fetch("/evaluate", method="POST", json=evaluation)).json()
        greeting = "Hey there" if decision["enabled"] else "Hello"
        body = {"message": f"{greeting}, {user}!", "remaining": check.json()["remaining"]}
        return JSONResponse(body)

    return Starlette(routes=[Route("/hello", hello)])


async def install_flag(runtime: stead.Runtime) -> None:
    flags = runtime.env.FEATURE_FLAGS.get_by_name("global")
    await flags.fetch("/set", method="POST", json=FLAG)


async def demo(runtime: stead.Runtime) -> None:
    transport = httpx.ASGITransport(app=create_gateway(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        for user in ("alice", "bob", "carol"):
            for _ in range(LIMIT + 1):
                response = await client.get("/hello", headers={"x-user": user})
                retry = response.headers.get("retry-after")
                suffix = f" (Retry-After: {retry})" if retry else ""
                print(f"{user}: {response.status_code} {response.text}{suffix}")


async def main(data_dir: str, serve: bool) -> None:
    async with stead.Runtime(stead_patterns.bindings(), data_dir=data_dir) as runtime:
        await install_flag(runtime)
        if not serve:
            await demo(runtime)
            return
        import uvicorn

        config = uvicorn.Config(create_gateway(runtime), host="127.0.0.1", port=8788)
        await uvicorn.Server(config).serve()


def run(data_dir: str, serve: bool) -> None:
    """Run ``main``; Ctrl+C or SIGTERM stop the server, then the runtime closes cleanly."""
    # uvicorn shuts down on SIGINT/SIGTERM and then raises the signal again. Under
    # asyncio.run that second Ctrl+C would cancel the runtime's close() half-way and
    # print a traceback; with Python's own handler it is a KeyboardInterrupt that
    # unwinds `async with stead.Runtime(...)` (closing it) and is caught here.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main(data_dir, serve))
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        loop.close()


if __name__ == "__main__":
    args = [arg for arg in sys.argv[1:] if arg != "--serve"]
    run(args[0] if args else "./gateway-data", "--serve" in sys.argv)
