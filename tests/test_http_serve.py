"""``stead serve`` in a subprocess, over real HTTP: restarts, bad input, fuzzing the OpenAPI."""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests._apps.serving import Server

pytestmark = pytest.mark.slow

TARGET = "tests._apps.counter:runtime"
TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def serve(data_dir: Path, *, token: str | None = None, body_limit: int | None = None) -> Server:
    env = {"STEAD_TEST_DATA_DIR": str(data_dir), "STEAD_TEST_DURABILITY": "fsync"}
    if token:
        env["STEAD_TOKEN"] = token
    if body_limit:
        env["STEAD_MAX_BODY_BYTES"] = str(body_limit)
    return Server(["serve", TARGET], env=env)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    with serve(tmp_path) as server, httpx.Client(base_url=server.url) as client:
        for expected in (1, 2, 3):
            response = client.post("/objects/COUNTER/persist/rpc/increment")
            assert response.json() == {"result": expected}
        assert client.get("/objects/COUNTER/persist/fetch/count").json() == {"count": 3}
    assert server.returncode == 0
    with serve(tmp_path) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/objects/COUNTER/persist/rpc/get").json() == {"result": 3}
        listing = client.get("/objects/COUNTER").json()
        assert [entry["name"] for entry in listing["ids"]] == ["persist"]
        code = server.stop(signal.SIGTERM)
    assert code == 0


def test_the_log_shows_why_a_handler_failed(tmp_path: Path) -> None:
    with serve(tmp_path) as server, httpx.Client(base_url=server.url) as client:
        response = client.post("/objects/COUNTER/a/rpc/fail", json={"args": ["kaput"]})
        assert response.json() == {"error": {"type": "ValueError", "message": "kaput"}}
        output = server.wait_for_output("ValueError: kaput")  # the handler's traceback
        assert re.search(r"INFO: +stead\.[a-z.]+: .*\nTraceback \(most recent call last\)", output)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE stands in for a full disk")
def test_a_failed_storage_engine_fails_healthz_and_exits_1(tmp_path: Path) -> None:
    env = {"STEAD_TEST_DATA_DIR": str(tmp_path)}
    server = Server(["serve", "tests._apps.diskfull:runtime"], env=env, exit_status=1)
    with server, httpx.Client(base_url=server.url) as client:
        assert client.post("/objects/DISK/a/rpc/write", json={"args": [10]}).status_code == 200
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.post("/objects/DISK/a/rpc/fill").status_code == 200
        for name, size in (("a", 1_500_000), ("b", 10)):  # the write that fails, then any write
            response = client.post(f"/objects/DISK/{name}/rpc/write", json={"args": [size]})
            assert response.status_code == 503
            assert response.json()["error"]["type"] == "StorageError"
        health = client.get("/healthz")
        assert health.status_code == 503
        assert health.json()["error"]["type"] == "StorageError"
        assert server.stop(signal.SIGTERM) == 1
    shutdown = server.output.split("Finished server process")[-1]  # after uvicorn's last line
    assert "Traceback" not in shutdown
    last = shutdown.strip().splitlines()[-1]
    assert last.startswith("Error: ") and last.endswith(
        "nothing written after the failure was saved)"
    )


BAD_REQUESTS: list[tuple[str, str, dict[str, object], int, str]] = [
    # (method, path, httpx keyword arguments, status, error type)
    (
        "POST",
        "/objects/COUNTER/victim/rpc/increment",
        {"content": b"{not json"},
        400,
        "MalformedJSON",
    ),
    (
        "POST",
        "/objects/COUNTER/victim/rpc/increment",
        {"json": {"args": ["x"]}},
        400,
        "InvalidArguments",
    ),
    (
        "POST",
        "/objects/COUNTER/victim/rpc/increment",
        {"json": {"kwargs": {"by": None}}},
        400,
        "InvalidArguments",
    ),
    (
        "POST",
        "/objects/COUNTER/victim/rpc/increment",
        {"json": {"args": [1, 2, 3]}},
        400,
        "InvalidArguments",
    ),
    (
        "POST",
        "/objects/COUNTER/victim/rpc/increment",
        {"json": {"bogus": 1}},
        400,
        "InvalidArguments",
    ),
    (
        "POST",
        "/objects/COUNTER/victim/rpc/increment",
        {"json": {"args": [2**80]}},
        400,
        "InvalidArguments",
    ),
    ("POST", "/objects/NOPE/victim/rpc/increment", {}, 404, "UnknownBindingError"),
    ("POST", "/objects/COUNTER/victim/rpc/nope", {}, 404, "UnknownMethodError"),
    ("POST", "/objects/COUNTER/victim/rpc/_private", {}, 404, "UnknownMethodError"),
    (
        "POST",
        "/objects/COUNTER/victim/rpc/increment",
        {"content": b"[" * 5000},
        413,
        "PayloadTooLarge",
    ),
    ("POST", "/objects/COUNTER//rpc/increment", {}, 400, "InvalidName"),
    ("POST", "/objects/COUNTER/" + "v" * 2049 + "/rpc/increment", {}, 400, "InvalidName"),
    ("GET", "/objects/COUNTER/victim/rpc/increment", {}, 405, "MethodNotAllowed"),
    ("GET", "/objects/COUNTER?limit=nope", {}, 400, "InvalidQuery"),
    ("GET", "/objects/COUNTER?after=1234", {}, 400, "InvalidIdError"),
]


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[httpx.Client]:
    with (
        serve(tmp_path, token=TOKEN, body_limit=4096) as server,
        httpx.Client(base_url=server.url, headers=AUTH) as client,
    ):
        yield client


