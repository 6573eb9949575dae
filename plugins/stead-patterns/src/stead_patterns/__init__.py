"""stead-patterns: the Durable Objects pattern catalog as stead bindings.

Each pattern is its own module and its own entry point in the ``stead``
group, so ``stead serve`` (or ``Runtime(plugins=True)``) serves them all under
the catalog's binding names. ``bindings()`` returns them for a hand-built
``Runtime``. See docs/patterns.md.
"""

from __future__ import annotations

from stead import DurableObject
from stead_patterns.agent_counter import AgentCounter
from stead_patterns.brand_agent import BrandAgent
from stead_patterns.budget_governor import BudgetGovernor
from stead_patterns.cache_coordinator import CacheCoordinator
from stead_patterns.counter import AggregatorCounter
from stead_patterns.enrichment_controller import EnrichmentController
from stead_patterns.feature_flags import FeatureFlagController
from stead_patterns.leader_election import LeaderElection
from stead_patterns.rate_limiter import RateLimiter
from stead_patterns.raw_counter import RawCounter
from stead_patterns.rpc_counter import RpcCounter
from stead_patterns.server_counter import ServerCounter
from stead_patterns.session_manager import SessionManager
from stead_patterns.storage_sidecar import StorageSidecar
from stead_patterns.workflow_checkpoint import WorkflowCheckpoint

__all__ = [
    "AgentCounter",
    "AggregatorCounter",
    "BrandAgent",
    "BudgetGovernor",
    "CacheCoordinator",
    "EnrichmentController",
    "FeatureFlagController",
    "LeaderElection",
    "RateLimiter",
    "RawCounter",
    "RpcCounter",
    "ServerCounter",
    "SessionManager",
    "StorageSidecar",
    "WorkflowCheckpoint",
    "bindings",
]


def bindings() -> dict[str, type[DurableObject]]:
    """Every pattern by its catalog binding name."""
    return {
        "RATE_LIMITER": RateLimiter,
        "SESSION_MANAGER": SessionManager,
        "FEATURE_FLAGS": FeatureFlagController,
        "COUNTER": AggregatorCounter,
        "LEADER_ELECTION": LeaderElection,
        "CACHE_COORDINATOR": CacheCoordinator,
        "WORKFLOW_CHECKPOINT": WorkflowCheckpoint,
        "RAW_COUNTER": RawCounter,
        "SERVER_COUNTER": ServerCounter,
        "RPC_COUNTER": RpcCounter,
        "AGENT_COUNTER": AgentCounter,
        "STORAGE_SIDECAR": StorageSidecar,
        "BUDGET_GOVERNOR": BudgetGovernor,
        "ENRICHMENT_CONTROLLER": EnrichmentController,
        "BRAND_AGENT": BrandAgent,
    }
