"""Fleet health: probes judge, a pure state machine decides, the monitor acts.

See ``router/health/README.md``.
"""

from router.health.config import FailoverConfig, HealthConfig, MachineConfig
from router.health.machine import HealthMachine, NodeHealth
from router.health.signals import Action, Evict, ProbeNow, Restart, Signal, Verdict

__all__ = [
    "Action",
    "Evict",
    "FailoverConfig",
    "HealthConfig",
    "HealthMachine",
    "MachineConfig",
    "NodeHealth",
    "ProbeNow",
    "Restart",
    "Signal",
    "Verdict",
]
