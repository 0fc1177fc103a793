"""Triton priority levels from tier × estimated MU, with aging.

Triton level 1 is the highest priority and is reserved for health canaries, so requests get
levels ``2 .. total_levels``. Each tier owns a band of ``levels_per_tier`` consecutive levels,
in the order of ``tiers`` (default: interactive 2–3, standard 4–5, batch 6–7). Within a band,
the request's estimated MU picks the level: ``mu ≤ boundaries[0]`` is the band's top (smallest
number), each boundary crossed is one level lower. Waiting promotes a request one level per
``aging_s`` seconds waited, across bands if need be, but never above level 2 and never above
the tenant's ``max_priority``; a request asking for more than its maximum is clamped to it.

**The Triton repository's ``dynamic_batching.priority_levels`` must equal**
:attr:`PriorityMapper.total_levels` (``1 + len(tiers) * levels_per_tier``, 7 by default), and
its ``default_priority_level`` should be :attr:`PriorityMapper.default_level` (the standard
band's expensive end, 5 by default) — the service renders every node's repository with them.
A level beyond ``priority_levels`` would be served at Triton's default level, so a mapped level
never exceeds ``total_levels``.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from itertools import pairwise

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.admission.tenants import TIERS, Tier

__all__ = ["CANARY_LEVEL", "PriorityConfig", "PriorityMapper"]

CANARY_LEVEL = 1
"""The top Triton level; only health canaries use it."""

_TOP_REQUEST_LEVEL = CANARY_LEVEL + 1


class PriorityConfig(BaseModel):
    """How tier, MU and waiting time map to a Triton priority level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tiers: tuple[Tier, ...] = TIERS
    """Tier bands, highest priority first; a permutation of all tiers."""
    levels_per_tier: int = Field(default=2, ge=1, le=32)
    cheap_mu: float | list[float] = 500.0
    """MU boundaries within a band: one threshold (``levels_per_tier == 2``; ``mu ≤ cheap_mu``
    is the cheap level) or ``levels_per_tier − 1`` strictly increasing boundaries."""
    aging_s: float | None = Field(default=10.0, gt=0)
    """Seconds of waiting per level of promotion; ``None`` disables aging."""

    @model_validator(mode="after")
    def _check(self) -> PriorityConfig:
        if sorted(self.tiers) != sorted(TIERS):
            raise ValueError(f"tiers must be a permutation of {list(TIERS)}, got {self.tiers}")
        bounds = self.boundaries
        if len(bounds) != self.levels_per_tier - 1:
            raise ValueError(
                f"{self.levels_per_tier} levels per tier need {self.levels_per_tier - 1} MU "
                f"boundaries, got {len(bounds)}"
            )
        if any(not (math.isfinite(b) and b > 0) for b in bounds):
            raise ValueError(f"MU boundaries must be finite and > 0, got {bounds}")
        if any(a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"MU boundaries must be strictly increasing, got {bounds}")
        return self

    @property
    def boundaries(self) -> tuple[float, ...]:
        if isinstance(self.cheap_mu, list):
            return tuple(self.cheap_mu)
        return (self.cheap_mu,) if self.levels_per_tier > 1 else ()


class PriorityMapper:
    """Maps (tier, estimated MU, time waited, tenant's max priority) to a Triton level."""

    def __init__(self, config: PriorityConfig | None = None) -> None:
        self.config = config or PriorityConfig()
        self._boundaries = self.config.boundaries

    @property
    def total_levels(self) -> int:
        """``1 + tiers × levels_per_tier``: the Triton ``priority_levels`` every model that
        sees routed requests must be configured with (level 1 is the canaries')."""
        return CANARY_LEVEL + len(self.config.tiers) * self.config.levels_per_tier

    @property
    def default_level(self) -> int:
        """The level of a request without a tier: the standard band's expensive end (also the
        Triton ``default_priority_level``)."""
        return self.band("standard")[1]

    def band(self, tier: Tier) -> tuple[int, int]:
        """The tier's (highest, lowest) levels, i.e. (smallest, largest) numbers."""
        index = self.config.tiers.index(tier)
        top = _TOP_REQUEST_LEVEL + index * self.config.levels_per_tier
        return top, top + self.config.levels_per_tier - 1

    def base_level(self, tier: Tier | None, mu: float) -> int:
        """The level before aging and clamping."""
        if not (math.isfinite(mu) and mu >= 0):
            raise ValueError(f"mu must be finite and >= 0, got {mu}")
        if tier is None:
            return self.default_level
        top, _ = self.band(tier)
        return top + bisect_left(self._boundaries, mu)

    def clamp(self, level: int, max_priority: int) -> int:
        """``level`` limited to ``[max(2, max_priority), total_levels]``."""
        ceiling = max(_TOP_REQUEST_LEVEL, max_priority)
        return min(self.total_levels, max(ceiling, level))

    def level(
        self,
        tier: Tier | None,
        mu: float,
        waited_s: float,
        max_priority: int,
        *,
        requested: int | None = None,
    ) -> int:
        """The Triton level (2 = highest a request can get; larger numbers run later).

        ``requested``: a level the request asked for explicitly; it replaces the tier × MU
        level and is clamped like any other (never 1, never above ``max_priority``).
        """
        if not math.isfinite(waited_s):
            raise ValueError(f"waited_s must be finite, got {waited_s}")
        raw = self.base_level(tier, mu) if requested is None else requested
        aging = self.config.aging_s
        if aging is not None and waited_s > 0:
            raw -= int(waited_s // aging)
        return self.clamp(raw, max_priority)
