"""Unit tests for the Model Unit cost model: busy_s, MU, capacity, NNLS fitting, profiles."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from router.cost_model import (
    FEATURE_NAMES,
    MU_PER_REFERENCE_SECOND,
    SLO,
    CostCoefficients,
    CostModel,
    FitReport,
    PairProfile,
    RequestShape,
    feature_matrix,
    fit_coefficients,
    mape_pct,
    reference_capacity,
)

# Plausible magnitudes for a 7B model at its SLO-bounded batch: a few ms fixed, tens of µs per
# prefill token, ~1 ms per output token (its share of a decode step), attention per context.
TRUE = CostCoefficients(
    base_s=4e-3,
    prefill_token_s=6e-5,
    cached_token_s=2e-6,
    output_token_s=1.1e-3,
    context_output_s=3e-8,
    prefill_context_s=2e-9,
)
SIMPLE = CostCoefficients(
    base_s=0.01,
    prefill_token_s=0.001,
    cached_token_s=0.0001,
    output_token_s=0.002,
    context_output_s=0.00001,
)
SLO_STD = SLO(ttft_p99_s=1.0, tpot_p99_s=0.05)


def _profile(
    coefficients: CostCoefficients = SIMPLE,
    capacity_mu_s: float = 1000.0,
    reference: bool = True,
    capacity_rps: float = 10.0,
    **extra: object,
) -> PairProfile:
    return PairProfile(
        pair="llama-7b@h100" if reference else "llama-7b@other",
        model="llama-7b",
        hardware="h100" if reference else "other",
        coefficients=coefficients,
        capacity_mu_s=capacity_mu_s,
        capacity_concurrency=32,
        capacity_rps=capacity_rps,
        slo=SLO_STD,
        reference=reference,
        **extra,
    )


def _shapes(n: int, seed: int = 0) -> list[RequestShape]:
    rng = np.random.default_rng(seed)
    shapes = []
    for _ in range(n):
        prompt = int(rng.integers(1, 8000))
        cached = int(rng.integers(0, prompt + 1)) if rng.random() < 0.6 else 0
        output = int(rng.integers(0, 1500))
        shapes.append(
            RequestShape(prompt_tokens=prompt, output_tokens=output, cached_tokens=cached)
        )
    return shapes


def _sweep(repeats: int) -> list[RequestShape]:
    """A calibration sweep: prompt length x cached fraction x output length, repeated."""
    shapes = []
    for prompt in (64, 512, 2048, 8192):
        for cached_fraction in (0.0, 0.5, 0.95):
            for output in (0, 1, 32, 256, 1024):
                cached = int(prompt * cached_fraction)
                shapes += [RequestShape(prompt, output, cached)] * repeats
    return shapes


def _busy(c: CostCoefficients, shapes: list[RequestShape]) -> np.ndarray:
    return feature_matrix(shapes) @ c.as_array()


def _rel_err(fit: CostCoefficients, true: CostCoefficients) -> np.ndarray:
    return np.abs(fit.as_array() - true.as_array()) / true.as_array()


# ---------------------------------------------------------------- RequestShape


def test_request_shape_properties() -> None:
    s = RequestShape(prompt_tokens=100, output_tokens=11, cached_tokens=40)
    assert s.uncached_tokens == 60
    assert s.mean_context == 105.0  # 100 + (11 - 1) / 2
    assert RequestShape(prompt_tokens=100, output_tokens=1).mean_context == 100.0
    assert RequestShape(prompt_tokens=100, output_tokens=0).mean_context == 0.0


@pytest.mark.parametrize(
    ("prompt", "output", "cached"),
    [(-1, 0, 0), (10, -1, 0), (10, 5, 11), (10, 5, -1)],
)
def test_request_shape_validation(prompt: int, output: int, cached: int) -> None:
    with pytest.raises(ValueError):
        RequestShape(prompt_tokens=prompt, output_tokens=output, cached_tokens=cached)


def test_request_shape_edges_are_valid() -> None:
    RequestShape(prompt_tokens=0, output_tokens=0)
    RequestShape(prompt_tokens=10, output_tokens=0, cached_tokens=10)


# ---------------------------------------------------------------- busy_s and MU arithmetic


@pytest.mark.parametrize(
    ("shape", "expected_busy"),
    [
        # 0.01 + 0.001*60 + 0.0001*40 + 0.002*11 + 0.00001*11*105
        (RequestShape(100, 11, 40), 0.01 + 0.06 + 0.004 + 0.022 + 0.01155),
        # no output: no decode terms at all
        (RequestShape(100, 0, 0), 0.01 + 0.1),
        # one output token, empty prompt: mean context 0
        (RequestShape(0, 1, 0), 0.01 + 0.002),
        # fully cached prompt: 0.01 + 0.0001*200 + 0.002*3 + 0.00001*3*201
        (RequestShape(200, 3, 200), 0.01 + 0.02 + 0.006 + 0.00603),
    ],
)
def test_busy_and_mu_hand_computed(shape: RequestShape, expected_busy: float) -> None:
    model = CostModel(_profile(capacity_mu_s=2500.0, reference=False))
    assert model.busy_s(shape) == pytest.approx(expected_busy, rel=1e-12)
    assert model.mu(shape) == pytest.approx(expected_busy * 2500.0, rel=1e-12)
    assert model.actual(shape) == model.mu(shape)
    assert model.capacity_mu_s == 2500.0


def test_reference_pair_mu_is_1000_times_busy() -> None:
    model = CostModel(_profile())
    for shape in _shapes(50):
        assert model.mu(shape) == pytest.approx(1000.0 * model.busy_s(shape), rel=1e-12)
    assert MU_PER_REFERENCE_SECOND == 1000.0


def test_reference_profile_must_have_capacity_1000() -> None:
    with pytest.raises(ValidationError):
        _profile(capacity_mu_s=1200.0, reference=True)


@pytest.mark.parametrize(
    ("pair_rps", "reference_rps", "expected"),
    [(10.0, 10.0, 1000.0), (20.0, 10.0, 2000.0), (5.0, 10.0, 500.0), (3.0, 12.0, 250.0)],
)
def test_reference_capacity(pair_rps: float, reference_rps: float, expected: float) -> None:
    assert reference_capacity(pair_rps, reference_rps) == pytest.approx(expected)


@pytest.mark.parametrize(("pair_rps", "reference_rps"), [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0)])
def test_reference_capacity_rejects_non_positive(pair_rps: float, reference_rps: float) -> None:
    with pytest.raises(ValueError):
        reference_capacity(pair_rps, reference_rps)


def _scaled(c: CostCoefficients, factors: tuple[float, ...]) -> CostCoefficients:
    return CostCoefficients(
        **{n: v * f for n, v, f in zip(FEATURE_NAMES, c.as_array(), factors, strict=True)}
    )


def test_twice_as_fast_pair_gives_same_mu() -> None:
    mix = _shapes(200, seed=3)
    ref_busy = _busy(TRUE, mix)
    # At capacity the engine is always busy: N requests take sum(busy_s) seconds.
    ref_rps = len(mix) / float(ref_busy.sum())
    fast_coeffs = _scaled(TRUE, (0.5,) * len(FEATURE_NAMES))
    fast_rps = len(mix) / float(_busy(fast_coeffs, mix).sum())
    assert fast_rps == pytest.approx(2 * ref_rps)
    capacity = reference_capacity(fast_rps, ref_rps)
    assert capacity == pytest.approx(2000.0)

    ref = CostModel(_profile(TRUE, capacity_rps=ref_rps))
    fast = CostModel(
        _profile(fast_coeffs, capacity_mu_s=capacity, reference=False, capacity_rps=fast_rps)
    )
    for shape in mix[:20]:
        assert fast.busy_s(shape) == pytest.approx(ref.busy_s(shape) / 2)
        assert fast.mu(shape) == pytest.approx(ref.mu(shape), rel=1e-9)


def test_mu_of_standard_mix_is_pair_independent() -> None:
    """A pair faster at prefill but slower at decode: single requests are priced differently,
    the standard mix costs the same MU on both pairs."""
    mix = _shapes(300, seed=4)
    ref_rps = len(mix) / float(_busy(TRUE, mix).sum())
    other_coeffs = _scaled(TRUE, (0.7, 0.3, 0.5, 1.4, 1.2, 0.3))
    other_rps = len(mix) / float(_busy(other_coeffs, mix).sum())
    ref = CostModel(_profile(TRUE, capacity_rps=ref_rps))
    other = CostModel(
        _profile(
            other_coeffs,
            capacity_mu_s=reference_capacity(other_rps, ref_rps),
            reference=False,
            capacity_rps=other_rps,
        )
    )
    ref_mu = [ref.mu(s) for s in mix]
    other_mu = [other.mu(s) for s in mix]
    assert sum(other_mu) == pytest.approx(sum(ref_mu), rel=1e-9)
    assert sum(ref_mu) == pytest.approx(1000.0 * len(mix) / ref_rps, rel=1e-9)
    long_prompt = RequestShape(prompt_tokens=8000, output_tokens=10)
    long_output = RequestShape(prompt_tokens=50, output_tokens=1500)
    assert other.mu(long_prompt) < ref.mu(long_prompt)
    assert other.mu(long_output) > ref.mu(long_output)


# ---------------------------------------------------------------- estimate


def test_prefill_mu_is_the_prompt_part_of_the_price() -> None:
    model = CostModel(_profile())
    # With no output, a request's MU is its base cost plus its prompt.
    base = model.mu(RequestShape(0, 0))
    assert model.prefill_mu(300, cached_tokens=100) == pytest.approx(
        model.mu(RequestShape(300, 0, 100)) - base
    )
    assert model.prefill_mu(300) > model.prefill_mu(300, cached_tokens=100) > 0


def test_estimate_defaults_to_max_tokens() -> None:
    model = CostModel(_profile())
    assert model.estimate(100, 50, cached_tokens=40) == pytest.approx(
        model.mu(RequestShape(100, 50, 40))
    )


@pytest.mark.parametrize(
    ("expected_output", "effective"),
    [(-5.0, 0), (0.0, 0), (20.0, 20), (50.0, 50), (80.0, 50), (float("inf"), 50)],
)
def test_estimate_clamps_expected_output(expected_output: float, effective: int) -> None:
    model = CostModel(_profile())
    got = model.estimate(100, 50, expected_output=expected_output)
    assert got == pytest.approx(model.mu(RequestShape(100, effective)), rel=1e-12)


def test_estimate_fractional_expected_output_is_between_neighbours() -> None:
    model = CostModel(_profile())
    low, high = model.mu(RequestShape(100, 20)), model.mu(RequestShape(100, 21))
    assert low < model.estimate(100, 50, expected_output=20.5) < high
    # Fractional output below one token with an empty prompt never goes below the base cost.
    assert model.estimate(0, 50, expected_output=0.3) >= SIMPLE.base_s * 1000.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prompt_tokens": -1, "max_tokens": 10},
        {"prompt_tokens": 10, "max_tokens": -1},
        {"prompt_tokens": 10, "max_tokens": 10, "cached_tokens": 11},
        {"prompt_tokens": 10, "max_tokens": 10, "expected_output": float("nan")},
    ],
)
def test_estimate_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CostModel(_profile()).estimate(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- NNLS fit


def test_fit_recovers_noiseless_coefficients_exactly() -> None:
    shapes = _shapes(400, seed=1)
    fit = fit_coefficients(shapes, list(_busy(TRUE, shapes)))
    assert np.all(_rel_err(fit, TRUE) < 1e-6), fit


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_with_5pct_noise_within_10pct(seed: int) -> None:
    shapes = _sweep(repeats=60)
    rng = np.random.default_rng(seed)
    busy = _busy(TRUE, shapes) * (1.0 + rng.normal(0.0, 0.05, len(shapes)))
    fit = fit_coefficients(shapes, list(busy), weights=list(1.0 / busy**2))
    assert np.all(_rel_err(fit, TRUE) < 0.10), (fit, _rel_err(fit, TRUE))
    predicted = _busy(fit, shapes)
    assert mape_pct(list(predicted), list(_busy(TRUE, shapes))) < 2.0


def test_fit_unweighted_with_noise_within_10pct() -> None:
    shapes = _sweep(repeats=60)
    rng = np.random.default_rng(20)
    busy = _busy(TRUE, shapes) * (1.0 + rng.normal(0.0, 0.05, len(shapes)))
    fit = fit_coefficients(shapes, list(busy))
    # Without relative weighting the long requests dominate the squared error, so the small
    # base and cached-token terms are weakly identified: check the terms that dominate busy
    # time, and that predictions stay accurate.
    err = _rel_err(fit, TRUE)
    assert np.all(err[[1, 3]] < 0.10), (fit, err)
    assert mape_pct(list(_busy(fit, shapes)), list(_busy(TRUE, shapes))) < 4.0


def _brute_force_nnls(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Best feasible unconstrained solution over every subset of columns (tiny n only)."""
    n = a.shape[1]
    best_x, best_r = np.zeros(n), float(np.sum(b**2))
    for k in range(1, n + 1):
        for subset in itertools.combinations(range(n), k):
            cols = list(subset)
            sol = np.linalg.lstsq(a[:, cols], b, rcond=None)[0]
            if np.any(sol < 0):
                continue
            x = np.zeros(n)
            x[cols] = sol
            r = float(np.sum((a @ x - b) ** 2))
            if r < best_r:
                best_x, best_r = x, r
    return best_x, best_r


