"""Power of two choices: sample two candidates, send to the less loaded.

Models Mitzenmacher's "power of two choices" (and Envoy's default ``LEAST_REQUEST`` with
``choice_count: 2``): near-least-loaded balance from two probes, and no herd onto one node
when many routers act on the same stale metrics. Load is ``NodeSnapshot.load_ratio``
(in-flight plus reserved MU over capacity, i.e. seconds of queued work).
"""

from __future__ import annotations

import random

import numpy as np

from router.policies.base import RequestView
from router.policies.registry import register
from router.policies.scoring import BoolArray, FloatArray, NodeTable, PolicyParams, ScoringPolicy

__all__ = ["PowerOfTwo", "PowerOfTwoParams"]


class PowerOfTwoParams(PolicyParams):
    seed: int = 0
    """Seed of the policy's own RNG: the same seed and inputs give the same decisions."""


@register("power_of_two", PowerOfTwoParams)
class PowerOfTwo(ScoringPolicy[PowerOfTwoParams]):
    """Two distinct random candidates (seeded RNG); the lower ``load_ratio`` wins, ties by name."""

    def __init__(self, params: PowerOfTwoParams | None = None) -> None:
        super().__init__(params or PowerOfTwoParams())
        self._rng = random.Random(self.params.seed)

    def filter(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> BoolArray:
        candidates = np.flatnonzero(mask)
        if candidates.size <= 2:
            return mask
        a, b = self._rng.sample(range(candidates.size), 2)
        two = np.zeros_like(mask)
        two[candidates[a]] = True
        two[candidates[b]] = True
        return two

    def score(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> FloatArray:
        return -table.load_ratio

    def explain(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        return f"less loaded of two: load_ratio {-scores[i]:.4g} s"
