"""``Request`` and ``Response``: what an object's ``fetch`` receives and returns."""

from __future__ import annotations

import json as _json
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, overload
from urllib.parse import parse_qsl, urlsplit

import msgspec

__all__ = ["Request", "Response"]

_json_encoder = msgspec.json.Encoder()


def _lower_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {name.lower(): value for name, value in (headers or {}).items()}


def _body_bytes(body: object, owner: str) -> bytes:
    """``body`` as bytes: only bytes-like values and ``str`` (UTF-8) are bodies.

    ``bytes(body)`` would turn ``404`` into 404 NUL bytes and ``[104, 105]``
    into ``b"hi"``; a wrong type is a mistake to report, not to convert.
    """
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    kind = type(body).__name__
    hint = ""
    if owner == "Response" and isinstance(body, int) and not isinstance(body, bool):
        hint = f" (the status is the second argument: Response(status={body}))"
    elif owner == "Response" and isinstance(body, (dict, list)):
        hint = " (for a JSON body use Response.json(data))"
    raise TypeError(f"{owner} body must be bytes or str, not {kind}{hint}")


def _build_json(
    cls: type[Response], data: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    merged = {"content-type": "application/json", **_lower_headers(headers)}
    return cls(_json_encoder.encode(data), status, merged)


class _JsonAccessor:
    """``json`` is a constructor on the class and a body parser on instances,
    matching the Fetch API's ``Response.json(...)`` and ``response.json()``."""

    @overload
    def __get__(self, instance: None, owner: type[Response]) -> Callable[..., Response]: ...
    @overload
    def __get__(self, instance: Response, owner: type[Response]) -> Callable[[], Any]: ...
    def __get__(
        self, instance: Response | None, owner: type[Response]
    ) -> Callable[..., Response] | Callable[[], Any]:
        if instance is None:
            return partial(_build_json, owner)
        body = instance.body
        return partial(_json.loads, body)


class Request:
    """An HTTP-like request delivered to ``DurableObject.fetch``.

    Header names are lower-cased. ``url`` may be a path (``/a?b=1``) or a full URL.
    ``body`` is bytes-like or ``str`` (UTF-8); any other type is a ``TypeError``.
    """

    __slots__ = ("_query", "_query_string", "body", "headers", "method", "path", "url")

    def __init__(
        self,
        method: str = "GET",
        url: str = "/",
        headers: Mapping[str, str] | None = None,
        body: bytes | str = b"",
    ) -> None:
        self.method = method.upper()
        self.url = url
        self.headers = _lower_headers(headers)
        self.body = _body_bytes(body, "Request")
        path, _, query_string = url.partition("#")[0].partition("?")
        if "://" in path:
            parts = urlsplit(url)
            path, query_string = parts.path, parts.query
        self.path = path or "/"
        self._query_string = query_string
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """Query parameters (the last value of a repeated name), parsed on first use."""
        if self._query is None:
            self._query = dict(parse_qsl(self._query_string, keep_blank_values=True))
        return self._query

    def json(self) -> Any:
        """The body parsed as JSON (``ValueError`` if it is not JSON)."""
        return _json.loads(self.body)

    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode()

    def __repr__(self) -> str:
        return f"Request({self.method} {self.url})"


class Response:
    """An HTTP-like response returned by ``DurableObject.fetch``.

    ``body`` is bytes-like or ``str`` (UTF-8); any other type is a ``TypeError``
    (``Response(404)`` is a mistake for ``Response(status=404)``).
    """

    __slots__ = ("body", "headers", "status")

    def __init__(
        self,
        body: bytes | str = b"",
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.body = _body_bytes(body, "Response")
        self.status = status
        self.headers = _lower_headers(headers)

    json = _JsonAccessor()
    """``Response.json(data, status=200, headers=None)`` builds a JSON response;
    ``response.json()`` parses the body of an existing one."""

    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.body.decode()

    def __repr__(self) -> str:
        return f"Response({self.status}, {len(self.body)} bytes)"
