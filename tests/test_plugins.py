"""The plugin system: loading order, the facade, entry points, a real pip-installed plugin."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from starlette.routing import Route

import stead
from stead.plugins import PluginError, Plugins
from tests._apps.serving import Server, stead_command

TESTS = Path(__file__).resolve().parent
HELLO_SOURCE = TESTS / "_plugins" / "stead-hello"


class Alpha(stead.DurableObject):
    def name(self) -> str:
        return "alpha"


class Beta(stead.DurableObject):
    def name(self) -> str:
        return "beta"


class AlphaPlugin:
    @stead.hookimpl
    def stead_bindings(self) -> dict[str, type[stead.DurableObject]]:
        return {"ALPHA": Alpha}


class BetaPlugin:
    @stead.hookimpl
    def stead_bindings(self) -> dict[str, type[stead.DurableObject]]:
        return {"BETA": Beta}


# -- the facade, with plugin objects passed in -------------------------------------


def test_builtins_come_first_then_extra_plugins() -> None:
    plugins = Plugins.load(autoload=False, extra=[AlphaPlugin(), BetaPlugin()])
    infos = plugins.describe()
    assert infos[0].name == "stead"
    assert (infos[0].distribution, infos[0].version) == ("stead", stead.__version__)
    assert infos[0].bindings == ()
    assert [info.bindings for info in infos[1:]] == [("ALPHA",), ("BETA",)]
    assert plugins.bindings() == {"ALPHA": Alpha, "BETA": Beta}


def test_a_binding_registered_twice_is_an_error_naming_both_plugins() -> None:
    class AlphaAgain:
        @stead.hookimpl
        def stead_bindings(self) -> dict[str, type[stead.DurableObject]]:
            return {"ALPHA": Beta}

    plugins = Plugins.load(autoload=False, extra=[AlphaPlugin(), AlphaAgain()])
    with pytest.raises(PluginError, match="'ALPHA'") as caught:
        plugins.bindings()
    assert str(caught.value).count("plugin") >= 2


def test_a_misspelled_hook_is_refused() -> None:
    class Typo:
        @stead.hookimpl
        def stead_binding(self) -> dict[str, type[stead.DurableObject]]:
            return {}

    # A PluginError (which the CLI reports in one line), not pluggy's own exception.
    with pytest.raises(PluginError, match=r"plugin '.*' implements 'stead_binding'") as caught:
        Plugins.load(autoload=False, extra=[Typo()])
    assert "stead_bindings" in str(caught.value)  # the list of hooks, for the typo's fix


def test_a_hook_with_arguments_the_hookspec_lacks_is_refused() -> None:
    class WrongArgument:
        @stead.hookimpl
        def stead_routes(self, app: Any) -> list[Route]:  # the hookspec's is `runtime`
            return []

    with pytest.raises(PluginError, match=r"cannot be registered.*app"):
        Plugins.load(autoload=False, extra=[WrongArgument()])


def test_one_plugin_object_passed_twice_is_a_plugin_error() -> None:
    alpha = AlphaPlugin()
    with pytest.raises(PluginError, match="cannot be registered"):
        Plugins.load(autoload=False, extra=[alpha, alpha])


def test_a_raising_bindings_hook_is_a_plugin_error_naming_the_plugin() -> None:
    class Raising:
        @stead.hookimpl
        def stead_bindings(self) -> dict[str, type[stead.DurableObject]]:
            raise RuntimeError("config file missing")

    plugins = Plugins.load(autoload=False, extra=[Raising()])
    with pytest.raises(PluginError, match="RuntimeError: config file missing") as caught:
        plugins.bindings()
    assert "stead_bindings raised" in str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_a_raising_cli_hook_is_a_plugin_error_naming_the_plugin() -> None:
    class Raising:
        @stead.hookimpl
        def stead_cli(self, cli: click.Group) -> None:
            raise RuntimeError("no terminal")

    plugins = Plugins.load(autoload=False, extra=[AlphaPlugin(), Raising()])
    with pytest.raises(PluginError, match="stead_cli raised RuntimeError: no terminal"):
        plugins.extend_cli(click.Group("stead"))


def test_bindings_must_be_a_dict() -> None:
    class Wrong:
        @stead.hookimpl
        def stead_bindings(self) -> Any:
            return [Alpha]

    with pytest.raises(PluginError, match="list"):
        Plugins.load(autoload=False, extra=[Wrong()]).bindings()


def test_routes_come_in_registration_order_and_cli_commands_are_added() -> None:
    async def endpoint(request: Any) -> Any:
        raise AssertionError

    class First:
        @stead.hookimpl
        def stead_routes(self, runtime: Any) -> list[Route]:
            return [Route("/first", endpoint)]

        @stead.hookimpl
        def stead_cli(self, cli: click.Group) -> None:
            cli.add_command(click.Command("first-command"))

    class Second:
        @stead.hookimpl
        def stead_routes(self) -> list[Route]:  # pluggy lets a hook omit arguments
            return [Route("/second", endpoint)]

    plugins = Plugins.load(autoload=False, extra=[First(), Second()])
    routes = plugins.routes(runtime=None)  # type: ignore[arg-type]
    assert [route.path for route in routes if isinstance(route, Route)] == ["/first", "/second"]
    group = click.Group("stead")
    plugins.extend_cli(group)
    assert "first-command" in group.commands


# -- entry points, from a distribution on sys.path ------------------------------------

PLUGIN_MODULE = """
import stead

