"""Admission: reservation, burst and best-effort, priced in MU, with a per-tenant ledger.

``Admission.admit(tenant, mu, now, fleet_headroom_mu_s, fleet_capacity_mu_s)`` decides, for a
request whose estimated cost is ``mu``:

1. **reserved** — the tenant's token bucket (:class:`~router.admission.bucket.MuBucket`,
   refilled at ``reserved_mu_s`` up to ``reserved_mu_s + burst_mu``) holds ``mu``: it is taken
   from the bucket. (Only if ``reserved_max_load_ratio`` is set and the fleet is loaded
   beyond it are reserved requests refused too; by default a reservation is honoured at any
   load.)
2. **best_effort** — otherwise, if the tenant may use spare capacity (``best_effort``) and the
   fleet is not loaded (:meth:`Admission.shed_best_effort`: the fleet's load ratio, ``1 −
   headroom / capacity``, is below ``1 − best_effort_margin``), it runs on spare capacity and
   is charged to the tenant's best-effort ledger, not to the bucket.
3. **rejected** — otherwise, with ``retry_after_s`` from the bucket (when the request would fit
   in the reservation; for a best-effort tenant at most ``best_effort_retry_after_s``, since
   the fleet may have room again sooner), clamped to ``[min_retry_after_s,
   max_retry_after_s]``: the service answers 429 with ``Retry-After``.

So under pressure best-effort work is shed first, and a tenant within its reservation keeps
being admitted at a load where a best-effort request is rejected.

When the request ends, :meth:`Admission.settle` reconciles the charge with the actual MU (the
bucket is credited or debited by ``actual − estimate``; a debt delays the next admissions);
a request that failed before its first token gets its whole charge back
(:meth:`Admission.refund`). Each ticket is closed exactly once.

The fleet headroom and capacity are the caller's projection (MU/s: capacity of routable nodes
minus the projected in-flight load); admission does no I/O and keeps no clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from router.admission.bucket import MuBucket
from router.admission.tenants import TenantConfig

__all__ = [
    "Admission",
    "AdmissionConfig",
    "EstimateErrorStats",
    "TenantLedger",
    "Ticket",
    "TicketError",
    "TicketKind",
    "fleet_load_ratio",
]

TicketKind = Literal["reserved", "best_effort", "rejected"]


class AdmissionConfig(BaseModel):
    """Admission knobs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    best_effort_margin: float = Field(default=0.2, ge=0, lt=1)
    """Best-effort work is admitted only while the fleet's projected load ratio is below
    ``1 − best_effort_margin`` (i.e. at least this fraction of capacity is free)."""
    reserved_max_load_ratio: float | None = Field(default=None, gt=0)
    """If set, reserved work is refused too above this load ratio (an emergency brake);
    ``None``: reservations are honoured at any load."""
    min_retry_after_s: float = Field(default=0.1, gt=0)
    """Floor of a rejection's ``retry_after_s``."""
    max_retry_after_s: float = Field(default=60.0, gt=0)
    """Ceiling of a rejection's ``retry_after_s`` (it is never infinite)."""
    best_effort_retry_after_s: float = Field(default=1.0, gt=0)
    """A best-effort tenant is told to retry at least this soon (the fleet may have room)."""
    overload_retry_after_s: float = Field(default=1.0, gt=0)
    """``retry_after_s`` of a reserved request refused by ``reserved_max_load_ratio``."""

    @model_validator(mode="after")
    def _retry_bounds(self) -> AdmissionConfig:
        if self.min_retry_after_s > self.max_retry_after_s:
            raise ValueError("min_retry_after_s must be <= max_retry_after_s")
        return self

    def clamp_retry(self, seconds: float) -> float:
        return min(self.max_retry_after_s, max(self.min_retry_after_s, seconds))


@dataclass(frozen=True)
class Ticket:
    """The outcome of one admission decision; hand it back to settle or refund it."""

    ticket_id: int
    kind: TicketKind
    tenant: str
    """Tenant name."""
    estimate_mu: float
    """The MU estimate the request was admitted (or rejected) with."""
    charged_mu: float
    """MU charged at admission: the estimate if admitted, 0 if rejected."""
    admitted_at: float
    """``now`` of the decision (also for a rejection)."""
    retry_after_s: float = 0.0
    """For a rejection: seconds after which a retry may be admitted (≥ ``min_retry_after_s``,
    never infinite); 0 for an admitted ticket."""
    reason: str = ""
    """Why. Admitted: ``"reservation"`` (from the bucket), ``"spare_capacity"`` (best-effort).
    Rejected: ``"best_effort_shed"`` (outside the reservation, fleet too loaded),
    ``"reservation_exhausted"`` (outside the reservation, tenant not best-effort),
    ``"overload"`` (``reserved_max_load_ratio`` exceeded)."""

    @property
    def admitted(self) -> bool:
        return self.kind != "rejected"


