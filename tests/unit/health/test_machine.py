"""The health state machine, driven by hand-made signals and a hand-moved clock."""

from __future__ import annotations

import pytest

from router.fleet import NodeConfig, NodeTable
from router.health import (
    Evict,
    HealthMachine,
    MachineConfig,
    ProbeNow,
    Restart,
    Signal,
    Verdict,
)
from router.policies.base import NodeState

PAIR = "p"


def fleet(n: int = 4, **config: object) -> tuple[NodeTable, HealthMachine]:
    table = NodeTable([NodeConfig.local(i, PAIR) for i in range(n)], lambda pair: 100.0)
    return table, HealthMachine(table, MachineConfig.model_validate(config))


def sig(node: str, source: str, verdict: Verdict, at: float, reason: str = "r") -> Signal:
    return Signal(node, source, verdict, reason, at)


def test_a_suspect_verdict_asks_for_a_canary_and_a_pass_clears_it() -> None:
    table, m = fleet()
    actions = m.observe(sig("node0", "metrics", Verdict.SUSPECT, 1.0, "no progress"), 1.0)
    assert table.state("node0") is NodeState.SUSPECT
    assert actions == [ProbeNow("node0", "canary")]
    assert "no progress" in table.entry("node0").reason
    assert m.trust("node0", 1.0) == 0.5
    m.observe(sig("node0", "metrics", Verdict.PASS, 2.0), 2.0)
    assert table.state("node0") is NodeState.HEALTHY
    assert m.trust("node0", 2.0) == 1.0


def test_the_worst_live_verdict_rules() -> None:
    table, m = fleet()
    m.observe(sig("node0", "metrics", Verdict.SUSPECT, 1.0), 1.0)
    m.observe(sig("node0", "passive", Verdict.SUSPECT, 1.0), 1.0)
    m.observe(sig("node0", "metrics", Verdict.PASS, 2.0), 2.0)
    assert table.state("node0") is NodeState.SUSPECT  # passive still suspects it


def test_a_failed_canary_asks_for_the_next_one_at_once() -> None:
    table, m = fleet()
    actions = m.observe(sig("node0", "canary", Verdict.SUSPECT, 1.0, "late (1× in a row)"), 1.0)
    assert table.state("node0") is NodeState.SUSPECT
    assert actions == [ProbeNow("node0", "canary")]
    # Still suspect, the canary fails again before its cadence: confirm again right away.
    actions = m.observe(sig("node0", "canary", Verdict.SUSPECT, 1.8, "late"), 1.8)
    assert actions == [ProbeNow("node0", "canary")]


def test_a_failed_canary_that_silent_traffic_corroborates_is_a_fail() -> None:
    table, m = fleet()
    m.observe(sig("node0", "passive", Verdict.SUSPECT, 1.0, "nothing received"), 1.0)
    assert table.state("node0") is NodeState.SUSPECT
    actions = m.observe(sig("node0", "canary", Verdict.SUSPECT, 1.8, "no first token"), 1.8)
    assert table.state("node0") is NodeState.RESTARTING
    assert isinstance(actions[0], Evict)
    assert "corroborated by passive: nothing received" in actions[0].reason


def test_corroboration_can_be_turned_off() -> None:
    table, m = fleet(corroborated_fail=False)
    m.observe(sig("node0", "passive", Verdict.SUSPECT, 1.0), 1.0)
    m.observe(sig("node0", "canary", Verdict.SUSPECT, 1.8), 1.8)
    assert table.state("node0") is NodeState.SUSPECT


def test_suspicion_without_a_failed_canary_is_not_corroboration() -> None:
    table, m = fleet()
    m.observe(sig("node0", "passive", Verdict.SUSPECT, 1.0), 1.0)
    m.observe(sig("node0", "metrics", Verdict.SUSPECT, 1.1), 1.1)
    assert table.state("node0") is NodeState.SUSPECT


def test_fail_cordons_evicts_streams_and_restarts_at_once() -> None:
    table, m = fleet()
    actions = m.observe(sig("node1", "canary", Verdict.FAIL, 5.0, "no first token"), 5.0)
    assert table.state("node1") is NodeState.RESTARTING
    assert actions[0] == Evict("node1", "canary: no first token", streams=True)
    assert isinstance(actions[1], Restart) and actions[1].attempt == 1
    states = [t.to_state for t in table.history("node1")]
    assert states == [NodeState.CORDONED, NodeState.RESTARTING]


def test_restart_then_ready_then_canaries_then_ramp_then_healthy() -> None:
    table, m = fleet(probation_canaries=3, ramp_s=10.0, ramp_start=0.2)
    m.observe(sig("node0", "readiness", Verdict.FAIL, 1.0, "refused"), 1.0)
    assert m.restart_finished("node0", True, "reloaded", 2.0) == []
    assert table.state("node0") is NodeState.RESTARTING  # not before it answers ready
    m.observe(sig("node0", "readiness", Verdict.PASS, 1.5), 2.5)  # older than the restart
    assert table.state("node0") is NodeState.RESTARTING
    m.observe(sig("node0", "readiness", Verdict.PASS, 3.0), 3.0)
    assert table.state("node0") is NodeState.PROBATION
    assert m.trust("node0", 3.0) == 0.0  # canaries only
    for t in (3.5, 4.0):
        m.observe(sig("node0", "canary", Verdict.PASS, t), t)
        assert m.trust("node0", t) == 0.0
    m.observe(sig("node0", "canary", Verdict.PASS, 4.5), 4.5)
    assert table.state("node0") is NodeState.PROBATION
    assert m.trust("node0", 4.5) == pytest.approx(0.2)
    assert m.trust("node0", 9.5) == pytest.approx(0.6)
    m.tick(14.6)
    assert table.state("node0") is NodeState.HEALTHY
    assert m.trust("node0", 14.6) == 1.0
    assert m.health["node0"].restarts == 0


