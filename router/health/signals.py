"""What a probe tells the health machine, and what the machine asks the router to do.

Probes judge; the machine decides. A probe turns what it saw into a :class:`Signal` with a
:class:`Verdict`; the machine (:mod:`router.health.machine`) combines the latest verdict of
every source into the node's state and returns :class:`Action` objects for the service to
carry out (evict work, restart, probe again now). Both are plain data, so the router, the
fleet simulator and the tests exchange the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(str, Enum):
    """How bad what a probe saw is, in increasing order."""

    PASS = "pass"
    """All well (for the canary: a valid answer within its deadline)."""
    SUSPECT = "suspect"
    """Something looks wrong; confirm before acting (the node stays routable)."""
    FAIL = "fail"
    """The node is not serving: cordon it, move its work, restart it."""
    DRAIN = "drain"
    """The node must take no new work and cannot be fixed by a restart (e.g. a fatal GPU
    XID): cordon it, let its streams finish, and wait for the source to clear."""

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Verdict.PASS: 0, Verdict.SUSPECT: 1, Verdict.FAIL: 2, Verdict.DRAIN: 3}


@dataclass(frozen=True)
class Signal:
    """One probe's judgement of one node at one instant."""

    node: str
    source: str
    """The probe's name (``readiness``, ``canary``, ``metrics``, ``passive``, ``gpu``)."""
    verdict: Verdict
    reason: str
    at: float
    capacity_factor: float | None = None
    """A degraded but working node's share of its calibrated capacity (``gpu``), if known."""
    latency_s: float | None = None
    """What the probe measured (the canary's first-token time), if anything."""


@dataclass(frozen=True)
class Evict:
    """Move the node's work elsewhere: requests that have not streamed are re-sent, and
    (``streams``) streams that have are migrated mid-way."""

    node: str
    reason: str
    streams: bool


@dataclass(frozen=True)
class Restart:
    """Run the restarter chain on the node (``attempt`` counts from 1)."""

    node: str
    reason: str
    attempt: int


@dataclass(frozen=True)
class ProbeNow:
    """Run the named probe on the node now instead of at its next tick (a confirmation)."""

    node: str
    source: str


Action = Evict | Restart | ProbeNow
