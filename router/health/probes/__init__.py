"""Health probes: network probes per node and judges over what the router already knows."""

from router.health.probes.base import FleetJudge, NodeProbe
from router.health.probes.canary import CANARY_PARAMETER, CanaryProbe
from router.health.probes.gpu import GpuAgentProbe
from router.health.probes.metrics import MetricsJudge
from router.health.probes.passive import AttemptKind, PassiveJudge
from router.health.probes.readiness import ReadinessProbe

__all__ = [
    "CANARY_PARAMETER",
    "AttemptKind",
    "CanaryProbe",
    "FleetJudge",
    "GpuAgentProbe",
    "MetricsJudge",
    "NodeProbe",
    "PassiveJudge",
    "ReadinessProbe",
]
