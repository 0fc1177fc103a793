"""Unit tests for router.config: the YAML file loads strictly and every error names its key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.config import REPOSITORY_ROOT, ConfigError, RouterConfig, load_config

PAIR = "llama-3.1-8b_h100-sxm_tp1"
ADMIN = "admin-token-0123456789"
TENANT_KEY = "tenant-key-abcdef"


def _node(name: str = "n1", port: int = 8000, **kw: Any) -> dict[str, Any]:
    return {
        "name": name,
        "grpc_url": f"127.0.0.1:{port + 1}",
        "http_url": f"http://127.0.0.1:{port}",
        "metrics_url": f"http://127.0.0.1:{port + 2}/metrics",
        "pair": PAIR,
        "models": ["tiny"],
        **kw,
    }


def _minimal(tokenizer_dir: Path) -> dict[str, Any]:
    return {
        "admin_token": ADMIN,
        "tenants": [{"name": "acme", "api_key": TENANT_KEY, "reserved_mu_s": 100.0}],
        "models": [{"name": "tiny", "tokenizer_dir": str(tokenizer_dir)}],
        "nodes": [_node()],
    }


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _load_error(tmp_path: Path, data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, data))
    return str(info.value)


@pytest.fixture()
def base(tiny_model_dir: Path) -> dict[str, Any]:
    return _minimal(tiny_model_dir)


def test_minimal_config_loads(tmp_path: Path, base: dict[str, Any], tiny_model_dir: Path) -> None:
    config = load_config(_write(tmp_path, base))
    assert isinstance(config, RouterConfig)
    assert config.admin_token.get_secret_value() == ADMIN
    assert [t.name for t in config.tenants] == ["acme"]
    assert config.tenants[0].api_key.get_secret_value() == TENANT_KEY
    assert config.models[0].tokenizer_dir == tiny_model_dir
    assert config.nodes[0].pair == PAIR
    # Defaults.
    assert config.policy.name == "mu_cost"
    assert config.listen.http_port == 9000
    assert config.failover.max_attempts == 3


def test_secrets_are_not_shown(tmp_path: Path, base: dict[str, Any]) -> None:
    config = load_config(_write(tmp_path, base))
    shown = repr(config) + str(config)
    assert ADMIN not in shown
    assert TENANT_KEY not in shown


def test_unknown_top_level_key(tmp_path: Path, base: dict[str, Any]) -> None:
    base["polcy"] = {"name": "least_request"}
    message = _load_error(tmp_path, base)
    assert "polcy" in message
    assert "router.yaml" in message


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("limits", "max_body_byte"),
        ("listen", "http_prot"),
        ("policy", "parms"),
        ("admission", "best_effort_marign"),
        ("scrape", "intervall_s"),
        ("engine_check", "untrusted_factor"),
    ],
)
def test_misspelt_nested_key(tmp_path: Path, base: dict[str, Any], section: str, key: str) -> None:
    base[section] = {key: 1}
    message = _load_error(tmp_path, base)
    assert f"{section}.{key}" in message


def test_misspelt_key_in_a_list_item(tmp_path: Path, base: dict[str, Any]) -> None:
    base["tenants"][0]["reserverd_mu_s"] = 5
    message = _load_error(tmp_path, base)
    assert "tenants.0.reserverd_mu_s" in message


def test_misspelt_key_in_a_node(tmp_path: Path, base: dict[str, Any]) -> None:
    base["nodes"][0]["grpc_ulr"] = "x"
    assert "nodes.0.grpc_ulr" in _load_error(tmp_path, base)


def test_short_admin_token(tmp_path: Path, base: dict[str, Any]) -> None:
    base["admin_token"] = "short"
    assert "admin_token must be at least 16 characters" in _load_error(tmp_path, base)


def test_missing_admin_token(tmp_path: Path, base: dict[str, Any]) -> None:
    del base["admin_token"]
    assert "admin_token" in _load_error(tmp_path, base)


def test_admin_token_equal_to_a_tenant_key(tmp_path: Path, base: dict[str, Any]) -> None:
    base["tenants"][0]["api_key"] = ADMIN
    message = _load_error(tmp_path, base)
    assert "admin token must differ from every tenant key" in message
    assert ADMIN not in message  # the key is never echoed


def test_duplicate_tenant_names(tmp_path: Path, base: dict[str, Any]) -> None:
    second = {**base["tenants"][0], "api_key": "another-key-xyz"}
    base["tenants"].append(second)
    assert "duplicate tenant name 'acme'" in _load_error(tmp_path, base)


def test_duplicate_node_names(tmp_path: Path, base: dict[str, Any]) -> None:
    base["nodes"].append(_node("n1", port=8010))
    assert "node names must be unique" in _load_error(tmp_path, base)


def test_node_serving_an_unknown_model(tmp_path: Path, base: dict[str, Any]) -> None:
    base["nodes"][0]["models"] = ["tiny", "gpt-9"]
    message = _load_error(tmp_path, base)
    assert "node n1 serves unknown models" in message
    assert "gpt-9" in message


def test_node_without_models_key_loads(tmp_path: Path, base: dict[str, Any]) -> None:
    del base["nodes"][0]["models"]
    load_config(_write(tmp_path, base))


def test_unknown_policy_name(tmp_path: Path, base: dict[str, Any]) -> None:
    base["policy"] = {"name": "fastest_please"}
    message = _load_error(tmp_path, base)
    assert "policy" in message
    assert "unknown policy 'fastest_please'" in message
    assert "least_request" in message  # the known names are listed


def test_known_policy_name_loads(tmp_path: Path, base: dict[str, Any]) -> None:
    base["policy"] = {"name": "least_request"}
    assert load_config(_write(tmp_path, base)).policy.name == "least_request"


@pytest.mark.parametrize(
    "text",
    ["admin_token: [unclosed\n", "tenants:\n  - name: a\n   bad-indent: 1\n", "key: 'open"],
)
def test_bad_yaml(tmp_path: Path, text: str) -> None:
    message = _load_error(tmp_path, text)
    assert "router.yaml" in message
    assert "line" in message  # the parser's position, not a validation error


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    assert "(top level)" in _load_error(tmp_path, text)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_empty_sections_are_refused(tmp_path: Path, base: dict[str, Any]) -> None:
    for key in ("tenants", "models", "nodes"):
        data = copy.deepcopy(base)
        data[key] = []
        assert key in _load_error(tmp_path, data)


def test_engine_check_defaults_and_settings(tmp_path: Path, base: dict[str, Any]) -> None:
    config = load_config(_write(tmp_path, base))
    assert config.engine_check.enabled is True
    assert config.engine_check.untrusted_capacity_factor == 0.5
    base["engine_check"] = {"enabled": False, "untrusted_capacity_factor": 0.2}
    config = load_config(_write(tmp_path, base))
    assert (config.engine_check.enabled, config.engine_check.untrusted_capacity_factor) == (
        False,
        0.2,
    )


@pytest.mark.parametrize("factor", [0, -0.1, 1.5])
def test_untrusted_capacity_factor_bounds(
    tmp_path: Path, base: dict[str, Any], factor: float
) -> None:
    base["engine_check"] = {"untrusted_capacity_factor": factor}
    assert "engine_check.untrusted_capacity_factor" in _load_error(tmp_path, base)


def test_bad_values_name_their_key(tmp_path: Path, base: dict[str, Any]) -> None:
    base["failover"] = {"max_attempts": 0}
    assert "failover.max_attempts" in _load_error(tmp_path, base)


# -- pair_profile_path ---------------------------------------------------------------------
def test_pair_profile_path_from_pairs_mapping(tmp_path: Path, base: dict[str, Any]) -> None:
    mine = tmp_path / "mine.json"
    base["pairs"] = {"custom-pair": str(mine)}
    config = load_config(_write(tmp_path, base))
    assert config.pair_profile_path("custom-pair") == mine


def test_pairs_mapping_wins_over_a_shipped_profile(tmp_path: Path, base: dict[str, Any]) -> None:
    mine = tmp_path / "override.json"
    base["pairs"] = {PAIR: str(mine)}
    config = load_config(_write(tmp_path, base))
    assert config.pair_profile_path(PAIR) == mine


def test_pair_profile_path_of_a_shipped_pair(tmp_path: Path, base: dict[str, Any]) -> None:
    config = load_config(_write(tmp_path, base))
    path = config.pair_profile_path(PAIR)
    assert path == REPOSITORY_ROOT / "profiles" / f"{PAIR}.json"
    assert path.exists()


def test_pair_profile_path_of_an_existing_json_path(tmp_path: Path, base: dict[str, Any]) -> None:
    profile = tmp_path / "direct.json"
    profile.write_text("{}")
    config = load_config(_write(tmp_path, base))
    assert config.pair_profile_path(str(profile)) == profile


def test_pair_profile_path_of_an_unknown_pair(tmp_path: Path, base: dict[str, Any]) -> None:
    config = load_config(_write(tmp_path, base))
    with pytest.raises(ValueError, match="no profile for pair 'no-such-pair'"):
        config.pair_profile_path("no-such-pair")
    with pytest.raises(ValueError, match="pairs:"):
        config.pair_profile_path(str(tmp_path / "missing.json"))
