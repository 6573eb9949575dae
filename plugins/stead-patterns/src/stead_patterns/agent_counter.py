"""``AGENT_COUNTER``: layer 2 of the layer guide, a counter built on ``stead.Agent``.

``/increment`` answers ``{"count": n}``; any other path answers the whole
state ``{"count", "lastIncrementAt", "history"}``. The history keeps the last
100 increments. A cron schedule (``reset_schedule``, midnight UTC) resets the
count and history every day; it is created with the first increment.
"""

from __future__ import annotations

from typing import Any, ClassVar

import stead
from stead import Request, Response
from stead_patterns._http import now_ms

__all__ = ["HISTORY_LIMIT", "AgentCounter", "stead_bindings"]

HISTORY_LIMIT = 100


class AgentCounter(stead.Agent):
    """Managed state (``set_state``) and a daily reset schedule."""

    initial_state: ClassVar[Any] = {"count": 0, "lastIncrementAt": 0, "history": []}
    #: When the count resets (cron, UTC).
    reset_schedule: ClassVar[str] = "0 0 * * *"

    async def on_request(self, request: Request) -> Response:
        if request.path == "/increment":
            return Response.json({"count": self._increment()})
        return Response.json(self.state)

    def _increment(self) -> int:
        state = self.state
        count: int = state["count"] + 1
        now = now_ms()
        entry = {"value": count, "timestamp": now}
        history = [*state["history"][-(HISTORY_LIMIT - 1) :], entry]
        self.set_state({"count": count, "lastIncrementAt": now, "history": history})
        self._ensure_reset_scheduled()
        return count

    def _ensure_reset_scheduled(self) -> None:
        if not any(entry.callback == "reset_daily" for entry in self.get_schedules()):
            self.schedule(self.reset_schedule, "reset_daily")

    async def reset_daily(self, payload: Any = None) -> None:
        """Zero the count and history (run by the daily schedule; also callable by RPC)."""
        self.set_state({**self.state, "count": 0, "history": []})


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"AGENT_COUNTER": AgentCounter}
