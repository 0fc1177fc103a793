"""Unit tests for OutputLengthEstimator: fallback chain, convergence, bounded state, isolation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from router.output_length import OutputLengthEstimator


def _feed(
    est: OutputLengthEstimator,
    tenant: str,
    model: str,
    ratio: float,
    n: int,
    max_tokens: int = 1000,
) -> None:
    for _ in range(n):
        est.observe(tenant, model, max_tokens, round(ratio * max_tokens))


def test_prior_before_any_observation() -> None:
    assert OutputLengthEstimator().expected("t", "m", 512) == 512.0
    assert OutputLengthEstimator(prior_fraction=0.25).expected("t", "m", 400) == 100.0


def test_fallback_chain() -> None:
    est = OutputLengthEstimator(min_samples=8, prior_fraction=1.0)
    # 7 samples for (a, m): still the prior, for a and for everyone else.
    _feed(est, "a", "m", 0.2, 7)
    assert est.expected("a", "m", 100) == 100.0
    assert est.expected("b", "m", 100) == 100.0
    # 8th sample: (a, m) and (*, m) both reach min_samples.
    _feed(est, "a", "m", 0.2, 1)
    assert est.expected("a", "m", 100) == pytest.approx(20.0)
    # b has no data of its own: falls back to the model-wide estimate.
    assert est.expected("b", "m", 100) == pytest.approx(20.0)
    # Another model is unaffected.
    assert est.expected("a", "other", 100) == 100.0
    # b's own data, below min_samples, does not yet override the model-wide estimate,
    # but contributes to it.
    _feed(est, "b", "m", 0.6, 4)
    assert est.expected("b", "m", 100) == pytest.approx(100 * (8 * 0.2 + 4 * 0.6) / 12)
    _feed(est, "b", "m", 0.6, 4)
    assert est.expected("b", "m", 100) == pytest.approx(60.0)
    assert est.expected("a", "m", 100) == pytest.approx(20.0)


@pytest.mark.parametrize("true_ratio", [0.05, 0.3, 0.75])
def test_converges_to_true_ratio_across_budgets(true_ratio: float) -> None:
    rng = np.random.default_rng(int(true_ratio * 100))
    est = OutputLengthEstimator(half_life=100)
    for _ in range(3000):
        max_tokens = int(rng.choice([16, 256, 1024, 4096]))
        # Actual lengths scatter around the true fraction of the budget.
        ratio = float(np.clip(rng.normal(true_ratio, 0.1), 0.0, 1.0))
        est.observe("t", "m", max_tokens, round(ratio * max_tokens))
    mean_ratio = float(np.mean(np.clip(rng.normal(true_ratio, 0.1, 100_000), 0.0, 1.0)))
    assert est.fraction("t", "m") == pytest.approx(mean_ratio, abs=0.03)
    assert est.expected("t", "m", 2000) == pytest.approx(2000 * mean_ratio, abs=60)


def test_early_estimate_is_uniform_mean_then_tracks_change() -> None:
    est = OutputLengthEstimator(min_samples=1, half_life=20)
    for actual in (10, 20, 30):
        est.observe("t", "m", 100, actual)
    assert est.fraction("t", "m") == pytest.approx(0.2)  # uniform mean of the first samples
    _feed(est, "t", "m", 0.9, 400, max_tokens=100)
    assert est.fraction("t", "m") == pytest.approx(0.9, abs=1e-3)


def test_half_life() -> None:
    est = OutputLengthEstimator(min_samples=1, half_life=50)
    _feed(est, "t", "m", 0.0, 1000)
    _feed(est, "t", "m", 1.0, 50)
    assert est.fraction("t", "m") == pytest.approx(0.5, abs=1e-6)


def test_tenant_isolation() -> None:
    est = OutputLengthEstimator(min_samples=4)
    _feed(est, "short", "m", 0.1, 50)
    _feed(est, "long", "m", 0.9, 50)
    _feed(est, "long", "m2", 0.5, 50)
    assert est.fraction("short", "m") == pytest.approx(0.1, abs=1e-9)
    assert est.fraction("long", "m") == pytest.approx(0.9, abs=1e-9)
    assert est.fraction("long", "m2") == pytest.approx(0.5, abs=1e-9)
    assert est.fraction("short", "m2") == pytest.approx(0.5, abs=1e-9)  # model fallback


def test_bounded_state_with_many_tenants() -> None:
    est = OutputLengthEstimator(min_samples=1, max_keys=100, max_models=10)
    for i in range(5000):
        est.observe(f"tenant-{i}", f"model-{i % 20}", 100, 30)
    assert len(est) == 100
    snap = est.snapshot()
    assert len(snap["tenant_models"]) == 100
    assert len(snap["models"]) == 10
    # Recent tenants are kept, old ones evicted (falling back to the model estimate).
    assert est.fraction("tenant-4999", "model-19") == pytest.approx(0.3)
    assert est.expected("tenant-0", "model-0", 100) == 100.0  # model-0 evicted too: prior
    assert est.expected("tenant-0", "model-19", 100) == pytest.approx(30.0)


def test_recently_used_key_survives_eviction() -> None:
    est = OutputLengthEstimator(min_samples=1, max_keys=3)
    for tenant in ("a", "b", "c"):
        est.observe(tenant, "m", 100, 10)
    est.observe("a", "m", 100, 10)  # a is now most recent
    est.observe("d", "m", 100, 10)  # evicts b
    tenants = {row["tenant"] for row in est.snapshot()["tenant_models"]}
    assert tenants == {"a", "c", "d"}


def test_observe_edge_cases() -> None:
    est = OutputLengthEstimator(min_samples=1)
    est.observe("t", "m", 0, 0)  # no budget, no information
    assert len(est) == 0
    est.observe("t", "m", 10, 50)  # over budget: clamped to a ratio of 1
    assert est.expected("t", "m", 10) == 10.0
    with pytest.raises(ValueError):
        est.observe("t", "m", -1, 0)
    with pytest.raises(ValueError):
        est.observe("t", "m", 10, -1)
    with pytest.raises(ValueError):
        est.expected("t", "m", -1)
    assert est.expected("t", "m", 0) == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prior_fraction": -0.1},
        {"prior_fraction": 1.5},
        {"min_samples": 0},
        {"half_life": 0},
        {"max_keys": 0},
        {"max_models": 0},
    ],
)
def test_constructor_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OutputLengthEstimator(**kwargs)  # type: ignore[arg-type]


def test_snapshot_is_json_ready() -> None:
    est = OutputLengthEstimator(min_samples=2, half_life=10)
    _feed(est, "t", "m", 0.5, 3, max_tokens=10)
    snap = est.snapshot()
    assert json.loads(json.dumps(snap)) == snap
    assert snap["tenant_models"] == [{"tenant": "t", "model": "m", "count": 3, "fraction": 0.5}]
    assert snap["models"] == [{"model": "m", "count": 3, "fraction": 0.5}]
    assert snap["min_samples"] == 2
    assert snap["half_life"] == 10