calls = []


class Pinged(stead.DurableObject):
    def ping(self) -> str:
        return "pong"


@stead.hookimpl
def stead_bindings():
    return {"PINGED": Pinged}


@stead.hookimpl
def stead_startup(runtime):
    calls.append(("startup", sorted(runtime.bindings)))


@stead.hookimpl
def stead_shutdown(runtime):
    calls.append(("shutdown", None))
"""


def make_distribution(
    root: Path, name: str, module: str, source: str, entry_point: str | None = None
) -> None:
    """A real installed distribution: a module and its .dist-info with an entry point
    (named ``entry_point``, by default as the module)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-0.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.9\n")
    (info / "entry_points.txt").write_text(f"[stead]\n{entry_point or module} = {module}\n")


@pytest.fixture
def pinged_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    module = "stead_pinged_plugin"
    make_distribution(tmp_path, "stead-pinged", module, PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("STEAD_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    yield module
    sys.modules.pop(module, None)


def test_entry_points_are_loaded_with_their_distribution(pinged_distribution: str) -> None:
    plugins = Plugins.load()
    info = next(info for info in plugins.describe() if info.name == pinged_distribution)
    assert (info.distribution, info.version, info.bindings) == ("stead-pinged", "0.9", ("PINGED",))


def test_the_kill_switch_skips_entry_points(
    pinged_distribution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEAD_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "PINGED" not in Plugins.load().bindings()
    assert "PINGED" in Plugins.load(autoload=True).bindings()


def test_a_plugin_that_fails_to_import_names_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_distribution(tmp_path, "stead-broken", "stead_broken_plugin", "raise ImportError('nope')")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"stead_broken_plugin.*stead-broken.*nope"):
        Plugins.load(autoload=True)


@pytest.mark.anyio
async def test_runtime_with_plugins_serves_their_bindings_and_runs_lifecycle_hooks(
    pinged_distribution: str, data_dir: str
) -> None:
    async with stead.Runtime(data_dir=data_dir, plugins=True) as runtime:
        module = sys.modules[pinged_distribution]
        assert module.calls[0][0] == "startup" and "PINGED" in module.calls[0][1]
        assert await runtime.env.PINGED.get_by_name("x").ping() == "pong"
    assert module.calls[-1] == ("shutdown", None)


def test_two_distributions_with_one_plugin_name_is_an_error_naming_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both call their entry point "tally": one used to be dropped, bindings and all.
    make_distribution(
        tmp_path / "a", "stead-tally-one", "stead_tally_one", TALLY % "ONE", entry_point="tally"
    )
    make_distribution(
        tmp_path / "b", "stead-tally-two", "stead_tally_two", TALLY % "TWO", entry_point="tally"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    with pytest.raises(PluginError, match="'tally'") as caught:
        Plugins.load(autoload=True)
    assert "stead-tally-one" in str(caught.value) and "stead-tally-two" in str(caught.value)


def test_one_distribution_seen_twice_on_sys_path_is_loaded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for copy in ("a", "b"):
        make_distribution(tmp_path / copy, "stead-tally-one", "stead_tally_one", TALLY % "ONE")
        monkeypatch.syspath_prepend(str(tmp_path / copy))
    plugins = Plugins.load(autoload=True)
    assert [info.name for info in plugins.describe()].count("stead_tally_one") == 1
    assert "TALLY_ONE" in plugins.bindings()


def test_an_installed_plugin_also_passed_as_extra_is_loaded_once(
    pinged_distribution: str,
) -> None:
    # A plugin's author testing it while it is installed (pip install -e .).
    module = importlib.import_module(pinged_distribution)
    plugins = Plugins.load(autoload=True, extra=[module])
    mine = [info for info in plugins.describe() if "PINGED" in info.bindings]
    assert [(info.distribution, info.version) for info in mine] == [("stead-pinged", "0.9")]
    assert plugins.bindings()["PINGED"] is module.Pinged


def test_an_installed_plugin_name_taken_by_another_extra_plugin_is_refused(
    pinged_distribution: str,
) -> None:
    other = types.ModuleType(pinged_distribution)  # another module of the same name
    with pytest.raises(PluginError, match=f"{pinged_distribution!r}.*stead-pinged"):
        Plugins.load(autoload=True, extra=[other])


TYPO_PLUGIN = """
import stead


@stead.hookimpl
def stead_binding():  # should be stead_bindings
    return {}
"""

RAISING_PLUGIN = """
import stead


@stead.hookimpl
def stead_bindings():
    raise RuntimeError("config file missing")
"""


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (TYPO_PLUGIN, " implements 'stead_binding', which is no stead hook (the hooks are"),
        (RAISING_PLUGIN, ": stead_bindings raised RuntimeError: config file missing\n"),
    ],
    ids=["misspelled hook", "raising stead_bindings"],
)
def test_the_cli_reports_a_broken_plugin_in_one_line(
    tmp_path: Path, source: str, message: str
) -> None:
    make_distribution(tmp_path, "stead-broken", "stead_broken_plugin", source)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "STEAD_DISABLE_PLUGIN_AUTOLOAD": "0"}
    named = "plugin 'stead_broken_plugin' (from stead-broken)"
    listed = run_stead("plugins", **env)
    assert listed.returncode == 1
    assert f"\nError: {named}{message}" in "\n" + listed.stderr, listed.stderr
    assert "Traceback" not in listed.stderr
    # The plugins' commands are loaded before any command runs: --help still works.
    helped = run_stead("--help", **env)
    assert helped.returncode == 0 and "Usage:" in helped.stdout
    if source is TYPO_PLUGIN:  # a raising stead_bindings is only called by commands that need it
        assert helped.stderr.startswith(f"warning: plugins not loaded: {named}{message}")
    assert "Traceback" not in helped.stderr


