"""Online estimate of a request's output length, for pricing it in MU before it runs.

The router must price a request (:meth:`router.cost_model.CostModel.estimate`) before the
engine has generated anything, so the output length is unknown; only the request's budget
``max_tokens`` is. :class:`OutputLengthEstimator` learns, per (tenant, model), what *fraction
of max_tokens* requests actually generate, and predicts ``fraction * max_tokens``.

Why a fraction of ``max_tokens`` rather than a token count: clients set the budget to suit the
task — a classifier asks for 5 tokens, a code agent for 4096 — so requests with a larger budget
tend to generate more. A mean token count would mix those populations and over-price the small
requests while under-pricing the large ones; the fraction is what generalises across budgets
(and it can never predict more than the budget allows). It is also what stays stable for one
tenant's workload while its budgets change.

Fallback chain, for ``expected(tenant, model, max_tokens)``:

1. the (tenant, model) estimate, once it has ``min_samples`` observations;
2. otherwise the (*, model) estimate over all tenants, once it has ``min_samples``;
3. otherwise ``prior_fraction`` (default 1.0: the worst case, ``max_tokens``).

State is bounded: per key only an exponentially-weighted mean of the ratio and a count (no
sample buffers, no quantiles), with a half-life of ``half_life`` observations; the first
observations are averaged uniformly (weight ``max(1/count, alpha)``) so the early estimate is
not biased towards zero. The number of (tenant, model) keys is bounded by ``max_keys`` and the
number of models by ``max_models``; the least recently observed key is evicted first.

Not thread-safe: the router is a single asyncio loop.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["OutputLengthEstimator"]


@dataclass
class _Ewma:
    """Exponentially-weighted mean of the output/max_tokens ratio, plus its sample count."""

    mean: float = 0.0
    count: int = 0

    def add(self, value: float, alpha: float) -> None:
        self.count += 1
        weight = max(1.0 / self.count, alpha)
        self.mean += weight * (value - self.mean)


class OutputLengthEstimator:
    """Per-(tenant, model) expected output length as a fraction of ``max_tokens``."""

    def __init__(
        self,
        *,
        prior_fraction: float = 1.0,
        min_samples: int = 8,
        half_life: float = 200.0,
        max_keys: int = 10_000,
        max_models: int = 1_000,
    ) -> None:
        if not 0.0 <= prior_fraction <= 1.0:
            raise ValueError(f"prior_fraction must be in [0, 1], got {prior_fraction}")
        if min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        if not half_life > 0:
            raise ValueError(f"half_life must be > 0, got {half_life}")
        if max_keys < 1 or max_models < 1:
            raise ValueError("max_keys and max_models must be >= 1")
        self.prior_fraction = prior_fraction
        self.min_samples = min_samples
        self.half_life = half_life
        self.max_keys = max_keys
        self.max_models = max_models
        # Weight of a new sample once warmed up: the previous samples' weight halves every
        # ``half_life`` observations, (1 - alpha) ** half_life == 1/2.
        self._alpha = 1.0 - math.pow(0.5, 1.0 / half_life)
        self._by_tenant: OrderedDict[tuple[str, str], _Ewma] = OrderedDict()
        self._by_model: OrderedDict[str, _Ewma] = OrderedDict()

    def observe(self, tenant: str, model: str, max_tokens: int, actual_tokens: int) -> None:
        """Record that a request with budget ``max_tokens`` generated ``actual_tokens``.

        Requests with ``max_tokens == 0`` carry no information and are ignored. A count above
        the budget (an engine that ignores it) is clamped to a ratio of 1.
        """
        if max_tokens < 0 or actual_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got {max_tokens=} {actual_tokens=}")
        if max_tokens == 0:
            return
        ratio = min(actual_tokens / max_tokens, 1.0)
        _touch(self._by_tenant, (tenant, model), self.max_keys).add(ratio, self._alpha)
        _touch(self._by_model, model, self.max_models).add(ratio, self._alpha)

    def fraction(self, tenant: str, model: str) -> float:
        """Expected fraction of ``max_tokens`` generated, after the fallback chain."""
        stats = self._by_tenant.get((tenant, model))
        if stats is not None and stats.count >= self.min_samples:
            return stats.mean
        stats = self._by_model.get(model)
        if stats is not None and stats.count >= self.min_samples:
            return stats.mean
        return self.prior_fraction

    def expected(self, tenant: str, model: str, max_tokens: int) -> float:
        """Expected output tokens of a request with budget ``max_tokens``; in [0, max_tokens]."""
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        return min(max(self.fraction(tenant, model), 0.0), 1.0) * max_tokens

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view of the state, for metrics and debugging."""
        return {
            "prior_fraction": self.prior_fraction,
            "min_samples": self.min_samples,
            "half_life": self.half_life,
            "tenant_models": [
                {"tenant": tenant, "model": model, "count": s.count, "fraction": s.mean}
                for (tenant, model), s in self._by_tenant.items()
            ],
            "models": [
                {"model": model, "count": s.count, "fraction": s.mean}
                for model, s in self._by_model.items()
            ],
        }

    def __len__(self) -> int:
        """Number of (tenant, model) keys held."""
        return len(self._by_tenant)


def _touch(table: OrderedDict[Any, _Ewma], key: Any, limit: int) -> _Ewma:
    """The stats for ``key``, created if new and marked most recently used; evicts LRU."""
    stats = table.get(key)
    if stats is None:
        stats = table[key] = _Ewma()
        while len(table) > limit:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return stats
