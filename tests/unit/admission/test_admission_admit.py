"""Unit tests for Admission: reserved vs best-effort vs 429, shedding order, the ledger."""

from __future__ import annotations

import json
import math
import random

import pytest
from pydantic import ValidationError

from router.admission import (
    Admission,
    AdmissionConfig,
    TenantConfig,
    Ticket,
    TicketError,
    fleet_load_ratio,
)

CAPACITY = 1000.0  # MU/s of the fleet
IDLE = CAPACITY  # headroom of an idle fleet
LOADED = 100.0  # 90 % loaded: above the default 80 % best-effort limit


def _tenant(name: str = "acme", reserved: float = 100.0, **kw: object) -> TenantConfig:
    return TenantConfig.model_validate(
        {"name": name, "api_key": f"key-{name}", "reserved_mu_s": reserved, **kw}
    )


def _admission(**kw: object) -> Admission:
    return Admission(AdmissionConfig.model_validate(kw))


def test_fleet_load_ratio() -> None:
    assert fleet_load_ratio(1000.0, 1000.0) == 0.0
    assert fleet_load_ratio(250.0, 1000.0) == 0.75
    assert fleet_load_ratio(-500.0, 1000.0) == 1.5
    assert fleet_load_ratio(0.0, 0.0) == math.inf
    with pytest.raises(ValueError):
        fleet_load_ratio(math.nan, 1.0)


def test_shed_best_effort_threshold() -> None:
    adm = _admission(best_effort_margin=0.25)
    assert not adm.shed_best_effort(0.74)
    assert adm.shed_best_effort(0.75)
    assert adm.shed_best_effort(math.inf)
    assert not adm.shed_reserved(100.0)  # never, by default


def test_within_bucket_is_reserved() -> None:
    adm = _admission()
    t = _tenant(burst_mu=0)  # depth 100
    ticket = adm.admit(t, 60.0, 0.0, IDLE, CAPACITY)
    assert ticket.kind == "reserved"
    assert ticket.admitted
    assert ticket.charged_mu == 60.0
    assert ticket.estimate_mu == 60.0
    assert ticket.tenant == "acme"
    assert ticket.admitted_at == 0.0
    assert ticket.retry_after_s == 0.0
    assert adm.bucket_level("acme", 0.0) == pytest.approx(40.0)


def test_over_bucket_goes_best_effort_when_fleet_has_headroom() -> None:
    adm = _admission()
    t = _tenant(burst_mu=0)
    assert adm.admit(t, 100.0, 0.0, IDLE, CAPACITY).kind == "reserved"
    ticket = adm.admit(t, 50.0, 0.0, IDLE, CAPACITY)
    assert ticket.kind == "best_effort"
    assert ticket.charged_mu == 50.0
    # charged to the best-effort ledger, not to the bucket
    assert adm.bucket_level("acme", 0.0) == pytest.approx(0.0)
    led = adm.ledger("acme")
    assert led["best_effort"]["inflight_mu"] == 50.0
    assert adm.best_effort_inflight_mu() == 50.0


def test_rejected_with_retry_after_from_the_bucket() -> None:
    adm = _admission()
    t = _tenant(burst_mu=0, best_effort=False)
    adm.admit(t, 100.0, 0.0, IDLE, CAPACITY)
    ticket = adm.admit(t, 30.0, 0.0, IDLE, CAPACITY)
    assert ticket.kind == "rejected"
    assert not ticket.admitted
    assert ticket.charged_mu == 0.0
    assert ticket.retry_after_s == pytest.approx(0.3)  # 30 MU at 100 MU/s
    assert ticket.reason == "reservation_exhausted"
    assert adm.admit(t, 30.0, 0.3, IDLE, CAPACITY).kind == "reserved"


def test_best_effort_tenant_rejected_under_load_retries_soon() -> None:
    adm = _admission(best_effort_retry_after_s=2.0)
    t = _tenant(reserved=10.0, burst_mu=0)
    adm.admit(t, 10.0, 0.0, IDLE, CAPACITY)
    ticket = adm.admit(t, 500.0, 0.0, LOADED, CAPACITY)
    assert ticket.kind == "rejected"
    assert ticket.reason == "best_effort_shed"
    # the bucket alone says 1 s (500 MU > depth 10: time to fill it), best-effort cap 2 s
    assert ticket.retry_after_s == pytest.approx(1.0)
    slow = _tenant("slow", reserved=1.0, burst_mu=4.0)
    assert adm.admit(slow, 5.0, 0.0, LOADED, CAPACITY).kind == "reserved"
    shed = adm.admit(slow, 5.0, 0.0, LOADED, CAPACITY)
    assert shed.kind == "rejected"
    assert shed.retry_after_s == 2.0  # not the bucket's 5 s: the fleet may have room sooner


