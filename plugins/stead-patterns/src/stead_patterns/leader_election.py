"""``LEADER_ELECTION``: exactly one leader among a group of workers, with a TTL lease.

Routes: ``/acquire`` (body ``{"candidateId", "ttlMs"?}``), ``/heartbeat`` and
``/release`` (body ``{"leaderId"}``; 403 for anyone but the leader),
``/leader``. The lease lasts ``ttlMs`` (30 s) after the last heartbeat; an
alarm removes an expired leader. A lease that has expired counts as no
leader everywhere, even in the moment before its alarm has run. ``ttlMs`` is
at most ten years.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

import stead
from stead import AlarmInfo, Request, Response
from stead_patterns._http import MAX_DURATION_MS, decode_body, now_ms, route

__all__ = ["LeaderElection", "LeaderRecord", "stead_bindings"]

DEFAULT_TTL_MS = 30_000


class LeaderRecord(msgspec.Struct, rename="camel"):
    """The stored lease."""

    leader_id: str
    acquired_at: int
    last_heartbeat_at: int
    ttl_ms: int

    def expires_at(self) -> int:
        return self.last_heartbeat_at + self.ttl_ms


class _AcquireBody(msgspec.Struct, rename="camel"):
    candidate_id: str
    # 0 means the default (the catalog's `||`); a negative TTL is a client's bug: 400.
    ttl_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_DURATION_MS)] | None = None


class _LeaderBody(msgspec.Struct, rename="camel"):
    leader_id: str


class LeaderElection(stead.DurableObject):
    """One election per object (e.g. named after the job the leader runs)."""

    leader: LeaderRecord | None = None

    async def on_start(self) -> None:
        self._load()

    def _load(self) -> None:
        self.leader = self.ctx.storage.get("leader", type=LeaderRecord)

    async def fetch(self, request: Request) -> Response:
        routes = {
            "/acquire": self._acquire,
            "/heartbeat": self._heartbeat,
            "/release": self._release,
            "/leader": self._leader,
        }
        return await route(request, routes, self.ctx.storage, reload=self._load)

    def _live_leader(self, now: int) -> LeaderRecord | None:
        leader = self.leader
        return leader if leader is not None and now < leader.expires_at() else None

    async def _acquire(self, request: Request) -> Response:
        body = decode_body(request, _AcquireBody)
        now = now_ms()
        current = self._live_leader(now)
        if current is not None:
            if current.leader_id == body.candidate_id:
                return Response.json({"acquired": True, "renewed": True})
            return Response.json(
                {
                    "acquired": False,
                    "currentLeader": current.leader_id,
                    "retryAfterMs": current.expires_at() - now,
                }
            )
        ttl_ms = body.ttl_ms or DEFAULT_TTL_MS
        self.leader = LeaderRecord(body.candidate_id, now, now, ttl_ms)
        self._save(self.leader)
        return Response.json({"acquired": True, "renewed": False})

    async def _heartbeat(self, request: Request) -> Response:
        body = decode_body(request, _LeaderBody)
        now = now_ms()
        leader = self._live_leader(now)
        if leader is None or leader.leader_id != body.leader_id:
            return Response.json({"valid": False, "error": "Not the leader"}, status=403)
        leader.last_heartbeat_at = now
        self._save(leader)
        return Response.json({"valid": True, "nextHeartbeatBefore": leader.expires_at()})

    async def _release(self, request: Request) -> Response:
        body = decode_body(request, _LeaderBody)
        leader = self._live_leader(now_ms())
        if leader is None or leader.leader_id != body.leader_id:
            return Response.json({"released": False, "error": "Not the leader"}, status=403)
        self._clear()
        return Response.json({"released": True})

    async def _leader(self, request: Request) -> Response:
        return Response.json(self.current())

    def current(self) -> dict[str, Any]:
        """``{"leader", "acquiredAt"}`` as ``/leader`` answers (also callable by RPC)."""
        leader = self._live_leader(now_ms())
        return {
            "leader": None if leader is None else leader.leader_id,
            "acquiredAt": None if leader is None else leader.acquired_at,
        }

    def _save(self, leader: LeaderRecord) -> None:
        # The lease and its expiry alarm are written in one batch.
        self.ctx.storage.put("leader", leader)
        self.ctx.storage.set_alarm(leader.expires_at() / 1000)

    def _clear(self) -> None:
        self.leader = None
        self.ctx.storage.delete("leader")
        self.ctx.storage.delete_alarm()

    async def alarm(self, info: AlarmInfo) -> None:
        leader = self.leader
        if leader is None:
            return
        if self._live_leader(now_ms()) is None:
            self._clear()
        else:
            self._save(leader)  # renewed since this alarm was set


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"LEADER_ELECTION": LeaderElection}
