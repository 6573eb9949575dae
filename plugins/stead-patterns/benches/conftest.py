"""Benchmarks print their figures straight to the terminal, even under capture."""

from __future__ import annotations

from collections.abc import Callable

import pytest

Report = Callable[[str], None]


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Report:
    def emit(line: str) -> None:
        with capsys.disabled():
            print(line)

    return emit


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