def test_retry_after_clamped_and_finite() -> None:
    adm = _admission(min_retry_after_s=0.5, max_retry_after_s=10.0)
    t = _tenant(burst_mu=0, best_effort=False)
    adm.admit(t, 100.0, 0.0, IDLE, CAPACITY)
    assert adm.admit(t, 1.0, 0.0, IDLE, CAPACITY).retry_after_s == 0.5
    nothing = _tenant("none", reserved=0.0, best_effort=False)
    ticket = adm.admit(nothing, 1.0, 0.0, IDLE, CAPACITY)
    assert ticket.kind == "rejected"
    assert ticket.retry_after_s == 10.0


def test_zero_reservation_tenant_lives_on_best_effort() -> None:
    adm = _admission()
    t = _tenant("free", reserved=0.0)
    assert adm.admit(t, 10.0, 0.0, IDLE, CAPACITY).kind == "best_effort"
    shed = adm.admit(t, 10.0, 0.0, LOADED, CAPACITY)
    assert shed.kind == "rejected" and shed.retry_after_s == 1.0


def test_best_effort_shed_before_reserved_under_load() -> None:
    """At the same fleet load a tenant within its reservation is admitted while a tenant
    that needs spare capacity is rejected; at a lower load both are admitted."""
    adm = _admission(best_effort_margin=0.2)
    reserved = _tenant("gold", reserved=1000.0)
    spare = _tenant("free", reserved=0.0)
    for load, spare_kind in [(0.5, "best_effort"), (0.79, "best_effort"), (0.8, "rejected")]:
        headroom = CAPACITY * (1 - load)
        assert adm.admit(reserved, 10.0, 0.0, headroom, CAPACITY).kind == "reserved"
        assert adm.admit(spare, 10.0, 0.0, headroom, CAPACITY).kind == spare_kind
    # far past capacity, no healthy node at all: reservations still honoured
    assert adm.admit(reserved, 10.0, 0.0, -5000.0, CAPACITY).kind == "reserved"
    assert adm.admit(reserved, 10.0, 0.0, 0.0, 0.0).kind == "reserved"
    assert adm.admit(spare, 10.0, 0.0, 0.0, 0.0).kind == "rejected"


def test_sustained_load_reserved_keeps_its_rate() -> None:
    """Under a loaded fleet, over 10 s, the reserved tenant gets its full 100 MU/s while the
    reservation-less tenant gets nothing; the same tenant overspending its reservation is
    limited to it."""
    adm = _admission()
    gold = _tenant("gold", reserved=100.0, burst_mu=0)
    free = _tenant("free", reserved=0.0)
    admitted = {"gold": 0.0, "free": 0.0}
    for step in range(1000):
        now = step * 0.01
        for t in (gold, free):
            ticket = adm.admit(t, 5.0, now, LOADED, CAPACITY)  # each asks for 500 MU/s
            if ticket.admitted:
                admitted[t.name] += ticket.charged_mu
                adm.settle(ticket, ticket.charged_mu, now)
    assert admitted["free"] == 0.0
    # initial depth (100) + 10 s at 100 MU/s, to within one request
    assert admitted["gold"] == pytest.approx(100.0 + 100.0 * 9.99, abs=5.0)


def test_emergency_brake_on_reserved() -> None:
    adm = _admission(reserved_max_load_ratio=2.0, overload_retry_after_s=3.0)
    t = _tenant()
    assert adm.admit(t, 1.0, 0.0, -900.0, CAPACITY).kind == "reserved"  # load 1.9
    ticket = adm.admit(t, 1.0, 0.0, -1500.0, CAPACITY)  # load 2.5
    assert ticket.kind == "rejected" and ticket.reason == "overload"
    assert ticket.retry_after_s == 3.0


