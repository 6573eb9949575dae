"""``FEATURE_FLAGS``: feature flags with allowlists, blocklists and gradual rollout.

Routes: ``/set`` (body: a flag), ``/list``, ``/delete`` (body ``{"name"}``),
``/evaluate`` (body ``{"flag", "entityId"}``). Rollout is deterministic: an
entity is in the rollout when the first four bytes of
``SHA-256(entityId + flagName)``, read as a big-endian unsigned integer,
modulo 100 are below ``rolloutPercent`` (exactly the catalog's buckets, so a
JavaScript client computes the same answer).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import msgspec

import stead
from stead import Request, Response
from stead_patterns._http import KeyName, decode_body, now_ms, route

__all__ = ["FeatureFlag", "FeatureFlagController", "rollout_bucket", "stead_bindings"]

_PREFIX = "flag:"


#: A rollout share: 0 to 100 (a ``/set`` outside it is 400).
Percent = Annotated[int, msgspec.Meta(ge=0, le=100)] | Annotated[float, msgspec.Meta(ge=0, le=100)]


class FeatureFlag(msgspec.Struct, rename="camel"):
    """A stored flag; ``rolloutPercent`` is 0-100."""

    name: KeyName
    enabled: bool
    rollout_percent: Percent = 0
    allowlist: list[str] = []
    blocklist: list[str] = []
    updated_at: int = 0


class _EvaluateBody(msgspec.Struct, rename="camel"):
    flag: KeyName
    entity_id: str


class _DeleteBody(msgspec.Struct):
    name: KeyName


def rollout_bucket(entity_id: str, flag_name: str) -> int:
    """The entity's bucket (0-99) for this flag."""
    digest = hashlib.sha256((entity_id + flag_name).encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100


class FeatureFlagController(stead.DurableObject):
    """A set of flags; usually one object (e.g. named ``global``) per application."""

    async def fetch(self, request: Request) -> Response:
        routes = {
            "/evaluate": self._evaluate,
            "/set": self._set,
            "/list": self._list,
            "/delete": self._delete,
        }
        return await route(request, routes, self.ctx.storage)

    async def _evaluate(self, request: Request) -> Response:
        body = decode_body(request, _EvaluateBody)
        return Response.json(self.evaluate(body.flag, body.entity_id))

    async def _set(self, request: Request) -> Response:
        flag = decode_body(request, FeatureFlag)
        flag.updated_at = now_ms()
        self.ctx.storage.put(_PREFIX + flag.name, flag)
        return Response.json({"set": True})

    async def _list(self, request: Request) -> Response:
        return Response.json(self.ctx.storage.list(prefix=_PREFIX))

    async def _delete(self, request: Request) -> Response:
        body = decode_body(request, _DeleteBody)
        self.ctx.storage.delete(_PREFIX + body.name)
        return Response.json({"deleted": True})

    def evaluate(self, flag_name: KeyName, entity_id: str) -> dict[str, Any]:
        """Whether the flag is on for ``entity_id`` and why (also callable by RPC)."""
        flag: FeatureFlag | None = self.ctx.storage.get(_PREFIX + flag_name, type=FeatureFlag)
        if flag is None:
            return {"flag": flag_name, "enabled": False, "reason": "not-found"}
        if not flag.enabled:
            return {"flag": flag_name, "enabled": False, "reason": "disabled"}
        if entity_id in flag.blocklist:
            return {"flag": flag_name, "enabled": False, "reason": "blocklisted"}
        if entity_id in flag.allowlist:
            return {"flag": flag_name, "enabled": True, "reason": "allowlisted"}
        enabled = rollout_bucket(entity_id, flag_name) < flag.rollout_percent
        return {
            "flag": flag_name,
            "enabled": enabled,
            "reason": "rollout-included" if enabled else "rollout-excluded",
            "rolloutPercent": flag.rollout_percent,
        }


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"FEATURE_FLAGS": FeatureFlagController}
