"""The worked example of router/admission/README.md, number for number."""

from __future__ import annotations

import pytest

from router.admission import Admission, PriorityMapper, SessionTable, TenantConfig

CAPACITY = 1450.0
EST, ACT = 394.76, 362.97


def _acme() -> TenantConfig:
    return TenantConfig.model_validate(
        {
            "name": "acme",
            "api_key": "k",
            "tier": "interactive",
            "reserved_mu_s": 200,
            "burst_mu": 400,
        }
    )


def _headroom(load: float) -> float:
    return CAPACITY * (1 - load)


def test_admission_example() -> None:
    adm, acme = Admission(), _acme()
    a = adm.admit(acme, EST, 0.0, _headroom(0.0), CAPACITY)
    assert a.kind == "reserved"
    assert adm.bucket_level("acme", 0.0) == pytest.approx(205.24)
    b = adm.admit(acme, EST, 0.2, _headroom(0.5), CAPACITY)
    assert b.kind == "best_effort"
    assert adm.bucket_level("acme", 0.2) == pytest.approx(245.24)
    c = adm.admit(acme, EST, 0.3, _headroom(0.9), CAPACITY)
    assert c.kind == "rejected"
    assert c.retry_after_s == pytest.approx(0.6476)
    assert adm.settle(a, ACT, 1.0) == pytest.approx(ACT - EST)
    assert adm.bucket_level("acme", 1.0) == pytest.approx(437.03)


def test_debt_example() -> None:
    adm, acme = Admission(), _acme()
    a = adm.admit(acme, EST, 0.0, _headroom(0.0), CAPACITY)
    adm.settle(a, 1000.0, 1.0)
    assert adm.bucket_level("acme", 1.0) == pytest.approx(-200.0)


def test_priority_example() -> None:
    m = PriorityMapper()
    assert m.level("interactive", EST, 0.0, 2) == 2
    assert m.level("interactive", 1240.55, 0.0, 2) == 3
    assert m.level("batch", 1240.55, 25.0, 2) == 5
    assert m.level("interactive", EST, 0.0, 4) == 4


def test_session_example() -> None:
    table = SessionTable()
    s = table.open(_acme(), 5000.0, 600.0, 0.0)
    table.draw(s.session_id, EST, 0.0)
    table.set_node(s.session_id, "h100-0", 0.0)
    assert table.reserved_by_node() == {}
    table.settle(s.session_id, EST, ACT, 1.0)
    assert s.remaining_mu == pytest.approx(4637.03)
    assert table.reserved_by_node() == {"h100-0": pytest.approx(ACT)}
