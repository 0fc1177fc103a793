"""Least projected MU: the candidate whose queued work, this request included, drains first.

Models a work-aware least-loaded balancer (the MU analogue of least-outstanding-work /
"join the shortest expected queue"): a node's load is its in-flight and reserved MU plus
this request's MU *on that node's pair*, over the node's capacity in MU/s — seconds until
the node would have done it all. Heterogeneous capacity is priced in: a node with twice
the capacity can carry more in-flight MU and still win.
"""

from __future__ import annotations

from router.policies.base import RequestView
from router.policies.registry import register
from router.policies.scoring import BoolArray, FloatArray, NodeTable, PolicyParams, ScoringPolicy

__all__ = ["LeastProjectedMu", "LeastProjectedMuParams"]


class LeastProjectedMuParams(PolicyParams):
    """Least projected MU has no parameters of its own."""


@register("least_projected_mu", LeastProjectedMuParams)
class LeastProjectedMu(ScoringPolicy[LeastProjectedMuParams]):
    """Minimum ``(inflight_mu + reserved_mu + request.mu_on(node)) / capacity_mu_s``."""

    def __init__(self, params: LeastProjectedMuParams | None = None) -> None:
        super().__init__(params or LeastProjectedMuParams())

    def score(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> FloatArray:
        work = table.inflight_mu + table.reserved_mu + table.request_mu(request)
        return -(work * table.inv_capacity)

    def explain(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        return f"projected {-scores[i]:.4g} s of work"
