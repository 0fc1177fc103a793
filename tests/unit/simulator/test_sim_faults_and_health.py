"""Faults in a simulated fleet and the router's own health machine reacting to them."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from mufleet.simulator.faults import Fault, FaultSpecError, parse_faults
from mufleet.simulator.fleet_spec import FleetSpec
from mufleet.simulator.node import EngineShape, SimNode, SimRequest
from mufleet.simulator.run import RunResult, SimSettings, simulate
from mufleet.simulator.workload import Workload
from mufleet.traces import Trace, load_trace
from python_backends.sim_engine.hardware import StepTiming

# -- parse_faults -----------------------------------------------------------------------------


def test_parse_faults() -> None:
    plan = parse_faults("kill:5@300, hang:3@120+60,slow5:1@10,slow1.5:0@0+2.5", 6)

    assert plan.faults == (
        Fault("slow", 0, 0.0, 2.5, 1.5),
        Fault("slow", 1, 10.0, math.inf, 5.0),
        Fault("hang", 3, 120.0, 60.0),
        Fault("kill", 5, 300.0),
    )
    assert plan.faults[2].end_s == 180.0
    assert plan.faults[3].end_s == math.inf


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("crash:0@1", "KIND:NODE@START"),
        ("hang:0", "KIND:NODE@START"),
        ("hang@1", "KIND:NODE@START"),
        ("hang:0@1+", "KIND:NODE@START"),
        ("hang:-1@1", "KIND:NODE@START"),
        ("slow:0@1", "KIND:NODE@START"),
        ("hang:0@1,", "KIND:NODE@START"),
        ("HANG:0@1", "KIND:NODE@START"),
        ("hang:4@1", r"nodes 0\.\.3"),
        ("slow0:0@1", "must be >= 1"),
        ("slow0.5:0@1", "must be >= 1"),
    ],
)
def test_bad_faults(spec: str, message: str) -> None:
    with pytest.raises(FaultSpecError, match=message):
        parse_faults(spec, 4)


@pytest.mark.parametrize("spec", ["slow1.2.3:0@1", "hang:0@1..", "slow.:0@1", "hang:0@5+1.1.1"])
def test_malformed_numbers_are_fault_spec_errors(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        parse_faults(spec, 4)


# -- faults in a run ----------------------------------------------------------------------------


def _states(result: RunResult, node: str) -> list[str]:
    """The states ``node`` entered, in order, from the health log."""
    out = []
    for entry in result.health_log:
        m = re.match(r"(\w+) → (\w+):", str(entry["event"]))
        if entry["node"] == node and m:
            out.append(m.group(2))
    return out


def _assert_all_served(result: RunResult, workload: Workload, settings: SimSettings) -> None:
    trace = workload.trace.requests
    arrivals = workload.arrivals()
    assert result.lost == 0
    assert len(result.requests) == len(arrivals)
    for request, arrival in zip(result.requests, arrivals, strict=True):
        assert not request.shed
        assert request.arrival_s <= request.first_token_s <= request.finish_s
        source = trace[arrival.index]
        # A stream moved off a node continues elsewhere: nothing lost, nothing doubled.
        assert request.original_prompt == source.input_tokens
        assert request.total_output == min(source.output_tokens, settings.max_tokens)


@pytest.fixture(scope="module")
def loaded(
    sim_trace: Trace, fleet_of: Callable[[int], FleetSpec], at_load: Callable[..., Workload]
) -> tuple[FleetSpec, Workload]:
    fleet = fleet_of(3)
    return fleet, at_load(sim_trace, fleet, 0.7)


def test_a_hang_is_cordoned_restarted_and_trusted_again(loaded: tuple[FleetSpec, Workload]) -> None:
    fleet, workload = loaded
    settings = SimSettings()

    result = simulate(workload, fleet, "mu_cost", settings, parse_faults("hang:1@8", 3))

    name = result.node_names[1]
    states = _states(result, name)
    assert states[:4] == ["cordoned", "restarting", "probation", "healthy"]
    events = [e["event"] for e in result.health_log if e["node"] == name]
    assert events[0] == "hang starts" and "restart" in events and "restarted" in events
    assert not any(_states(result, n) for n in result.node_names if n != name)
    _assert_all_served(result, workload, settings)
    moved = [r for r in result.requests if r.node == 1 and r.retries == 0]
    assert any(r.retries > 0 for r in result.requests)  # the hung node's work was moved
    assert moved  # and the node served again after its restart
    healthy_again = next(
        e["t"] for e in result.health_log if e["node"] == name and "→ healthy" in str(e["event"])
    )
    assert result.fault_windows == [(8.0, healthy_again)]  # in force until healthy again


def test_a_kill_is_cordoned_restarted_and_trusted_again(
    make_trace: Callable[..., Path],
    fleet_of: Callable[[int], FleetSpec],
    at_load: Callable[..., Workload],
) -> None:
    # A process restart (30 s) and probation (about 31 s) need a trace of over a minute.
    trace = load_trace(make_trace(n=200, rate=2.5, seed=2))
    assert trace.duration_s > 70
    fleet = fleet_of(2)
    workload = at_load(trace, fleet, 0.5)
    settings = SimSettings()

    result = simulate(workload, fleet, "round_robin", settings, parse_faults("kill:0@3", 2))

    states = _states(result, result.node_names[0])
    assert states[:4] == ["cordoned", "restarting", "probation", "healthy"]
    cordoned = next(e for e in result.health_log if "→ cordoned" in str(e["event"]))
    assert cordoned["t"] == pytest.approx(3.0, abs=0.6)  # readiness is refused at once
    _assert_all_served(result, workload, settings)
    assert any(r.retries > 0 for r in result.requests)


def test_a_slow_node_gets_less_work_from_mu_cost_than_from_round_robin(
    loaded: tuple[FleetSpec, Workload],
) -> None:
    fleet, workload = loaded
    faults = parse_faults("slow5:0@0", 3)

    def share_of_node_0(policy: str) -> float:
        result = simulate(workload, fleet, policy, faults=faults)
        assert len(result.requests) == len(workload.arrivals())
        return sum(r.node == 0 for r in result.requests) / len(result.requests)

    round_robin, mu_cost = share_of_node_0("round_robin"), share_of_node_0("mu_cost")
    assert round_robin == pytest.approx(1 / 3, abs=0.01)
    assert mu_cost < 0.6 * round_robin


def test_a_slow_node_serves_slower(loaded: tuple[FleetSpec, Workload]) -> None:
    fleet, workload = loaded
    plain = simulate(workload, fleet, "round_robin")
    slowed = simulate(workload, fleet, "round_robin", faults=parse_faults("slow5:0@0", 3))

    def mean_tpot(result: RunResult, node: int) -> float:
        values = [r.tpot_s for r in result.requests if r.node == node and r.total_output > 1]
        return sum(values) / len(values)

    assert mean_tpot(slowed, 0) > 3 * mean_tpot(plain, 0)
    assert mean_tpot(slowed, 1) == pytest.approx(mean_tpot(plain, 1), rel=0.3)
    assert slowed.health_log[0]["event"] == "slow starts"
    assert not _states(slowed, slowed.node_names[0])  # no probe fails on a slow node


def test_a_short_hang_delays_but_loses_nothing(loaded: tuple[FleetSpec, Workload]) -> None:
    fleet, workload = loaded
    settings = SimSettings()
    result = simulate(workload, fleet, "round_robin", settings, parse_faults("hang:0@10+0.5", 3))
    _assert_all_served(result, workload, settings)


def test_an_arrival_with_no_routable_node_is_shed_not_a_crash(
    sim_trace: Trace, fleet_of: Callable[[int], FleetSpec], at_load: Callable[..., Workload]
) -> None:
    fleet = fleet_of(1)
    workload = at_load(sim_trace, fleet, 0.3)
    result = simulate(workload, fleet, "round_robin", faults=parse_faults("kill:0@5", 1))
    assert len(result.requests) == len(workload.arrivals())
    assert any(r.shed for r in result.requests)


def _node() -> SimNode:
    step = StepTiming(
        base_ms=2.0, per_prefill_token_us=10.0, per_decode_seq_us=50.0, per_context_token_ns=0.0
    )
    shape = EngineShape(
        step, max_num_sequences=8, max_num_tokens=512, kv_tokens=8192, block_tokens=32
    )
    return SimNode(0, "n", shape, lambda r, t: None, lambda r, t: None)


def _stream_then_evict(node: SimNode) -> tuple[SimRequest, int]:
    """One request streams its first token and nine more, then the node is cordoned."""
    request = SimRequest(0, 0.0, 100, 50, 64, (), "trace", 2)
    node.submit(request, 0.0)
    prefill_end = node.next_event()
    assert prefill_end is not None
    node.handle(prefill_end)  # the first token
    decode = node.step.iteration_s(0, 1, 101)  # no context cost: every iteration the same
    node.submit(SimRequest(1, 0.0, 10, 5, 5, (), "trace", 2), prefill_end + 8.5 * decode)
    cut = node.next_event()
    assert cut is not None and cut == pytest.approx(prefill_end + 9 * decode)
    node.handle(cut)
    taken = node.evict_all()
    assert [r.index for r in taken] == [1, 0]
    return request, 10


def test_an_evicted_stream_continues_from_its_tokens() -> None:
    node = _node()
    request, streamed = _stream_then_evict(node)

    assert request.moved_tokens == streamed
    assert request.prompt_tokens == 100 + streamed
    assert request.output_tokens == 50 - streamed
    assert (request.original_prompt, request.total_output) == (100, 50)
    assert request.node == -1 and request.allocation is None
    assert node.pool.used == 0 and node.active == 0 and node.waiting == 0
    assert node.next_event() is None


def test_an_evicted_stream_reserves_only_what_it_may_still_generate() -> None:
    request, streamed = _stream_then_evict(_node())
    assert request.max_tokens == 64 - streamed
