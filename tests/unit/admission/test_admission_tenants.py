"""Unit tests for TenantConfig and check_unique."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from router.admission import DEFAULT_BURST_FACTOR, TenantConfig, TenantsConfig, check_unique


def _tenant(name: str = "acme", key: str = "k-acme", **kw: object) -> TenantConfig:
    return TenantConfig.model_validate({"name": name, "api_key": key, "reserved_mu_s": 100, **kw})


def _with(overrides: dict[str, object]) -> TenantConfig:
    return TenantConfig.model_validate(
        {"name": "acme", "api_key": "k-acme", "reserved_mu_s": 100, **overrides}
    )


def test_defaults() -> None:
    t = _tenant()
    assert t.tier == "standard"
    assert t.burst_mu == DEFAULT_BURST_FACTOR * 100
    assert t.depth_mu == 100 + DEFAULT_BURST_FACTOR * 100
    assert t.max_priority == 2
    assert t.best_effort is True
    assert t.api_key.get_secret_value() == "k-acme"
    assert "k-acme" not in repr(t)


def test_explicit_burst_kept_even_zero() -> None:
    assert _tenant(burst_mu=0).burst_mu == 0
    assert _tenant(burst_mu=50).depth_mu == 150
    assert _tenant(burst_mu=None).burst_mu == 200


@pytest.mark.parametrize(
    "bad",
    [
        {"reserved_mu_s": -1},
        {"burst_mu": -1},
        {"max_priority": 1},
        {"tier": "gold"},
        {"unknown": 1},
        {"name": ""},
        {"name": "has space"},
        {"api_key": ""},
        {"max_sessions": -1},
        {"session_ttl_s": 0},
    ],
)
def test_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _with(bad)


def test_reserved_required() -> None:
    with pytest.raises(ValidationError):
        TenantConfig.model_validate({"name": "a", "api_key": "k"})


def test_frozen() -> None:
    with pytest.raises(ValidationError):
        _tenant().reserved_mu_s = 5  # type: ignore[misc]


def test_check_unique() -> None:
    a, b = _tenant("a", "ka"), _tenant("b", "kb")
    assert check_unique(iter([a, b])) == [a, b]
    with pytest.raises(ValueError, match="duplicate tenant name 'a'"):
        check_unique([a, b, _tenant("a", "kc")])
    with pytest.raises(ValueError, match="share an API key") as info:
        check_unique([a, _tenant("c", "ka")])
    assert "ka" not in str(info.value).replace("'a'", "")


def test_tenants_config_checks_uniqueness() -> None:
    cfg = TenantsConfig.model_validate(
        {"tenants": [{"name": "a", "api_key": "x", "reserved_mu_s": 1}]}
    )
    assert set(cfg.by_name()) == {"a"}
    with pytest.raises(ValidationError, match="duplicate"):
        TenantsConfig.model_validate(
            {
                "tenants": [
                    {"name": "a", "api_key": "x", "reserved_mu_s": 1},
                    {"name": "a", "api_key": "y", "reserved_mu_s": 1},
                ]
            }
        )
