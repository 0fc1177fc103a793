"""Calibrating the sim engine recovers the hardware it emulates (held-out MAPE ≤ 10%)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import serving, sim_params

from mufleet.calibration.report import write_report
from mufleet.calibration.run import Calibration, CalibrationSettings, Calibrator
from mufleet.calibration.server_facts import server_facts
from mufleet.calibration.workload import QUICK_SWEEP
from mufleet.tiny_model import CORPUS_PATH
from router.cost_model import SLO, CostModel, PairProfile, RequestShape

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def calibration(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[Calibration]:
    # Slowed down 2x so the host's pre/post-processing keeps pace with the emulated GPU;
    # the calibration divides every duration by the factor again.
    params = sim_params(tiny_model_dir, max_batch_size=64, time_scale=2.0)
    with serving("sim-calibration", params, mufleet_home) as node:
        facts = server_facts(node.grpc_url)
        settings = CalibrationSettings(
            url=node.grpc_url,
            model="ensemble",
            pair="sim-test-gpu",
            slo=SLO(ttft_p99_s=0.5, tpot_p99_s=0.010),
            tokenizer_dir=tiny_model_dir,
            corpus=CORPUS_PATH,
            sweep=QUICK_SWEEP,
            time_scale=facts.time_scale,
            block_tokens=facts.block_tokens,
            hardware=facts.hardware,
            model_name=facts.model,
        )
        yield Calibrator(settings, progress=print).calibrate()


def test_server_facts_come_from_the_served_profile(calibration: Calibration) -> None:
    assert calibration.profile.hardware == "test GPU"
    assert calibration.profile.time_scale == 2.0


def test_heldout_busy_time_error_within_10_percent(calibration: Calibration) -> None:
    fit = calibration.profile.fit
    assert fit is not None and fit.heldout_points >= 3
    assert fit.mape_busy_pct <= 10.0, calibration.classes


def test_heldout_capacity_error_within_10_percent(calibration: Calibration) -> None:
    fit = calibration.profile.fit
    assert fit is not None
    assert fit.mape_capacity_pct <= 10.0, (
        calibration.heldout_mix_rps,
        calibration.heldout_mix_predicted_rps,
    )


def test_fitted_costs_follow_the_emulated_hardware(calibration: Calibration) -> None:
    """The sim charges 20 µs per uncached prompt token; cached tokens are free."""
    c = calibration.profile.coefficients
    assert 10e-6 <= c.prefill_token_s <= 40e-6
    assert c.cached_token_s < c.prefill_token_s / 4
    model = CostModel(calibration.profile)
    cold = model.busy_s(RequestShape(prompt_tokens=1024, output_tokens=32))
    warm = model.busy_s(RequestShape(prompt_tokens=1024, output_tokens=32, cached_tokens=768))
    assert warm < cold


def test_capacity_is_slo_bounded_and_reference_scaled(calibration: Calibration) -> None:
    profile = calibration.profile
    assert profile.reference and profile.capacity_mu_s == 1000.0
    chosen = [p for p in calibration.load_points if p.concurrency == profile.capacity_concurrency]
    assert chosen and chosen[0].meets_slo
    assert chosen[0].ttft_p99_s <= profile.slo.ttft_p99_s


def test_profile_and_report_are_written(calibration: Calibration, tmp_path: Path) -> None:
    calibration.profile.save(tmp_path / "pair.json")
    assert PairProfile.load(tmp_path / "pair.json") == calibration.profile
    report = write_report(calibration, tmp_path / "report")
    text = report.read_text()
    assert "held out" in text and "MU/s" in text
    for png in ("busy_time.png", "latency_vs_load.png"):
        assert (tmp_path / "report" / png).stat().st_size > 10_000
