"""``RPC_COUNTER``: the layer guide's RPC counter: ``increment``, ``get_count``, ``reset``.

Over HTTP: ``POST /objects/RPC_COUNTER/{name}/rpc/increment`` answers
``{"result": n}``. In Python: ``await rt.env.RPC_COUNTER.get_by_name(name).increment()``.
"""

from __future__ import annotations

import stead

__all__ = ["RpcCounter", "stead_bindings"]


class RpcCounter(stead.DurableObject):
    """A counter whose public methods are its API (no HTTP parsing)."""

    def increment(self) -> int:
        """Add one; the new count."""
        count: int = self.ctx.storage.get("count", 0) + 1
        self.ctx.storage.put("count", count)
        return count

    def get_count(self) -> int:
        """The current count."""
        count: int = self.ctx.storage.get("count", 0)
        return count

    def reset(self) -> None:
        """Set the count to zero."""
        self.ctx.storage.put("count", 0)


@stead.hookimpl
def stead_bindings() -> dict[str, type[stead.DurableObject]]:
    return {"RPC_COUNTER": RpcCounter}
