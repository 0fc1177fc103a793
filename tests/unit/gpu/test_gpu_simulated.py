"""Unit tests for mufleet.gpu.simulated: the state file, fault edits and the telemetry."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from mufleet.gpu.simulated import (
    GpuFault,
    SimulatedGpu,
    SimulatedState,
    SimulatedTelemetry,
    apply_fault,
    default_state_path,
    edit_state,
    read_state,
    write_state,
)
from mufleet.gpu.telemetry import TelemetryError
from mufleet.gpu.verdict import GpuHealthJudge

T0 = 1_700_000_000.0


def test_default_state_is_a_healthy_h100() -> None:
    state = SimulatedState.default(2, label="node1")
    samples = [g.to_sample(state.reset_epoch) for g in state.gpus]

    assert [s.index for s in samples] == [0, 1]
    assert samples[0].uuid != samples[1].uuid
    assert samples[0].uuid == SimulatedState.default(1, label="node1").gpus[0].uuid
    assert "H100" in (samples[0].name or "")
    assert samples[0].temperature_c is not None and samples[0].slowdown_temp_c is not None
    assert samples[0].temperature_c < samples[0].slowdown_temp_c
    assert samples[0].sm_clock_mhz == samples[0].max_sm_clock_mhz
    assert GpuHealthJudge().judge(samples, [], T0).status == "healthy"


@pytest.mark.parametrize(
    "document",
    [
        {"gpus": [{"index": 0, "uuid": "u", "fan_speed": 3}]},
        {"gpus": [{"index": 0, "uuid": "u", "clock_event_reasons": ["overclocked"]}]},
        {"gpus": [{"index": 0, "uuid": "a"}, {"index": 0, "uuid": "b"}]},
        {"gpus": [], "extra": True},
    ],
    ids=["extra-gpu-field", "unknown-reason", "duplicate-index", "extra-state-field"],
)
def test_invalid_states_are_rejected(document: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SimulatedState.model_validate(document)


def test_write_state_is_atomic_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "gpu" / "n.json"
    state = SimulatedState.default(3)
    write_state(path, state)
    inode = path.stat().st_ino

    write_state(path, state)

    assert read_state(path) == state
    assert path.stat().st_ino != inode  # replaced, not rewritten in place
    assert [p.name for p in path.parent.iterdir()] == ["n.json"]  # no temp file left


def test_read_state_of_missing_file_is_the_default(tmp_path: Path) -> None:
    state = read_state(tmp_path / "n.json", default_gpus=4)

    assert len(state.gpus) == 4
    assert not (tmp_path / "n.json").exists()


def test_default_state_path_is_under_mufleet_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUFLEET_HOME", str(tmp_path))

    assert default_state_path("node7") == tmp_path / "gpu" / "node7.json"


def _fault(state: SimulatedState, **fields: object) -> SimulatedState:
    return apply_fault(state, GpuFault.model_validate(fields), T0)


def test_apply_fault_does_not_change_its_input() -> None:
    state = SimulatedState.default(1)
    before = state.model_copy(deep=True)

    _fault(state, xid=79, temperature_c=90.0, ecc_uncorrected=1)

    assert state == before


def test_xid_faults_get_increasing_sequence_numbers() -> None:
    state = _fault(_fault(SimulatedState.default(2), xid=79), xid=94, gpu=1)

    assert [(x.seq, x.gpu, x.xid, x.at) for x in state.xids] == [(1, 0, 79, T0), (2, 1, 94, T0)]
    assert state.next_seq == 3


def test_counters_accumulate() -> None:
    state = SimulatedState.default(1)
    for _ in range(2):
        state = _fault(state, ecc_uncorrected=2, ecc_corrected=5, pcie_replays=7)
    gpu = state.gpus[0]

    assert (gpu.ecc_volatile_uncorrected, gpu.ecc_volatile_corrected) == (4, 10)
    assert gpu.pcie_replay_count == 14


def test_flags_set_their_fields() -> None:
    state = _fault(
        SimulatedState.default(1),
        temperature_c=80.5,
        retired_pending=True,
        remap_pending=True,
        remap_failure=True,
    )
    gpu = state.gpus[0]

    assert gpu.temperature_c == 80.5
    assert gpu.retired_pages_pending and gpu.remapped_rows_pending and gpu.remapped_rows_failure


@pytest.mark.parametrize(
    ("kind", "reason", "fraction"),
    [
        ("thermal", "sw_thermal_slowdown", 0.7),
        ("power", "sw_power_cap", 0.85),
        ("hw_slowdown", "hw_slowdown", 0.5),
    ],
)
def test_throttle_sets_the_reason_and_lowers_the_clock(
    kind: str, reason: str, fraction: float
) -> None:
    gpu = _fault(SimulatedState.default(1), throttle=kind).gpus[0]

    assert reason in gpu.clock_event_reasons
    assert gpu.sm_clock_mhz == pytest.approx(gpu.max_sm_clock_mhz * fraction, abs=1)
    if kind == "thermal":
        assert gpu.slowdown_temp_c is not None and gpu.temperature_c >= gpu.slowdown_temp_c
    if kind == "power":
        assert gpu.power_w == gpu.power_limit_w


def test_throttles_combine_at_the_lowest_clock() -> None:
    gpu = _fault(_fault(SimulatedState.default(1), throttle="hw_slowdown"), throttle="power").gpus[
        0
    ]

    assert set(gpu.clock_event_reasons) == {"hw_slowdown", "sw_power_cap"}
    assert gpu.sm_clock_mhz == pytest.approx(gpu.max_sm_clock_mhz * 0.5, abs=1)


def test_clear_restores_health_and_bumps_the_epoch() -> None:
    custom = SimulatedGpu(index=0, uuid="GPU-x", name="NVIDIA A100", max_sm_clock_mhz=1410.0)
    state = SimulatedState(gpus=[custom])
    broken = _fault(state, xid=79, throttle="thermal", ecc_uncorrected=3, remap_failure=True)

    cleared = _fault(broken, clear=True)
    gpu = cleared.gpus[0]

    assert cleared.xids == []
    assert cleared.reset_epoch == broken.reset_epoch + 1
    assert cleared.next_seq == broken.next_seq  # sequence numbers are never reused
    assert (gpu.uuid, gpu.name, gpu.max_sm_clock_mhz) == ("GPU-x", "NVIDIA A100", 1410.0)
    assert gpu.sm_clock_mhz == 1410.0
    assert gpu.clock_event_reasons == [] and gpu.ecc_volatile_uncorrected == 0
    assert not gpu.remapped_rows_failure


def test_clear_applies_before_the_other_flags() -> None:
    state = _fault(_fault(SimulatedState.default(1), xid=48), clear=True, xid=79)

    assert [x.xid for x in state.xids] == [79]


def test_fault_on_a_missing_gpu_is_refused() -> None:
    with pytest.raises(ValueError, match="no GPU 3"):
        _fault(SimulatedState.default(2), gpu=3, xid=79)


def test_edit_state_creates_then_edits_the_file(tmp_path: Path) -> None:
    path = tmp_path / "gpu" / "n.json"

    edit_state(path, GpuFault(xid=79), now=T0, default_gpus=2)
    edit_state(path, GpuFault(gpu=1, pcie_replays=3), now=T0)

    state = read_state(path)
    assert len(state.gpus) == 2
    assert [x.xid for x in state.xids] == [79]
    assert state.gpus[1].pcie_replay_count == 3


def test_concurrent_edits_do_not_lose_updates(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    write_state(path, SimulatedState.default(1))

    def add(times: int) -> None:
        for _ in range(times):
            edit_state(path, GpuFault(pcie_replays=1), now=T0)

    threads = [threading.Thread(target=add, args=(25,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert read_state(path).gpus[0].pcie_replay_count == 100


def test_telemetry_creates_the_default_file(tmp_path: Path) -> None:
    path = tmp_path / "gpu" / "n.json"
    telemetry = SimulatedTelemetry(path, default_gpus=3)

    assert path.exists()
    assert [s.index for s in telemetry.sample()] == [0, 1, 2]
    assert telemetry.xid_events() == []


def test_telemetry_follows_edits_and_reports_each_xid_once(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    telemetry = SimulatedTelemetry(path)

    edit_state(path, GpuFault(xid=79, temperature_c=70.0), now=T0)
    first = telemetry.xid_events()
    again = telemetry.xid_events()
    edit_state(path, GpuFault(xid=94), now=T0 + 1)

    assert telemetry.sample()[0].temperature_c == 70.0
    assert [(e.gpu_index, e.xid, e.at) for e in first] == [(0, 79, T0)]
    assert again == []
    assert [e.xid for e in telemetry.xid_events()] == [94]


def test_events_written_before_the_telemetry_started_are_not_replayed(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    edit_state(path, GpuFault(xid=79), now=T0)

    assert SimulatedTelemetry(path).xid_events() == []


def test_clear_is_seen_as_a_new_reset_epoch(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    telemetry = SimulatedTelemetry(path)
    epoch = telemetry.sample()[0].reset_epoch

    edit_state(path, GpuFault(clear=True), now=T0)

    assert telemetry.sample()[0].reset_epoch == (epoch or 0) + 1


def test_malformed_state_raises_until_fixed(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    telemetry = SimulatedTelemetry(path)
    path.write_text("{not json")

    with pytest.raises(TelemetryError, match="simulated state"):
        telemetry.sample()
    with pytest.raises(TelemetryError):
        telemetry.xid_events()
    write_state(path, SimulatedState.default(2))
    assert len(telemetry.sample()) == 2


def test_a_recreated_file_still_reports_its_events(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    edit_state(path, GpuFault(xid=48), now=T0)
    edit_state(path, GpuFault(xid=48), now=T0)
    telemetry = SimulatedTelemetry(path)  # has seen up to seq 2
    path.unlink()

    assert len(telemetry.sample()) == 1  # a missing file reads as the default state
    for xid in (79, 74, 95):  # a fresh file: seq 1, 2, 3 again
        edit_state(path, GpuFault(xid=xid), now=T0)

    assert [e.xid for e in telemetry.xid_events()] == [79, 74, 95]
