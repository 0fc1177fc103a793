"""Agent sessions: an MU budget for a multi-turn loop, and headroom held for its next step.

An agent loop opens a session (:meth:`SessionTable.open`) with an MU budget and an idle
time-to-live. Each turn draws its estimated MU from the budget (:meth:`SessionTable.draw`;
over budget raises :class:`SessionBudgetExceededError`, which the service maps to 429) and is
reconciled with its actual MU when it ends (:meth:`SessionTable.settle`, or
:meth:`SessionTable.refund` for a turn that failed before its first token).

Between turns the session *holds headroom* on the node that keeps its KV cache (``node``, set
by the caller after routing): ``reserved_headroom_mu`` is the EWMA of the session's per-turn
actual MU (before the first turn: the tenant's ``session_hold_mu``), capped by the remaining
budget. :meth:`SessionTable.reserved_by_node` sums the holds per node — the policies'
``NodeSnapshot.reserved_mu`` — so other work does not fill the node the loop will come back
to. The hold is released while a turn runs (the turn's real in-flight MU is counted then) and
re-taken when the turn ends.

Expiry is idle-based: a session expires ``ttl_s`` after its last activity (open, draw, settle,
touch), not while a turn is running (unless that turn has gone unsettled for
``turn_timeout_s``). Expired sessions read as absent (:meth:`get` returns
``None``) and are dropped by :meth:`SessionTable.expire`, which the caller runs periodically.

Pure state: ``now`` is an argument; ids come from :func:`secrets.token_urlsafe` unless the
caller gives one (or an ``id_factory``, e.g. a seeded one in the simulator).
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from router.admission.tenants import TenantConfig

__all__ = [
    "Session",
    "SessionBudgetExceededError",
    "SessionConflictError",
    "SessionError",
    "SessionLimitError",
    "SessionNotFoundError",
    "SessionTable",
    "SessionsConfig",
]

SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
"""A caller-given session id: URL-safe characters, at most 128 of them."""

_EPS = 1e-9


class SessionsConfig(BaseModel):
    """Table-wide session knobs (per-tenant defaults live in ``TenantConfig``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    turn_ewma_alpha: float = Field(default=0.3, gt=0, le=1)
    """Weight of the newest turn in the per-turn MU average that sizes the hold."""
    max_sessions: int = Field(default=100_000, ge=1)
    """Open sessions in the whole table (a memory bound)."""
    max_ttl_s: float | None = Field(default=None, gt=0)
    """Cap on a requested ``ttl_s``; ``None``: no cap."""
    id_bytes: int = Field(default=16, ge=8, le=64)
    """Random bytes of a generated id (``secrets.token_urlsafe``)."""
    turn_timeout_s: float = Field(default=900.0, gt=0)
    """A session with a running turn does not expire, unless nothing has happened for this
    long (or ``ttl_s``, if longer): a turn that was never settled cannot pin it forever."""


class SessionError(Exception):
    """Base class; ``status_code`` is the HTTP status the service answers with."""

    status_code: ClassVar[int] = 400


class SessionNotFoundError(SessionError, LookupError):
    """No such open session (unknown, closed, expired, or another tenant's)."""

    status_code = 404


class SessionBudgetExceededError(SessionError):
    """The turn's MU estimate exceeds the session's remaining budget."""

    status_code = 429

    def __init__(self, session_id: str, requested_mu: float, remaining_mu: float) -> None:
        super().__init__(
            f"session {session_id!r}: turn needs {requested_mu:.2f} MU, "
            f"{remaining_mu:.2f} MU left in its budget"
        )
        self.session_id = session_id
        self.requested_mu = requested_mu
        self.remaining_mu = remaining_mu


class SessionLimitError(SessionError):
    """The tenant (or the table) already has the maximum number of open sessions."""

    status_code = 429


class SessionConflictError(SessionError):
    """A caller-given session id is already open."""

    status_code = 409


@dataclass
class Session:
    """One agent session. Mutated only through :class:`SessionTable` (``node`` excepted)."""

    session_id: str
    tenant: str
    budget_mu: float
    ttl_s: float
    opened_at: float
    last_active: float
    initial_hold_mu: float = 0.0
    spent_mu: float = 0.0
    """MU drawn by turns: estimates of running turns, actuals of finished ones."""
    node: str | None = None
    """The node that holds the session's KV cache (set by the caller after routing)."""
    turns: int = 0
    """Finished (settled) turns."""
    active_turns: int = 0
    """Turns drawn and not yet settled or refunded."""
    turn_mu_ewma: float | None = None
    """EWMA of finished turns' actual MU (``None`` before the first)."""
    reserved_headroom_mu: float = 0.0
    """MU held on ``node`` for the next turn (0 while a turn runs)."""

    @property
    def remaining_mu(self) -> float:
        return max(0.0, self.budget_mu - self.spent_mu)

    @property
    def expires_at(self) -> float:
        return self.last_active + self.ttl_s

    def expired(self, now: float, turn_timeout_s: float = math.inf) -> bool:
        """Idle past ``ttl_s`` with no turn running, or past ``max(ttl_s, turn_timeout_s)``
        with one (a turn that was never settled)."""
        if self.active_turns == 0:
            return now >= self.expires_at
        return now >= self.last_active + max(self.ttl_s, turn_timeout_s)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "session_id": self.session_id,
            "tenant": self.tenant,
            "budget_mu": self.budget_mu,
            "spent_mu": self.spent_mu,
            "remaining_mu": self.remaining_mu,
            "ttl_s": self.ttl_s,
            "opened_at": self.opened_at,
            "expires_at": self.expires_at,
            "node": self.node,
            "turns": self.turns,
            "active_turns": self.active_turns,
            "turn_mu_ewma": self.turn_mu_ewma,
            "reserved_headroom_mu": self.reserved_headroom_mu,
        }


