"""The router's configuration file: one YAML document, strictly typed.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key is an error
at load time that names the key, never a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from router.admission import (
    AdmissionConfig,
    PriorityConfig,
    SessionsConfig,
    TenantConfig,
    check_unique,
)
from router.fleet import NodeConfig
from router.health.config import FailoverConfig, HealthConfig
from router.models import ModelConfig
from router.policies import POLICIES

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Strict):
    host: str = "127.0.0.1"
    http_port: int = Field(9000, ge=0, le=65535)
    grpc_port: int = Field(9001, ge=0, le=65535)


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(4 << 20, ge=1024, description="413 above this")
    request_timeout_s: float = Field(300.0, gt=0)


class PolicyConfig(_Strict):
    name: str = "mu_cost"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> PolicyConfig:
        if self.name not in POLICIES:
            raise ValueError(f"unknown policy {self.name!r}; known: {', '.join(sorted(POLICIES))}")
        return self


class MetricsScrapeConfig(_Strict):
    interval_s: float = Field(1.0, gt=0)
    timeout_s: float = Field(0.5, gt=0)


class EngineCheckConfig(_Strict):
    """Checking each node's engine configuration against its pair profile's record."""

    enabled: bool = True
    untrusted_capacity_factor: float = Field(
        0.5,
        gt=0,
        le=1,
        description="share of the profile's capacity granted to a node running another "
        "engine, engine version or hardware profile than the profile was measured on",
    )


class RouterConfig(_Strict):
    listen: ListenConfig = ListenConfig()
    admin_token: SecretStr
    tenants: list[TenantConfig] = Field(min_length=1)
    models: list[ModelConfig] = Field(min_length=1)
    nodes: list[NodeConfig] = Field(min_length=1)
    pairs: dict[str, Path] = Field(
        default_factory=dict,
        description="pair name -> profile JSON; a pair not listed is looked up in profiles/",
    )
    policy: PolicyConfig = PolicyConfig()
    admission: AdmissionConfig = AdmissionConfig()
    priority: PriorityConfig = PriorityConfig()
    sessions: SessionsConfig = SessionsConfig()
    scrape: MetricsScrapeConfig = MetricsScrapeConfig()
    engine_check: EngineCheckConfig = EngineCheckConfig()
    limits: LimitsConfig = LimitsConfig()
    health: HealthConfig = HealthConfig()
    failover: FailoverConfig = FailoverConfig()

    @model_validator(mode="before")
    @classmethod
    def _nodes_serve_every_model_by_default(cls, data: Any) -> Any:
        """A node without ``models:`` serves every configured model."""
        if not isinstance(data, dict):
            return data
        names = [m.get("name") for m in data.get("models") or [] if isinstance(m, dict)]
        nodes = data.get("nodes")
        if isinstance(nodes, list) and names:
            data = {
                **data,
                "nodes": [
                    {**n, "models": names} if isinstance(n, dict) and "models" not in n else n
                    for n in nodes
                ],
            }
        return data

    @model_validator(mode="after")
    def _consistent(self) -> RouterConfig:
        check_unique(self.tenants)
        admin = self.admin_token.get_secret_value()
        if len(admin) < 16:
            raise ValueError("admin_token must be at least 16 characters")
        if any(t.api_key.get_secret_value() == admin for t in self.tenants):
            raise ValueError("the admin token must differ from every tenant key")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        served = {m.name for m in self.models}
        for node in self.nodes:
            unknown = set(node.models) - served
            if unknown:
                raise ValueError(f"node {node.name} serves unknown models {sorted(unknown)}")
        return self

    def pair_profile_path(self, pair: str) -> Path:
        """Where the profile of ``pair`` is: ``pairs``, a path, or a shipped profile."""
        if pair in self.pairs:
            return self.pairs[pair]
        candidate = Path(pair)
        if candidate.suffix == ".json" and candidate.exists():
            return candidate
        shipped = REPOSITORY_ROOT / "profiles" / f"{pair}.json"
        if shipped.exists():
            return shipped
        raise ValueError(f"no profile for pair {pair!r}: list it under 'pairs:'")


class ConfigError(ValueError):
    """The configuration file cannot be used; the message says where and why."""


def load_config(path: Path) -> RouterConfig:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
