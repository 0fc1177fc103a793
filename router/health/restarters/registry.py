"""Restarter kinds by name: their typed configurations and how each is built.

A new kind is one module (its config with a ``kind`` literal, and its restarter) plus one
entry here: its config in :data:`RestarterConfig` and a :class:`RestarterKind` in
:data:`RESTARTERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from pydantic import BaseModel, Field, TypeAdapter

from router.health.restarters.base import Restarter
from router.health.restarters.kubernetes import KubernetesConfig, KubernetesRestarter, PodApi
from router.health.restarters.model_reload import ModelReloadConfig, ModelReloadRestarter
from router.health.restarters.supervisor import SupervisorConfig, SupervisorRestarter

__all__ = [
    "RESTARTERS",
    "AnyRestarterConfig",
    "BuildOptions",
    "RestarterConfig",
    "RestarterKind",
    "build_restarter",
    "build_restarters",
    "parse_restarter_config",
]

AnyRestarterConfig = ModelReloadConfig | SupervisorConfig | KubernetesConfig

RestarterConfig = Annotated[AnyRestarterConfig, Field(discriminator="kind")]
"""One entry of ``health.restarters``: the ``kind`` key picks the model."""


@dataclass(frozen=True)
class BuildOptions:
    """What a restarter may need besides its configuration (tests inject fakes here)."""

    http_transport: httpx.AsyncBaseTransport | None = None
    """For the HTTP restarters; None: real connections."""
    kubernetes_api: PodApi | None = None
    """A ``CoreV1Api``; None: one made from the in-cluster or kubeconfig settings."""


@dataclass(frozen=True)
class RestarterKind:
    config: type[BaseModel]
    build: Callable[[Any, BuildOptions], Restarter]


RESTARTERS: dict[str, RestarterKind] = {
    "model_reload": RestarterKind(
        ModelReloadConfig,
        lambda c, o: ModelReloadRestarter(c, transport=o.http_transport),
    ),
    "supervisor": RestarterKind(
        SupervisorConfig,
        lambda c, o: SupervisorRestarter(c, transport=o.http_transport),
    ),
    "kubernetes": RestarterKind(
        KubernetesConfig,
        lambda c, o: KubernetesRestarter(c, api=o.kubernetes_api),
    ),
}

_ADAPTER: TypeAdapter[AnyRestarterConfig] = TypeAdapter(RestarterConfig)


def parse_restarter_config(data: object) -> AnyRestarterConfig:
    """Validate one ``health.restarters`` entry (a mapping with ``kind``)."""
    return _ADAPTER.validate_python(data)


def build_restarter(config: AnyRestarterConfig, options: BuildOptions | None = None) -> Restarter:
    """The restarter for a validated config; raises ``KeyError`` for an unregistered kind."""
    kind = getattr(config, "kind", None)
    entry = RESTARTERS.get(kind) if isinstance(kind, str) else None
    if entry is None or not isinstance(config, entry.config):
        raise KeyError(f"no restarter registered for {config!r}; known: {', '.join(RESTARTERS)}")
    return entry.build(config, options or BuildOptions())


def build_restarters(
    configs: Sequence[AnyRestarterConfig], options: BuildOptions | None = None
) -> list[Restarter]:
    """The chain, in configuration order."""
    return [build_restarter(c, options) for c in configs]
