"""An MU token bucket: a tenant's reservation and burst allowance.

The bucket refills at ``rate_mu_s`` (the tenant's ``reserved_mu_s``) up to ``depth_mu``
(``reserved_mu_s + burst_mu``) and starts full. Admission takes a request's *estimated* MU
from it; when the request ends, :meth:`MuBucket.settle` reconciles the charge with the
*actual* MU. An underestimate draws the difference even if that takes the level below zero:
the debt delays the tenant's next admissions until the refill has paid it back, so a tenant
cannot outrun its reservation by under-declaring ``max_tokens``.

A request bigger than the whole depth can never "fit"; it is admitted when the bucket is full
(and leaves it in debt), so :meth:`MuBucket.retry_after_s` for it is the time to fill the
bucket. Retry-after is never infinite: it is clamped to ``[min_retry_s, max_retry_s]``
(a bucket that never refills, rate 0, answers ``max_retry_s``).

Pure state: ``now`` (seconds, any monotonic origin) is an argument; time going backwards is
treated as no time passing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["MuBucket"]

_REL_EPS = 1e-9
"""Relative tolerance on "fits", so that waiting exactly ``retry_after_s`` is enough."""


@dataclass
class MuBucket:
    """Token bucket in MU. ``level_mu`` may be negative (a debt), never above ``depth_mu``."""

    rate_mu_s: float
    depth_mu: float
    level_mu: float
    updated_at: float
    min_retry_s: float = 0.05
    max_retry_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("rate_mu_s", "depth_mu", "min_retry_s", "max_retry_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if not math.isfinite(self.level_mu) or not math.isfinite(self.updated_at):
            raise ValueError("level_mu and updated_at must be finite")
        if self.min_retry_s > self.max_retry_s:
            raise ValueError(f"min_retry_s {self.min_retry_s} > max_retry_s {self.max_retry_s}")
        self.level_mu = min(self.level_mu, self.depth_mu)

    @classmethod
    def full(
        cls,
        rate_mu_s: float,
        depth_mu: float,
        now: float,
        *,
        min_retry_s: float = 0.05,
        max_retry_s: float = 60.0,
    ) -> MuBucket:
        """A bucket that starts full at ``now``."""
        return cls(rate_mu_s, depth_mu, depth_mu, now, min_retry_s, max_retry_s)

    # ------------------------------------------------------------------ queries

    @property
    def enabled(self) -> bool:
        """A bucket of depth 0 (no reservation) never admits anything."""
        return self.depth_mu > 0

    def level(self, now: float) -> float:
        """The level at ``now`` after refill (does not change the state)."""
        elapsed = max(0.0, now - self.updated_at)
        return min(self.depth_mu, self.level_mu + self.rate_mu_s * elapsed)

    def fits(self, mu: float, now: float) -> bool:
        """Would :meth:`try_take` of ``mu`` succeed at ``now``?"""
        _check_mu(mu)
        return self.enabled and self._fits(self.level(now), mu)

    def retry_after_s(self, mu: float, now: float) -> float:
        """Seconds until ``mu`` would fit: 0 if it fits now, else in
        ``[min_retry_s, max_retry_s]``. For ``mu`` above the depth: time to fill the bucket."""
        _check_mu(mu)
        if not self.enabled:
            return self.max_retry_s
        level = self.level(now)
        if self._fits(level, mu):
            return 0.0
        missing = self._need(mu) - level
        if self.rate_mu_s <= 0:
            return self.max_retry_s
        return min(self.max_retry_s, max(self.min_retry_s, missing / self.rate_mu_s))

    # ------------------------------------------------------------------ updates

    def try_take(self, mu: float, now: float) -> bool:
        """Take ``mu`` if it fits (or, for ``mu`` above the depth, if the bucket is full)."""
        _check_mu(mu)
        self._advance(now)
        if not self.enabled or not self._fits(self.level_mu, mu):
            return False
        self.level_mu -= mu
        return True

    def refund(self, mu: float, now: float) -> None:
        """Give ``mu`` back (a request that never ran); the level is capped at the depth."""
        _check_mu(mu)
        self._advance(now)
        self.level_mu = min(self.depth_mu, self.level_mu + mu)

    def settle(self, charged: float, actual: float, now: float) -> None:
        """Reconcile a charge with the request's actual MU: refund ``charged − actual`` (capped
        at the depth) or draw ``actual − charged`` (the level may go negative: a debt)."""
        _check_mu(charged)
        _check_mu(actual)
        self._advance(now)
        self.level_mu = min(self.depth_mu, self.level_mu + charged - actual)

    def reconfigure(self, rate_mu_s: float, depth_mu: float, now: float) -> None:
        """Apply a changed reservation; the level (after refill at the old rate) is kept,
        capped at the new depth."""
        self._advance(now)
        if not (math.isfinite(rate_mu_s) and rate_mu_s >= 0):
            raise ValueError(f"rate_mu_s must be finite and >= 0, got {rate_mu_s}")
        if not (math.isfinite(depth_mu) and depth_mu >= 0):
            raise ValueError(f"depth_mu must be finite and >= 0, got {depth_mu}")
        self.rate_mu_s = rate_mu_s
        self.depth_mu = depth_mu
        self.level_mu = min(self.level_mu, depth_mu)

    # ------------------------------------------------------------------ internals

    def _need(self, mu: float) -> float:
        return min(mu, self.depth_mu)

    def _fits(self, level: float, mu: float) -> bool:
        need = self._need(mu)
        return level >= need - _REL_EPS * max(1.0, self.depth_mu)

    def _advance(self, now: float) -> None:
        if not math.isfinite(now):
            raise ValueError(f"now must be finite, got {now}")
        self.level_mu = self.level(now)
        self.updated_at = max(self.updated_at, now)


def _check_mu(mu: float) -> None:
    if not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"MU must be finite and >= 0, got {mu}")
