"""Issue 5 benchmark: durable ``increment`` RPC over HTTP.

``stead serve`` (uvicorn) in one process, a load generator in another: 50
keep-alive connections, 1,000 objects, every response only after its write is
fsync-durable. Target: >= 8,000 req/s on the 2-core machine, load generator
included. Side by side, the same load against a bare Starlette app that
returns a constant JSON body shows what the HTTP stack alone allows.

Run: pytest benches/bench_http.py
The load generator also runs alone:
    python benches/bench_http.py load URL_PATH_TEMPLATE --url http://127.0.0.1:8787
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

OBJECTS = 1_000
CONNECTIONS = 50
REQUESTS = 60_000
WARMUP = 5_000
TARGET_RPS = 8_000
BENCHES = Path(__file__).resolve().parent
LISTENING = re.compile(rb"Uvicorn running on (http://[\d.]+:\d+)")
RPC_PATH = "/objects/COUNTER/c{i}/rpc/increment"


# -- what the server process serves -----------------------------------------------


def make_runtime() -> Any:
    """The TARGET of ``stead serve bench_http:runtime`` (data dir from the environment)."""
    import stead

    class Counter(stead.DurableObject):
        def increment(self) -> int:
            count: int = self.ctx.storage.get("count", 0) + 1
            self.ctx.storage.put("count", count)
            return count

    return stead.Runtime(
        {"COUNTER": Counter}, data_dir=os.environ["STEAD_BENCH_DATA_DIR"], durability="fsync"
    )


def bare_app() -> Any:
    """The baseline: Starlette answering a constant RPC-shaped body, no objects, no storage."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def rpc(request: Request) -> Response:
        await request.body()
        return Response(b'{"result":1}', media_type="application/json")

    return Starlette(
        routes=[Route("/objects/{binding}/{name}/rpc/{method}", rpc, methods=["POST"])]
    )


if os.environ.get("STEAD_BENCH_DATA_DIR"):
    runtime = make_runtime()


# -- the load generator (its own process) -----------------------------------------


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        if len(self.buffer) >= end + 4 + length:
            status = int(head[9:12])
            del self.buffer[: end + 4 + length]
            waiter, self.waiter = self.waiter, None
            waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("server closed the connection"))

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def _load(host: str, port: int, path: str, total: int, connections: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    requests = [
        f"POST {path.format(i=i)} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode()
        for i in range(OBJECTS)
    ]
    latencies: list[float] = []
    errors = 0
    issued = iter(range(total))

    async def drive() -> None:
        nonlocal errors
        _, connection = await loop.create_connection(_Connection, host, port)
        for index in issued:
            started = time.perf_counter()
            status = await connection.request(requests[index % OBJECTS])
            latencies.append(time.perf_counter() - started)
            errors += status != 200
        assert connection.transport is not None
        connection.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(drive() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": total,
        "errors": errors,
        "rps": total / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


def load_main(argv: list[str]) -> None:
    """``bench_http.py load URL PATH TOTAL CONNECTIONS``: print one JSON result line."""
    url, path, total, connections = argv[0], argv[1], int(argv[2]), int(argv[3])
    host, port = url.removeprefix("http://").split(":")
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    print(json.dumps(run(_load(host, int(port), path, total, connections))))


# -- the benchmark ----------------------------------------------------------------


@contextmanager
def _server(args: list[str], env: dict[str, str]) -> Iterator[str]:
    process = subprocess.Popen(
        args, cwd=BENCHES, env={**os.environ, **env}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        for line in process.stdout:  # the server says where it listens once it is ready
            match = LISTENING.search(line)
            if match:
                yield match.group(1).decode()
                break
        else:
            raise RuntimeError("the server exited before listening")
    finally:
        process.terminate()
        process.wait(30)


def _drive(url: str, total: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "load", url, RPC_PATH, str(total), str(CONNECTIONS)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _measure(url: str) -> dict[str, Any]:
    _drive(url, WARMUP)
    return _drive(url, REQUESTS)


def _stead_command() -> list[str]:
    return [str(Path(sys.executable).parent / "stead")]


@pytest.mark.benchmark(group="http")
def test_durable_increment_rpc_over_http(benchmark: Any, report: Any, tmp_path: Path) -> None:
    serve = [*_stead_command(), "serve", "bench_http:runtime", "--port", "0"]
    env = {"STEAD_BENCH_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(BENCHES)}

    def run() -> dict[str, Any]:
        with _server(serve, env) as url:
            return _measure(url)

    stead_result = benchmark.pedantic(run, rounds=1, iterations=1)
    uvicorn = [sys.executable, "-m", "uvicorn", "--factory", "bench_http:bare_app", "--port", "0"]
    with _server([*uvicorn, "--no-access-log"], {"PYTHONPATH": str(BENCHES)}) as url:
        bare = _measure(url)

    assert stead_result["errors"] == 0 and bare["errors"] == 0
    rps = stead_result["rps"]
    report(
        f"\nHTTP durable increment, {OBJECTS:,} objects, {CONNECTIONS} keep-alive connections, "
        f"fsync durability, load generator in its own process:"
    )
    report(
        f"  stead serve:    {rps:8,.0f} req/s  p50 {stead_result['p50_ms']:.2f} ms  "
        f"p99 {stead_result['p99_ms']:.2f} ms"
    )
    report(
        f"  bare Starlette: {bare['rps']:8,.0f} req/s  p50 {bare['p50_ms']:.2f} ms  "
        f"p99 {bare['p99_ms']:.2f} ms  (no objects, no storage)"
    )
    report(
        f"  target >= {TARGET_RPS:,} req/s: ratio {rps / TARGET_RPS:.2f} "
        f"({'met' if rps >= TARGET_RPS else 'NOT met'}); stead / bare Starlette = "
        f"{rps / bare['rps']:.2f}"
    )


if __name__ == "__main__" and sys.argv[1:2] == ["load"]:
    load_main(sys.argv[2:])
