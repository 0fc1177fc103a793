"""Least request: the candidate with the fewest requests in flight plus queued.

Models Envoy's ``LEAST_REQUEST`` and llm-d's queue-depth scorer: counts requests, blind to
their size and to the node's speed (a 50-token and a 4000-token request weigh the same).
"""

from __future__ import annotations

from router.policies.base import RequestView
from router.policies.registry import register
from router.policies.scoring import BoolArray, FloatArray, NodeTable, PolicyParams, ScoringPolicy

__all__ = ["LeastRequest", "LeastRequestParams"]


class LeastRequestParams(PolicyParams):
    """Least request has no parameters of its own."""


@register("least_request", LeastRequestParams)
class LeastRequest(ScoringPolicy[LeastRequestParams]):
    """Fewest ``inflight_requests + queued_requests``; ties by name."""

    def __init__(self, params: LeastRequestParams | None = None) -> None:
        super().__init__(params or LeastRequestParams())

    def score(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> FloatArray:
        return -(table.inflight_requests + table.queued_requests)

    def explain(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        return f"{-scores[i]:.0f} requests in flight or queued"
