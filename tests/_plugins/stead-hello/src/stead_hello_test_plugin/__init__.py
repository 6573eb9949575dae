"""A third-party stead plugin: every hook, the smallest possible way."""

from __future__ import annotations

import sys

import click
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

import stead

__all__ = ["Hello"]


class Hello(stead.DurableObject):
    async def hello(self, who: str) -> str:
        times: int = self.ctx.storage.get("times", 0) + 1
        self.ctx.storage.put("times", times)
        return f"hello {who} #{times}"


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"HELLO_PLUGIN_TEST": Hello}


@stead.hookimpl
def stead_routes(runtime: stead.Runtime) -> list[BaseRoute]:
    async def hello(request: Request) -> Response:
        who = request.path_params["who"]
        greeting = await runtime.namespace("HELLO_PLUGIN_TEST").get_by_name(who).hello(who)
        return JSONResponse({"greeting": greeting})

    return [Route("/hello-plugin/{who}", hello)]


@stead.hookimpl
def stead_cli(cli: click.Group) -> None:
    @cli.command("hello-plugin")
    def hello_plugin() -> None:
        """Say hello from the test plugin."""
        click.echo("hello from the test plugin")


@stead.hookimpl
def stead_startup(runtime: stead.Runtime) -> None:
    print(f"hello-plugin: startup {sorted(runtime.bindings)}", file=sys.stderr, flush=True)


@stead.hookimpl
def stead_shutdown(runtime: stead.Runtime) -> None:
    print("hello-plugin: shutdown", file=sys.stderr, flush=True)
