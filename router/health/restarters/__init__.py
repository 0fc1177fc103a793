"""Ways to bring a cordoned node back, tried in order by the health machine.

See README.md: ``model_reload`` (Triton's repository API), ``supervisor`` (the local
process supervisor of ``mufleet up``), ``kubernetes`` (delete the pod).
"""

from router.health.restarters.base import Restarter, RestartResult
from router.health.restarters.kubernetes import KubernetesConfig, KubernetesRestarter, PodApi
from router.health.restarters.model_reload import ModelReloadConfig, ModelReloadRestarter
from router.health.restarters.registry import (
    RESTARTERS,
    AnyRestarterConfig,
    BuildOptions,
    RestarterConfig,
    RestarterKind,
    build_restarter,
    build_restarters,
    parse_restarter_config,
)
from router.health.restarters.supervisor import SupervisorConfig, SupervisorRestarter

__all__ = [
    "RESTARTERS",
    "AnyRestarterConfig",
    "BuildOptions",
    "KubernetesConfig",
    "KubernetesRestarter",
    "ModelReloadConfig",
    "ModelReloadRestarter",
    "PodApi",
    "RestartResult",
    "Restarter",
    "RestarterConfig",
    "RestarterKind",
    "SupervisorConfig",
    "SupervisorRestarter",
    "build_restarter",
    "build_restarters",
    "parse_restarter_config",
]