def test_settle_reconciles_bucket_and_ledger() -> None:
    adm = _admission()
    t = _tenant(burst_mu=0)
    a = adm.admit(t, 80.0, 0.0, IDLE, CAPACITY)
    assert adm.settle(a, 50.0, 0.0) == pytest.approx(-30.0)  # refund of 30
    assert adm.bucket_level("acme", 0.0) == pytest.approx(50.0)
    b = adm.admit(t, 50.0, 0.0, IDLE, CAPACITY)
    assert adm.settle(b, 150.0, 0.0) == pytest.approx(100.0)  # debt of 100
    assert adm.bucket_level("acme", 0.0) == pytest.approx(-100.0)
    # the debt delays the next admission: 10 MU need 1.1 s of refill
    c = adm.admit(_tenant(burst_mu=0, best_effort=False), 10.0, 0.0, IDLE, CAPACITY)
    assert c.kind == "rejected" and c.retry_after_s == pytest.approx(1.1)

    led = adm.ledger(t, now=0.0)
    assert led["reserved"]["admitted"] == 2
    assert led["reserved"]["charged_mu"] == pytest.approx(130.0)
    assert led["reserved"]["settled"] == 2
    assert led["reserved"]["settled_charged_mu"] == pytest.approx(130.0)
    assert led["reserved"]["settled_actual_mu"] == pytest.approx(200.0)
    assert led["reserved"]["inflight_mu"] == 0.0
    assert led["rejected"] == {
        "requests": 1,
        "estimate_mu": 10.0,
        "by_reason": {"reservation_exhausted": 1},
    }
    assert led["bucket"]["level_mu"] == pytest.approx(-100.0)
    assert led["bucket"]["in_debt"] is True
    err = led["estimate_error"]
    assert err["count"] == 2
    assert err["bias_mu"] == pytest.approx((-30.0 + 100.0) / 2)
    assert err["mae_mu"] == pytest.approx(65.0)
    assert err["rmse_mu"] == pytest.approx(math.sqrt((900 + 10000) / 2))
    assert err["mape_pct"] == pytest.approx((30 / 50 + 100 / 150) / 2 * 100)
    assert err["actual_over_estimate"] == pytest.approx(200 / 130)


def test_best_effort_settle_does_not_touch_the_bucket() -> None:
    adm = _admission()
    t = _tenant(burst_mu=0)
    adm.admit(t, 100.0, 0.0, IDLE, CAPACITY)
    be = adm.admit(t, 40.0, 0.0, IDLE, CAPACITY)
    assert be.kind == "best_effort"
    adm.settle(be, 400.0, 0.0)
    assert adm.bucket_level("acme", 0.0) == pytest.approx(0.0)
    led = adm.ledger("acme")
    assert led["best_effort"]["settled_actual_mu"] == 400.0
    assert led["best_effort"]["open"] == 0
    assert led["totals"]["settled_actual_mu"] == 400.0
    assert led["totals"]["open"] == 1  # the reserved ticket


def test_refund_returns_the_whole_charge() -> None:
    adm = _admission()
    t = _tenant(burst_mu=0)
    r = adm.admit(t, 70.0, 0.0, IDLE, CAPACITY)
    be = adm.admit(t, 70.0, 0.0, IDLE, CAPACITY)
    assert be.kind == "best_effort"
    adm.refund(r, 0.0)
    adm.refund(be, 0.0)
    assert adm.bucket_level("acme", 0.0) == pytest.approx(100.0)
    led = adm.ledger("acme")
    assert led["reserved"]["refunded"] == 1 and led["reserved"]["refunded_mu"] == 70.0
    assert led["best_effort"]["refunded_mu"] == 70.0
    assert led["totals"]["inflight_mu"] == 0.0
    assert led["estimate_error"]["count"] == 0  # refunds are not estimate errors
    assert adm.open_tickets == 0


def test_a_ticket_closes_exactly_once() -> None:
    adm = _admission()
    t = _tenant(burst_mu=0, best_effort=False)
    ticket = adm.admit(t, 10.0, 0.0, IDLE, CAPACITY)
    adm.settle(ticket, 10.0, 0.0)
    with pytest.raises(TicketError):
        adm.settle(ticket, 10.0, 0.0)
    with pytest.raises(TicketError):
        adm.refund(ticket, 0.0)
    adm.admit(t, 90.0, 0.0, IDLE, CAPACITY)
    rejected = adm.admit(t, 50.0, 0.0, IDLE, CAPACITY)
    with pytest.raises(TicketError):
        adm.refund(rejected, 0.0)
    forged = Ticket(999, "reserved", "acme", 10.0, 10.0, 0.0)
    with pytest.raises(TicketError):
        adm.settle(forged, 1.0, 0.0)
    with pytest.raises(ValueError):
        adm.settle(ticket, -1.0, 0.0)