class TicketError(ValueError):
    """A ticket that is unknown, rejected or already settled/refunded was closed."""


@dataclass
class EstimateErrorStats:
    """Estimate-versus-actual error of settled requests (``error = actual − estimate``)."""

    count: int = 0
    estimate_mu: float = 0.0
    actual_mu: float = 0.0
    sum_abs_error_mu: float = 0.0
    sum_sq_error_mu: float = 0.0
    pct_count: int = 0
    """Requests with ``actual > 0``, over which the percentage error is defined."""
    sum_abs_pct: float = 0.0

    def add(self, estimate: float, actual: float) -> None:
        error = actual - estimate
        self.count += 1
        self.estimate_mu += estimate
        self.actual_mu += actual
        self.sum_abs_error_mu += abs(error)
        self.sum_sq_error_mu += error * error
        if actual > 0:
            self.pct_count += 1
            self.sum_abs_pct += abs(error) / actual * 100.0

    def as_dict(self) -> dict[str, Any]:
        n = self.count
        return {
            "count": n,
            "estimate_mu": self.estimate_mu,
            "actual_mu": self.actual_mu,
            "bias_mu": (self.actual_mu - self.estimate_mu) / n if n else 0.0,
            "mae_mu": self.sum_abs_error_mu / n if n else 0.0,
            "rmse_mu": math.sqrt(self.sum_sq_error_mu / n) if n else 0.0,
            "mape_pct": self.sum_abs_pct / self.pct_count if self.pct_count else None,
            "actual_over_estimate": (
                self.actual_mu / self.estimate_mu if self.estimate_mu > 0 else None
            ),
        }


@dataclass
class _KindStats:
    """Counters of one admission kind (reserved or best-effort) for one tenant."""

    admitted: int = 0
    charged_mu: float = 0.0
    settled: int = 0
    settled_charged_mu: float = 0.0
    settled_actual_mu: float = 0.0
    refunded: int = 0
    refunded_mu: float = 0.0
    open: int = 0
    inflight_mu: float = 0.0

    def admit(self, mu: float) -> None:
        self.admitted += 1
        self.charged_mu += mu
        self.open += 1
        self.inflight_mu += mu

    def close(self, mu: float) -> None:
        self.open -= 1
        # Exactly 0 when nothing is open, so that float drift never shows in the ledger.
        self.inflight_mu = max(0.0, self.inflight_mu - mu) if self.open else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "admitted": self.admitted,
            "charged_mu": self.charged_mu,
            "settled": self.settled,
            "settled_charged_mu": self.settled_charged_mu,
            "settled_actual_mu": self.settled_actual_mu,
            "refunded": self.refunded,
            "refunded_mu": self.refunded_mu,
            "open": self.open,
            "inflight_mu": self.inflight_mu,
        }


@dataclass
class TenantLedger:
    """Everything admission knows about one tenant."""

    tenant: str
    bucket: MuBucket
    reserved: _KindStats = field(default_factory=_KindStats)
    best_effort: _KindStats = field(default_factory=_KindStats)
    rejected: int = 0
    rejected_mu: float = 0.0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    errors: EstimateErrorStats = field(default_factory=EstimateErrorStats)

    def stats(self, kind: TicketKind) -> _KindStats:
        if kind == "reserved":
            return self.reserved
        if kind == "best_effort":
            return self.best_effort
        raise TicketError("a rejected ticket has no charge")

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        """JSON-ready view for ``/admin/tenants``; the bucket level refilled to ``now``."""
        b = self.bucket
        level = b.level(now) if now is not None else b.level_mu
        kinds = (self.reserved, self.best_effort)
        return {
            "tenant": self.tenant,
            "reserved": self.reserved.as_dict(),
            "best_effort": self.best_effort.as_dict(),
            "rejected": {
                "requests": self.rejected,
                "estimate_mu": self.rejected_mu,
                "by_reason": dict(sorted(self.rejected_by_reason.items())),
            },
            "totals": {
                "requests": self.reserved.admitted + self.best_effort.admitted + self.rejected,
                "charged_mu": sum(k.charged_mu for k in kinds),
                "settled_actual_mu": sum(k.settled_actual_mu for k in kinds),
                "refunded_mu": sum(k.refunded_mu for k in kinds),
                "inflight_mu": sum(k.inflight_mu for k in kinds),
                "open": sum(k.open for k in kinds),
            },
            "bucket": {
                "level_mu": level,
                "depth_mu": b.depth_mu,
                "rate_mu_s": b.rate_mu_s,
                "in_debt": level < 0,
                "updated_at": b.updated_at if now is None else max(b.updated_at, now),
            },
            "estimate_error": self.errors.as_dict(),
        }


