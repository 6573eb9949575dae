"""Turning the ``stead.Response`` of an object's ``fetch`` into an HTTP response.

A response the HTTP server cannot send as it is (a status outside 200-599, a
header that is not text or would split the header block, framing that does not
match the body: a ``Content-Length`` of another size, a ``Transfer-Encoding``,
a body on a 204 or 304) is the handler's bug: the route answers a JSON 500
naming the problem rather than letting the server drop the connection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from starlette.responses import Response

from stead.messages import Response as ObjectResponse

__all__ = ["InvalidResponseError", "http_response"]

# RFC 9110 §5.1: a field name is a token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 §5.5: no control characters in a field value but horizontal tab.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(r"[0-9]+")
# Statuses that never carry content (RFC 9110 §15.3.5, §15.4.5).
_NO_CONTENT = frozenset({204, 304})


class InvalidResponseError(ValueError):
    """A ``fetch`` handler's response cannot be sent; the message says why."""


def http_response(answer: ObjectResponse, *, head: bool = False) -> Response:
    """``answer`` as a Starlette response (``InvalidResponseError`` if it is not valid HTTP).

    :param head: the request was ``HEAD``: a ``Content-Length`` may then
        describe a body that is not sent.
    """
    _check_status(answer.status, answer.body)
    _check_headers(answer.headers)
    _check_framing(answer.headers, answer.body, head)
    return Response(answer.body, answer.status, headers=answer.headers)


def _check_status(status: object, body: object) -> None:
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise InvalidResponseError(f"status {status!r} is not an int from 200 to 599")
    if not isinstance(body, bytes):
        raise InvalidResponseError(f"the body is a {type(body).__name__}, not bytes")
    if body and status in _NO_CONTENT:
        raise InvalidResponseError(f"a {status} response has no body, not {len(body)} bytes")


def _check_headers(headers: Mapping[str, object]) -> None:
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise InvalidResponseError(f"{name!r} is not a valid header name")
        if not isinstance(value, str):
            kind = type(value).__name__
            raise InvalidResponseError(f"header {name!r} is of type {kind}, not str")
        if _CONTROL.search(value) or (not value.isascii() and not _latin1(value)):
            raise InvalidResponseError(
                f"header {name!r} is not a valid HTTP field value "
                "(it has control characters such as CR or LF, or characters beyond Latin-1)"
            )


def _latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _check_framing(headers: Mapping[str, str], body: bytes, head: bool) -> None:
    if "transfer-encoding" in headers:
        raise InvalidResponseError("transfer-encoding is the server's to set (the body is whole)")
    length = headers.get("content-length")
    if length is None:
        return
    if not _DIGITS.fullmatch(length.strip()):
        raise InvalidResponseError(f"content-length {length!r} is not a number of bytes")
    if not head and int(length) != len(body):
        message = f"content-length {length!r} does not match the body's {len(body)} bytes"
        raise InvalidResponseError(message)
