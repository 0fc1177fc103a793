"""Unit tests for agent sessions: open, draw, settle, expire, holds per node, caps."""

from __future__ import annotations

import itertools
import random

import pytest

from router.admission import (
    SessionBudgetExceededError,
    SessionConflictError,
    SessionLimitError,
    SessionNotFoundError,
    SessionsConfig,
    SessionTable,
    TenantConfig,
)
from router.admission.sessions import SESSION_ID_PATTERN


def _tenant(name: str = "acme", **kw: object) -> TenantConfig:
    return TenantConfig.model_validate(
        {"name": name, "api_key": f"key-{name}", "reserved_mu_s": 100, **kw}
    )


def _table(**kw: object) -> SessionTable:
    counter = itertools.count()
    return SessionTable(SessionsConfig.model_validate(kw), id_factory=lambda: f"s{next(counter)}")


def test_open_with_defaults_and_random_id() -> None:
    table = SessionTable()
    t = _tenant(session_budget_mu=5000, session_ttl_s=30)
    s = table.open(t, None, None, 10.0)
    assert SESSION_ID_PATTERN.match(s.session_id) and len(s.session_id) >= 16
    assert s.tenant == "acme"
    assert s.budget_mu == 5000 and s.ttl_s == 30 and s.expires_at == 40.0
    assert s.remaining_mu == 5000
    assert table.get(s.session_id, 10.0) is s
    other = table.open(t, None, None, 10.0)
    assert other.session_id != s.session_id


def test_open_with_given_id() -> None:
    table = _table()
    t = _tenant()
    s = table.open(t, 1000.0, 60.0, 0.0, session_id="agent-42_a")
    assert s.session_id == "agent-42_a"
    with pytest.raises(SessionConflictError):
        table.open(t, 1000.0, 60.0, 1.0, session_id="agent-42_a")
    with pytest.raises(ValueError):
        table.open(t, 1000.0, 60.0, 1.0, session_id="bad id/")
    with pytest.raises(ValueError):
        table.open(t, 1000.0, 60.0, 1.0, session_id="x" * 129)
    # once expired, the id may be reused
    again = table.open(t, 10.0, 5.0, 61.0, session_id="agent-42_a")
    assert again is not s and again.budget_mu == 10.0


@pytest.mark.parametrize(("budget", "ttl"), [(0.0, 10.0), (-1.0, 10.0), (10.0, 0.0)])
def test_open_validates_numbers(budget: float, ttl: float) -> None:
    with pytest.raises(ValueError):
        _table().open(_tenant(), budget, ttl, 0.0)


def test_ttl_capped_by_config() -> None:
    s = _table(max_ttl_s=100.0).open(_tenant(), 10.0, 1e6, 0.0)
    assert s.ttl_s == 100.0


def test_get_expires_and_touch_extends() -> None:
    table = _table()
    s = table.open(_tenant(), 1000.0, 10.0, 0.0)
    assert table.touch(s.session_id, 8.0) is s
    assert table.get(s.session_id, 17.9) is s
    assert table.get(s.session_id, 18.0) is None
    assert table.touch(s.session_id, 18.0) is None
    assert s.session_id in table  # until expire() drops it
    assert table.expire(18.0) == [s.session_id]
    assert s.session_id not in table and len(table) == 0


def test_get_is_per_tenant_when_asked() -> None:
    table = _table()
    s = table.open(_tenant("a"), 100.0, 10.0, 0.0)
    assert table.get(s.session_id, 0.0, tenant="a") is s
    assert table.get(s.session_id, 0.0, tenant="b") is None
    with pytest.raises(SessionNotFoundError):
        table.draw(s.session_id, 1.0, 0.0, tenant="b")


def test_draw_deducts_and_over_budget_raises() -> None:
    table = _table()
    s = table.open(_tenant(), 100.0, 60.0, 0.0)
    table.draw(s.session_id, 60.0, 1.0)
    assert s.spent_mu == 60.0 and s.remaining_mu == 40.0
    with pytest.raises(SessionBudgetExceededError) as info:
        table.draw(s.session_id, 41.0, 2.0)
    assert info.value.status_code == 429
    assert info.value.remaining_mu == 40.0 and info.value.requested_mu == 41.0
    assert "41.00 MU" in str(info.value)
    assert s.spent_mu == 60.0  # nothing deducted by the failed draw
    table.draw(s.session_id, 40.0, 2.0)  # exactly the rest is fine
    assert s.remaining_mu == 0.0
    with pytest.raises(SessionNotFoundError) as missing:
        table.draw("nope", 1.0, 2.0)
    assert missing.value.status_code == 404