def test_bad_input_gets_json_errors_and_leaves_data_unchanged(guarded: httpx.Client) -> None:
    assert (
        guarded.post("/objects/COUNTER/victim/rpc/increment", json={"args": [5]}).status_code == 200
    )
    before = guarded.get("/objects/COUNTER").json()

    for method, path, options, status, type_name in BAD_REQUESTS:
        response = guarded.request(method, path, **options)  # type: ignore[arg-type]
        assert response.status_code == status, (method, path, response.text)
        assert response.json()["error"]["type"] == type_name, (path, response.text)
        assert "Traceback" not in response.text
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        unauthenticated = httpx.post(
            guarded.base_url.join("/objects/COUNTER/victim/rpc/increment"), headers=headers
        )
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["error"]["type"] == "Unauthorized"

    assert guarded.get("/healthz").json() == {"status": "ok"}
    assert guarded.post("/objects/COUNTER/victim/rpc/get").json() == {"result": 5}
    assert guarded.get("/objects/COUNTER").json() == before


# Methods of the test app that raise on purpose (a 500 is their correct answer).
DESIGNED_TO_FAIL = ("/rpc/fail", "/rpc/unencodable")


def test_schemathesis_finds_no_server_errors(tmp_path: Path) -> None:
    schemathesis = pytest.importorskip("schemathesis")  # the dev extra has it
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    with serve(tmp_path) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        failures: list[str] = []
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path.endswith(DESIGNED_TO_FAIL):
                continue

            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def check(case: Any) -> None:  # a schemathesis.Case
                response = case.call()
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path}: {response.text}")
                case.validate_response(response, checks=[not_a_server_error])

            check()
        assert failures == []
        assert "Traceback" not in server.output


# -- signals ------------------------------------------------------------------

SIGNALS = [signal.SIGTERM, signal.SIGINT]


def serve_signals(data_dir: Path, *, hold_start: bool = False) -> Server:
    env = {"STEAD_TEST_DATA_DIR": str(data_dir), "STEAD_TEST_HOLD_START": str(int(hold_start))}
    return Server(["serve", "tests._apps.signals:runtime"], env=env, wait_listening=not hold_start)


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda sig: sig.name)
def test_a_signal_while_starting_stops_the_server_once_started(
    tmp_path: Path, sig: signal.Signals
) -> None:
    with serve_signals(tmp_path, hold_start=True) as server:
        server.wait_for_output("holding start")
        server.send_signal(sig)
        server.wait_for_output(f"stead: {sig.name} while starting")
        server.send_line("go on")
        assert server.wait() == 0, server.output
    assert "Uvicorn running" not in server.output
    assert "Traceback" not in server.output


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda sig: sig.name)
def test_a_second_signal_closes_the_runtime_now(tmp_path: Path, sig: signal.Signals) -> None:
    with serve_signals(tmp_path) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/objects/LINGER/a/rpc/linger").json() == {"result": 1}
        server.send_signal(sig)  # close() now waits for the lingering wait_until task
        server.wait_for_output("Finished server process")
        server.send_signal(sig)
        server.wait_for_output(f"stead: {sig.name}: closing now")
        assert server.wait() == 0, server.output
    assert "Traceback" not in server.output
    with serve_signals(tmp_path) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/objects/LINGER/a/rpc/linger").json() == {"result": 2}