TALLY = """
import stead


class Tally(stead.DurableObject):
    def total(self) -> int:
        return 0


@stead.hookimpl
def stead_bindings():
    return {"TALLY_%s": Tally}
"""

BAD_BINDINGS = {
    "a slash": "{'things/v2': Thing}",
    "empty name": "{'': Thing}",
    "int name": "{1: Thing}",
    "not an object class": "{'THING': int}",
    "an instance": "{'THING': object()}",
}


@pytest.mark.parametrize("bindings", BAD_BINDINGS.values(), ids=BAD_BINDINGS.keys())
@pytest.mark.anyio
async def test_bad_bindings_are_refused_naming_the_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bindings: str, data_dir: str
) -> None:
    source = f"""
        import stead

        class Thing(stead.DurableObject):
            pass

        @stead.hookimpl
        def stead_bindings():
            return {bindings}
    """
    make_distribution(tmp_path, "stead-sloppy", "stead_sloppy_plugin", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("STEAD_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    named = r"plugin 'stead_sloppy_plugin' \(from stead-sloppy\)"
    with pytest.raises(PluginError, match=named):
        Plugins.load().bindings()
    runtime = stead.Runtime(data_dir=data_dir, plugins=True)
    with pytest.raises(PluginError, match=named):
        await runtime.start()
    assert not runtime.started


LIFECYCLE_PLUGIN = """
import stead

fail = {"startup": False, "shutdown": False}
calls = []


@stead.hookimpl
def stead_startup(runtime):
    calls.append("startup")
    if fail["startup"]:
        raise RuntimeError("startup hook failed")


@stead.hookimpl
def stead_shutdown(runtime):
    calls.append("shutdown")
    if fail["shutdown"]:
        raise RuntimeError("shutdown hook failed")
"""


class Tallied(stead.DurableObject):
    def add(self) -> int:
        total: int = self.ctx.storage.get("total", 0) + 1
        self.ctx.storage.put("total", total)
        return total


@pytest.fixture
def lifecycle_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    module = "stead_lifecycle_plugin"
    make_distribution(tmp_path / "site", "stead-lifecycle", module, LIFECYCLE_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("STEAD_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    yield __import__(module)
    sys.modules.pop(module, None)


def sweepers() -> list[Any]:
    import asyncio

    return [task for task in asyncio.all_tasks() if "_sweep_idle" in repr(task.get_coro())]


@pytest.mark.anyio
async def test_a_raising_startup_hook_leaves_no_half_open_runtime(
    lifecycle_plugin: Any, data_dir: str
) -> None:
    lifecycle_plugin.fail["startup"] = True
    runtime = stead.Runtime({"TALLIED": Tallied}, data_dir=data_dir, plugins=True)
    with pytest.raises(RuntimeError, match="startup hook failed"):
        async with runtime:
            raise AssertionError("the body must not run")
    assert not runtime.started
    assert sweepers() == []
    assert lifecycle_plugin.calls == ["startup"]  # no shutdown for a start that failed
    # The data dir was released: another runtime opens it, and this one can retry.
    async with stead.Runtime({"TALLIED": Tallied}, data_dir=data_dir) as other:
        assert await other.env.TALLIED.get_by_name("a").add() == 1
    lifecycle_plugin.fail["startup"] = False
    async with runtime:
        assert await runtime.env.TALLIED.get_by_name("a").add() == 2


@pytest.mark.anyio
async def test_a_raising_shutdown_hook_still_closes_everything(
    lifecycle_plugin: Any, data_dir: str
) -> None:
    lifecycle_plugin.fail["shutdown"] = True
    runtime = stead.Runtime({"TALLIED": Tallied}, data_dir=data_dir, plugins=True)
    with pytest.raises(RuntimeError, match="shutdown hook failed"):
        async with runtime:
            stub = runtime.env.TALLIED.get_by_name("a")
            assert await stub.add() == 1
    assert not runtime.started
    assert sweepers() == []
    async with stead.Runtime({"TALLIED": Tallied}, data_dir=data_dir) as other:
        assert await other.env.TALLIED.get_by_name("a").add() == 2  # the write was kept


# -- a third-party plugin, pip-installed ------------------------------------------------


@pytest.fixture(scope="module")
def installed_hello(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Build tests/_plugins/stead-hello in a temp dir and pip-install it; uninstall after."""
    source = tmp_path_factory.mktemp("plugin") / "stead-hello"
    shutil.copytree(HELLO_SOURCE, source)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", str(source)], check=True, timeout=240)
    try:
        yield "stead-hello-test-plugin"
    finally:
        subprocess.run([*pip, "uninstall", "-y", "stead-hello-test-plugin"], check=True)


def run_stead(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    return subprocess.run(
        [*stead_command(), *args], capture_output=True, text=True, env=environment, timeout=60
    )


@pytest.mark.slow
def test_installed_plugin_shows_in_stead_plugins(installed_hello: str) -> None:
    listed = json.loads(run_stead("plugins", "--json", STEAD_DISABLE_PLUGIN_AUTOLOAD="0").stdout)
    hello = next(entry for entry in listed if entry["distribution"] == installed_hello)
    assert hello == {
        "name": "hello_test",
        "distribution": installed_hello,
        "version": "1.2.3",
        "bindings": ["HELLO_PLUGIN_TEST"],
    }
    table = run_stead("plugins", STEAD_DISABLE_PLUGIN_AUTOLOAD="0").stdout
    assert "hello_test" in table and "HELLO_PLUGIN_TEST" in table and "1.2.3" in table

    hidden = run_stead("plugins", "--json", STEAD_DISABLE_PLUGIN_AUTOLOAD="1")
    assert [entry["name"] for entry in json.loads(hidden.stdout)] == ["stead"]


@pytest.mark.slow
def test_installed_plugin_adds_a_cli_command(installed_hello: str) -> None:
    assert "hello-plugin" in run_stead("--help", STEAD_DISABLE_PLUGIN_AUTOLOAD="0").stdout
    result = run_stead("hello-plugin", STEAD_DISABLE_PLUGIN_AUTOLOAD="0")
    assert result.stdout.strip() == "hello from the test plugin"
    assert "hello-plugin" not in run_stead("--help", STEAD_DISABLE_PLUGIN_AUTOLOAD="1").stdout


@pytest.mark.slow
def test_installed_plugin_is_served(installed_hello: str, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    with Server(["serve", "--data-dir", data, "--durability", "os"]) as server:
        response = httpx.post(
            f"{server.url}/objects/HELLO_PLUGIN_TEST/ada/rpc/hello", json={"args": ["ada"]}
        )
        assert response.json() == {"result": "hello ada #1"}
        assert httpx.get(f"{server.url}/hello-plugin/ada").json() == {"greeting": "hello ada #2"}
        assert "hello-plugin: startup" in server.wait_for_output("hello-plugin: startup")
    assert "hello-plugin: shutdown" in server.output

    env = {"STEAD_DISABLE_PLUGIN_AUTOLOAD": "1"}
    with Server(["serve", "--data-dir", data, "--durability", "os"], env=env) as server:
        response = httpx.post(f"{server.url}/objects/HELLO_PLUGIN_TEST/ada/rpc/hello")
        assert response.status_code == 404
        assert httpx.get(f"{server.url}/hello-plugin/ada").status_code == 404


# -- stead.testing -----------------------------------------------------------------------


def test_the_pytest_plugin_imports_without_the_server_extra() -> None:
    # pytest loads stead.testing wherever stead is installed, server extra or not.
    blocked = ["starlette", "httpx", "uvicorn", "prometheus_client"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None  # any import of them fails\n"
        "import stead.testing, stead.plugins, stead.cli\n"
        "print(sorted(stead.testing.__all__))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "stead_client" in done.stdout


@pytest.mark.slow
def test_plugin_authors_get_runtime_and_client_fixtures(tmp_path: Path) -> None:
    (tmp_path / "test_author.py").write_text(AUTHOR_TESTS)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_author.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


# A plugin author's test file: stead.testing is loaded by its pytest11 entry point.
AUTHOR_TESTS = """
import pytest

import stead

pytestmark = pytest.mark.anyio


class Echo(stead.DurableObject):
    def echo(self, text: str) -> str:
        return text


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def stead_runtime_options(tmp_path):
    return {"objects": {"ECHO": Echo}, "data_dir": str(tmp_path / "data"), "durability": "none"}


async def test_runtime(stead_runtime):
    assert await stead_runtime.env.ECHO.get_by_name("x").echo("hi") == "hi"


async def test_client(stead_client):
    response = await stead_client.post("/objects/ECHO/x/rpc/echo", json={"args": ["hi"]})
    assert response.json() == {"result": "hi"}


async def test_app(stead_app, stead_runtime):
    assert stead_app.state.runtime is stead_runtime
"""
