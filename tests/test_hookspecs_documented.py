"""Every hook in stead.hookspecs is documented in docs/plugins.md, and nothing more."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from stead import hookspecs

PLUGINS_DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
HEADING = re.compile(r"^### `(stead_\w+)`$", re.MULTILINE)


def hook_names() -> set[str]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return {
        name
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, marker)
    }


def test_hookspecs_are_found() -> None:
    assert {"stead_bindings", "stead_routes", "stead_cli"} <= hook_names()


def test_every_hook_has_a_section_in_plugins_md() -> None:
    documented = set(HEADING.findall(PLUGINS_DOC.read_text()))
    assert hook_names() - documented == set(), "hooks missing from docs/plugins.md"
    assert documented - hook_names() == set(), "docs/plugins.md documents hooks that do not exist"


def test_every_hook_is_typed_and_documents_its_parameters() -> None:
    for name in hook_names():
        function = getattr(hookspecs, name)
        signature = inspect.signature(function)
        assert signature.return_annotation is not inspect.Signature.empty, name
        doc = inspect.getdoc(function) or ""
        for parameter in signature.parameters:
            assert f":param {parameter}:" in doc, f"{name} does not document {parameter}"
