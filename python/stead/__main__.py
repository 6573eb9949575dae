"""``python -m stead``: the ``stead`` command (see ``stead --help``)."""

from __future__ import annotations

from stead.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main()
