"""Model Units (MU): the fleet's currency of GPU work, and the cost model that prices requests.

Definitions (``router/README.md`` has a worked example):

* A (model, hardware) **pair profile** (:class:`PairProfile`) holds fitted cost coefficients
  and the pair's capacity.
* ``busy_s(req | pair)`` is the request's share of the pair's engine time when the pair runs at
  its capacity load (at the SLO-bounded concurrency). It is a linear model over request
  features::

      busy_s = base_s
             + prefill_token_s   * uncached_prompt_tokens
             + cached_token_s    * cached_prompt_tokens
             + output_token_s    * output_tokens
             + context_output_s  * output_tokens * mean_context
             + prefill_context_s * uncached_prompt_tokens * prefill_context

  where ``mean_context = prompt_tokens + (output_tokens - 1) / 2`` is the average context length
  seen by the decode steps (0 output tokens -> 0 decode term), and ``prefill_context =
  cached_prompt_tokens + (uncached_prompt_tokens + 1) / 2`` the average context an uncached
  prompt token attends over. All coefficients are >= 0. The last term is prefill attention,
  quadratic in the prompt: small against the prompt's linear work on a large model at these
  lengths (the GPU pairs fit it at about 0), as large as it on a small one (the cpu pair).
* ``capacity_mu_s(pair)`` is the MU/s the pair delivers at its SLO-bounded load. One MU is one
  millisecond of the **reference** pair's saturated work, so the reference pair has capacity
  ``1000`` MU/s; another pair X has capacity ``1000 * R_X / R_ref``, where R is the request
  throughput each pair sustains on the same standard mix at its SLO-bounded load.
* ``MU(req | pair) = busy_s(req | pair) * capacity_mu_s(pair)``.
* The estimate is made before the request runs, when the output length is unknown: it is
  expected from ``max_tokens`` and a learned per-(tenant, model) distribution of actual output
  lengths (:mod:`router.output_length`). After the request ends the charge is reconciled with
  the actual tokens (:meth:`CostModel.actual`).

Why MU are comparable across pairs: at capacity the engine is always busy, so over the standard
mix the busy shares add up to the wall time, ``sum(busy_s) = N / R``. The mix therefore costs
``N / R_X * 1000 * R_X / R_ref = 1000 * N / R_ref`` MU on every pair: a unit of MU is the same
amount of work wherever it runs, and MU add up across a heterogeneous fleet. Individual
requests may still cost a different number of MU on different pairs (a pair that is relatively
faster at prefill makes long prompts cheaper there), which is what MU-aware routing exploits.

Approximation in :meth:`CostModel.estimate`: the context term is quadratic in the output
length, so pricing the *expected* output length underestimates the expected cost by
``context_output_s * Var(output_tokens) / 2``. The estimate is reconciled with the actual
tokens afterwards, and prediction error is measured, never assumed.

Everything here is plain typed data and pure functions: no I/O (apart from the explicit
:meth:`PairProfile.load` / :meth:`PairProfile.save`), no globals, no clocks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.engine_record import EngineRecord

__all__ = [
    "FEATURE_NAMES",
    "MU_PER_REFERENCE_SECOND",
    "SLO",
    "CostCoefficients",
    "CostModel",
    "FitReport",
    "PairProfile",
    "RequestShape",
    "feature_matrix",
    "fit_coefficients",
    "mape_pct",
    "reference_capacity",
]

MU_PER_REFERENCE_SECOND = 1000.0
"""MU delivered by one second of the reference pair's saturated work (1 MU = 1 ms of it)."""

FEATURE_NAMES: tuple[str, ...] = (
    "base_s",
    "prefill_token_s",
    "cached_token_s",
    "output_token_s",
    "context_output_s",
    "prefill_context_s",
)
"""Coefficient names, in the column order of :func:`feature_matrix`."""


