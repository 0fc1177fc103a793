"""The registry: names, params validation, errors that say what is wrong."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from router.policies import (
    DEFAULT_POLICY,
    POLICIES,
    PolicyConfigError,
    PolicyParams,
    build_policy,
    register,
)
from router.policies.mu_cost import MuCost, MuCostParams
from router.policies.power_of_two import PowerOfTwo


def test_default_is_mu_cost() -> None:
    assert DEFAULT_POLICY == "mu_cost"
    assert isinstance(build_policy(DEFAULT_POLICY), MuCost)


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(ValueError) as error:
        build_policy("fastest", None)
    message = str(error.value)
    assert "'fastest'" in message
    for name in POLICIES:
        assert name in message


def test_params_are_validated_and_typed() -> None:
    policy = build_policy("power_of_two", {"seed": 42})
    assert isinstance(policy, PowerOfTwo)
    assert policy.params.seed == 42
    mu = build_policy("mu_cost", {"session_credit": 0.3, "ttl_s": 60})
    assert isinstance(mu, MuCost)
    assert mu.params == MuCostParams(session_credit=0.3, ttl_s=60.0)


def test_bad_value_names_policy_and_field() -> None:
    with pytest.raises(PolicyConfigError) as error:
        build_policy("session_affinity", {"epsilon": -1})
    message = str(error.value)
    assert "'session_affinity'" in message
    assert "'epsilon'" in message
    with pytest.raises(PolicyConfigError, match="'seed'"):
        build_policy("power_of_two", {"seed": "not a number"})


def test_params_must_be_a_mapping() -> None:
    with pytest.raises(PolicyConfigError, match="mapping"):
        build_policy("round_robin", [("seed", 1)])  # type: ignore[arg-type]


def test_every_params_model_forbids_extras_and_is_frozen() -> None:
    for spec in POLICIES.values():
        assert issubclass(spec.params_model, PolicyParams)
        assert spec.params_model.model_config.get("extra") == "forbid"
        assert spec.params_model.model_config.get("frozen") is True


def test_build_returns_fresh_instances() -> None:
    assert build_policy("round_robin") is not build_policy("round_robin")


def test_register_refuses_lax_params_and_duplicates() -> None:
    class Lax(BaseModel):
        x: int = 0

    with pytest.raises(TypeError, match="forbid"):
        register("lax_policy", Lax)
    with pytest.raises(ValueError, match="already registered"):

        @register("mu_cost", MuCostParams)
        class Impostor(MuCost):
            pass


def test_policies_mapping_is_read_only() -> None:
    with pytest.raises(TypeError):
        POLICIES["x"] = POLICIES["mu_cost"]  # type: ignore[index]
