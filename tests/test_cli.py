"""The ``stead`` command line: help, plugins, inspect, bench, serve's TARGET handling."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import stead
from stead._core import Engine
from stead.cli import _run, cli, main
from tests._apps.counter import Counter
from tests._apps.serving import Server, child_env, stead_command
from tests.test_plugins import make_distribution


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_lists_the_commands_and_their_environment_variables(runner: CliRunner) -> None:
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for command in ("serve", "plugins", "inspect", "bench"):
        assert command in top.output
    serve = runner.invoke(cli, ["serve", "--help"]).output
    for variable in (
        "STEAD_HOST",
        "STEAD_PORT",
        "STEAD_DATA_DIR",
        "STEAD_TOKEN",
        "STEAD_DURABILITY",
    ):
        assert variable in serve
    assert "module:attribute" in serve
    assert runner.invoke(cli, ["--version"]).output.strip().endswith(stead.__version__)


def test_plugins_lists_the_builtin_plugin(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["plugins", "--json"], env={"STEAD_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [
        {"name": "stead", "distribution": "stead", "version": stead.__version__, "bindings": []}
    ]
    table = runner.invoke(cli, ["plugins"], env={"STEAD_DISABLE_PLUGIN_AUTOLOAD": "1"}).output
    assert table.splitlines()[0].split() == ["plugin", "distribution", "version", "bindings"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("STEAD_PORT", "abc"),
        ("STEAD_PORT", "99999"),
        ("STEAD_MAX_BODY_BYTES", "1MB"),
        ("STEAD_MAX_BODY_BYTES", "-1"),
        ("STEAD_DISABLE_PLUGIN_AUTOLOAD", "maybe"),
    ],
)
def test_a_malformed_environment_variable_is_a_usage_error(
    runner: CliRunner, variable: str, value: str
) -> None:
    for args in (["plugins"], ["serve", "--help"], ["inspect", "."], ["bench", "--help"]):
        result = runner.invoke(cli, args, env={variable: value})
        assert result.exit_code == 2, (args, result.output)
        assert f"Error: invalid environment: {variable}" in result.output
        assert isinstance(result.exception, SystemExit)  # no traceback


def test_the_console_script_reports_a_malformed_environment_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEAD_PORT", "abc")
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])  # plugins are loaded before click parses anything
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "Error: invalid environment: STEAD_PORT must be an integer, not 'abc'\n"
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_colon", "module:attribute"),
        ("tests._apps.nothing_here:runtime", "cannot load"),
        ("tests._apps.counter:missing", "cannot load"),
        (
            "tests._apps.counter:Counter",
            "tests._apps.counter:Counter is a DurableObject class, not a stead.Runtime; serve a "
            "runtime that binds it, e.g. runtime = stead.Runtime({'COUNTER': Counter}, ",
        ),
        ("tests._apps.counter:Point", "tests._apps.counter:Point is a class, not a stead.Runtime"),
        ("tests._apps.counter:INVALID_RESPONSES", "is a dict, not a stead.Runtime"),
        ("tests._apps.targets:made_async", "is an async function"),
        (
            "tests._apps.targets:hides_async",
            "tests._apps.targets:hides_async() returned a coroutine, not a stead.Runtime",
        ),
    ],
)
def test_serve_rejects_bad_targets(runner: CliRunner, target: str, message: str) -> None:
    result = runner.invoke(cli, ["serve", target])
    assert result.exit_code == 2
    assert message in result.output


def test_serve_says_what_a_target_factory_returned(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "stead_cli_factory_app.py").write_text("def make():\n    return 42\n")
    monkeypatch.chdir(tmp_path)  # TARGET modules are imported from the current dir
    monkeypatch.syspath_prepend(str(tmp_path))
    result = runner.invoke(cli, ["serve", "stead_cli_factory_app:make"])
    assert result.exit_code == 2
    assert "stead_cli_factory_app:make() returned an int, not a stead.Runtime" in result.output


OWN_DATA_APP = """
import os

