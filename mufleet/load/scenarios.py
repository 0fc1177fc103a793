"""The scenarios of ``mufleet load``: which users, which shape, how many by default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MIXED = ("AgentUser", "SummaryUser", "ReasoningUser", "TritonGrpcUser")


@dataclass(frozen=True)
class Scenario:
    name: str
    classes: tuple[str, ...]
    shape: str
    users: int
    description: str
    fault: bool = False


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("agentic", ("AgentUser",), "steady", 8, "agent sessions through the router"),
        Scenario(
            "mixed", MIXED, "steady", 12, "agents, summaries, long reasoning and gRPC streams"
        ),
        Scenario("trace", ("TraceReplayUser",), "trace", 48, "a public trace at its timestamps"),
        Scenario(
            "failover",
            MIXED,
            "steady",
            8,
            "steady mixed load while one node hangs half-way, then is cleared",
            fault=True,
        ),
    )
}

DEFAULT_TRACE = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "traces"
    / "mooncake_conversation_trace.first40min.jsonl.gz"
)
"""The shared Mooncake slice next to the project checkout, when there is one."""
