"""Unit tests for router.fleet.table: node configs, the in-flight ledger, snapshots, staleness,
operator actions and the health-state history, the admin view, and snapshot speed."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from fleet_pages import ModelStats, triton_page
from pydantic import ValidationError

from router.fleet.metrics import NodeMetrics, parse_node_metrics
from router.fleet.table import (
    DEFAULT_MODELS,
    NodeConfig,
    NodeTable,
    Transition,
    UnknownNodeError,
)
from router.policies.base import NodeSnapshot, NodeState

CAPACITY = {"llama@h100": 1000.0, "llama@a100": 450.0}


def config(i: int, pair: str = "llama@h100", **kw: Any) -> NodeConfig:
    return NodeConfig.local(i, pair, **kw)


def make_table(n: int = 3, **kw: Any) -> NodeTable:
    pairs = ["llama@h100", "llama@a100"]
    return NodeTable([config(i, pairs[i % 2]) for i in range(n)], CAPACITY.__getitem__, **kw)


def metrics_at(
    now: float, *, pending: int = 0, waiting: int = 0, used: int = 0, success: int = 0
) -> NodeMetrics:
    text = triton_page(
        {("tensorrt_llm", "1"): ModelStats(success=success, pending=pending)},
        requests={"active": 1, "max": 8, "scheduled": 1, "context": 0, "waiting": waiting},
        kv_blocks={"max": 200, "free": 200 - used, "used": used, "tokens_per": 32, "reused": 0},
    )
    return parse_node_metrics(text, now)


# -- NodeConfig ----------------------------------------------------------------------------


def test_node_config_fields_and_defaults() -> None:
    c = NodeConfig(
        name="gpu-7",
        grpc_url="10.0.0.7:8001",
        http_url="http://10.0.0.7:8000/",
        metrics_url="http://10.0.0.7:8002/metrics",
        pair="profiles/llama-3.1-8b_h100-sxm_tp1.json",
    )
    assert c.models == list(DEFAULT_MODELS) == ["ensemble", "tensorrt_llm_bls"]
    assert c.http_url == "http://10.0.0.7:8000"  # trailing slash dropped
    assert c.capacity_mu_s is None and c.engine_model == "tensorrt_llm"
    assert NodeConfig.model_validate_json(c.model_dump_json()) == c


def test_local_node_ports() -> None:
    c = NodeConfig.local(2, "p", models=["ensemble"])
    assert (c.name, c.grpc_url, c.http_url, c.metrics_url) == (
        "node2",
        "127.0.0.1:8021",
        "http://127.0.0.1:8020",
        "http://127.0.0.1:8022/metrics",
    )
    assert c.models == ["ensemble"]


GOOD = {
    "name": "n",
    "grpc_url": "h:8001",
    "http_url": "http://h:8000",
    "metrics_url": "http://h:8002/metrics",
    "pair": "p",
}


@pytest.mark.parametrize(
    "change",
    [
        {"grpc_url": "http://h:8001"},
        {"grpc_url": "h"},
        {"grpc_url": "h:port"},
        {"grpc_url": "h:70000"},
        {"grpc_url": ":8001"},
        {"http_url": "h:8000"},
        {"http_url": "ftp://h:8000"},
        {"http_url": "http://h:8000/v2"},
        {"http_url": "http://:8000"},
        {"http_url": "http://h:99999"},
        {"metrics_url": "h:8002/metrics"},
        {"name": ""},
        {"pair": ""},
        {"models": []},
        {"models": ["ensemble", "ensemble"]},
        {"capacity_mu_s": 0},
        {"capacity_mu_s": -5},
        {"weight": 3},  # extra fields are refused
    ],
)
def test_node_config_rejects(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        NodeConfig(**{**GOOD, **change})


def test_node_config_accepts_ipv6_and_https() -> None:
    c = NodeConfig(**{**GOOD, "grpc_url": "[::1]:8001", "http_url": "https://[::1]:8000"})
    assert c.grpc_url == "[::1]:8001"


# -- construction --------------------------------------------------------------------------


def test_capacity_from_pair_and_override() -> None:
    seen: list[str] = []

    def capacity_of(pair: str) -> float:
        seen.append(pair)
        return CAPACITY[pair]

    table = NodeTable(
        [config(0), config(1, "llama@a100"), config(2, capacity_mu_s=123.0)], capacity_of
    )
    assert [e.capacity_mu_s for e in table] == [1000.0, 450.0, 123.0]
    assert seen == ["llama@h100", "llama@a100"]  # the override is not looked up
    assert table.names == ["node0", "node1", "node2"] and len(table) == 3
    assert "node1" in table and "node9" not in table


def test_bad_tables() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        NodeTable([config(0), config(0)], CAPACITY.__getitem__)
    with pytest.raises(ValueError, match="capacity"):
        NodeTable([config(0)], lambda pair: 0.0)
    with pytest.raises(ValueError, match="capacity"):
        NodeTable([config(0)], lambda pair: math.nan)
    with pytest.raises(ValueError, match="history_len"):
        NodeTable([config(0)], CAPACITY.__getitem__, history_len=0)


def test_nodes_start_healthy() -> None:
    table = make_table(now=7.0)
    for e in table:
        assert (e.state, e.reason, e.since, e.operator_hold) == (
            NodeState.HEALTHY,
            "initial",
            7.0,
            False,
        )


# -- ledger --------------------------------------------------------------------------------


def test_start_finish_counts_requests_and_mu() -> None:
    table = make_table()
    table.start("node0", "r1", 120.0, now=1.0)
    table.start("node0", "r2", 30.5, now=1.1)
    table.start("node1", "r3", 10.0, now=1.2)
    e = table.entry("node0")
    assert (e.inflight_requests, e.inflight_mu) == (2, 150.5)
    assert table.inflight("node0") == {"r1": 120.0, "r2": 30.5}
    assert table.finish("node0", "r1", now=2.0) == 120.0
    assert (e.inflight_requests, e.inflight_mu) == (1, 30.5)
    assert (e.requests_started, e.requests_finished, e.mu_started, e.mu_finished) == (
        2,
        1,
        150.5,
        120.0,
    )
    assert e.last_finished_at == 2.0
    assert table.entry("node1").inflight_mu == 10.0


def test_first_token_keeps_only_the_decode_share_in_flight() -> None:
    table = make_table()
    table.start("node0", "r1", 120.0, now=1.0)
    table.start("node0", "r2", 30.0, now=1.0)
    before = table.snapshot_of("node0", 1.0)
    table.first_token("node0", "r1", 20.0)
    e = table.entry("node0")
    assert (e.inflight_mu, table.inflight("node0")["r1"]) == (50.0, 20.0)
    assert table.snapshot_of("node0", 1.0).inflight_mu == 50.0 != before.inflight_mu
    table.first_token("node0", "r1", 90.0)  # never raised again
    table.first_token("node0", "gone", 1.0)  # unknown request: nothing
    table.first_token("nodeX", "r1", 1.0)  # unknown node: nothing
    assert e.inflight_mu == 50.0
    assert table.finish("node0", "r1", now=2.0) == 20.0
    assert table.finish("node0", "r2", now=2.0) == 30.0
    # Everything started counts as finished once the requests end.
    assert (e.inflight_mu, e.mu_started, e.mu_finished) == (0.0, 150.0, 150.0)


def test_ledger_is_idempotent() -> None:
    table = make_table()
    table.start("node0", "r1", 100.0, now=0.0)
    table.start("node0", "r1", 999.0, now=0.1)  # a retried start changes nothing
    e = table.entry("node0")
    assert (e.inflight_requests, e.inflight_mu, e.requests_started) == (1, 100.0, 1)
    assert table.finish("node0", "r1", now=1.0) == 100.0
    assert table.finish("node0", "r1", now=1.1) == 0.0  # already finished
    assert table.finish("node0", "never-started", now=1.2) == 0.0
    assert table.finish("node1", "r1", now=1.3) == 0.0  # it was never on node1
    assert (e.inflight_requests, e.inflight_mu, e.requests_finished) == (0, 0.0, 1)


def test_ledger_has_no_float_residue() -> None:
    table = make_table()
    mus = [0.1, 0.2, 0.3, 1e-9, 12345.678]
    for i, mu in enumerate(mus):
        table.start("node0", f"r{i}", mu, now=0.0)
    for i in (3, 0, 4, 1, 2):
        table.finish("node0", f"r{i}", now=1.0)
    assert table.entry("node0").inflight_mu == 0.0


@pytest.mark.parametrize("mu", [-1.0, math.nan, math.inf])
def test_start_rejects_bad_mu(mu: float) -> None:
    table = make_table()
    with pytest.raises(ValueError, match="mu"):
        table.start("node0", "r", mu, now=0.0)
    assert table.entry("node0").inflight_requests == 0


def test_same_request_on_two_nodes_is_two_entries() -> None:
    """Failover: a request may be started on a second node before the first is finished."""
    table = make_table()
    table.start("node0", "r", 10.0, now=0.0)
    table.start("node1", "r", 20.0, now=0.1)
    assert table.finish("node0", "r", now=0.2) == 10.0
    assert table.entry("node1").inflight_mu == 20.0


# -- snapshots -----------------------------------------------------------------------------


def test_snapshot_fields() -> None:
    table = make_table()
    table.start("node0", "r1", 250.0, now=1.0)
    table.update_metrics("node0", metrics_at(9.0, pending=3, waiting=2, used=50))
    table.set_reserved({"node0": 40.0})
    s0, s1, s2 = table.snapshot(now=10.5)
    assert s0 == NodeSnapshot(
        name="node0",
        pair="llama@h100",
        models=frozenset({"ensemble", "tensorrt_llm_bls"}),
        capacity_mu_s=1000.0,
        state=NodeState.HEALTHY,
        inflight_mu=250.0,
        inflight_requests=1,
        queued_requests=5,
        kv_used_fraction=0.25,
        metrics_age_s=1.5,
        reserved_mu=40.0,
    )
    assert s0.load_ratio == pytest.approx((250.0 + 40.0) / 1000.0)
    assert s1.pair == "llama@a100" and s1.capacity_mu_s == 450.0
    assert (s1.queued_requests, s1.kv_used_fraction, s1.metrics_age_s) == (0, 0.0, math.inf)
    assert [s.name for s in (s0, s1, s2)] == table.names


def test_fast_snapshot_matches_the_constructor() -> None:
    table = make_table(1)
    table.start("node0", "r", 5.0, now=0.0)
    table.update_metrics("node0", metrics_at(1.0, pending=1))
    snap = table.snapshot_of("node0", now=2.0)
    built = NodeSnapshot(
        **{f: getattr(snap, f) for f in NodeSnapshot.__dataclass_fields__},
    )
    assert snap == built and hash(snap) == hash(built) and repr(snap) == repr(built)
    assert type(snap) is NodeSnapshot


def test_constructor_fallback_builds_the_same_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    import router.fleet.table as table_module

    def build() -> list[NodeSnapshot]:
        table = make_table(3)
        table.start("node1", "r", 7.0, now=0.0)
        table.update_metrics("node2", metrics_at(1.0, pending=2, used=20))
        return table.snapshot(now=3.0)

    fast = build()
    monkeypatch.setattr(table_module, "_FAST_SNAPSHOT", False)
    assert build() == fast


def test_snapshots_are_reused_until_something_changes() -> None:
    table = make_table(2)
    a = table.snapshot(now=1.0)
    b = table.snapshot(now=2.0)
    assert a[0] is b[0]  # never scraped: the age is +inf either way
    table.start("node0", "r", 3.0, now=2.0)
    c = table.snapshot(now=2.0)
    assert c[0] is not b[0] and c[0].inflight_mu == 3.0
    assert c[1] is b[1]  # the other node was not rebuilt
    table.update_metrics("node1", metrics_at(2.0))
    d = table.snapshot(now=3.0)
    assert d[1].metrics_age_s == 1.0
    assert table.snapshot(now=3.0)[1] is d[1]
    assert table.snapshot(now=3.5)[1].metrics_age_s == 1.5


def test_set_reserved_replaces_all() -> None:
    table = make_table()
    table.set_reserved({"node0": 10.0, "node2": 5.0})
    assert [s.reserved_mu for s in table.snapshot(0.0)] == [10.0, 0.0, 5.0]
    table.set_reserved({"node1": 1.0})
    assert [s.reserved_mu for s in table.snapshot(0.0)] == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="reserved"):
        table.set_reserved({"node1": -1.0})
    with pytest.raises(UnknownNodeError):
        table.set_reserved({"node1": 2.0, "ghost": 1.0})
    assert [s.reserved_mu for s in table.snapshot(0.0)] == [0.0, 1.0, 0.0]  # unchanged


# -- metrics and staleness -----------------------------------------------------------------


def test_metrics_age_and_staleness() -> None:
    table = make_table(1)
    assert table.snapshot_of("node0", 100.0).metrics_age_s == math.inf
    assert table.entry("node0").metrics_age_s(100.0) == math.inf
    table.update_metrics("node0", metrics_at(100.0, pending=2))
    assert table.snapshot_of("node0", 100.0).metrics_age_s == 0.0
    assert table.snapshot_of("node0", 99.0).metrics_age_s == 0.0  # clock skew clamps at 0
    # Scrapes keep failing: the last good metrics stay and age.
    for i in range(3):
        table.record_scrape_error("node0", "timeout after 0.5 s", now=101.0 + i)
    e = table.entry("node0")
    assert (e.scrape_failures, e.scrape_failures_total) == (3, 3)
    assert (e.last_scrape_error, e.last_scrape_error_at) == ("timeout after 0.5 s", 103.0)
    snap = table.snapshot_of("node0", 130.0)
    assert snap.metrics_age_s == 30.0 and snap.queued_requests == 2
    table.update_metrics("node0", metrics_at(131.0, pending=0))
    assert e.scrape_failures == 0 and e.scrape_failures_total == 3
    assert table.snapshot_of("node0", 131.0).queued_requests == 0


def test_update_metrics_keeps_the_previous_sample_for_deltas() -> None:
    table = make_table(1)
    assert table.delta("node0") is None
    first = metrics_at(10.0, success=10)
    assert table.update_metrics("node0", first)
    assert table.delta("node0") is None
    assert table.update_metrics("node0", metrics_at(12.0, success=16, pending=1))
    d = table.delta("node0")
    assert d is not None and d.success_rate_s == 3.0 and not d.no_progress
    assert table.entry("node0").prev_metrics is first
    # An out-of-order (older or same-time) sample is ignored.
    assert not table.update_metrics("node0", metrics_at(11.0, success=99))
    assert not table.update_metrics("node0", metrics_at(12.0, success=99))
    assert table.entry("node0").metrics is not None
    assert table.entry("node0").metrics.success == 16.0  # type: ignore[union-attr]


# -- state: operator actions and transitions ----------------------------------------------


def test_cordon_drain_uncordon() -> None:
    table = make_table()
    assert table.cordon("node0", "bad fan", now=5.0)
    assert table.drain("node1", "kernel upgrade", now=6.0)
    states = {s.name: s.state for s in table.snapshot(7.0)}
    assert states == {
        "node0": NodeState.CORDONED,
        "node1": NodeState.DRAINING,
        "node2": NodeState.HEALTHY,
    }
    assert [s.state.routable for s in table.snapshot(7.0)] == [False, False, True]
    e0 = table.entry("node0")
    assert (e0.reason, e0.since, e0.operator_hold) == ("operator: bad fan", 5.0, True)
    assert table.uncordon("node0", now=8.0)
    assert table.uncordon("node1", now=8.0)
    assert all(s.state is NodeState.HEALTHY for s in table.snapshot(9.0))
    assert not e0.operator_hold and e0.reason == "operator: uncordoned" and e0.since == 8.0
    assert not table.uncordon("node2", now=9.0)  # nothing to release: a no-op


def test_drained_when_nothing_is_in_flight() -> None:
    table = make_table()
    table.start("node0", "r1", 5.0, now=0.0)
    table.drain("node0", "maintenance", now=1.0)
    assert not table.drained("node0")
    table.finish("node0", "r1", now=2.0)
    assert table.drained("node0")
    assert not table.drained("node1")  # idle but not draining


def test_uncordon_leaves_a_node_the_health_machine_owns() -> None:
    table = make_table()
    table.transition("node0", NodeState.RESTARTING, "reload after 3 failed canaries", now=1.0)
    table.cordon("node0", "hold", now=2.0)
    table.transition("node0", NodeState.RESTARTING, "health: restarting", now=3.0)
    assert table.entry("node0").operator_hold
    assert not table.uncordon("node0", now=4.0)
    assert table.state("node0") is NodeState.RESTARTING
    assert not table.entry("node0").operator_hold


def test_transition_history_is_recorded_and_bounded() -> None:
    table = make_table(1, history_len=3)
    steps = [
        (NodeState.SUSPECT, "latency 4x baseline"),
        (NodeState.CORDONED, "canary missed first-token deadline"),
        (NodeState.RESTARTING, "model reload"),
        (NodeState.PROBATION, "reloaded"),
        (NodeState.HEALTHY, "probation passed"),
    ]
    for t, (state, reason) in enumerate(steps):
        assert table.transition("node0", state, reason, now=float(t))
    assert table.history("node0") == [
        Transition(2.0, NodeState.CORDONED, NodeState.RESTARTING, "model reload"),
        Transition(3.0, NodeState.RESTARTING, NodeState.PROBATION, "reloaded"),
        Transition(4.0, NodeState.PROBATION, NodeState.HEALTHY, "probation passed"),
    ]


def test_transition_to_the_same_state_only_updates_the_reason() -> None:
    table = make_table(1)
    table.transition("node0", "suspect", "errors", now=1.0)  # str values are accepted
    assert not table.transition("node0", NodeState.SUSPECT, "errors and latency", now=2.0)
    e = table.entry("node0")
    assert (e.state, e.reason, e.since) == (NodeState.SUSPECT, "errors and latency", 1.0)
    assert len(table.history("node0")) == 1
    with pytest.raises(ValueError):
        table.transition("node0", "on-fire", "?", now=3.0)


def test_state_changes_reach_the_snapshot() -> None:
    table = make_table(1)
    before = table.snapshot_of("node0", 0.0)
    table.cordon("node0", "x", now=1.0)
    assert table.snapshot_of("node0", 0.0).state is NodeState.CORDONED
    assert before.state is NodeState.HEALTHY  # snapshots already handed out do not change


# -- unknown nodes -------------------------------------------------------------------------

CALLS: list[tuple[str, Callable[[NodeTable], object]]] = [
    ("entry", lambda t: t.entry("ghost")),
    ("config", lambda t: t.config("ghost")),
    ("state", lambda t: t.state("ghost")),
    ("start", lambda t: t.start("ghost", "r", 1.0, 0.0)),
    ("finish", lambda t: t.finish("ghost", "r", 0.0)),
    ("inflight", lambda t: t.inflight("ghost")),
    ("update_metrics", lambda t: t.update_metrics("ghost", NodeMetrics(scraped_at=0.0))),
    ("record_scrape_error", lambda t: t.record_scrape_error("ghost", "e", 0.0)),
    ("delta", lambda t: t.delta("ghost")),
    ("transition", lambda t: t.transition("ghost", NodeState.SUSPECT, "r", 0.0)),
    ("cordon", lambda t: t.cordon("ghost", "r", 0.0)),
    ("drain", lambda t: t.drain("ghost", "r", 0.0)),
    ("uncordon", lambda t: t.uncordon("ghost", 0.0)),
    ("drained", lambda t: t.drained("ghost")),
    ("history", lambda t: t.history("ghost")),
    ("snapshot_of", lambda t: t.snapshot_of("ghost", 0.0)),
    ("set_reserved", lambda t: t.set_reserved({"ghost": 1.0})),
]


@pytest.mark.parametrize("call", [c for _, c in CALLS], ids=[n for n, _ in CALLS])
def test_unknown_node_errors(call: Callable[[NodeTable], object]) -> None:
    table = make_table(2)
    with pytest.raises(UnknownNodeError) as info:
        call(table)
    assert str(info.value) == "unknown node 'ghost' (known: node0, node1)"
    assert isinstance(info.value, KeyError) and info.value.name == "ghost"


def test_unknown_node_message_lists_a_few_names() -> None:
    table = make_table(12)
    with pytest.raises(UnknownNodeError, match=r"known: node0, node1, .*, …\)$"):
        table.entry("nope")


# -- admin view ----------------------------------------------------------------------------

ADMIN_KEYS = {
    "name",
    "url",
    "state",
    "reason",
    "inflight_mu",
    "inflight_requests",
    "capacity_mu_s",
    "utilisation",
    "queued",
    "kv_used_fraction",
    "metrics_age_s",
    "models",
    "pair",
}


def test_admin_view() -> None:
    table = make_table()
    table.start("node0", "r1", 500.0, now=0.0)
    table.start("node0", "r2", 250.0, now=0.0)
    table.update_metrics("node0", metrics_at(4.0, pending=1, waiting=3, used=100))
    table.drain("node1", "swap GPU", now=4.5)
    table.record_scrape_error("node2", "ConnectError: refused", now=4.8)
    view = table.admin_view(now=5.0)
    assert [row["name"] for row in view] == table.names
    assert all(set(row) >= ADMIN_KEYS for row in view)
    row0, row1, row2 = view
    assert row0["url"] == "http://127.0.0.1:8000" and row0["grpc_url"] == "127.0.0.1:8001"
    assert (row0["state"], row0["inflight_mu"], row0["inflight_requests"]) == ("healthy", 750, 2)
    assert row0["utilisation"] == 0.75  # seconds of work at capacity
    assert (row0["queued"], row0["kv_used_fraction"], row0["metrics_age_s"]) == (4, 0.5, 1.0)
    assert row0["models"] == ["ensemble", "tensorrt_llm_bls"] and row0["pair"] == "llama@h100"
    assert (row1["state"], row1["reason"], row1["capacity_mu_s"]) == (
        "draining",
        "operator: swap GPU",
        450.0,
    )
    assert row1["operator_hold"] is True
    assert (row2["queued"], row2["kv_used_fraction"], row2["metrics_age_s"]) == (None,) * 3
    assert (row2["scrape_failures"], row2["last_scrape_error"]) == (1, "ConnectError: refused")
    # JSON-ready: no NaN or infinity, only plain types.
    assert json.loads(json.dumps(view, allow_nan=False)) == view


def test_admin_view_shows_both_factors_and_the_engine() -> None:
    table = make_table(1)
    table.update_metrics("node0", metrics_at(1.0))
    table.set_health("node0", 1.0, 0.8)
    table.set_config_factor("node0", 0.25)
    table.start("node0", "r1", 100.0, now=1.0)
    (row,) = table.admin_view(now=2.0)
    assert (row["capacity_mu_s"], row["capacity_factor"]) == (1000.0, 0.8)
    assert row["config_capacity_factor"] == 0.25
    assert row["effective_capacity_mu_s"] == pytest.approx(200.0)
    assert row["utilisation"] == pytest.approx(0.5)
    # the TensorRT-LLM gauges of metrics_at(): all such a node says of its engine
    assert row["engine"]["engine"] == "trtllm" and row["engine"]["max_num_sequences"] == 8
    assert json.loads(json.dumps(row, allow_nan=False)) == row


# -- capacity factors ----------------------------------------------------------------------


def test_health_and_configuration_factors_multiply() -> None:
    table = make_table(2)
    table.set_config_factor("node0", 0.25)
    assert table.snapshot_of("node0", 0.0).capacity_mu_s == pytest.approx(250.0)
    table.set_health("node0", 1.0, 0.5)
    assert table.snapshot_of("node0", 0.0).capacity_mu_s == pytest.approx(125.0)
    e = table.entry("node0")
    assert (e.capacity_factor, e.config_capacity_factor) == (0.5, 0.25)
    assert e.effective_capacity_factor == pytest.approx(0.125)
    # The health machine syncs its factor on every tick: it must not undo the other one.
    table.set_health("node0", 1.0, 1.0)
    assert table.snapshot_of("node0", 0.0).capacity_mu_s == pytest.approx(250.0)
    table.set_config_factor("node0", 1.0)
    assert table.snapshot_of("node0", 0.0).capacity_mu_s == 1000.0
    assert table.snapshot_of("node1", 0.0).capacity_mu_s == 450.0


def test_configuration_factor_is_bounded_and_rebuilds_snapshots() -> None:
    table = make_table(1)
    before = table.snapshot_of("node0", 0.0)
    table.set_config_factor("node0", 1.0)
    assert table.snapshot_of("node0", 0.0) is before  # unchanged: the same snapshot
    table.set_config_factor("node0", 0.0)
    assert table.entry("node0").config_capacity_factor == 1e-3  # never zero capacity
    table.set_config_factor("node0", 7.0)
    assert table.entry("node0").config_capacity_factor == 1.0
    with pytest.raises(ValueError, match="finite"):
        table.set_config_factor("node0", math.nan)
    with pytest.raises(UnknownNodeError):
        table.set_config_factor("nope", 0.5)


# -- speed ---------------------------------------------------------------------------------


def snapshot_us(n: int, changed_per_call: int, calls: int = 200) -> float:
    table = make_table(n)
    sample = metrics_at(0.0, pending=2, waiting=1, used=50)
    for i, name in enumerate(table.names):
        table.update_metrics(name, dataclasses.replace(sample, scraped_at=i * 1e-6))
        table.start(name, f"warm-{i}", 10.0, now=0.0)
    names = table.names
    t0 = time.perf_counter()
    for k in range(calls):
        now = 1.0 + k * 1e-3
        for j in range(changed_per_call):
            table.start(names[(k * 7 + j) % n], f"r{k}-{j}", 5.0, now)
        table.snapshot(now)
    return (time.perf_counter() - t0) / calls * 1e6


def test_snapshot_of_512_nodes_is_fast() -> None:
    us = min(snapshot_us(512, changed_per_call=1) for _ in range(3))
    print(f"\nsnapshot at 512 nodes: {us:.0f} µs")
    # ~0.1 ms on a laptop core; the bound only catches a pathological regression.
    assert us < 5_000