@pytest.mark.parametrize("seed", range(6))
def test_fit_never_negative_and_optimal_when_unconstrained_fit_is_negative(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shapes = _shapes(300, seed=100 + seed)
    # Data generated with a negative cached-token and context coefficient (and noise), so
    # the unconstrained least-squares fit has negative entries.
    signed = TRUE.as_array() * np.array([1.0, 1.0, -8.0, 1.0, -0.5, 1.0])
    a = feature_matrix(shapes)
    b = a @ signed * (1.0 + rng.normal(0.0, 0.02, len(shapes)))
    unconstrained = np.linalg.lstsq(a, b, rcond=None)[0]
    assert np.any(unconstrained < 0)

    fit = fit_coefficients(shapes, list(b)).as_array()
    assert np.all(fit >= 0)
    _, best_r = _brute_force_nnls(a, b)
    assert float(np.sum((a @ fit - b) ** 2)) == pytest.approx(best_r, rel=1e-6)


def test_fit_unused_feature_gets_zero() -> None:
    # No cached tokens and no outputs anywhere: only base and prefill are identifiable.
    shapes = [RequestShape(prompt_tokens=p, output_tokens=0) for p in range(10, 500, 7)]
    busy = [0.002 + 1e-4 * s.prompt_tokens for s in shapes]
    fit = fit_coefficients(shapes, busy)
    assert fit.base_s == pytest.approx(0.002, rel=1e-9)
    assert fit.prefill_token_s == pytest.approx(1e-4, rel=1e-9)
    assert fit.cached_token_s == fit.output_token_s == fit.context_output_s == 0.0
    assert fit.prefill_context_s == pytest.approx(0.0, abs=1e-15)


def test_fit_all_negative_targets_give_zero() -> None:
    shapes = _shapes(20)
    fit = fit_coefficients(shapes, [-1.0] * len(shapes))
    assert np.all(fit.as_array() == 0.0)


def test_fit_validation() -> None:
    with pytest.raises(ValueError):
        fit_coefficients([], [])
    with pytest.raises(ValueError):
        fit_coefficients(_shapes(3), [1.0, 2.0])
    with pytest.raises(ValueError):
        fit_coefficients(_shapes(2), [1.0, float("nan")])
    with pytest.raises(ValueError):
        fit_coefficients(_shapes(2), [1.0, 2.0], weights=[1.0, 0.0])


# ---------------------------------------------------------------- MAPE


@pytest.mark.parametrize(
    ("predicted", "measured", "expected"),
    [
        ([1.0, 2.0], [1.0, 2.0], 0.0),
        ([1.1, 1.8], [1.0, 2.0], 10.0),
        ([0.5], [1.0], 50.0),
        ([3.0], [-2.0], 250.0),
    ],
)
def test_mape_pct(predicted: list[float], measured: list[float], expected: float) -> None:
    assert mape_pct(predicted, measured) == pytest.approx(expected)


@pytest.mark.parametrize(("predicted", "measured"), [([], []), ([1.0], [1.0, 2.0]), ([1.0], [0.0])])
def test_mape_pct_rejects(predicted: list[float], measured: list[float]) -> None:
    with pytest.raises(ValueError):
        mape_pct(predicted, measured)


# ---------------------------------------------------------------- profiles


def test_profile_json_round_trip(tmp_path: Path) -> None:
    profile = _profile(
        TRUE,
        capacity_mu_s=1843.5,
        reference=False,
        time_scale=25.0,
        fit=FitReport(
            mape_busy_pct=4.2,
            mape_capacity_pct=2.5,
            fit_points=120,
            heldout_points=40,
            notes=["sim profile", "concurrency sweep 1..64"],
        ),
    )
    path = tmp_path / "llama-7b@other.json"
    profile.save(path)
    loaded = PairProfile.load(path)
    assert loaded == profile
    assert loaded.coefficients.context_output_s == TRUE.context_output_s
    assert json.loads(path.read_text())["time_scale"] == 25.0


def test_profile_defaults() -> None:
    profile = _profile()
    assert profile.time_scale == 1.0
    assert profile.fit is None
    assert (
        FitReport(mape_busy_pct=1, mape_capacity_pct=1, fit_points=1, heldout_points=0).notes == []
    )


def _profile_dict() -> dict[str, Any]:
    return json.loads(_profile().model_dump_json())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(unknown=1),
        lambda d: d["coefficients"].update(extra_s=0.1),
        lambda d: d["slo"].update(ttft_p50_s=0.1),
        lambda d: d.update(
            fit={
                "mape_busy_pct": 1,
                "mape_capacity_pct": 1,
                "fit_points": 1,
                "heldout_points": 1,
                "surprise": True,
            }
        ),
    ],
)
def test_profile_rejects_unknown_keys(
    mutate: Callable[[dict[str, Any]], None], tmp_path: Path
) -> None:
    data = _profile_dict()
    mutate(data)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValidationError):
        PairProfile.load(path)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("coefficients", "prefill_token_s", -1e-6),
        ("slo", "ttft_p99_s", 0.0),
        (None, "capacity_mu_s", 0.0),
        (None, "capacity_concurrency", 0),
        (None, "capacity_rps", -1.0),
        (None, "time_scale", 0.0),
    ],
)
def test_profile_rejects_out_of_range(section: str | None, key: str, value: float) -> None:
    data = _profile_dict()
    target = data if section is None else data[section]
    target[key] = value
    with pytest.raises(ValidationError):
        PairProfile.model_validate(data)


