"""Unit tests for router.fleet.engine_check: when a node's engine record is judged, what the
verdict grants and says, and what is never repeated."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from router.cost_model import PairProfile
from router.engine_record import EngineRecord, Mismatch
from router.fleet.engine_check import EngineCheck

SHIPPED = Path(__file__).parents[3] / "profiles" / "llama-3.1-8b_h100-sxm_tp1.json"
PROFILED = EngineRecord(
    engine="sim",
    engine_version="7",
    hardware_profile="sim_test_gpu",
    max_num_sequences=64,
    kv_cache_blocks=4096,
    kv_block_tokens=32,
)


def profile(engine: EngineRecord | None = PROFILED, concurrency: int = 16) -> PairProfile:
    base = PairProfile.load(SHIPPED)
    return base.model_copy(update={"engine": engine, "capacity_concurrency": concurrency})


def check(engine: EngineRecord | None = PROFILED, **kw: Any) -> EngineCheck:
    return EngineCheck({"n0": profile(engine), "n1": profile(engine)}, **kw)


def node(**changes: object) -> EngineRecord:
    return PROFILED.model_copy(update=changes)


def test_a_matching_first_report_is_silent_and_grants_everything() -> None:
    c = check()
    v = c.observe("n0", node())
    assert v is not None
    assert (v.kind, v.level, v.factor, v.mismatches, v.cleared) == ("match", None, 1.0, (), ())
    assert c.factor("n0") == 1.0
    assert c.view("n0") == {
        "profile_engine": PROFILED.model_dump(),
        "config_mismatches": [],
        "config_check": "match",
    }


def test_fewer_sequences_than_the_capacity_concurrency_is_a_warned_derating() -> None:
    c = check()
    v = c.observe("n0", node(max_num_sequences=4))
    assert v is not None and v.kind == "mismatch" and v.level == logging.WARNING
    assert v.mismatches == (Mismatch("max_num_sequences", 64, 4),)
    assert v.factor == pytest.approx(4 / 16) and c.factor("n0") == pytest.approx(0.25)
    fields = v.log_fields()
    assert json.loads(json.dumps(fields)) == fields
    assert (fields["event"], fields["level"]) == ("node_config_mismatch", "WARNING")
    assert (fields["node"], fields["pair"]) == ("n0", "llama-3.1-8b_h100-sxm_tp1")
    assert fields["mismatches"] == [{"parameter": "max_num_sequences", "node": 4, "profile": 64}]
    assert fields["capacity_factor"] == pytest.approx(0.25)
    assert fields["capacity_concurrency"] == 16
    assert "max_num_sequences 4 (profile: 64)" in fields["message"]
    assert "granted 0.25 of the profile's capacity" in fields["message"]
    assert c.view("n0")["config_mismatches"] == ["max_num_sequences 4 (profile: 64)"]
    assert c.view("n0")["config_check"] == "mismatch"
    assert c.factor("n1") == 1.0  # the other node is not touched


def test_the_same_record_again_or_none_says_nothing_and_keeps_the_verdict() -> None:
    c = check()
    assert c.observe("n0", node(max_num_sequences=4)) is not None
    assert c.observe("n0", node(max_num_sequences=4)) is None
    assert c.observe("n0", None) is None  # a page scraped while the model reloads
    assert c.factor("n0") == pytest.approx(0.25)
    assert c.observe("n0", node(max_num_sequences=4)) is None


def test_a_change_that_leaves_the_verdict_as_it_was_is_not_logged() -> None:
    c = check()
    c.observe("n0", node(max_num_sequences=4))
    v = c.observe("n0", node(max_num_sequences=4, time_scale=3.0))  # the profile knows none
    assert v is not None and v.level is None and v.factor == pytest.approx(0.25)
    assert "level" not in v.log_fields()


def test_another_mismatch_is_warned_again() -> None:
    c = check()
    c.observe("n0", node(max_num_sequences=4))
    v = c.observe("n0", node(max_num_sequences=8))
    assert v is not None and v.level == logging.WARNING
    assert v.mismatches == (Mismatch("max_num_sequences", 64, 8),)
    assert v.factor == pytest.approx(0.5) and v.cleared == ()


def test_matching_again_is_told_and_clears_the_parameters() -> None:
    c = check()
    c.observe("n0", node(max_num_sequences=4, kv_cache_blocks=1024))
    v = c.observe("n0", node())
    assert v is not None and v.kind == "match" and v.level == logging.INFO
    assert v.factor == 1.0 and v.mismatches == ()
    assert set(v.cleared) == {"max_num_sequences", "kv_cache_blocks"}
    assert v.log_fields()["event"] == "node_config_match"
    assert v.log_fields()["level"] == "INFO"
    assert c.view("n0")["config_mismatches"] == []


def test_a_partly_cleared_mismatch_lists_what_cleared() -> None:
    c = check()
    c.observe("n0", node(max_num_sequences=4, kv_cache_blocks=1024))
    v = c.observe("n0", node(max_num_sequences=4))
    assert v is not None and v.cleared == ("kv_cache_blocks",) and v.level == logging.WARNING


def test_another_engine_is_granted_the_untrusted_share() -> None:
    c = check(untrusted=0.3)
    v = c.observe("n0", node(engine="cpu"))
    assert v is not None and v.factor == pytest.approx(0.3)
    assert [m.parameter for m in v.mismatches] == ["engine"]


def test_a_derating_without_a_mismatch_is_still_warned() -> None:
    # The profile does not know its sequence limit, but it was measured at 16 in flight.
    c = check(PROFILED.model_copy(update={"max_num_sequences": None}))
    v = c.observe("n0", node(max_num_sequences=8))
    assert v is not None and v.kind == "mismatch" and v.level == logging.WARNING
    assert v.mismatches == () and v.factor == pytest.approx(0.5)
    assert "capacity concurrency 16" in v.log_fields()["message"]


def test_a_profile_without_a_record_is_warned_once_per_node() -> None:
    c = check(None)
    v = c.observe("n0", node(max_num_sequences=4))
    assert v is not None and v.kind == "unrecorded" and v.level == logging.WARNING
    assert v.factor == 1.0 and v.mismatches == ()
    fields = v.log_fields()
    assert fields["event"] == "node_config_unrecorded"
    assert fields["node_engine"]["max_num_sequences"] == 4
    assert "records no engine configuration" in fields["message"]
    assert c.observe("n0", node(max_num_sequences=8)) is None
    assert c.observe("n1", node()) is not None  # once per node
    assert c.factor("n0") == 1.0
    assert c.view("n0") == {
        "profile_engine": None,
        "config_mismatches": [],
        "config_check": "unrecorded",
    }


def test_nodes_that_report_nothing_are_not_checked() -> None:
    c = check()
    assert c.observe("n0", None) is None
    assert c.factor("n0") == 1.0 and c.view("n0")["config_check"] == "unreported"


def test_disabled_checks_nothing() -> None:
    c = check(enabled=False)
    assert c.observe("n0", node(max_num_sequences=4)) is None
    assert c.factor("n0") == 1.0 and c.view("n0")["config_check"] == "disabled"


def test_an_unknown_node_is_ignored() -> None:
    c = check()
    assert c.observe("elsewhere", node(max_num_sequences=4)) is None
    assert c.factor("elsewhere") == 1.0
    assert c.view("elsewhere")["config_check"] == "unchecked"


@pytest.mark.parametrize("untrusted", [0.0, -0.5, 1.5])
def test_untrusted_share_is_checked(untrusted: float) -> None:
    with pytest.raises(ValueError, match="untrusted"):
        check(untrusted=untrusted)