def test_a_failed_canary_on_probation_cordons_again_with_backoff() -> None:
    table, m = fleet(restart_backoff_s=4.0)
    m.observe(sig("node0", "readiness", Verdict.FAIL, 1.0), 1.0)
    m.restart_finished("node0", True, "ok", 2.0)
    m.observe(sig("node0", "readiness", Verdict.PASS, 3.0), 3.0)
    actions = m.observe(sig("node0", "canary", Verdict.SUSPECT, 4.0, "late"), 4.0)
    assert table.state("node0") is NodeState.CORDONED
    assert actions == [Evict("node0", "canary: on probation: late", streams=True)]
    assert m.tick(7.9) == []
    actions = m.tick(8.1)
    assert actions and isinstance(actions[0], Restart) and actions[0].attempt == 2


def test_a_restart_that_fails_or_hangs_is_retried_then_given_up() -> None:
    table, m = fleet(max_restarts=2, restart_backoff_s=1.0, restart_timeout_s=5.0)
    m.observe(sig("node0", "readiness", Verdict.FAIL, 0.0), 0.0)
    m.restart_finished("node0", False, "refused", 1.0)
    assert table.state("node0") is NodeState.CORDONED
    actions = m.tick(2.1)
    assert [type(a) for a in actions] == [Restart]
    assert table.state("node0") is NodeState.RESTARTING
    m.tick(8.0)  # never became ready: timed out
    assert table.state("node0") is NodeState.CORDONED
    assert m.tick(20.0) == []
    assert m.health["node0"].gave_up
    assert "operator" in table.entry("node0").reason


def test_no_more_than_the_cap_is_taken_out() -> None:
    table, m = fleet(4, max_out_fraction=0.5)
    for i, node in enumerate(("node0", "node1", "node2")):
        m.observe(sig(node, "readiness", Verdict.FAIL, float(i), "down"), float(i))
    states = [table.state(n) for n in ("node0", "node1", "node2", "node3")]
    assert states[:2] == [NodeState.RESTARTING, NodeState.RESTARTING]
    assert states[2] is NodeState.SUSPECT
    assert "cordon withheld" in table.entry("node2").reason
    assert m.panic()  # 1 healthy of 4
    assert m.trust("node2", 3.0) == 1.0  # in panic a suspect node keeps its weight


def test_at_least_one_node_may_always_be_taken_out() -> None:
    table, m = fleet(3, max_out_fraction=0.1)
    m.observe(sig("node0", "readiness", Verdict.FAIL, 0.0), 0.0)
    assert table.state("node0") is NodeState.RESTARTING
    m.observe(sig("node1", "readiness", Verdict.FAIL, 0.0), 0.0)
    assert table.state("node1") is NodeState.SUSPECT


def test_drain_keeps_streams_skips_restart_and_returns_when_cleared() -> None:
    table, m = fleet()
    actions = m.observe(sig("node2", "gpu", Verdict.DRAIN, 1.0, "XID 79"), 1.0)
    assert actions == [Evict("node2", "gpu: XID 79", streams=False)]
    assert table.state("node2") is NodeState.CORDONED
    assert m.tick(5.0) == []
    m.observe(sig("node2", "gpu", Verdict.PASS, 6.0), 6.0)
    assert table.state("node2") is NodeState.PROBATION


def test_suspect_verdicts_lapse_unless_renewed() -> None:
    table, m = fleet(verdict_ttl_s=5.0)
    m.observe(sig("node0", "passive", Verdict.SUSPECT, 1.0), 1.0)
    m.tick(5.5)
    assert table.state("node0") is NodeState.SUSPECT
    m.tick(6.5)
    assert table.state("node0") is NodeState.HEALTHY


def test_the_operator_s_hold_freezes_the_machine() -> None:
    table, m = fleet()
    table.cordon("node0", "maintenance", 0.0)
    assert m.observe(sig("node0", "readiness", Verdict.FAIL, 1.0), 1.0) == []
    assert table.state("node0") is NodeState.CORDONED
    assert "readiness" in m.view("node0", 1.0)["verdicts"]


def test_a_degraded_gpu_lowers_capacity_not_trust() -> None:
    table, m = fleet()
    m.observe(Signal("node0", "gpu", Verdict.PASS, "thermal", 1.0, capacity_factor=0.6), 1.0)
    assert table.state("node0") is NodeState.HEALTHY
    assert m.capacity_factor("node0") == 0.6
    assert m.trust("node0", 1.0) == 1.0


def test_without_restarters_a_cordoned_node_recovers_when_its_probes_pass() -> None:
    table = NodeTable([NodeConfig.local(i, PAIR) for i in range(3)], lambda pair: 100.0)
    m = HealthMachine(table, MachineConfig(), can_restart=False)
    actions = m.observe(sig("node0", "canary", Verdict.FAIL, 1.0), 1.0)
    assert [type(a) for a in actions] == [Evict]
    assert table.state("node0") is NodeState.CORDONED
    m.observe(sig("node0", "canary", Verdict.PASS, 2.0), 2.0)
    assert table.state("node0") is NodeState.PROBATION
