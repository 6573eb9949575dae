"""``stead.Request`` and ``stead.Response``: what a body may be."""

from __future__ import annotations

from typing import Any

import pytest

import stead


@pytest.mark.parametrize(
    ("body", "expected"),
    [(b"hi", b"hi"), (bytearray(b"hi"), b"hi"), (memoryview(b"hi"), b"hi"), ("hé", "hé".encode())],
)
def test_bodies_are_bytes_like_or_str(body: Any, expected: bytes) -> None:
    assert stead.Response(body).body == expected
    assert stead.Request("POST", "/", None, body).body == expected


def test_a_status_passed_as_the_body_is_a_type_error_pointing_at_status() -> None:
    # Response(404) used to be a 200 whose body was 404 NUL bytes.
    with pytest.raises(TypeError, match=r"Response body must be bytes or str, not int") as caught:
        stead.Response(404)  # type: ignore[arg-type]
    assert "status=404" in str(caught.value)
    assert stead.Response(status=404).status == 404


@pytest.mark.parametrize(
    ("body", "kind"),
    [([104, 105], "list"), ({"ok": True}, "dict"), (5, "int"), (None, "NoneType"), (1.5, "float")],
)
def test_other_bodies_are_a_type_error_naming_the_type(body: Any, kind: str) -> None:
    with pytest.raises(TypeError, match=rf"Response body must be bytes or str, not {kind}"):
        stead.Response(body)
    with pytest.raises(TypeError, match=rf"Request body must be bytes or str, not {kind}"):
        stead.Request("POST", "/", None, body)


def test_a_dict_body_points_to_response_json() -> None:
    with pytest.raises(TypeError, match=r"Response\.json"):
        stead.Response({"ok": True})  # type: ignore[arg-type]
    assert stead.Response.json({"ok": True}).json() == {"ok": True}


@pytest.mark.anyio
async def test_a_stub_fetch_body_of_the_wrong_type_is_a_type_error() -> None:
    class Echo(stead.DurableObject):
        async def fetch(self, request: stead.Request) -> stead.Response:
            return stead.Response(request.body)

    async with stead.Runtime({"ECHO": Echo}) as runtime:
        stub = runtime.env.ECHO.get_by_name("a")
        with pytest.raises(TypeError, match="not int"):
            await stub.fetch("/", method="POST", body=5)
        assert (await stub.fetch("/", method="POST", body="ok")).body == b"ok"
