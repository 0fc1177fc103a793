"""Admission control priced in MU: tenants, token buckets, best-effort, agent sessions and
Triton priority levels. Pure objects (``now`` is an argument), see ``README.md``."""

from router.admission.admission import (
    Admission,
    AdmissionConfig,
    EstimateErrorStats,
    TenantLedger,
    Ticket,
    TicketError,
    TicketKind,
    fleet_load_ratio,
)
from router.admission.bucket import MuBucket
from router.admission.priority import CANARY_LEVEL, PriorityConfig, PriorityMapper
from router.admission.sessions import (
    Session,
    SessionBudgetExceededError,
    SessionConflictError,
    SessionError,
    SessionLimitError,
    SessionNotFoundError,
    SessionsConfig,
    SessionTable,
)
from router.admission.tenants import (
    DEFAULT_BURST_FACTOR,
    TIERS,
    TenantConfig,
    TenantsConfig,
    Tier,
    check_unique,
)

__all__ = [
    "CANARY_LEVEL",
    "DEFAULT_BURST_FACTOR",
    "TIERS",
    "Admission",
    "AdmissionConfig",
    "EstimateErrorStats",
    "MuBucket",
    "PriorityConfig",
    "PriorityMapper",
    "Session",
    "SessionBudgetExceededError",
    "SessionConflictError",
    "SessionError",
    "SessionLimitError",
    "SessionNotFoundError",
    "SessionTable",
    "SessionsConfig",
    "TenantConfig",
    "TenantLedger",
    "TenantsConfig",
    "Ticket",
    "TicketError",
    "TicketKind",
    "Tier",
    "check_unique",
    "fleet_load_ratio",
]
