"""The HTTP/RPC frontend (extra ``server``): ``create_app(runtime)``; see docs/http.md."""

from __future__ import annotations

from stead.http.app import create_app

__all__ = ["create_app"]