class CostCoefficients(BaseModel):
    """Fitted coefficients of the linear ``busy_s`` model; seconds per unit of each feature."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_s: float = Field(ge=0)
    """Fixed per-request cost (scheduling, sampling setup, detokenisation)."""
    prefill_token_s: float = Field(ge=0)
    """Per uncached prompt token (prefill compute)."""
    cached_token_s: float = Field(ge=0)
    """Per prompt token served from the prefix/KV cache."""
    output_token_s: float = Field(ge=0)
    """Per generated token (the request's share of one decode step at capacity batch size)."""
    context_output_s: float = Field(ge=0)
    """Per generated token per token of context (attention over the KV cache)."""
    prefill_context_s: float = Field(default=0.0, ge=0)
    """Per uncached prompt token per token it attends over (prefill attention); 0 in
    profiles fitted without it."""

    def as_array(self) -> NDArray[np.float64]:
        """The coefficients as a vector in :data:`FEATURE_NAMES` order."""
        return np.array([getattr(self, name) for name in FEATURE_NAMES], dtype=np.float64)


class SLO(BaseModel):
    """Latency objective that bounds a pair's capacity load."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ttft_p99_s: float = Field(gt=0)
    """p99 time to first token, seconds."""
    tpot_p99_s: float = Field(gt=0)
    """p99 time per output token after the first, seconds."""


class FitReport(BaseModel):
    """How well a pair profile's fit matches measurements (training and held-out points)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mape_busy_pct: float = Field(ge=0)
    """Mean absolute percentage error of ``busy_s`` on the held-out points."""
    mape_capacity_pct: float = Field(ge=0)
    """Mean absolute percentage error of the capacity (throughput) prediction."""
    fit_points: int = Field(ge=0)
    heldout_points: int = Field(ge=0)
    notes: list[str] = Field(default_factory=list)


class PairProfile(BaseModel):
    """Calibrated cost profile of one (model, hardware) pair.

    ``time_scale``: durations measured on a slowed-down simulator are divided by it before
    fitting, so that the coefficients are in real engine seconds (1.0 for real hardware).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pair: str = Field(min_length=1)
    """Pair identifier, conventionally ``"<model>@<hardware>"``."""
    model: str = Field(min_length=1)
    hardware: str = Field(min_length=1)
    coefficients: CostCoefficients
    capacity_mu_s: float = Field(gt=0)
    """MU/s delivered at the SLO-bounded load; exactly 1000 for the reference pair."""
    capacity_concurrency: int = Field(ge=1)
    """The SLO-bounded concurrency at which capacity was measured."""
    capacity_rps: float = Field(gt=0)
    """Request throughput of the standard mix at capacity."""
    slo: SLO
    reference: bool
    time_scale: float = Field(default=1.0, gt=0)
    engine: EngineRecord | None = None
    """The engine configuration the profile was measured under (``None``: not recorded)."""
    fit: FitReport | None = None

    @model_validator(mode="after")
    def _reference_capacity(self) -> PairProfile:
        if self.reference and not math.isclose(
            self.capacity_mu_s, MU_PER_REFERENCE_SECOND, rel_tol=1e-9
        ):
            raise ValueError(
                f"the reference pair has capacity {MU_PER_REFERENCE_SECOND} MU/s by definition, "
                f"got {self.capacity_mu_s}"
            )
        return self

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PairProfile:
        """Read a profile from a JSON file written by :meth:`save`."""
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the profile as indented JSON."""
        Path(path).write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class RequestShape:
    """The token counts that determine a request's cost."""

    prompt_tokens: int
    output_tokens: int
    cached_tokens: int = 0
    """Prompt tokens served from the prefix cache (a prefix of the prompt)."""

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0:
            raise ValueError(f"prompt_tokens must be >= 0, got {self.prompt_tokens}")
        if self.output_tokens < 0:
            raise ValueError(f"output_tokens must be >= 0, got {self.output_tokens}")
        if not 0 <= self.cached_tokens <= self.prompt_tokens:
            raise ValueError(
                f"cached_tokens must be in [0, prompt_tokens={self.prompt_tokens}], "
                f"got {self.cached_tokens}"
            )

    @property
    def uncached_tokens(self) -> int:
        """Prompt tokens that must be prefilled."""
        return self.prompt_tokens - self.cached_tokens

    @property
    def mean_context(self) -> float:
        """Average context length over the decode steps; 0.0 when nothing is generated."""
        return _mean_context(self.prompt_tokens, float(self.output_tokens))


def _mean_context(prompt_tokens: float, output_tokens: float) -> float:
    if output_tokens <= 0:
        return 0.0
    # max(): a fractional expected output below one token with an empty prompt stays >= 0.
    return max(0.0, prompt_tokens + (output_tokens - 1.0) / 2.0)


def _prefill_pairs(prompt: float, cached: float) -> float:
    """(uncached token, token it attends over) pairs of the prompt's prefill."""
    uncached = max(prompt - cached, 0.0)
    return uncached * (cached + (uncached + 1.0) / 2.0)


def _prefill_s(c: CostCoefficients, prompt: float, cached: float) -> float:
    return (
        c.prefill_token_s * (prompt - cached)
        + c.cached_token_s * cached
        + c.prefill_context_s * _prefill_pairs(prompt, cached)
    )


def _busy_s(c: CostCoefficients, prompt: float, cached: float, output: float) -> float:
    return (
        c.base_s
        + _prefill_s(c, prompt, cached)
        + c.output_token_s * output
        + c.context_output_s * output * _mean_context(prompt, output)
    )


class CostModel:
    """Prices requests on one pair: ``busy_s`` and MU, estimated before and actual after."""

    def __init__(self, profile: PairProfile) -> None:
        self._profile = profile
        self._c = profile.coefficients

    @property
    def profile(self) -> PairProfile:
        return self._profile

    @property
    def capacity_mu_s(self) -> float:
        """MU/s the pair delivers at its SLO-bounded load."""
        return self._profile.capacity_mu_s

    def busy_s(self, shape: RequestShape) -> float:
        """The request's share of the pair's engine time at capacity load, seconds."""
        return _busy_s(
            self._c, float(shape.prompt_tokens), float(shape.cached_tokens), shape.output_tokens
        )

    def mu(self, shape: RequestShape) -> float:
        """``busy_s(shape) * capacity_mu_s``."""
        return self.busy_s(shape) * self.capacity_mu_s

    def estimate(
        self,
        prompt_tokens: int,
        max_tokens: int,
        cached_tokens: int = 0,
        expected_output: float | None = None,
    ) -> float:
        """MU expected before the request runs.

        ``expected_output`` (e.g. from :class:`router.output_length.OutputLengthEstimator`)
        defaults to ``max_tokens`` (the worst case) and is clamped to ``[0, max_tokens]``.
        """
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
        # Validates prompt/cached token counts.
        RequestShape(prompt_tokens=prompt_tokens, output_tokens=0, cached_tokens=cached_tokens)
        if expected_output is None:
            output = float(max_tokens)
        elif math.isnan(expected_output):
            raise ValueError("expected_output must not be NaN")
        else:
            output = min(max(float(expected_output), 0.0), float(max_tokens))
        busy = _busy_s(self._c, float(prompt_tokens), float(cached_tokens), output)
        return busy * self.capacity_mu_s

    def prefill_mu(self, prompt_tokens: int, cached_tokens: int = 0) -> float:
        """The part of a request's MU that its prompt costs (what is done by its first token)."""
        uncached = max(prompt_tokens - cached_tokens, 0)
        busy = _prefill_s(self._c, float(cached_tokens + uncached), float(cached_tokens))
        return busy * self.capacity_mu_s

    def actual(self, shape: RequestShape) -> float:
        """MU of the request as it actually ran (the reconciled charge)."""
        return self.mu(shape)


def reference_capacity(pair_rps: float, reference_rps: float) -> float:
    """Capacity in MU/s of a pair sustaining ``pair_rps`` on the standard mix.

    ``reference_rps`` is the reference pair's throughput on the same mix at its SLO-bounded load.
    """
    if not (pair_rps > 0 and reference_rps > 0):
        raise ValueError(f"throughputs must be > 0, got {pair_rps=} {reference_rps=}")
    return MU_PER_REFERENCE_SECOND * pair_rps / reference_rps


def feature_matrix(shapes: Sequence[RequestShape]) -> NDArray[np.float64]:
    """One row per shape, columns in :data:`FEATURE_NAMES` order."""
    rows = [
        (
            1.0,
            float(s.uncached_tokens),
            float(s.cached_tokens),
            float(s.output_tokens),
            float(s.output_tokens) * s.mean_context,
            _prefill_pairs(float(s.prompt_tokens), float(s.cached_tokens)),
        )
        for s in shapes
    ]
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))