def test_settle_replaces_estimate_with_actual() -> None:
    table = _table()
    s = table.open(_tenant(), 100.0, 60.0, 0.0)
    table.draw(s.session_id, 60.0, 1.0)
    table.settle(s.session_id, 60.0, 20.0, 2.0)
    assert s.spent_mu == 20.0 and s.turns == 1 and s.active_turns == 0
    table.draw(s.session_id, 50.0, 3.0)
    table.settle(s.session_id, 50.0, 120.0, 4.0)  # overran: the budget is spent
    assert s.spent_mu == 140.0 and s.remaining_mu == 0.0
    with pytest.raises(SessionBudgetExceededError):
        table.draw(s.session_id, 1.0, 5.0)


def test_refund_returns_the_turn_and_learns_nothing() -> None:
    table = _table()
    s = table.open(_tenant(), 100.0, 60.0, 0.0)
    table.draw(s.session_id, 70.0, 1.0)
    table.refund(s.session_id, 70.0, 1.5)
    assert s.spent_mu == 0.0 and s.turns == 0 and s.turn_mu_ewma is None
    assert table.refund("gone", 1.0, 2.0) is None
    assert table.settle("gone", 1.0, 1.0, 2.0) is None


def test_hold_is_ewma_of_turns_capped_by_budget_and_released_during_a_turn() -> None:
    table = _table(turn_ewma_alpha=0.5)
    s = table.open(_tenant(session_hold_mu=30.0), 1000.0, 60.0, 0.0)
    table.set_node(s.session_id, "n1", 0.0)
    assert s.reserved_headroom_mu == 30.0  # the tenant's initial hold
    assert table.reserved_by_node() == {"n1": 30.0}

    table.draw(s.session_id, 100.0, 1.0)
    assert s.reserved_headroom_mu == 0.0  # released while the turn runs
    assert table.reserved_by_node() == {}
    table.settle(s.session_id, 100.0, 200.0, 2.0)
    assert s.turn_mu_ewma == 200.0
    assert table.reserved_by_node() == {"n1": 200.0}

    table.draw(s.session_id, 100.0, 3.0)
    table.settle(s.session_id, 100.0, 100.0, 4.0)
    assert s.turn_mu_ewma == pytest.approx(150.0)
    assert s.reserved_headroom_mu == pytest.approx(150.0)

    # spent 300 of 1000; a turn of 600 leaves 100: the hold is capped by the budget left
    table.draw(s.session_id, 600.0, 5.0)
    table.settle(s.session_id, 600.0, 600.0, 6.0)
    assert s.remaining_mu == pytest.approx(100.0)
    assert s.reserved_headroom_mu == pytest.approx(100.0)


def test_overlapping_turns_retake_the_hold_after_the_last() -> None:
    table = _table()
    s = table.open(_tenant(session_hold_mu=10.0), 1000.0, 60.0, 0.0)
    s.node = "n1"  # the caller may set the node directly too
    table.draw(s.session_id, 5.0, 0.0)
    table.draw(s.session_id, 5.0, 0.0)
    table.settle(s.session_id, 5.0, 5.0, 1.0)
    assert s.reserved_headroom_mu == 0.0
    table.settle(s.session_id, 5.0, 7.0, 1.0)
    assert s.reserved_headroom_mu > 0.0


def test_reserved_by_node_sums_open_sessions() -> None:
    table = _table()
    t = _tenant(session_hold_mu=40.0)
    a = table.open(t, 1000.0, 10.0, 0.0)
    b = table.open(t, 1000.0, 100.0, 0.0)
    c = table.open(t, 1000.0, 100.0, 0.0)
    table.open(t, 1000.0, 100.0, 0.0)  # no node yet: holds nothing anywhere
    table.set_node(a.session_id, "n1", 0.0)
    table.set_node(b.session_id, "n1", 0.0)
    table.set_node(c.session_id, "n2", 0.0)
    assert table.reserved_by_node() == {"n1": 80.0, "n2": 40.0}
    assert table.reserved_by_node(now=20.0) == {"n1": 40.0, "n2": 40.0}  # a expired
    table.set_node(c.session_id, "n1", 0.0)  # the hold moves with the KV
    assert table.reserved_by_node(now=0.0) == {"n1": 120.0}
    table.close(b.session_id)
    assert table.reserved_by_node(now=0.0) == {"n1": 80.0}
    assert table.close(b.session_id) is None