class SessionTable:
    """All open sessions of one router."""

    def __init__(
        self,
        config: SessionsConfig | None = None,
        *,
        id_factory: Callable[[], str] | None = None,
    ) -> None:
        self.config = config or SessionsConfig()
        self._id_factory = id_factory
        self._turn_timeout_s = self.config.turn_timeout_s
        self._sessions: dict[str, Session] = {}
        self._by_tenant: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ lifecycle

    def open(
        self,
        tenant: TenantConfig,
        budget_mu: float | None,
        ttl_s: float | None,
        now: float,
        session_id: str | None = None,
        *,
        hold_mu: float | None = None,
    ) -> Session:
        """Open a session; ``None`` budget/ttl/hold take the tenant's defaults.

        Raises :class:`SessionLimitError` (tenant or table full), :class:`SessionConflictError`
        (``session_id`` already open) or ``ValueError`` (bad id or numbers).
        """
        budget = tenant.session_budget_mu if budget_mu is None else budget_mu
        ttl = tenant.session_ttl_s if ttl_s is None else ttl_s
        hold = tenant.session_hold_mu if hold_mu is None else hold_mu
        if not (math.isfinite(budget) and budget > 0):
            raise ValueError(f"budget_mu must be finite and > 0, got {budget}")
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"ttl_s must be finite and > 0, got {ttl}")
        if not (math.isfinite(hold) and hold >= 0):
            raise ValueError(f"hold_mu must be finite and >= 0, got {hold}")
        if self.config.max_ttl_s is not None:
            ttl = min(ttl, self.config.max_ttl_s)

        if session_id is not None:
            if not SESSION_ID_PATTERN.match(session_id):
                raise ValueError("session_id must be 1-128 characters of [A-Za-z0-9_-]")
            existing = self._sessions.get(session_id)
            if existing is not None:
                if not existing.expired(now, self._turn_timeout_s):
                    raise SessionConflictError(f"session {session_id!r} is already open")
                self._remove(session_id)

        self._expire_tenant(tenant.name, now)
        if len(self._by_tenant.get(tenant.name, ())) >= tenant.max_sessions:
            raise SessionLimitError(
                f"tenant {tenant.name!r} has {tenant.max_sessions} open sessions (its maximum)"
            )
        if len(self._sessions) >= self.config.max_sessions:
            self.expire(now)
            if len(self._sessions) >= self.config.max_sessions:
                raise SessionLimitError("the session table is full")

        sid = session_id if session_id is not None else self._new_id()
        session = Session(
            session_id=sid,
            tenant=tenant.name,
            budget_mu=budget,
            ttl_s=ttl,
            opened_at=now,
            last_active=now,
            initial_hold_mu=hold,
        )
        self._rehold(session)
        self._sessions[sid] = session
        self._by_tenant.setdefault(tenant.name, set()).add(sid)
        return session

    def get(self, session_id: str, now: float, *, tenant: str | None = None) -> Session | None:
        """The open session, or ``None`` if unknown, expired or (with ``tenant``) not its."""
        session = self._sessions.get(session_id)
        if session is None or session.expired(now, self._turn_timeout_s):
            return None
        if tenant is not None and session.tenant != tenant:
            return None
        return session

    def touch(self, session_id: str, now: float) -> Session | None:
        """Mark activity (restarts the idle TTL); ``None`` if not open."""
        session = self.get(session_id, now)
        if session is not None:
            session.last_active = max(session.last_active, now)
        return session

    def set_node(self, session_id: str, node: str | None, now: float) -> Session | None:
        """Record the node that now holds the session's KV (the hold moves with it)."""
        session = self.get(session_id, now)
        if session is not None:
            session.node = node
        return session

    def close(self, session_id: str) -> Session | None:
        """Remove the session (its hold is released); ``None`` if it was not there."""
        return self._remove(session_id)

    def expire(self, now: float) -> list[str]:
        """Drop every expired session; returns their ids."""
        expired = [sid for sid, s in self._sessions.items() if s.expired(now, self._turn_timeout_s)]
        for sid in expired:
            self._remove(sid)
        return expired

    # ------------------------------------------------------------------ turns

    def draw(self, session_id: str, mu: float, now: float, *, tenant: str | None = None) -> Session:
        """Start a turn of estimated cost ``mu``: deduct it from the budget and release the
        session's hold. Raises :class:`SessionNotFoundError` or
        :class:`SessionBudgetExceededError` (nothing is deducted then)."""
        if not (math.isfinite(mu) and mu >= 0):
            raise ValueError(f"mu must be finite and >= 0, got {mu}")
        session = self.get(session_id, now, tenant=tenant)
        if session is None:
            raise SessionNotFoundError(f"no open session {session_id!r}")
        remaining = session.remaining_mu
        if mu > remaining + _EPS * max(1.0, session.budget_mu):
            raise SessionBudgetExceededError(session_id, mu, remaining)
        session.spent_mu += mu
        session.active_turns += 1
        session.last_active = max(session.last_active, now)
        self._rehold(session)
        return session

    def settle(
        self, session_id: str, charged_mu: float, actual_mu: float, now: float
    ) -> Session | None:
        """End a turn: replace its estimate by its actual MU, learn the turn size and re-take
        the hold. ``None`` if the session has since been closed (nothing to do then)."""
        if not (math.isfinite(actual_mu) and actual_mu >= 0):
            raise ValueError(f"actual_mu must be finite and >= 0, got {actual_mu}")
        session = self._end_turn(session_id, charged_mu, now)
        if session is None:
            return None
        session.spent_mu += actual_mu
        session.turns += 1
        alpha = self.config.turn_ewma_alpha
        previous = session.turn_mu_ewma
        session.turn_mu_ewma = (
            actual_mu if previous is None else previous + alpha * (actual_mu - previous)
        )
        self._rehold(session)
        return session

    def refund(self, session_id: str, charged_mu: float, now: float) -> Session | None:
        """End a turn that failed before its first token: its estimate goes back to the
        budget and the turn is not learned. ``None`` if the session has since been closed."""
        session = self._end_turn(session_id, charged_mu, now)
        if session is not None:
            self._rehold(session)
        return session

    # ------------------------------------------------------------------ views

    def reserved_by_node(self, now: float | None = None) -> dict[str, float]:
        """Sum of open sessions' holds per node (``NodeSnapshot.reserved_mu``); sessions
        without a node hold nothing. With ``now``, sessions expired by then are skipped."""
        totals: dict[str, float] = {}
        for session in self._sessions.values():
            if session.node is None or session.reserved_headroom_mu <= 0:
                continue
            if now is not None and session.expired(now, self._turn_timeout_s):
                continue
            totals[session.node] = totals.get(session.node, 0.0) + session.reserved_headroom_mu
        return totals

    def sessions(self, tenant: str | None = None) -> list[Session]:
        """Sessions held (including expired ones not yet dropped by :meth:`expire`)."""
        if tenant is None:
            return list(self._sessions.values())
        return [self._sessions[sid] for sid in sorted(self._by_tenant.get(tenant, ()))]

    def count(self, tenant: str | None = None) -> int:
        if tenant is None:
            return len(self._sessions)
        return len(self._by_tenant.get(tenant, ()))

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    # ------------------------------------------------------------------ internals

    def _new_id(self) -> str:
        while True:
            sid = (
                self._id_factory()
                if self._id_factory is not None
                else secrets.token_urlsafe(self.config.id_bytes)
            )
            if sid not in self._sessions:
                return sid

    def _remove(self, session_id: str) -> Session | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            ids = self._by_tenant.get(session.tenant)
            if ids is not None:
                ids.discard(session_id)
                if not ids:
                    del self._by_tenant[session.tenant]
        return session

    def _expire_tenant(self, tenant: str, now: float) -> None:
        for sid in [
            s
            for s in self._by_tenant.get(tenant, ())
            if self._sessions[s].expired(now, self._turn_timeout_s)
        ]:
            self._remove(sid)

    def _end_turn(self, session_id: str, charged_mu: float, now: float) -> Session | None:
        if not (math.isfinite(charged_mu) and charged_mu >= 0):
            raise ValueError(f"charged_mu must be finite and >= 0, got {charged_mu}")
        # A running turn keeps its session from expiring, so look it up without the TTL.
        session = self._sessions.get(session_id)
        if session is None:
            return None
        session.spent_mu = max(0.0, session.spent_mu - charged_mu)
        session.active_turns = max(0, session.active_turns - 1)
        session.last_active = max(session.last_active, now)
        return session

    @staticmethod
    def _rehold(session: Session) -> None:
        if session.active_turns > 0:
            session.reserved_headroom_mu = 0.0
            return
        expected = session.initial_hold_mu if session.turn_mu_ewma is None else session.turn_mu_ewma
        session.reserved_headroom_mu = min(expected, session.remaining_mu)