def _nnls(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """Lawson–Hanson active-set solution of ``min ||a x - b||_2`` subject to ``x >= 0``."""
    m, n = a.shape
    eps = float(np.finfo(np.float64).eps)
    tol = 10.0 * eps * max(m, n) * float(np.linalg.norm(a, 1)) * float(np.abs(b).max(initial=0.0))

    def solve(passive: NDArray[np.bool_]) -> NDArray[np.float64]:
        z = np.zeros(n)
        if passive.any():
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
        return z

    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    # Variables whose gradient says "add me" but whose least-squares value is not positive
    # (a numerical tie); skipped until x changes, so the outer loop cannot cycle.
    excluded = np.zeros(n, dtype=bool)
    w = a.T @ (b - a @ x)
    for _ in range(30 * n + 30):
        candidates = np.where(passive | excluded, -np.inf, w)
        j = int(np.argmax(candidates))
        if not candidates[j] > tol:
            return x
        passive[j] = True
        z = solve(passive)
        if z[j] <= 0:
            passive[j] = False
            excluded[j] = True
            continue
        while np.any(z[passive] <= 0):
            # Step from x towards z as far as feasibility allows; the variable that hits
            # zero first (and any that underflow to it) leaves the passive set.
            blocking = np.flatnonzero(passive & (z <= 0))
            ratios = x[blocking] / (x[blocking] - z[blocking])
            k = int(np.argmin(ratios))
            x = x + ratios[k] * (z - x)
            x[blocking[k]] = 0.0
            passive &= x > 0.0
            x[~passive] = 0.0
            z = solve(passive)
        x = z
        excluded[:] = False
        w = a.T @ (b - a @ x)
    raise RuntimeError("NNLS did not converge")


def fit_coefficients(
    shapes: Sequence[RequestShape],
    busy_s: Sequence[float],
    *,
    weights: Sequence[float] | None = None,
) -> CostCoefficients:
    """Fit :class:`CostCoefficients` to measured busy times by non-negative least squares.

    Columns are scaled to unit norm before solving (the features span ~10 orders of
    magnitude). A feature that never varies from zero in the data gets coefficient 0.
    ``weights`` (optional, one per point, > 0) weight the squared residuals, e.g.
    ``1 / busy_s**2`` to minimise relative rather than absolute error.
    """
    if len(shapes) != len(busy_s):
        raise ValueError(f"{len(shapes)} shapes but {len(busy_s)} busy times")
    if not shapes:
        raise ValueError("no data to fit")
    a = feature_matrix(shapes)
    b = np.asarray(busy_s, dtype=np.float64)
    if not np.all(np.isfinite(b)):
        raise ValueError("busy times must be finite")
    if weights is not None:
        wts = np.asarray(weights, dtype=np.float64)
        if wts.shape != b.shape or not np.all(wts > 0) or not np.all(np.isfinite(wts)):
            raise ValueError("weights must be finite, > 0 and one per point")
        root = np.sqrt(wts)
        a = a * root[:, None]
        b = b * root
    norms = np.linalg.norm(a, axis=0)
    used = norms > 0
    solution = np.zeros(len(FEATURE_NAMES))
    if used.any():
        scaled = a[:, used] / norms[used]
        solution[used] = _nnls(scaled, b) / norms[used]
    return CostCoefficients(
        **{name: float(v) for name, v in zip(FEATURE_NAMES, solution, strict=True)}
    )


def mape_pct(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error of ``predicted`` against ``measured`` (non-zero), in %."""
    if len(predicted) != len(measured):
        raise ValueError(f"{len(predicted)} predictions but {len(measured)} measurements")
    if not measured:
        raise ValueError("no measurements")
    p = np.asarray(predicted, dtype=np.float64)
    m = np.asarray(measured, dtype=np.float64)
    if np.any(m == 0):
        raise ValueError("MAPE is undefined for a zero measurement")
    return float(np.mean(np.abs(p - m) / np.abs(m)) * 100.0)
