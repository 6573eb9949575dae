"""The examples in docs/ run, and every public module declares ``__all__``."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import stead

DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLE = re.compile(r"```python\n(.*?)```", re.DOTALL)


def _examples() -> list[tuple[str, int, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for index, code in enumerate(EXAMPLE.findall(page.read_text())):
            found.append((page.name, index, code))
    return found


@pytest.mark.parametrize(("page", "index", "code"), _examples())
def test_doc_example_runs(page: str, index: int, code: str) -> None:
    exec(compile(code, f"{page}[{index}]", "exec"), {"__name__": f"docs_{index}"})


def test_every_public_module_has_all() -> None:
    missing = []
    for module in pkgutil.walk_packages(stead.__path__, "stead."):
        if any(part.startswith("_") for part in module.name.split(".")):
            continue
        try:
            imported = importlib.import_module(module.name)
        except ImportError:  # an optional extra is not installed
            continue
        if not hasattr(imported, "__all__"):
            missing.append(module.name)
    assert missing == []


def test_top_level_exports_the_design_names() -> None:
    for name in [
        "Runtime", "DurableObject", "ObjectContext", "ObjectId", "Namespace", "Stub",
        "Storage", "Request", "Response", "AlarmInfo", "Agent", "Schedule", "hookimpl",
        "SteadError", "OverloadedError", "StorageError", "InvalidIdError", "LimitError",
        "SerializationError", "DeadlockError", "RemoteError", "DataDirLockedError",
        "CorruptionError", "UnknownBindingError", "UnknownMethodError",
    ]:  # fmt: skip
        assert name in stead.__all__ and hasattr(stead, name)
