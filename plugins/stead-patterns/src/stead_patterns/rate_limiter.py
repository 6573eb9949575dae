"""``RATE_LIMITER``: a sliding-window rate limiter, one object per key (user, IP, API key).

``GET /check?limit=100&window=60000`` answers ``{"allowed": true, "current",
"limit", "remaining"}``, or 429 with ``Retry-After`` (seconds) and
``{"allowed": false, "current", "limit", "retryAfterMs"}``. Over HTTP:
``/objects/RATE_LIMITER/{key}/fetch/check?limit=...&window=...``. ``limit`` is
1 to 100 000 (its timestamps must fit one stored value), ``window`` 1 ms to ten
years; anything else is answered with 400.
"""

from __future__ import annotations

import bisect
from typing import Annotated, Any

import msgspec

import stead
from stead import AlarmInfo, Request, Response
from stead_patterns._http import MAX_DURATION_MS, Duration, int_param, now_ms, route

__all__ = ["MAX_LIMIT", "RateLimiter", "stead_bindings"]

_DEFAULT_LIMIT = 100
_DEFAULT_WINDOW_MS = 60_000
#: The largest ``limit``: up to ``limit`` timestamps are stored as one value, and
#: 100 000 of them (under 1 MiB) always fit stead's 2 MiB value limit.
MAX_LIMIT = 100_000
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]


class RateLimiter(stead.DurableObject):
    """Allows at most ``limit`` requests per sliding ``window`` milliseconds.

    The timestamps of allowed requests are stored (at most ``limit`` of them).
    An alarm deletes them once a whole window has passed without an allowed
    request, so idle keys do not keep storage forever.
    """

    async def fetch(self, request: Request) -> Response:
        return await route(request, {"/check": self._check_request}, self.ctx.storage)

    async def _check_request(self, request: Request) -> Response:
        limit = int_param(request, "limit", _DEFAULT_LIMIT, maximum=MAX_LIMIT)
        window_ms = int_param(request, "window", _DEFAULT_WINDOW_MS, maximum=MAX_DURATION_MS)
        result = self.check(limit, window_ms)
        if result["allowed"]:
            return Response.json(result)
        retry_after_s = -(-result["retryAfterMs"] // 1000)  # ceil for integers
        return Response.json(result, status=429, headers={"Retry-After": str(retry_after_s)})

    def check(
        self, limit: Limit = _DEFAULT_LIMIT, window_ms: Duration = _DEFAULT_WINDOW_MS
    ) -> dict[str, Any]:
        """Count one request against the limit (also callable by RPC); the catalog's JSON."""
        if not (1 <= limit <= MAX_LIMIT and 1 <= window_ms <= MAX_DURATION_MS):
            raise ValueError(f"limit must be 1 to {MAX_LIMIT}, window_ms 1 to {MAX_DURATION_MS}")
        now = now_ms()
        stored: list[int] = self.ctx.storage.get("timestamps", [], type=list[int])
        # Kept sorted, so the expired ones are a prefix found by bisection.
        active = stored[bisect.bisect_right(stored, now - window_ms) :]
        if len(active) >= limit:
            # The request that must leave the window before one more fits.
            freeing = active[len(active) - limit]
            retry_after_ms = freeing + window_ms - now
            return {
                "allowed": False,
                "current": len(active),
                "limit": limit,
                "retryAfterMs": retry_after_ms,
            }
        bisect.insort(active, now)  # sorted even if the wall clock stepped back
        self.ctx.storage.put("timestamps", active)
        self._clean_up_after(now + window_ms)
        return {
            "allowed": True,
            "current": len(active),
            "limit": limit,
            "remaining": limit - len(active),
        }

    def _clean_up_after(self, when_ms: int) -> None:
        current = self.ctx.storage.get_alarm()
        if current is None or current * 1000 < when_ms:
            self.ctx.storage.set_alarm(when_ms / 1000)

    async def alarm(self, info: AlarmInfo) -> None:
        # Set a window after the last allowed request: every timestamp has expired.
        self.ctx.storage.delete_all()


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"RATE_LIMITER": RateLimiter}
