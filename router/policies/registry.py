"""Policies by name: ``register`` a class with its params model, ``build_policy`` from config.

Every policy's params are a pydantic model that forbids unknown fields, so a typo in a
config file is an error naming the policy and the field, never a silently ignored knob.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from router.policies.base import Policy

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "PolicyConfigError",
    "PolicySpec",
    "build_policy",
    "register",
]

DEFAULT_POLICY = "mu_cost"


class PolicyConfigError(ValueError):
    """A policy name or its params are wrong (the message says which and why)."""


@dataclass(frozen=True)
class PolicySpec:
    name: str
    cls: type
    params_model: type[BaseModel]

    @property
    def summary(self) -> str:
        """The first line of the policy's docstring."""
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


_REGISTRY: dict[str, PolicySpec] = {}

POLICIES: Mapping[str, PolicySpec] = MappingProxyType(_REGISTRY)
"""Registered policies by name (iterate it for the names)."""

C = TypeVar("C", bound=type)


def register(name: str, params_model: type[BaseModel]) -> Callable[[C], C]:
    """Class decorator: make the policy buildable as ``build_policy(name, params)``.

    The class is constructed as ``cls(params_model_instance)`` and gets ``name`` set.
    """
    if not name.isidentifier():
        raise ValueError(f"policy name must be an identifier, got {name!r}")
    if params_model.model_config.get("extra") != "forbid":
        raise TypeError(f"params model for policy {name!r} must forbid extra fields")

    def decorate(cls: C) -> C:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.cls is not cls:
            raise ValueError(f"policy {name!r} is already registered by {existing.cls!r}")
        cls.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = PolicySpec(name, cls, params_model)
        return cls

    return decorate


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        field = ".".join(str(x) for x in item["loc"]) or "(params)"
        parts.append(f"field {field!r}: {item['msg']}")
    return "; ".join(parts)


def build_policy(name: str, params: Mapping[str, object] | None = None) -> Policy:
    """A fresh policy ``name`` with validated ``params`` (``None`` → all defaults)."""
    spec = _REGISTRY.get(name)
    if spec is None:
        known = ", ".join(sorted(_REGISTRY))
        raise PolicyConfigError(f"unknown routing policy {name!r}; known policies: {known}")
    if params is not None and not isinstance(params, Mapping):
        raise PolicyConfigError(
            f"policy {name!r}: params must be a mapping, got {type(params).__name__}"
        )
    raw: dict[str, Any] = dict(params or {})
    try:
        validated = spec.params_model.model_validate(raw)
    except ValidationError as error:
        raise PolicyConfigError(f"policy {name!r}: invalid params: {_describe(error)}") from None
    policy = spec.cls(validated)
    if not isinstance(policy, Policy):
        raise TypeError(f"policy {name!r} ({spec.cls!r}) does not implement Policy")
    return policy
