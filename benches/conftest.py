"""Benchmarks print their figures straight to the terminal, even under capture."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
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


def record(benchmark: object, figures: Mapping[str, float]) -> None:
    """Attach figures the benchmark measured itself to pytest-benchmark's report
    (``--benchmark-json``); its own timer gets an empty round, as it has nothing to time."""
    benchmark.extra_info.update(figures)  # type: ignore[attr-defined]
    benchmark.pedantic(lambda: None, rounds=1)  # type: ignore[attr-defined]