import stead


class Plain(stead.DurableObject):
    def ping(self) -> str:
        return "pong"


def make():
    # Its own data dir and durability, as an app configures them.
    return stead.Runtime(
        {"PLAIN": Plain},
        data_dir=os.environ["STEAD_TEST_DATA_DIR"],
        durability=os.environ["STEAD_TEST_DURABILITY"],
    )
"""


@pytest.fixture
def busy_port() -> Iterator[str]:
    """A port something listens on: a serve that gets past its checks stops there."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield str(busy.getsockname()[1])


@pytest.fixture
def own_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A TARGET whose runtime has its own data dir and durability (``STEAD_TEST_*``)."""
    (tmp_path / "stead_cli_own_data_app.py").write_text(OWN_DATA_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "stead_cli_own_data_app:make"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--data-dir", "elsewhere"], {}, "--data-dir/STEAD_DATA_DIR 'elsewhere' does not apply"),
        ([], {"STEAD_DATA_DIR": "elsewhere"}, "--data-dir/STEAD_DATA_DIR 'elsewhere' does not"),
        (["--durability", "none"], {}, "--durability/STEAD_DURABILITY 'none' does not apply"),
        ([], {"STEAD_DURABILITY": "fsync"}, "its runtime uses 'os'"),
    ],
)
def test_serve_refuses_data_options_a_target_runtime_would_ignore(
    runner: CliRunner,
    own_data: str,
    busy_port: str,
    data_dir: str,
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    target_env = {"STEAD_TEST_DATA_DIR": data_dir, "STEAD_TEST_DURABILITY": "os", **env}
    args = [*args, "--port", busy_port]
    result = runner.invoke(cli, ["serve", own_data, *args], env=target_env)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "with a TARGET" in result.output


def test_serve_accepts_data_options_that_match_the_target_runtime(
    runner: CliRunner, own_data: str, busy_port: str, data_dir: str
) -> None:
    env = {"STEAD_TEST_DATA_DIR": data_dir, "STEAD_TEST_DURABILITY": "os"}
    env["STEAD_DATA_DIR"] = data_dir  # an app configured by the same variable
    args = ["--data-dir", data_dir, "--durability", "os", "--port", busy_port]
    result = runner.invoke(cli, ["serve", own_data, *args], env=env)
    assert result.exit_code == 1, result.output
    assert "Error: the HTTP server did not start" in result.stderr


@pytest.mark.parametrize("module", ["stead", "stead.cli"])
def test_python_dash_m_runs_the_stead_command(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "inspect", "--help"],
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: stead inspect [OPTIONS] DATA_DIR")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "tests._apps.raises_on_import:runtime",
            "Error: importing tests._apps.raises_on_import failed: RuntimeError: this module fails",
        ),
        (
            "tests._apps.targets:failing",
            "Error: tests._apps.targets:failing() failed: RuntimeError: the factory failed",
        ),
    ],
)
def test_serve_reports_a_target_that_raises_as_an_error_not_a_traceback(
    runner: CliRunner, target: str, message: str
) -> None:
    result = runner.invoke(cli, ["serve", target])
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert isinstance(result.exception, SystemExit)  # no traceback


def test_serve_reports_a_port_in_use_as_an_error(runner: CliRunner) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(cli, ["serve", "tests._apps.targets:fresh", "--port", str(port)])
    assert result.exit_code == 1, result.output
    assert "Error: the HTTP server did not start" in result.stderr
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("missing", ["uvicorn", "starlette"])
def test_serve_without_the_server_extra_names_the_extra_to_install(missing: str) -> None:
    # A child whose import of the package fails, as after a plain `pip install stead`.
    code = f"import sys; sys.modules[{missing!r}] = None; from stead.cli import main; main()"
    child = subprocess.run(
        [sys.executable, "-c", code, "serve", "tests._apps.targets:fresh", "--port", "0"],
        capture_output=True, text=True, env=child_env(), timeout=60,
    )  # fmt: skip
    assert child.returncode == 1, child.stderr
    assert "Traceback" not in child.stderr
    assert (
        f"Error: stead serve needs the server extra ({missing} is not installed): "
        "pip install 'stead[server]'"
    ) in child.stderr


@pytest.mark.parametrize("var", ["NOEQUALS", "=value", "not-a-name=1", "_bind=x"])
def test_serve_rejects_a_malformed_var(runner: CliRunner, var: str) -> None:
    result = runner.invoke(cli, ["serve", "tests._apps.counter:runtime", "--var", var])
    assert result.exit_code == 2
    assert "Invalid value for --var" in result.output and "NAME=VALUE" in result.output


def test_a_malformed_var_environment_variable_is_a_usage_error(runner: CliRunner) -> None:
    for variable in ("STEAD_VAR_not-a-name", "STEAD_VAR__namespaces"):
        result = runner.invoke(cli, ["plugins"], env={variable: "1"})
        assert result.exit_code == 2
        assert variable in result.output


BROKEN_PLUGIN = """
import os

