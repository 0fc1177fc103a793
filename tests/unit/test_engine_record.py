"""Engine records: what differs between a profile's engine and a node's, and what it costs."""

from __future__ import annotations

import pytest

from router.engine_record import EngineRecord, capacity_factor, mismatches, record_from_samples

PROFILE = EngineRecord(
    engine="sim",
    engine_version="2",
    hardware_profile="h100",
    max_num_sequences=256,
    max_num_tokens=8192,
    kv_cache_blocks=1000,
    kv_block_tokens=32,
    time_scale=4.0,
)


def test_the_same_engine_matches_and_keeps_its_capacity() -> None:
    assert mismatches(PROFILE, PROFILE) == []
    assert capacity_factor(PROFILE, PROFILE, 384, 0.5) == 1.0


def test_unknown_fields_are_never_a_mismatch() -> None:
    trtllm_like = EngineRecord(max_num_sequences=256, kv_cache_blocks=1000)
    assert mismatches(PROFILE, trtllm_like) == []


def test_fewer_sequences_than_the_engine_ran_at_capacity_is_that_share() -> None:
    node = PROFILE.model_copy(update={"max_num_sequences": 8})
    (m,) = mismatches(PROFILE, node)
    assert (m.parameter, m.profile, m.node) == ("max_num_sequences", 256, 8)
    # Capacity was measured at 384 in flight, 256 of them in the engine, 128 queued.
    assert capacity_factor(PROFILE, node, 384, 0.5) == pytest.approx(8 / 256)
    assert capacity_factor(PROFILE, node, 32, 0.5) == pytest.approx(8 / 32)


def test_smaller_limits_and_a_faster_emulation_multiply() -> None:
    node = PROFILE.model_copy(update={"kv_cache_blocks": 500, "time_scale": 2.0})
    assert capacity_factor(PROFILE, node, 64, 0.5) == pytest.approx(0.5 * 0.5)
    larger = PROFILE.model_copy(update={"kv_cache_blocks": 5000, "time_scale": 8.0})
    assert capacity_factor(PROFILE, larger, 64, 0.5) == 1.0  # not measured, not granted
    assert {m.parameter for m in mismatches(PROFILE, larger)} == {"kv_cache_blocks", "time_scale"}


def test_another_engine_or_hardware_is_not_trusted() -> None:
    node = PROFILE.model_copy(update={"hardware_profile": "a100"})
    assert capacity_factor(PROFILE, node, 64, 0.5) == 0.5


def test_a_record_is_read_from_engine_series_or_from_the_trtllm_gauges_alone() -> None:
    info = {"engine": "sim", "engine_version": "2", "hardware_profile": "h100"}
    config = {"max_num_sequences": 256.0, "time_scale": 4.0, "kv_cache_blocks": 1000.0}
    record = record_from_samples(info, config, {"max_sequences": 256.0})
    assert record is not None and record.engine == "sim" and record.time_scale == 4.0
    trt = record_from_samples(None, {}, {"max_sequences": 64.0, "kv_tokens_per_block": 32.0})
    assert trt == EngineRecord(engine="trtllm", max_num_sequences=64, kv_block_tokens=32)
    assert record_from_samples(None, {}, {}) is None
