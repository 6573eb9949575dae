"""``SESSION_MANAGER``: per-user session state with automatic expiry.

Routes (``/objects/SESSION_MANAGER/{session}/fetch/...``): ``/create``
(body ``{"userId", "ttlMs"?, "data"?}``), ``/get`` (touches: extends expiry),
``/set`` (body: keys merged into ``data``; touches), ``/destroy``. The alarm
is always one TTL after the last touch; when it fires the session and all of
the object's storage are deleted. A session whose TTL has run out is deleted
by whatever request comes first, even before its alarm (late, or due while
the server was down) has run. ``ttlMs`` is at most ten years.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

import stead
from stead import AlarmInfo, Request, Response
from stead_patterns._http import MAX_DURATION_MS, decode_body, error, now_ms, route

__all__ = ["SessionData", "SessionManager", "stead_bindings"]

DEFAULT_TTL_MS = 3_600_000  # one hour, as in the catalog


class SessionData(msgspec.Struct, rename="camel"):
    """The stored session (and the JSON ``/get`` answers)."""

    user_id: str
    created_at: int
    last_accessed_at: int
    data: dict[str, Any]
    ttl_ms: int


class _CreateBody(msgspec.Struct, rename="camel"):
    user_id: str
    ttl_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_DURATION_MS)] | None = None
    data: dict[str, Any] | None = None


class SessionManager(stead.DurableObject):
    """One session per object; expiry by alarm, every access extends it."""

    session: SessionData | None = None

    async def on_start(self) -> None:
        self._load()

    def _load(self) -> None:
        self.session = self.ctx.storage.get("session", type=SessionData)

    async def fetch(self, request: Request) -> Response:
        routes = {
            "/create": self._create,
            "/get": self._get,
            "/set": self._set,
            "/destroy": self._destroy,
        }
        return await route(request, routes, self.ctx.storage, reload=self._load)

    async def _create(self, request: Request) -> Response:
        body = decode_body(request, _CreateBody)
        ttl_ms = body.ttl_ms or DEFAULT_TTL_MS  # 0 means the default, as `||` does
        now = now_ms()
        self.session = SessionData(body.user_id, now, now, body.data or {}, ttl_ms)
        self._save()
        return Response.json({"created": True, "expiresAt": now + ttl_ms})

    async def _get(self, request: Request) -> Response:
        session = self._live_session()
        if session is None:
            return error("No session", 404)
        self._touch(session)
        return Response.json(session)

    async def _set(self, request: Request) -> Response:
        session = self._live_session()
        if session is None:
            return error("No session", 404)
        updates = decode_body(request, dict[str, Any])
        session.data = {**session.data, **updates}
        self._touch(session)
        return Response.json({"updated": True})

    async def _destroy(self, request: Request) -> Response:
        self._delete()
        return Response.json({"destroyed": True})

    def peek(self) -> SessionData | None:
        """The session without touching it (RPC; ``/get`` extends the expiry, this does not)."""
        return self._live_session()

    def _live_session(self) -> SessionData | None:
        """The session, unless its TTL has run out: then it is deleted now, as its alarm
        would (which may be late, or was due while the server was down)."""
        session = self.session
        if session is not None and now_ms() >= session.last_accessed_at + session.ttl_ms:
            self._delete()
            return None
        return session

    def _delete(self) -> None:
        self.session = None
        self.ctx.storage.delete_all()  # the data and the expiry alarm

    def _touch(self, session: SessionData) -> None:
        session.last_accessed_at = now_ms()
        self._save()

    def _save(self) -> None:
        # Stored together with its expiry alarm: one atomic batch per turn.
        if self.session is not None:
            self.ctx.storage.put("session", self.session)
            self.ctx.storage.set_alarm((self.session.last_accessed_at + self.session.ttl_ms) / 1000)

    async def alarm(self, info: AlarmInfo) -> None:
        if self._live_session() is not None:
            self._save()  # touched since this alarm was set: wait for the new expiry
        else:
            self._delete()


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"SESSION_MANAGER": SessionManager}