import stead

if os.environ.get("STEAD_TEST_BROKEN") == "import":
    raise ImportError("no module named 'foo'")


@stead.hookimpl
def stead_startup(runtime):
    if os.environ.get("STEAD_TEST_BROKEN") == "startup":
        raise RuntimeError("the startup hook failed")


@stead.hookimpl
def stead_shutdown(runtime):
    if os.environ.get("STEAD_TEST_BROKEN") == "shutdown":
        raise RuntimeError("the shutdown hook failed")
"""


@pytest.fixture
def broken_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    make_distribution(tmp_path / "site", "stead-broken", "stead_broken_cli_plugin", BROKEN_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("STEAD_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    return str(tmp_path / "data")


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("import", "Error: plugin 'stead_broken_cli_plugin' (from stead-broken) failed to import"),
        ("startup", "Error: starting the runtime failed: RuntimeError: the startup hook failed"),
    ],
)
def test_serve_reports_a_broken_plugin_as_an_error_not_a_traceback(
    runner: CliRunner, broken_plugin: str, broken: str, message: str
) -> None:
    args = ["serve", "--port", "0", "--durability", "none", "--data-dir", broken_plugin]
    result = runner.invoke(cli, args, env={"STEAD_TEST_BROKEN": broken})
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert isinstance(result.exception, SystemExit)  # no traceback
    # Nothing was left holding the data dir.
    Engine(broken_plugin, "none").close()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_reports_a_raising_shutdown_hook_as_an_error_not_a_traceback(
    broken_plugin: str, tmp_path: Path, sig: signal.Signals
) -> None:
    path = os.pathsep.join([str(tmp_path / "site"), child_env()["PYTHONPATH"]])
    env = {"STEAD_TEST_BROKEN": "shutdown", "PYTHONPATH": path}
    args = ["serve", "--durability", "none", "--data-dir", broken_plugin]
    with Server(args, env=env, exit_status=1) as server:
        assert server.stop(sig) == 1
    assert "Error: closing the runtime failed: RuntimeError: the shutdown hook failed" in (
        server.output
    )
    # The runtime logs the hook's traceback (once); the CLI adds none of its own.
    assert server.output.count("Traceback (most recent call last)") == 1
    assert 'cli.py", line' not in server.output
    Engine(broken_plugin, "none").close()  # the data dir was released


@pytest.mark.anyio
async def test_the_serve_help_example_works_with_the_pattern_catalog(runner: CliRunner) -> None:
    pytest.importorskip("stead_patterns")
    import httpx

    from stead.http import create_app

    help_text = runner.invoke(cli, ["serve", "--help"]).output
    example = re.search(r"curl -X POST localhost:8787(/objects/\S+)", help_text)
    assert example is not None, help_text
    runtime = stead.Runtime(plugins=True, durability="none")  # what `stead serve` serves
    app = create_app(runtime, token="")
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://localhost:8787") as client,
    ):
        response = await client.post(example.group(1))
    assert response.status_code == 200, response.text
    assert response.json() == {"result": 1}


def test_bench_prints_a_result_table(runner: CliRunner, tmp_path: Path) -> None:
    args = ["bench", "--objects", "10", "--requests", "300", "--concurrency", "8"]
    result = runner.invoke(cli, [*args, "--durability", "os", "--data-dir", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines()[2:] if line.strip())
    assert rows["requests"].strip() == "300"
    assert rows["throughput"].endswith("req/s")
    assert "increments" in result.stderr  # the progress bar's label


def test_bench_refuses_a_data_dir_in_use(runner: CliRunner, data_dir: str) -> None:
    holder = Engine(data_dir, "none")  # as a running server would
    try:
        result = runner.invoke(cli, ["bench", "--requests", "1", "--data-dir", data_dir])
    finally:
        holder.close()
    assert result.exit_code == 1
    assert "Error: " in result.stderr and "locked by another process" in result.stderr
    assert isinstance(result.exception, SystemExit)  # no traceback


def test_ctrl_c_cancels_the_running_coroutine_which_cleans_up_first() -> None:
    cleaned: list[str] = []

    async def work() -> None:
        try:
            # Ctrl+C while the coroutine waits (the loop runs the handler).
            asyncio.get_running_loop().call_soon(signal.raise_signal, signal.SIGINT)
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # cleanup that needs the loop (closing a runtime)
            cleaned.append("done")

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(work())
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert cleaned == ["done"]


# -- inspect -----------------------------------------------------------------


@pytest.fixture
def stored(data_dir: str) -> str:
    async def fill() -> None:
        async with stead.Runtime({"COUNTER": Counter}, data_dir=data_dir) as runtime:
            await runtime.env.COUNTER.get_by_name("alpha").increment(by=41)
            await runtime.env.COUNTER.get_by_name("beta").increment()

    asyncio.run(fill())
    return data_dir


def test_inspect_shows_objects_keys_and_values(runner: CliRunner, stored: str) -> None:
    result = runner.invoke(cli, ["inspect", stored, "--binding", "COUNTER", "--json"])
    assert result.exit_code == 0, result.output
    views = [json.loads(line) for line in result.output.splitlines()]
    by_name = {view["name"]: view for view in views}
    assert set(by_name) == {"alpha", "beta"}
    assert by_name["alpha"]["values"] == {"count": 41}
    assert by_name["alpha"]["binding"] == "COUNTER" and by_name["alpha"]["alarm"] is None
    assert len(by_name["alpha"]["id"]) == 64

    text = runner.invoke(cli, ["inspect", stored, "-b", "COUNTER", "-n", "alpha"]).output
    assert "name='alpha'" in text and "'count': 41" in text and "beta" not in text

    unknown = runner.invoke(cli, ["inspect", stored], env={"STEAD_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert unknown.output.count("<prefix ") == 2  # binding names unknown without --binding


class Assistant(stead.Agent):
    initial_state = {"n": 0}

    def go(self) -> None:
        self.ctx.storage.put("plain", 1)
        self.set_state({"n": 41, "todo": ["write report"]})
        self.schedule(3600, "remind", {"what": "x"})
        self.schedule("0 9 * * *", "remind", "daily")

    def remind(self, payload: object) -> None:
        pass


def test_inspect_shows_an_agents_state_and_schedules(runner: CliRunner, data_dir: str) -> None:
    async def fill() -> None:
        async with stead.Runtime({"AG": Assistant}, data_dir=data_dir) as runtime:
            await runtime.env.AG.get_by_name("one").go()

    asyncio.run(fill())
    result = runner.invoke(cli, ["inspect", data_dir, "-b", "AG", "--json"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert view["values"] == {"plain": 1}  # the state is not a user key
    assert view["state"] == {"n": 41, "todo": ["write report"]}
    schedules = {s["payload"] if s["kind"] == "cron" else "once": s for s in view["schedules"]}
    assert schedules["once"]["callback"] == "remind" and schedules["once"]["kind"] == "delayed"
    assert schedules["once"]["payload"] == {"what": "x"}
    assert schedules["daily"]["cron"] == "0 9 * * *"
    assert schedules["daily"]["time"].endswith("+00:00")  # an ISO date, as the alarm
    assert view["schedules_truncated"] is False

    text = runner.invoke(cli, ["inspect", data_dir, "-b", "AG"]).output
    assert "    agent state: {'n': 41, 'todo': ['write report']}" in text
    assert "agent schedule: remind({'what': 'x'}) at 20" in text
    assert "agent schedule: remind('daily') cron '0 9 * * *', next 20" in text


class Odd(stead.DurableObject):
    def put(self, key: str, kind: str) -> None:
        values = {
            "tuple-keys": {(1, 2): "x", 3: "y"},
            "nan": [float("nan"), -float("inf")],
            "colliding": {1: "int", "1": "str", None: "none", "None": "str none"},
        }
        self.ctx.storage.put(key, values[kind])


def test_inspect_json_is_strict_json_for_any_stored_value(runner: CliRunner, data_dir: str) -> None:
    async def fill() -> None:
        async with stead.Runtime({"ODD": Odd}, data_dir=data_dir) as runtime:
            await runtime.env.ODD.get_by_name("a").put("k", "tuple-keys")
            await runtime.env.ODD.get_by_name("b").put("k", "nan")
            await runtime.env.ODD.get_by_name("c").put("k", "colliding")

    asyncio.run(fill())
    result = runner.invoke(cli, ["inspect", data_dir, "--binding", "ODD", "--json"])
    assert result.exit_code == 0, result.output

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    views = [json.loads(line, parse_constant=refuse) for line in result.output.splitlines()]
    values = {view["name"]: view["values"]["k"] for view in views}
    # Keys that would collide once turned into strings: [key, value] pairs, none lost.
    colliding = [[1, "int"], ["1", "str"], [None, "none"], ["None", "str none"]]
    assert values == {"a": {"(1, 2)": "x", "3": "y"}, "b": ["nan", "-inf"], "c": colliding}


def test_inspect_does_not_change_the_data_dir(runner: CliRunner, stored: str) -> None:
    before = {path.name: path.read_bytes() for path in Path(stored).rglob("*") if path.is_file()}
    assert runner.invoke(cli, ["inspect", stored, "-b", "COUNTER"]).exit_code == 0
    after = {path.name: path.read_bytes() for path in Path(stored).rglob("*") if path.is_file()}
    assert after == before


def test_inspect_of_a_dir_without_lock_changes_no_file_and_adds_only_lock(
    runner: CliRunner, stored: str
) -> None:
    # A copied backup has no LOCK: inspecting it adds the empty lock file, as
    # docs/cli.md says, and changes nothing else.
    (Path(stored) / "LOCK").unlink()
    before = {path.name: path.read_bytes() for path in Path(stored).iterdir()}
    assert runner.invoke(cli, ["inspect", stored, "-b", "COUNTER"]).exit_code == 0
    after = {path.name: path.read_bytes() for path in Path(stored).iterdir()}
    assert after == {**before, "LOCK": b""}
    docs = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    assert "no file in the dir is written" not in docs
    assert "gets the empty `LOCK` file" in " ".join(docs.split())


def test_inspect_reports_a_corrupt_data_dir(runner: CliRunner, stored: str) -> None:
    (segment,) = Path(stored).glob("seg-*.log")
    data = bytearray(segment.read_bytes())
    data[40] ^= 0xFF  # inside the first record, with valid records after it
    segment.write_bytes(bytes(data))
    result = runner.invoke(cli, ["inspect", stored])
    assert result.exit_code == 1
    assert f"Error: cannot read {stored}: corrupt record in" in result.output
    assert isinstance(result.exception, SystemExit)  # no traceback


def test_inspect_changes_no_file_even_with_a_torn_tail(runner: CliRunner, stored: str) -> None:
    # A crash in the middle of a write leaves a torn last record; inspecting the
    # dir must not truncate it (the evidence) nor touch anything else.
    (segment,) = Path(stored).glob("seg-*.log")
    data = segment.read_bytes()
    end = len(data.rstrip(b"\0"))  # records end where the reserved zeros begin
    segment.write_bytes(data[: end - 3])
    before = {path: path.read_bytes() for path in Path(stored).iterdir()}
    result = runner.invoke(cli, ["inspect", stored])
    assert result.exit_code == 0, result.output
    assert {path: path.read_bytes() for path in Path(stored).iterdir()} == before


def test_inspect_refuses_a_dir_that_is_not_a_data_dir(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["inspect", str(tmp_path)])
    assert result.exit_code == 1
    assert "not a stead data dir" in result.output


# -- against a running server (subprocesses) --------------------------------------


@pytest.mark.slow
def test_inspect_and_a_second_server_refuse_a_data_dir_in_use(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    env = {"STEAD_TEST_DATA_DIR": data}
    with Server(["serve", "tests._apps.counter:runtime"], env=env):
        inspect = subprocess.run(
            [*stead_command(), "inspect", data], capture_output=True, text=True,
            env=child_env(), timeout=60,
        )  # fmt: skip
        assert inspect.returncode == 1
        assert "in use by a running stead process" in inspect.stderr
        second = subprocess.run(
            [*stead_command(), "serve", "tests._apps.counter:runtime", "--port", "0"],
            capture_output=True, text=True, env=child_env(env), timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert "another `stead serve`" in second.stderr


@pytest.mark.slow
def test_serve_gives_the_objects_vars_from_options_and_the_environment(tmp_path: Path) -> None:
    import httpx

    env = {
        "STEAD_TEST_DATA_DIR": str(tmp_path / "data"),
        "STEAD_VAR_REGION": "eu-west",
        "STEAD_VAR_API_KEY": "from-environment",
    }
    args = ["serve", "tests._apps.counter:runtime", "--var", "API_KEY=from-option", "--var", "E="]
    with Server(args, env=env) as server:

        def var(name: str) -> object:
            url = f"{server.url}/objects/PLAIN/a/rpc/var"
            response = httpx.post(url, json={"args": [name]}, timeout=30)
            assert response.status_code == 200, response.text
            return response.json()["result"]

        assert var("REGION") == "eu-west"
        assert var("API_KEY") == "from-option"  # the option wins over the environment
        assert var("E") == ""
        assert var("MISSING") is None
    # A var named like a binding is refused at start, naming it.
    clash = subprocess.run(
        [*stead_command(), "serve", "tests._apps.counter:runtime", "--port", "0",
         "--var", "PLAIN=x"],
        capture_output=True, text=True, env=child_env(env), timeout=60,
    )  # fmt: skip
    assert clash.returncode == 1
    assert "'PLAIN' is both a binding and a var" in clash.stderr


@pytest.mark.slow
def test_serve_reads_its_options_from_the_environment(tmp_path: Path) -> None:
    data = tmp_path / "from-env"
    env = {"STEAD_DATA_DIR": str(data), "STEAD_DURABILITY": "os", "STEAD_TOKEN": "tok"}
    with Server(["serve"], env=env) as server:
        import httpx

        assert httpx.get(f"{server.url}/metrics").status_code == 401
        headers = {"Authorization": "Bearer tok"}
        assert httpx.get(f"{server.url}/metrics", headers=headers).status_code == 200
    assert (data / "secret").exists()
