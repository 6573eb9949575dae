"""The catalog against a real ``stead serve`` in a subprocess (no TARGET: plugins only).

Covers the issue's acceptance for the patterns: every binding answers over
HTTP, the rate limiter answers 429 with ``Retry-After``, a session and a
leader lease expire by alarm, and state survives a server restart.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow

_SCRIPT = Path(sys.executable).with_name("stead")
# The console script next to this interpreter, else the CLI through the interpreter.
STEAD = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "from stead.cli import main; main()"]
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Server:
    """``stead serve`` on a data dir; ``restart`` keeps the dir and the port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(base_url=self.base, timeout=10)

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STEAD_")}
        command = [*STEAD, "serve", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir), "--log-level", "warning"]
        self.process = subprocess.Popen(command, env=env)
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, "stead serve exited"
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "stead serve did not come up"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a graceful shutdown, exit code 0
            try:
                assert self.process.wait(timeout=30) == 0
            finally:
                if self.process.poll() is None:
                    self.process.kill()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush; what was acknowledged must be on disk."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def fetch(self, binding: str, name: str, path: str, body: Any = None) -> httpx.Response:
        url = f"/objects/{binding}/{name}/fetch{path}"
        if body is None:
            return self.client.get(url)
        return self.client.post(url, json=body)

    def rpc(self, binding: str, name: str, method: str, *args: Any) -> Any:
        response = self.client.post(f"/objects/{binding}/{name}/rpc/{method}", json={"args": args})
        assert response.status_code == 200, response.text
        return response.json()["result"]

    def names(self, binding: str) -> list[str]:
        return [entry["name"] for entry in self.client.get(f"/objects/{binding}").json()["ids"]]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    served = Server(tmp_path / "stead-data")
    served.start()
    try:
        yield served
    finally:
        served.stop()
        served.client.close()


