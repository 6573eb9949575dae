"""The HTTP/RPC frontend (extra ``server``): ``create_app(runtime)``.

Install it with ``pip install 'stead[server]'``. Its guide is docs/http.md in
stead's source repository (the docs are not part of the installed package).
"""

from __future__ import annotations

# The packages of the ``server`` extra imported below (stead.cli keeps the same list).
_SERVER_EXTRA = frozenset({"starlette", "uvicorn", "prometheus_client", "httpx"})

try:
    from stead.http.app import create_app
except ModuleNotFoundError as exc:
    if (exc.name or "").partition(".")[0] not in _SERVER_EXTRA:
        raise  # not a missing extra: a bug, shown as it is
    message = f"stead.http needs the server extra ({exc}): pip install 'stead[server]'"
    raise ModuleNotFoundError(message, name=exc.name) from exc

__all__ = ["create_app"]
