"""Routing policies: one interface, one module per policy, a registry by name.

``build_policy(name, params)`` makes a policy from config; ``POLICIES`` lists the names.
Everything here is pure (no I/O, no clock, no asyncio, no tritonclient), so the router
service, the fleet simulator and the tests drive the same objects. See ``README.md``.
"""

from router.policies.base import (
    Decision,
    NoCandidateError,
    NodeSnapshot,
    NodeState,
    Policy,
    RequestView,
)
from router.policies.registry import (
    DEFAULT_POLICY,
    POLICIES,
    PolicyConfigError,
    PolicySpec,
    build_policy,
    register,
)
from router.policies.scoring import PolicyParams, ScoringPolicy  # isort: split

# Importing a policy module registers it.
from router.policies import (
    dynamo_kv,
    least_projected_mu,
    least_request,
    llmd_scorers,
    mu_cost,
    power_of_two,
    prefix_aware,
    round_robin,
    session_affinity,
    sglang_cache_aware,
)
from router.policies.prefix import PrefixIndex, block_hashes

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "Decision",
    "NoCandidateError",
    "NodeSnapshot",
    "NodeState",
    "Policy",
    "PolicyConfigError",
    "PolicyParams",
    "PolicySpec",
    "PrefixIndex",
    "RequestView",
    "ScoringPolicy",
    "block_hashes",
    "build_policy",
    "dynamo_kv",
    "least_projected_mu",
    "least_request",
    "llmd_scorers",
    "mu_cost",
    "power_of_two",
    "prefix_aware",
    "register",
    "round_robin",
    "session_affinity",
    "sglang_cache_aware",
]
