"""stead.testing (the pytest plugin) as a plugin author's test run meets it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# A test marked for pytest-asyncio. pytest-asyncio is not a test dependency, so its
# marker is only declared here: the fixture must refuse the test before it runs.
ASYNCIO_MARKED = """
import pytest

import stead


class Echo(stead.DurableObject):
    def echo(self, text: str) -> str:
        return text


@pytest.fixture
def stead_runtime_options(tmp_path):
    return {"objects": {"ECHO": Echo}, "data_dir": str(tmp_path / "data"), "durability": "none"}


@pytest.mark.asyncio
def test_marked_for_pytest_asyncio(stead_runtime):
    pass


@pytest.mark.asyncio
@pytest.mark.anyio
def test_marked_for_both(stead_runtime):
    pass
"""


def test_a_test_marked_for_pytest_asyncio_is_told_to_use_anyio(tmp_path: Path) -> None:
    (tmp_path / "test_author.py").write_text(ASYNCIO_MARKED)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "markers=asyncio",
         "-rA", "test_author.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "1 passed, 1 error" in done.stdout, done.stdout + done.stderr
    assert (
        "stead's fixtures need tests marked @pytest.mark.anyio, not @pytest.mark.asyncio"
    ) in done.stdout
    assert "ERROR test_author.py::test_marked_for_pytest_asyncio" in done.stdout


AUTO_MODE = """
import pytest

import stead


@pytest.fixture
def stead_runtime_options(tmp_path):
    return {"objects": {}, "data_dir": str(tmp_path / "data"), "durability": "none"}


@pytest.mark.anyio
async def test_run_by_auto_mode(stead_runtime):
    pass
"""

# Stands in for pytest-asyncio's setting (not a test dependency): only its value is read.
AUTO_MODE_CONFTEST = """
def pytest_addoption(parser):
    parser.addini("asyncio_mode", "pytest-asyncio's mode", default="strict")
"""


def test_pytest_asyncio_auto_mode_is_refused_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "test_author.py").write_text(AUTO_MODE)
    (tmp_path / "conftest.py").write_text(AUTO_MODE_CONFTEST)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_author.py"]
    strict = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "1 passed" in strict.stdout, strict.stdout + strict.stderr
    auto = subprocess.run(
        [*args, "-o", "asyncio_mode=auto"], cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert "1 error" in auto.stdout, auto.stdout + auto.stderr
    assert "pytest-asyncio's asyncio_mode = auto runs every async test" in auto.stdout