def _wait_for(condition: Any, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_every_binding_is_served(server: Server) -> None:
    check = server.fetch("RATE_LIMITER", "k", "/check?limit=5&window=60000")
    assert check.json()["allowed"] is True
    assert server.fetch("SESSION_MANAGER", "s", "/create", {"userId": "u"}).status_code == 200
    assert server.fetch("FEATURE_FLAGS", "g", "/set", {"name": "f", "enabled": True}).json() == {
        "set": True
    }
    assert server.fetch("COUNTER", "c", "/increment", {"key": "k"}).json() == {"buffered": True}
    acquired = server.fetch("LEADER_ELECTION", "e", "/acquire", {"candidateId": "w"})
    assert acquired.json() == {"acquired": True, "renewed": False}
    registered = server.fetch("CACHE_COORDINATOR", "cc", "/register", {"key": "k", "store": "s"})
    assert registered.json() == {"registered": True}
    steps = {"workflowId": "w", "steps": [{"stepId": "a"}]}
    assert server.fetch("WORKFLOW_CHECKPOINT", "w", "/create", steps).json()["created"] is True
    assert server.fetch("RAW_COUNTER", "r", "/increment").json() == {"count": 1}
    assert server.client.post("/objects/SERVER_COUNTER/s/fetch/increment").json() == {"count": 1}
    assert server.rpc("RPC_COUNTER", "r", "increment") == 1
    assert server.fetch("AGENT_COUNTER", "a", "/increment").json() == {"count": 1}
    put = server.client.put("/objects/STORAGE_SIDECAR/e/fetch/?key=k", json={"v": 1})
    assert put.json() == {"key": "k", "written": True}
    assert server.fetch("BUDGET_GOVERNOR", "g", "/status").json()["processors"] == []
    assert server.fetch("ENRICHMENT_CONTROLLER", "c", "/status").json()["batchSize"] == 10
    ignored = server.fetch("BRAND_AGENT", "brand:x", "/event", {"type": "x", "payload": {}})
    assert ignored.json() == {"accepted": True, "action": "ignored"}


def test_every_binding_with_rpc_methods_answers_rpc(server: Server) -> None:
    # RAW_COUNTER and SERVER_COUNTER are the layer guide's fetch-only objects.
    assert server.rpc("RATE_LIMITER", "k", "check", 5, 60_000)["allowed"] is True
    assert server.rpc("SESSION_MANAGER", "s", "peek") is None
    assert server.rpc("FEATURE_FLAGS", "g", "evaluate", "f", "u")["reason"] == "not-found"
    assert server.rpc("COUNTER", "c", "counts") == {}
    assert server.rpc("COUNTER", "c", "flush") is None
    assert server.rpc("LEADER_ELECTION", "e", "current") == {"leader": None, "acquiredAt": None}
    assert server.rpc("CACHE_COORDINATOR", "cc", "get_entry", "k") is None
    assert server.rpc("WORKFLOW_CHECKPOINT", "w", "status") is None
    assert server.rpc("RPC_COUNTER", "r", "get_count") == 0
    assert server.rpc("AGENT_COUNTER", "a", "reset_daily") is None
    assert server.rpc("STORAGE_SIDECAR", "e", "append", "k", 1) == 1
    assert server.rpc("BUDGET_GOVERNOR", "g", "status")["processors"] == []
    assert server.rpc("ENRICHMENT_CONTROLLER", "c", "status")["status"] == "running"
    assert server.rpc("BRAND_AGENT", "brand:x", "decision_cycle") is None
    unknown = server.client.post("/objects/RAW_COUNTER/r/rpc/increment")
    assert unknown.status_code == 404


def test_rate_limiter_answers_429_with_retry_after(server: Server) -> None:
    for _ in range(2):
        assert server.fetch("RATE_LIMITER", "ip", "/check?limit=2&window=30000").status_code == 200
    denied = server.fetch("RATE_LIMITER", "ip", "/check?limit=2&window=30000")
    assert denied.status_code == 429
    assert denied.headers["Retry-After"] == "30"
    assert denied.json()["allowed"] is False


def test_session_and_lease_expire_by_alarm(server: Server) -> None:
    server.fetch("SESSION_MANAGER", "short", "/create", {"userId": "u", "ttlMs": 500})
    server.fetch("LEADER_ELECTION", "job", "/acquire", {"candidateId": "w", "ttlMs": 500})
    _wait_for(lambda: "short" not in server.names("SESSION_MANAGER"))
    assert server.fetch("SESSION_MANAGER", "short", "/get").status_code == 404
    _wait_for(lambda: server.fetch("LEADER_ELECTION", "job", "/leader").json()["leader"] is None)


def test_state_survives_a_restart(server: Server) -> None:
    server.fetch("RAW_COUNTER", "r", "/increment")
    server.fetch("FEATURE_FLAGS", "g", "/set", {"name": "f", "enabled": True, "allowlist": ["u"]})
    server.fetch("COUNTER", "c", "/increment", {"key": "k", "amount": 4})
    server.fetch("COUNTER", "c", "/flush", {})
    server.fetch("SESSION_MANAGER", "s", "/create", {"userId": "u"})
    server.rpc("RPC_COUNTER", "r", "increment")
    server.restart()
    assert server.fetch("RAW_COUNTER", "r", "/get").json() == {"count": 1}
    evaluated = server.fetch("FEATURE_FLAGS", "g", "/evaluate", {"flag": "f", "entityId": "u"})
    assert evaluated.json()["reason"] == "allowlisted"
    assert server.fetch("COUNTER", "c", "/get?key=k").json() == {"key": "k", "count": 4}
    assert server.fetch("SESSION_MANAGER", "s", "/get").json()["userId"] == "u"
    assert server.rpc("RPC_COUNTER", "r", "get_count") == 1


def test_fuzzing_the_catalogs_rpc_routes_finds_no_server_error(server: Server) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any("RATE_LIMITER" in operation.path for operation in operations)
    for operation in operations:

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: Any) -> None:
            response = case.call()
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.text}")
            case.validate_response(response, checks=[not_a_server_error])

        check()
    assert failures == []


@pytest.mark.crash
def test_acknowledged_state_survives_sigkill(server: Server) -> None:
    for _ in range(2):
        assert server.fetch("RATE_LIMITER", "ip", "/check?limit=2&window=60000").status_code == 200
    server.fetch("SESSION_MANAGER", "s", "/create", {"userId": "u"})
    steps = {"workflowId": "w", "steps": [{"stepId": "a"}, {"stepId": "b"}]}
    server.fetch("WORKFLOW_CHECKPOINT", "w", "/create", steps)
    server.fetch("WORKFLOW_CHECKPOINT", "w", "/next", {})
    server.fetch("WORKFLOW_CHECKPOINT", "w", "/complete-step", {"output": 1})
    server.fetch("COUNTER", "c", "/increment", {"key": "k", "amount": 5})
    server.fetch("COUNTER", "c", "/flush", {})
    server.fetch("COUNTER", "c", "/increment", {"key": "k", "amount": 7})  # buffered only
    server.kill()
    server.start()
    assert server.fetch("RATE_LIMITER", "ip", "/check?limit=2&window=60000").status_code == 429
    assert server.fetch("SESSION_MANAGER", "s", "/get").json()["userId"] == "u"
    assert server.fetch("WORKFLOW_CHECKPOINT", "w", "/next", {}).json()["stepId"] == "b"
    # The documented trade-off: the flushed 5 survive, the buffered 7 are gone.
    assert server.fetch("COUNTER", "c", "/get?key=k").json() == {"key": "k", "count": 5}
