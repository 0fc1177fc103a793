"""The shipped hardware profiles of the sim engine: well-formed, sourced, and physically sane."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from python_backends.sim_engine.hardware import (
    HardwareProfile,
    resolve_profile,
    shipped_profiles_dir,
)

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles" / "hardware"
SHIPPED = sorted(PROFILES_DIR.glob("*.json"))
TEST_PROFILE = Path(__file__).resolve().parents[1] / "data" / "sim_test_gpu.json"


def _load(name: str) -> HardwareProfile:
    return HardwareProfile.load(resolve_profile(name))


def test_profiles_ship_with_the_project() -> None:
    assert shipped_profiles_dir() == PROFILES_DIR
    assert {p.stem for p in SHIPPED} >= {
        "llama-3.1-8b_h100-sxm_tp1",
        "llama-3.1-8b_h200-sxm_tp1",
        "llama-3.1-8b_a100-sxm-80gb_tp1",
        "llama-3.1-70b_h100-sxm_tp4",
        "llama-3.1-70b_h100-sxm_tp8",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_profile_is_valid_and_sourced(path: Path) -> None:
    profile = HardwareProfile.load(path)

    assert profile.name == path.stem
    assert len(profile.sources) >= 2
    assert all(s.url.startswith("https://") for s in profile.sources)
    assert all(s.title.strip() and s.used_for.strip() for s in profile.sources)
    assert profile.derivation
    assert profile.validation is not None
    assert abs(profile.validation.error_pct) <= 20
    assert profile.step.base_ms > 0


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_profile_rejects_unknown_keys(path: Path) -> None:
    data = json.loads(path.read_text())
    data["surprise"] = 1
    with pytest.raises(ValidationError):
        HardwareProfile.model_validate(data)
    data = json.loads(path.read_text())
    data["step"]["per_token_ms"] = 1.0
    with pytest.raises(ValidationError):
        HardwareProfile.model_validate(data)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_pool_holds_a_full_context_sequence(path: Path) -> None:
    """Otherwise a maximal request could never be admitted under guaranteed_no_evict."""
    profile = HardwareProfile.load(path)

    assert profile.kv_cache.total_blocks * profile.kv_cache.block_tokens >= profile.max_context
    assert profile.max_num_tokens >= 1 and profile.max_num_sequences >= 1


def test_resolve_profile_by_name_and_by_path() -> None:
    by_name = resolve_profile("llama-3.1-8b_h100-sxm_tp1")
    assert by_name == PROFILES_DIR / "llama-3.1-8b_h100-sxm_tp1.json"
    assert resolve_profile(str(by_name)) == by_name
    assert resolve_profile(TEST_PROFILE) == TEST_PROFILE
    assert HardwareProfile.load(resolve_profile(TEST_PROFILE)).name == "sim_test_gpu"


def test_unknown_profile_names_the_shipped_ones() -> None:
    with pytest.raises(FileNotFoundError) as info:
        resolve_profile("llama-9b_tpu-v9")

    message = str(info.value)
    assert "llama-9b_tpu-v9" in message
    for path in SHIPPED:
        assert path.stem in message


def test_70b_tp4_decode_is_slower_than_8b_h100() -> None:
    batch, context = 32, 32 * 1500
    big = _load("llama-3.1-70b_h100-sxm_tp4").step.iteration_s(0, batch, context)
    small = _load("llama-3.1-8b_h100-sxm_tp1").step.iteration_s(0, batch, context)

    assert big > small


def test_newer_gpus_have_a_smaller_fixed_step_cost() -> None:
    h200 = _load("llama-3.1-8b_h200-sxm_tp1").step.base_ms
    h100 = _load("llama-3.1-8b_h100-sxm_tp1").step.base_ms
    a100 = _load("llama-3.1-8b_a100-sxm-80gb_tp1").step.base_ms

    assert h200 < h100 < a100


def test_step_timing_formula() -> None:
    step = _load("llama-3.1-8b_h100-sxm_tp1").step

    assert step.iteration_s(0, 0, 0) == pytest.approx(step.base_ms * 1e-3)
    assert step.iteration_s(1000, 10, 20_000) == pytest.approx(
        step.base_ms * 1e-3
        + step.per_prefill_token_us * 1e-6 * 1000
        + step.per_decode_seq_us * 1e-6 * 10
        + step.per_context_token_ns * 1e-9 * 20_000
    )
