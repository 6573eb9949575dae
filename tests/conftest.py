"""Shared fixtures: tests run on asyncio through anyio's pytest plugin."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS.parent))  # lets child processes and tests import tests._children


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    """A fresh data dir for one test."""
    path = tmp_path / "data"
    return str(path)
