"""Round robin: each request to the next candidate in name order.

Models the classic load balancer default (nginx/Envoy ``ROUND_ROBIN``, llm-d's random /
round-robin pickers): no load signal at all, the baseline every other policy must beat.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

from router.policies.base import RequestView
from router.policies.registry import register
from router.policies.scoring import BoolArray, FloatArray, NodeTable, PolicyParams, ScoringPolicy

__all__ = ["RoundRobin", "RoundRobinParams"]


class RoundRobinParams(PolicyParams):
    """Round robin has no parameters of its own."""


@register("round_robin", RoundRobinParams)
class RoundRobin(ScoringPolicy[RoundRobinParams]):
    """Cycle through the candidates in name order, starting after the node last routed to.

    The cursor is the *name* of the last node :meth:`on_routed` reported, so the cycle
    survives nodes joining, leaving or being skipped (not a candidate for this request), and
    a ``choose`` that is not followed by routing does not skip a node.
    """

    def __init__(self, params: RoundRobinParams | None = None) -> None:
        super().__init__(params or RoundRobinParams())
        self._last: str | None = None

    def score(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> FloatArray:
        n = len(table)
        start = 0 if self._last is None else bisect_right(table.sorted_names, self._last)
        # steps after the cursor in name order: 0 for the next name, n - 1 for the last
        steps = (table.rank - start) % n
        return -steps.astype(np.float64)

    def explain(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        return f"next in name order after {self._last!r}"

    def on_routed(self, request: RequestView, node: str, now: float) -> None:
        self._last = node