def test_ledger_views_are_json_ready() -> None:
    adm = _admission()
    t = _tenant()
    fresh = adm.ledger(t, now=5.0)
    assert fresh["bucket"]["level_mu"] == t.depth_mu
    assert fresh["totals"]["requests"] == 0
    assert fresh["estimate_error"]["mape_pct"] is None
    with pytest.raises(KeyError):
        adm.ledger("nobody")
    adm.settle(adm.admit(t, 10.0, 0.0, IDLE, CAPACITY), 12.0, 1.0)
    adm.admit(_tenant("other"), 1.0, 0.0, IDLE, CAPACITY)
    views = adm.ledgers(now=2.0)
    assert list(views) == ["acme", "other"]
    json.dumps(views, allow_nan=False)
    adm.forget("other")
    assert list(adm.ledgers()) == ["acme"]
    assert adm.open_tickets == 0


def test_reconfigured_reservation_applies() -> None:
    adm = _admission()
    adm.admit(_tenant(reserved=100.0, burst_mu=0), 100.0, 0.0, IDLE, CAPACITY)
    bigger = _tenant(reserved=1000.0, burst_mu=0, best_effort=False)
    # the level carries over (refilled to the old depth, 100), then refills at the new rate
    assert adm.admit(bigger, 500.0, 1.0, IDLE, CAPACITY).kind == "rejected"
    assert adm.admit(bigger, 500.0, 1.4, IDLE, CAPACITY).kind == "reserved"
    assert adm.ledger(bigger)["bucket"]["rate_mu_s"] == 1000.0
    assert adm.ledger(bigger)["bucket"]["depth_mu"] == 1000.0


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_rejects_bad_mu(bad: float) -> None:
    with pytest.raises(ValueError):
        _admission().admit(_tenant(), bad, 0.0, IDLE, CAPACITY)


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        AdmissionConfig(best_effort_margin=1.0)
    with pytest.raises(ValidationError):
        AdmissionConfig(min_retry_after_s=5.0, max_retry_after_s=1.0)
    with pytest.raises(ValidationError):
        AdmissionConfig.model_validate({"bogus": 1})


@pytest.mark.parametrize("seed", range(10))
def test_random_traffic_conserves_mu(seed: int) -> None:
    """Random admits, settles and refunds: the ledger balances, nothing leaks."""
    rng = random.Random(seed)
    adm = _admission()
    tenants = [
        _tenant(f"t{i}", reserved=rng.uniform(0, 300), best_effort=rng.random() < 0.7)
        for i in range(4)
    ]
    open_tickets: list[Ticket] = []
    actual_total = {t.name: 0.0 for t in tenants}
    now = 0.0
    for _ in range(2000):
        now += rng.expovariate(50.0)
        if open_tickets and rng.random() < 0.45:
            ticket = open_tickets.pop(rng.randrange(len(open_tickets)))
            if rng.random() < 0.2:
                adm.refund(ticket, now)
            else:
                actual = ticket.charged_mu * rng.uniform(0.2, 1.8)
                actual_total[ticket.tenant] += actual
                adm.settle(ticket, actual, now)
            continue
        tenant = rng.choice(tenants)
        headroom = rng.uniform(-200, CAPACITY)
        ticket = adm.admit(tenant, rng.uniform(1, 200), now, headroom, CAPACITY)
        if ticket.admitted:
            open_tickets.append(ticket)
            assert ticket.retry_after_s == 0.0
        else:
            assert 0.1 <= ticket.retry_after_s <= 60.0
        if ticket.kind == "best_effort":
            assert tenant.best_effort
            assert adm.shed_best_effort(fleet_load_ratio(headroom, CAPACITY)) is False
    assert adm.open_tickets == len(open_tickets)
    for tenant in tenants:
        led = adm.ledger(tenant, now=now)
        assert led["bucket"]["level_mu"] <= tenant.depth_mu + 1e-9
        for kind in ("reserved", "best_effort"):
            k = led[kind]
            assert k["charged_mu"] == pytest.approx(
                k["settled_charged_mu"] + k["refunded_mu"] + k["inflight_mu"]
            )
            assert k["admitted"] == k["settled"] + k["refunded"] + k["open"]
        assert led["totals"]["settled_actual_mu"] == pytest.approx(actual_total[tenant.name])
        if not tenant.best_effort:
            assert led["best_effort"]["admitted"] == 0
    json.dumps(adm.ledgers(now), allow_nan=False)
