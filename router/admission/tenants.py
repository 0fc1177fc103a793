"""Tenant configuration: who may send work, how much MU/s is reserved for them, and how they
may use the rest of the fleet.

A tenant's reservation is a rate in MU/s (``reserved_mu_s``) enforced by a token bucket
(:mod:`router.admission.bucket`) of depth ``reserved_mu_s + burst_mu``: one second of the
reservation plus a burst allowance. ``best_effort`` lets the tenant use spare fleet capacity
beyond its reservation; best-effort work is the first to be shed when the fleet is loaded.

Plain pydantic models, no I/O: the service loads them from its configuration file, the fleet
simulator and the tests build them directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

__all__ = [
    "DEFAULT_BURST_FACTOR",
    "TIERS",
    "TenantConfig",
    "TenantsConfig",
    "Tier",
    "check_unique",
]

Tier = Literal["interactive", "standard", "batch"]
"""Service tier; picks the band of Triton priority levels (:mod:`router.admission.priority`)."""

TIERS: tuple[Tier, ...] = ("interactive", "standard", "batch")
"""All tiers, highest priority first."""

DEFAULT_BURST_FACTOR = 2.0
"""``burst_mu`` defaults to this many seconds of the reservation."""


class TenantConfig(BaseModel):
    """One tenant. Frozen: a configuration reload builds new objects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Unique tenant name; also a metric label, hence the restricted alphabet."""
    api_key: SecretStr = Field(min_length=1)
    """Bearer key that authenticates the tenant (never logged: ``SecretStr``)."""
    tier: Tier = "standard"
    reserved_mu_s: float = Field(ge=0)
    """MU per second reserved for the tenant (the bucket's refill rate)."""
    burst_mu: float = Field(default=0.0, ge=0)
    """Bucket depth above the reservation's one-second worth; defaults to
    ``DEFAULT_BURST_FACTOR * reserved_mu_s`` when omitted."""
    max_priority: int = Field(default=2, ge=2)
    """The highest Triton priority (smallest level number) the tenant may get. Level 1 is
    reserved for health canaries, so this is at least 2."""
    best_effort: bool = True
    """May the tenant use spare fleet capacity beyond its reservation?"""
    max_sessions: int = Field(default=64, ge=0)
    """Open agent sessions allowed at once (0: sessions disabled for this tenant)."""
    session_budget_mu: float = Field(default=1_000_000.0, gt=0)
    """Default MU budget of a new session (1e6 MU = 1000 s of reference-pair work)."""
    session_ttl_s: float = Field(default=600.0, gt=0)
    """Default idle time-to-live of a session, seconds."""
    session_hold_mu: float = Field(default=0.0, ge=0)
    """Headroom a new session holds on its node before its first turn has been measured."""

    @model_validator(mode="before")
    @classmethod
    def _default_burst(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("burst_mu") is None and "reserved_mu_s" in data:
            try:
                reserved = float(data["reserved_mu_s"])
            except (TypeError, ValueError):
                return data  # the field validator reports it
            return {**data, "burst_mu": DEFAULT_BURST_FACTOR * reserved}
        return data

    @property
    def depth_mu(self) -> float:
        """Token-bucket depth: one second of the reservation plus the burst allowance."""
        return self.reserved_mu_s + self.burst_mu


def check_unique(tenants: Iterable[TenantConfig]) -> list[TenantConfig]:
    """The tenants as a list; raises ``ValueError`` if two share a name or an API key.

    A shared key would make authentication ambiguous; the error names the tenants, never the
    key.
    """
    result = list(tenants)
    names: set[str] = set()
    keys: dict[str, str] = {}
    for tenant in result:
        if tenant.name in names:
            raise ValueError(f"duplicate tenant name {tenant.name!r}")
        names.add(tenant.name)
        key = tenant.api_key.get_secret_value()
        if key in keys:
            raise ValueError(f"tenants {keys[key]!r} and {tenant.name!r} share an API key")
        keys[key] = tenant.name
    return result


class TenantsConfig(BaseModel):
    """The ``tenants:`` section of a configuration file: names and keys unique."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenants: list[TenantConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> TenantsConfig:
        check_unique(self.tenants)
        return self

    def by_name(self) -> dict[str, TenantConfig]:
        return {t.name: t for t in self.tenants}