def fleet_load_ratio(fleet_headroom_mu_s: float, fleet_capacity_mu_s: float) -> float:
    """``1 − headroom / capacity``: 0 idle, 1 at capacity, > 1 overloaded; ``inf`` with no
    capacity at all."""
    if not math.isfinite(fleet_headroom_mu_s):
        raise ValueError(f"fleet_headroom_mu_s must be finite, got {fleet_headroom_mu_s}")
    if not (math.isfinite(fleet_capacity_mu_s) and fleet_capacity_mu_s >= 0):
        raise ValueError(f"fleet_capacity_mu_s must be finite, >= 0, got {fleet_capacity_mu_s}")
    if fleet_capacity_mu_s <= 0:
        return math.inf
    return 1.0 - fleet_headroom_mu_s / fleet_capacity_mu_s


class Admission:
    """Per-tenant MU buckets and ledgers; one instance per router (or simulated router)."""

    def __init__(self, config: AdmissionConfig | None = None) -> None:
        self.config = config or AdmissionConfig()
        self._ledgers: dict[str, TenantLedger] = {}
        self._open: dict[int, Ticket] = {}
        self._next_id = 1

    # ------------------------------------------------------------------ decisions

    def shed_best_effort(self, fleet_load_ratio: float) -> bool:
        """Is the fleet too loaded for best-effort work? (``load ≥ 1 − best_effort_margin``)"""
        return fleet_load_ratio >= 1.0 - self.config.best_effort_margin

    def shed_reserved(self, fleet_load_ratio: float) -> bool:
        """Is the fleet past the emergency brake for reserved work? (never, by default)"""
        limit = self.config.reserved_max_load_ratio
        return limit is not None and fleet_load_ratio > limit

    def admit(
        self,
        tenant: TenantConfig,
        mu: float,
        now: float,
        fleet_headroom_mu_s: float,
        fleet_capacity_mu_s: float,
    ) -> Ticket:
        """Admit (reserved or best-effort) or reject a request of estimated cost ``mu``."""
        if not (math.isfinite(mu) and mu >= 0):
            raise ValueError(f"mu must be finite and >= 0, got {mu}")
        load = fleet_load_ratio(fleet_headroom_mu_s, fleet_capacity_mu_s)
        ledger = self._ledger(tenant, now)
        bucket = ledger.bucket
        cfg = self.config

        if self.shed_reserved(load):
            return self._reject(ledger, mu, now, cfg.overload_retry_after_s, "overload")
        if bucket.try_take(mu, now):
            return self._accept(ledger, "reserved", mu, now, "reservation")
        if tenant.best_effort and not self.shed_best_effort(load):
            return self._accept(ledger, "best_effort", mu, now, "spare_capacity")

        retry = bucket.retry_after_s(mu, now)
        if tenant.best_effort:
            retry = min(retry, cfg.best_effort_retry_after_s)
            reason = "best_effort_shed"
        else:
            reason = "reservation_exhausted"
        return self._reject(ledger, mu, now, retry, reason)

    # ------------------------------------------------------------------ reconcile

    def settle(self, ticket: Ticket, actual_mu: float, now: float) -> float:
        """Reconcile an admitted ticket with the request's actual MU; returns
        ``actual − charged`` (> 0: the tenant owed more). Reserved tickets credit/debit the
        bucket (a debt may take it below zero); best-effort tickets only the ledger."""
        if not (math.isfinite(actual_mu) and actual_mu >= 0):
            raise ValueError(f"actual_mu must be finite and >= 0, got {actual_mu}")
        ledger, stats = self._close(ticket)
        if ticket.kind == "reserved":
            ledger.bucket.settle(ticket.charged_mu, actual_mu, now)
        stats.settled += 1
        stats.settled_charged_mu += ticket.charged_mu
        stats.settled_actual_mu += actual_mu
        ledger.errors.add(ticket.estimate_mu, actual_mu)
        return actual_mu - ticket.charged_mu

    def refund(self, ticket: Ticket, now: float) -> None:
        """Return the whole charge (the request failed before its first token)."""
        ledger, stats = self._close(ticket)
        if ticket.kind == "reserved":
            ledger.bucket.refund(ticket.charged_mu, now)
        stats.refunded += 1
        stats.refunded_mu += ticket.charged_mu

    # ------------------------------------------------------------------ views

    def ledger(self, tenant: TenantConfig | str, now: float | None = None) -> dict[str, Any]:
        """JSON-ready ledger of one tenant. A configured tenant that has not sent anything yet
        gets an empty ledger with a full bucket; an unknown name raises ``KeyError``."""
        name = tenant if isinstance(tenant, str) else tenant.name
        ledger = self._ledgers.get(name)
        if ledger is None:
            if isinstance(tenant, str):
                raise KeyError(tenant)
            fresh = MuBucket.full(tenant.reserved_mu_s, tenant.depth_mu, now or 0.0)
            return TenantLedger(name, fresh).as_dict(now)
        return ledger.as_dict(now)

    def ledgers(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Ledgers of every tenant seen so far, by name."""
        return {name: ledger.as_dict(now) for name, ledger in sorted(self._ledgers.items())}

    def bucket_level(self, tenant: str, now: float) -> float:
        """The tenant's bucket level at ``now`` (``KeyError`` if never seen)."""
        return self._ledgers[tenant].bucket.level(now)

    @property
    def open_tickets(self) -> int:
        """Admitted tickets not yet settled or refunded."""
        return len(self._open)

    def best_effort_inflight_mu(self) -> float:
        """MU of open best-effort tickets, all tenants."""
        return sum(ledger.best_effort.inflight_mu for ledger in self._ledgers.values())

    def forget(self, tenant: str) -> None:
        """Drop a removed tenant's state (its open tickets can no longer be closed)."""
        self._ledgers.pop(tenant, None)
        for ticket_id in [i for i, t in self._open.items() if t.tenant == tenant]:
            del self._open[ticket_id]

    # ------------------------------------------------------------------ internals

    def _ledger(self, tenant: TenantConfig, now: float) -> TenantLedger:
        cfg = self.config
        ledger = self._ledgers.get(tenant.name)
        if ledger is None:
            bucket = MuBucket.full(
                tenant.reserved_mu_s,
                tenant.depth_mu,
                now,
                min_retry_s=cfg.min_retry_after_s,
                max_retry_s=cfg.max_retry_after_s,
            )
            ledger = self._ledgers[tenant.name] = TenantLedger(tenant.name, bucket)
        elif (ledger.bucket.rate_mu_s, ledger.bucket.depth_mu) != (
            tenant.reserved_mu_s,
            tenant.depth_mu,
        ):
            ledger.bucket.reconfigure(tenant.reserved_mu_s, tenant.depth_mu, now)
        return ledger

    def _new_ticket(self, **kwargs: Any) -> Ticket:
        ticket = Ticket(ticket_id=self._next_id, **kwargs)
        self._next_id += 1
        return ticket

    def _accept(
        self, ledger: TenantLedger, kind: TicketKind, mu: float, now: float, reason: str
    ) -> Ticket:
        ticket = self._new_ticket(
            kind=kind,
            tenant=ledger.tenant,
            estimate_mu=mu,
            charged_mu=mu,
            admitted_at=now,
            reason=reason,
        )
        ledger.stats(kind).admit(mu)
        self._open[ticket.ticket_id] = ticket
        return ticket

    def _reject(
        self, ledger: TenantLedger, mu: float, now: float, retry_after_s: float, reason: str
    ) -> Ticket:
        ledger.rejected += 1
        ledger.rejected_mu += mu
        ledger.rejected_by_reason[reason] = ledger.rejected_by_reason.get(reason, 0) + 1
        return self._new_ticket(
            kind="rejected",
            tenant=ledger.tenant,
            estimate_mu=mu,
            charged_mu=0.0,
            admitted_at=now,
            retry_after_s=self.config.clamp_retry(retry_after_s),
            reason=reason,
        )

    def _close(self, ticket: Ticket) -> tuple[TenantLedger, _KindStats]:
        if ticket.kind == "rejected":
            raise TicketError(f"ticket {ticket.ticket_id} was rejected: nothing to close")
        if self._open.get(ticket.ticket_id) != ticket:
            raise TicketError(f"ticket {ticket.ticket_id} is not open (already closed?)")
        del self._open[ticket.ticket_id]
        ledger = self._ledgers[ticket.tenant]
        stats = ledger.stats(ticket.kind)
        stats.close(ticket.charged_mu)
        return ledger, stats
