"""Issue 5 benchmark: durable ``increment`` RPC over HTTP.

``stead serve`` (uvicorn) in one process, a load generator in another: 50
keep-alive connections, 1,000 objects, every response only after its write is
fsync-durable. Target: >= 8,000 req/s on the 2-core machine, load generator
included. Side by side, the same load against a bare Starlette app that
returns a constant JSON body shows what the HTTP stack alone allows.

Run: pytest benches/bench_http.py
The load comes from wrk when it is installed (apt-get install wrk), else from
the Python generator below; STEAD_BENCH_LOADGEN=python|wrk forces one. The
Python generator also runs alone against any server:
    python benches/bench_http.py load http://127.0.0.1:8787 \\
        '/objects/COUNTER/c{i}/rpc/increment' 50000 50
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
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
REQUESTS = 80_000  # Python load generator: requests measured, after WARMUP
WARMUP = 5_000
SECONDS = 10  # wrk: seconds measured, after WARMUP_SECONDS
WARMUP_SECONDS = 2
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


# -- the Python load generator (its own process) -------------------------------------


class _Connection:
    """One keep-alive HTTP/1.1 connection with one request in flight."""

    __slots__ = ("buffer", "sent_at", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.sent_at = 0.0

    def take_response(self) -> int | None:
        """The status of the complete response at the head of the buffer, if there is one."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buffer[:end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at) if b"\r\n" in head[at:] else None])
        if len(self.buffer) < end + 4 + length:
            return None
        self.buffer = self.buffer[end + 4 + length :]
        return int(head[9:12])


def run_load(host: str, port: int, path: str, total: int, connections: int) -> dict[str, Any]:
    """Send ``total`` POSTs over ``connections`` sockets, one request in flight on each.

    A plain epoll loop: far less CPU per request than asyncio or httpx, so the
    generator leaves the server as much of the machine as it can.
    """
    requests = [
        f"POST {path.format(i=i)} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode()
        for i in range(OBJECTS)
    ]
    poller = select.epoll()
    by_fd: dict[int, _Connection] = {}
    latencies: list[float] = []
    issued = errors = 0
    started = time.perf_counter()
    for _ in range(min(connections, total)):
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = by_fd[sock.fileno()] = _Connection(sock)
        poller.register(sock.fileno(), select.EPOLLIN)
        connection.sent_at = time.perf_counter()
        sock.sendall(requests[issued % OBJECTS])
        issued += 1
    while len(latencies) < total:
        for fd, _ in poller.poll():
            connection = by_fd[fd]
            data = connection.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed a connection")
            connection.buffer += data
            while (status := connection.take_response()) is not None:
                now = time.perf_counter()
                latencies.append(now - connection.sent_at)
                errors += status != 200
                if issued < total:
                    connection.sent_at = now
                    connection.sock.sendall(requests[issued % OBJECTS])
                    issued += 1
    elapsed = time.perf_counter() - started
    for connection in by_fd.values():
        connection.sock.close()
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
    print(json.dumps(run_load(host, int(port), path, total, connections)))


# -- wrk, when installed ---------------------------------------------------------------

_WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def run_wrk(url: str, path: str, seconds: int, connections: int, scratch: Path) -> dict[str, Any]:
    """The same load from wrk (C, one thread): requests/s and latency percentiles."""
    prefix, suffix = path.split("{i}")
    script = scratch / "rpc.lua"
    script.write_text(
        "local counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        f'  local path = "{prefix}" .. (counter % {OBJECTS}) .. "{suffix}"\n'
        '  return wrk.format("POST", path, nil, "")\n'
        "end\n"
    )
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script)]
    output = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    latency = {p: float(v) * _UNITS[u] for p, v, u in _WRK_LATENCY.findall(output)}
    requests = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests": int(requests.group(1)) if requests else 0,
        "errors": int(non_2xx.group(1)) if non_2xx else 0,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
    }


# -- the benchmark ----------------------------------------------------------------


@contextmanager
def _server(args: list[str], env: dict[str, str]) -> Iterator[tuple[str, int]]:
    process = subprocess.Popen(
        args, cwd=BENCHES, env={**os.environ, **env}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        for line in process.stdout:  # the server says where it listens once it is ready
            match = LISTENING.search(line)
            if match:
                yield match.group(1).decode(), process.pid
                break
        else:
            raise RuntimeError("the server exited before listening")
    finally:
        process.terminate()
        process.wait(30)
        process.stdout.close()


def _generator() -> str:
    """``wrk`` if it is installed (or forced by STEAD_BENCH_LOADGEN), else the Python one."""
    choice = os.environ.get("STEAD_BENCH_LOADGEN", "auto")
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    return choice


def _drive(url: str, total: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "load", url, RPC_PATH, str(total), str(CONNECTIONS)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _measure(url: str, pid: int, scratch: Path) -> dict[str, Any]:
    """Warm up, then measure; also the server's CPU time per request (load-independent)."""
    wrk = _generator() == "wrk"
    if wrk:
        run_wrk(url, RPC_PATH, WARMUP_SECONDS, CONNECTIONS, scratch)
    else:
        _drive(url, WARMUP)
    cpu_before = _cpu_seconds(pid)
    result = run_wrk(url, RPC_PATH, SECONDS, CONNECTIONS, scratch) if wrk else _drive(url, REQUESTS)
    result["cpu_us"] = (_cpu_seconds(pid) - cpu_before) / result["requests"] * 1e6
    return result


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pythonpath() -> str:
    return os.pathsep.join(filter(None, [str(BENCHES), os.environ.get("PYTHONPATH")]))


def _stead_command() -> list[str]:
    return [str(Path(sys.executable).parent / "stead")]


@pytest.mark.benchmark(group="http")
def test_durable_increment_rpc_over_http(benchmark: Any, report: Any, tmp_path: Path) -> None:
    serve = [*_stead_command(), "serve", "bench_http:runtime", "--port", "0"]
    env = {"STEAD_BENCH_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": _pythonpath()}

    def run() -> dict[str, Any]:
        with _server(serve, env) as (url, pid):
            return _measure(url, pid, tmp_path)

    stead_result = benchmark.pedantic(run, rounds=1, iterations=1)
    uvicorn = [sys.executable, "-m", "uvicorn", "--factory", "bench_http:bare_app", "--port", "0"]
    with _server([*uvicorn, "--no-access-log"], {"PYTHONPATH": _pythonpath()}) as (url, pid):
        bare = _measure(url, pid, tmp_path)

    assert stead_result["errors"] == 0 and bare["errors"] == 0
    rps = stead_result["rps"]
    report(
        f"\nHTTP durable increment, {OBJECTS:,} objects, {CONNECTIONS} keep-alive connections, "
        f"fsync durability, load from {_generator()} in its own process:"
    )
    for label, result in (("stead serve:   ", stead_result), ("bare Starlette:", bare)):
        report(
            f"  {label} {result['rps']:8,.0f} req/s  p50 {result['p50_ms']:.2f} ms  "
            f"p99 {result['p99_ms']:.2f} ms  server CPU {result['cpu_us']:.0f} us/request"
        )
    report("  (bare Starlette: plain uvicorn, no objects, no storage)")
    report(
        f"  target >= {TARGET_RPS:,} req/s: ratio {rps / TARGET_RPS:.2f} "
        f"({'met' if rps >= TARGET_RPS else 'NOT met'}); stead / bare Starlette = "
        f"{rps / bare['rps']:.2f}"
    )


if __name__ == "__main__" and sys.argv[1:2] == ["load"]:
    load_main(sys.argv[2:])
