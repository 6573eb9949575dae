"""What a wheel user gets: the licence text, no stray files, docstrings that do not
point at files the wheel does not ship."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import stead.cli
import stead.http

ROOT = Path(__file__).resolve().parent.parent


def test_the_declared_licence_ships_with_its_text() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^license = "Apache-2\.0"$', pyproject, re.MULTILINE)
    assert re.search(r'^license-files = \["LICENSE"\]$', pyproject, re.MULTILINE)
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_no_leftovers_of_shell_runs_are_committed() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(
        ["git", "ls-files", "--", "*.err", "*.out", "*.rc"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert tracked == []


def test_docstrings_say_where_the_docs_they_name_are() -> None:
    # docs/ is in the source repository, not in the wheel.
    for module in (stead.cli, stead.http):
        doc = module.__doc__ or ""
        if "docs/" in doc:
            assert "source repository" in doc, module.__name__
