"""A TARGET module with a bug: importing it raises (not an ImportError)."""

from __future__ import annotations

raise RuntimeError("this module fails on purpose")