def test_running_turn_keeps_session_alive_until_turn_timeout() -> None:
    table = _table(turn_timeout_s=100.0)
    s = table.open(_tenant(), 1000.0, 10.0, 0.0)
    table.draw(s.session_id, 10.0, 0.0)
    assert table.get(s.session_id, 50.0) is s  # past ttl, but a turn is running
    assert table.expire(50.0) == []
    table.settle(s.session_id, 10.0, 10.0, 50.0)
    assert table.get(s.session_id, 59.0) is s
    assert table.get(s.session_id, 60.0) is None
    # a turn that is never settled does not pin the session forever
    t = table.open(_tenant(), 1000.0, 10.0, 0.0)
    table.draw(t.session_id, 10.0, 0.0)
    assert table.expire(100.0) == [s.session_id, t.session_id]


def test_per_tenant_and_table_caps() -> None:
    table = _table(max_sessions=3)
    a = _tenant("a", max_sessions=2)
    s1 = table.open(a, 10.0, 10.0, 0.0)
    table.open(a, 10.0, 10.0, 0.0)
    with pytest.raises(SessionLimitError) as info:
        table.open(a, 10.0, 10.0, 0.0)
    assert info.value.status_code == 429
    table.close(s1.session_id)
    table.open(a, 10.0, 10.0, 0.0)
    b = _tenant("b")
    table.open(b, 10.0, 100.0, 0.0)
    with pytest.raises(SessionLimitError, match="table is full"):
        table.open(b, 10.0, 10.0, 1.0)
    # a's sessions expire at t=10: room again, and a's count recovers
    table.open(b, 10.0, 10.0, 10.0)
    assert table.count("a") == 0 and table.count("b") == 2
    with pytest.raises(SessionLimitError):
        table.open(_tenant("c", max_sessions=0), 10.0, 10.0, 0.0)


def test_snapshot_is_json_ready() -> None:
    import json

    table = _table()
    s = table.open(_tenant(), 10.0, 10.0, 0.0)
    json.dumps([x.as_dict() for x in table.sessions()], allow_nan=False)
    assert table.sessions("acme") == [s] and table.sessions("other") == []


@pytest.mark.parametrize("seed", range(10))
def test_random_turns_keep_invariants(seed: int) -> None:
    rng = random.Random(seed)
    table = _table()
    tenant = _tenant(max_sessions=1000, session_hold_mu=5.0)
    nodes = ["n1", "n2", "n3"]
    running: list[tuple[str, float]] = []
    spent_actual: dict[str, float] = {}
    now = 0.0
    for _ in range(1500):
        now += rng.expovariate(10.0)
        op = rng.random()
        if op < 0.15:
            s = table.open(tenant, rng.uniform(100, 2000), rng.uniform(1, 50), now)
            table.set_node(s.session_id, rng.choice(nodes), now)
            spent_actual[s.session_id] = 0.0
        elif op < 0.55 and len(table):
            sid = rng.choice([s.session_id for s in table.sessions()])
            mu = rng.uniform(0, 300)
            try:
                table.draw(sid, mu, now)
            except (SessionBudgetExceededError, SessionNotFoundError):
                continue
            running.append((sid, mu))
        elif op < 0.9 and running:
            sid, mu = running.pop(rng.randrange(len(running)))
            if rng.random() < 0.2:
                table.refund(sid, mu, now)
            else:
                actual = mu * rng.uniform(0, 2)
                if table.settle(sid, mu, actual, now) is not None:
                    spent_actual[sid] += actual
        else:
            for sid in table.expire(now):
                running = [r for r in running if r[0] != sid]
        for s in table.sessions():
            drawing = sum(mu for sid, mu in running if sid == s.session_id)
            assert s.spent_mu == pytest.approx(spent_actual[s.session_id] + drawing)
            assert 0 <= s.reserved_headroom_mu <= s.remaining_mu + 1e-9
            if s.active_turns:
                assert s.reserved_headroom_mu == 0.0
        holds = table.reserved_by_node()
        expect: dict[str, float] = {}
        for s in table.sessions():
            if s.node and s.reserved_headroom_mu > 0:
                expect[s.node] = expect.get(s.node, 0.0) + s.reserved_headroom_mu
        assert holds == pytest.approx(expect)
