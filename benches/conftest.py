"""Benchmarks print their figures straight to the terminal, even under capture."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

Report = Callable[[str], None]


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Report:
    def emit(line: str) -> None:
        with capsys.disabled():
            print(line)

    return emit
