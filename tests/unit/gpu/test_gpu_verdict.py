"""Unit tests for mufleet.gpu.verdict: every rule, the XID latch, worst-of over GPUs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from mufleet.gpu.telemetry import GpuSample, XidEvent
from mufleet.gpu.verdict import (
    DCGM_FATAL_XIDS,
    SLOWDOWN_REASONS,
    GpuHealthConfig,
    GpuHealthJudge,
)

T0 = 1_000_000.0


def healthy(index: int = 0, **fields: Any) -> GpuSample:
    base = GpuSample(
        index=index,
        uuid=f"GPU-{index}",
        name="NVIDIA H100 80GB HBM3",
        temperature_c=45.0,
        slowdown_temp_c=87.0,
        shutdown_temp_c=92.0,
        power_w=300.0,
        power_limit_w=700.0,
        sm_clock_mhz=1980.0,
        max_sm_clock_mhz=1980.0,
        clock_event_reasons=frozenset(),
        ecc_volatile_corrected=0,
        ecc_volatile_uncorrected=0,
        retired_pages_sbe=0,
        retired_pages_dbe=0,
        retired_pages_pending=False,
        remapped_rows_pending=False,
        remapped_rows_failure=False,
        pcie_replay_count=0,
        reset_epoch=0,
    )
    return replace(base, **fields)


def test_healthy_gpu_is_healthy() -> None:
    verdict = GpuHealthJudge().judge([healthy()], [], T0)

    assert verdict.status == "healthy"
    assert verdict.capacity_factor == 1.0
    assert verdict.reasons == ()
    assert verdict.at == T0
    assert set(verdict.gpus) == {0}


@pytest.mark.parametrize("xid", sorted(DCGM_FATAL_XIDS))
def test_fatal_xid_drains(xid: int) -> None:
    verdict = GpuHealthJudge().judge([healthy()], [XidEvent(0, xid, T0)], T0)

    assert verdict.status == "drain"
    assert verdict.capacity_factor == 0.0
    assert any(f"XID {xid}" in r and r.startswith("gpu0") for r in verdict.reasons)


def test_fatal_xid_is_latched_across_polls_without_events() -> None:
    judge = GpuHealthJudge()
    judge.judge([healthy()], [XidEvent(0, 79, T0)], T0)

    later = [judge.judge([healthy()], [], T0 + dt) for dt in (1.0, 60.0, 86_400.0)]

    assert [v.status for v in later] == ["drain"] * 3
    assert judge.latched() == {0: (79,)}


def test_latch_is_released_by_a_reset_epoch_change_only() -> None:
    judge = GpuHealthJudge()
    judge.judge([healthy(reset_epoch=3)], [XidEvent(0, 48, T0)], T0)

    same_epoch = judge.judge([healthy(reset_epoch=3)], [], T0 + 1)
    reset = judge.judge([healthy(reset_epoch=4)], [], T0 + 2)

    assert same_epoch.status == "drain"
    assert reset.status == "healthy"
    assert judge.latched() == {}


def test_latch_without_epoch_holds_until_a_new_judge() -> None:
    """NVML cannot tell a reset; only an agent restart (a new judge) releases the latch."""
    judge = GpuHealthJudge()
    judge.judge([healthy(reset_epoch=None)], [XidEvent(0, 95, T0)], T0)

    assert judge.judge([healthy(reset_epoch=None)], [], T0 + 10).status == "drain"
    assert GpuHealthJudge().judge([healthy(reset_epoch=None)], [], T0 + 10).status == "healthy"


def test_latch_is_per_gpu() -> None:
    judge = GpuHealthJudge()
    verdict = judge.judge([healthy(0), healthy(1)], [XidEvent(1, 79, T0)], T0)

    assert verdict.gpus[0].status == "healthy"
    assert verdict.gpus[1].status == "drain"
    assert verdict.status == "drain"


def test_fatal_xid_from_an_unknown_gpu_still_drains() -> None:
    verdict = GpuHealthJudge().judge([healthy()], [XidEvent(-1, 79, T0)], T0)

    assert verdict.status == "drain"
    assert any(r.startswith("gpu?") for r in verdict.reasons)


@pytest.mark.parametrize("xid", [63, 94])
def test_warning_xid_is_held_then_expires(xid: int) -> None:
    judge = GpuHealthJudge(GpuHealthConfig(xid_warn_hold_s=120.0))
    first = judge.judge([healthy()], [XidEvent(0, xid, T0)], T0)
    held = judge.judge([healthy()], [], T0 + 119.0)
    expired = judge.judge([healthy()], [], T0 + 120.0)

    assert first.status == "warn" and first.capacity_factor == 1.0
    assert held.status == "warn"
    assert any(f"XID {xid}" in r for r in held.reasons)
    assert expired.status == "healthy"


def test_a_repeated_warning_xid_extends_the_hold() -> None:
    judge = GpuHealthJudge(GpuHealthConfig(xid_warn_hold_s=100.0))
    judge.judge([healthy()], [XidEvent(0, 94, T0)], T0)
    judge.judge([healthy()], [XidEvent(0, 94, T0 + 90)], T0 + 90)

    assert judge.judge([healthy()], [], T0 + 150).status == "warn"
    assert judge.judge([healthy()], [], T0 + 190).status == "healthy"


def test_application_xid_does_not_change_the_verdict() -> None:
    assert GpuHealthJudge().judge([healthy()], [XidEvent(0, 13, T0)], T0).status == "healthy"


def test_configured_fatal_set_is_honoured() -> None:
    only_13 = GpuHealthJudge(GpuHealthConfig(fatal_xids=frozenset({13})))
    none = GpuHealthJudge(GpuHealthConfig(fatal_xids=frozenset()))

    assert only_13.judge([healthy()], [XidEvent(0, 13, T0)], T0).status == "drain"
    assert none.judge([healthy()], [XidEvent(0, 79, T0)], T0).status == "healthy"


def test_uncorrectable_ecc_drains_and_corrected_does_not() -> None:
    judge = GpuHealthJudge()

    corrected = judge.judge([healthy(ecc_volatile_corrected=500)], [], T0)
    uncorrected = judge.judge([healthy(ecc_volatile_uncorrected=2)], [], T0 + 1)
    after_reset = judge.judge([healthy(ecc_volatile_uncorrected=0)], [], T0 + 2)

    assert corrected.status == "healthy"
    assert uncorrected.status == "drain"
    assert any("2 uncorrectable ECC" in r for r in uncorrected.reasons)
    assert after_reset.status == "healthy"


@pytest.mark.parametrize(
    ("fields", "status", "needle"),
    [
        ({"retired_pages_pending": True}, "warn", "page retirement pending"),
        ({"remapped_rows_pending": True}, "warn", "row remapping pending"),
        ({"remapped_rows_failure": True}, "drain", "row remapping failed"),
        ({"retired_pages_sbe": 40, "retired_pages_dbe": 23}, "warn", "63 retired pages"),
    ],
)
def test_memory_repair_rules(fields: dict[str, Any], status: str, needle: str) -> None:
    verdict = GpuHealthJudge().judge([healthy(**fields)], [], T0)

    assert verdict.status == status
    assert any(needle in r for r in verdict.reasons)


def test_unknown_memory_fields_are_not_faults() -> None:
    sample = GpuSample(index=0)  # a GPU that supports nothing

    assert GpuHealthJudge().judge([sample], [], T0).status == "healthy"


def test_temperature_at_slowdown_degrades_by_clock_ratio() -> None:
    verdict = GpuHealthJudge().judge([healthy(temperature_c=87.0, sm_clock_mhz=1386.0)], [], T0)

    assert verdict.status == "degraded"
    assert verdict.capacity_factor == pytest.approx(0.7)
    assert any("87°C" in r for r in verdict.reasons)


def test_hot_gpu_at_full_clock_is_still_marked_down() -> None:
    """At the threshold the clocks are about to drop: the factor is capped below 1."""
    verdict = GpuHealthJudge().judge([healthy(temperature_c=88.0)], [], T0)

    assert verdict.status == "degraded"
    assert verdict.capacity_factor == pytest.approx(0.9)


def test_thermal_margin_moves_the_threshold_down() -> None:
    sample = healthy(temperature_c=85.0)

    assert GpuHealthJudge().judge([sample], [], T0).status == "healthy"
    margin = GpuHealthJudge(GpuHealthConfig(thermal_margin_c=3.0))
    assert margin.judge([sample], [], T0).status == "degraded"


@pytest.mark.parametrize("reason", sorted(SLOWDOWN_REASONS))
def test_slowdown_clock_reasons_degrade(reason: str) -> None:
    sample = healthy(clock_event_reasons=frozenset({reason}), sm_clock_mhz=990.0)
    verdict = GpuHealthJudge().judge([sample], [], T0)

    assert verdict.status == "degraded"
    assert verdict.capacity_factor == pytest.approx(0.5)
    assert any(reason in r for r in verdict.reasons)


def test_capacity_factor_is_bounded_below() -> None:
    sample = healthy(clock_event_reasons=frozenset({"hw_slowdown"}), sm_clock_mhz=30.0)

    assert GpuHealthJudge().judge([sample], [], T0).capacity_factor == pytest.approx(0.1)


def test_power_cap_is_mildly_degraded() -> None:
    sample = healthy(clock_event_reasons=frozenset({"sw_power_cap"}), power_w=699.0)
    verdict = GpuHealthJudge().judge([sample], [], T0)

    assert verdict.status == "degraded"
    assert verdict.capacity_factor == pytest.approx(0.95)


def test_idle_clocks_are_not_a_slowdown() -> None:
    sample = healthy(clock_event_reasons=frozenset({"gpu_idle"}), sm_clock_mhz=345.0)

    assert GpuHealthJudge().judge([sample], [], T0).status == "healthy"


def test_pcie_replay_rate_above_limit_warns_then_clears() -> None:
    judge = GpuHealthJudge()
    slow = [judge.judge([healthy(pcie_replay_count=n)], [], T0 + t) for t, n in [(0, 0), (30, 4)]]
    burst = judge.judge([healthy(pcie_replay_count=13)], [], T0 + 50)
    quiet = judge.judge([healthy(pcie_replay_count=13)], [], T0 + 115)

    assert [v.status for v in slow] == ["healthy", "healthy"]
    assert burst.status == "warn"
    assert any("13 PCIe replays" in r for r in burst.reasons)
    assert quiet.status == "healthy"


def test_pcie_counter_restart_is_not_a_burst() -> None:
    judge = GpuHealthJudge()
    judge.judge([healthy(pcie_replay_count=1000)], [], T0)

    assert judge.judge([healthy(pcie_replay_count=5)], [], T0 + 10).status == "healthy"


def test_fatal_error_drains_and_query_errors_warn() -> None:
    judge = GpuHealthJudge()
    lost = judge.judge([healthy(fatal_error="temperature: GPU is lost")], [], T0)
    flaky = judge.judge([healthy(query_errors=("power: Unknown Error",))], [], T0)

    assert lost.status == "drain"
    assert flaky.status == "warn"
    assert any("power: Unknown Error" in r for r in flaky.reasons)


def test_node_is_worst_status_and_minimum_capacity() -> None:
    gpus = [
        healthy(0, clock_event_reasons=frozenset({"sw_thermal_slowdown"}), sm_clock_mhz=1386.0),
        healthy(1, retired_pages_pending=True),
        healthy(2),
    ]
    verdict = GpuHealthJudge().judge(gpus, [], T0)

    assert verdict.status == "warn"
    assert verdict.capacity_factor == pytest.approx(0.7)
    assert {v.status for v in verdict.gpus.values()} == {"degraded", "warn", "healthy"}
    assert any(r.startswith("gpu0") for r in verdict.reasons)
    assert any(r.startswith("gpu1") for r in verdict.reasons)


def test_one_drained_gpu_drains_the_node() -> None:
    gpus = [healthy(i) for i in range(8)]
    verdict = GpuHealthJudge().judge(gpus, [XidEvent(5, 74, T0)], T0)

    assert verdict.status == "drain"
    assert verdict.capacity_factor == 0.0
    assert [i for i, v in verdict.gpus.items() if v.status == "drain"] == [5]


def test_telemetry_failure_warns_but_keeps_latches() -> None:
    judge = GpuHealthJudge()
    failed = judge.judge([], [], T0, telemetry_errors=["NVML: Unknown Error"])
    judge.judge([healthy()], [XidEvent(0, 79, T0)], T0 + 1)
    failed_latched = judge.judge([], [], T0 + 2, telemetry_errors=["boom"])

    assert failed.status == "warn"
    assert failed.capacity_factor == 1.0
    assert failed.reasons == ("telemetry: NVML: Unknown Error",)
    assert failed_latched.status == "drain"


def test_missing_gpus_warn() -> None:
    judge = GpuHealthJudge(GpuHealthConfig(expected_gpus=8))

    assert GpuHealthJudge().judge([], [], T0).reasons == ("no GPUs reported",)
    seven = judge.judge([healthy(i) for i in range(7)], [], T0)
    assert seven.status == "warn"
    assert "7 of 8 GPUs reported" in seven.reasons


def test_config_rejects_unknown_fields() -> None:
    with pytest.raises(ValidationError):
        GpuHealthConfig.model_validate({"fatal_xid": [79]})