def test_profile_is_frozen() -> None:
    profile = _profile()
    with pytest.raises(ValidationError):
        profile.capacity_mu_s = 5.0  # type: ignore[misc]


def test_readme_worked_example() -> None:
    """The numbers in router/README.md."""
    l40s = CostCoefficients(
        base_s=1e-2,
        prefill_token_s=1.5e-4,
        cached_token_s=5e-6,
        output_token_s=2.2e-3,
        context_output_s=7.2e-8,
        prefill_context_s=5e-9,
    )
    ref = CostModel(_profile(TRUE, capacity_rps=12.0))
    other = CostModel(
        _profile(
            l40s,
            capacity_mu_s=reference_capacity(5.4, 12.0),
            reference=False,
            capacity_rps=5.4,
        )
    )
    shape = RequestShape(prompt_tokens=2000, output_tokens=300, cached_tokens=1500)
    assert other.capacity_mu_s == pytest.approx(450.0)
    assert ref.busy_s(shape) == pytest.approx(0.388096)
    assert ref.mu(shape) == pytest.approx(388.096)
    assert other.busy_s(shape) == pytest.approx(0.80330545)
    assert other.mu(shape) == pytest.approx(361.4874525)
    est = ref.estimate(2000, 1024, cached_tokens=1500, expected_output=0.3 * 1024)
    assert est == pytest.approx(396.5134696)
    assert ref.estimate(2000, 1024, cached_tokens=1500) == pytest.approx(1242.30378)
    assert ref.actual(RequestShape(2000, 280, 1500)) == pytest.approx(364.7223)
