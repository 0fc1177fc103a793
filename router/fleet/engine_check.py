"""Each node's engine configuration, checked against the one its pair profile was measured on.

A pair profile's capacity holds for one engine configuration (``PairProfile.engine``); a node
started with fewer sequences in flight, a smaller KV cache or another engine delivers less.
:class:`EngineCheck` compares what a node reports (:attr:`NodeMetrics.engine
<router.fleet.metrics.NodeMetrics.engine>`) with its profile's record on the node's first
report and whenever the report changes (a restart with other settings), and says how much of
the profile's capacity the node is granted (:func:`router.engine_record.capacity_factor`).

Pure and clock-free: :meth:`EngineCheck.observe` returns an :class:`EngineVerdict` for the
caller to apply (the table's ``config_capacity_factor``), count (Prometheus) and log
(:meth:`EngineVerdict.log_fields` at :attr:`EngineVerdict.level`); nothing here does I/O.

A page that describes no engine is not checked (factor 1), and a node that stops describing
its engine (a page scraped while the model reloads) keeps its last verdict: neither logs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from router.cost_model import PairProfile
from router.engine_record import (
    EngineRecord,
    Mismatch,
    capacity_factor,
    mismatches,
    sequences_at_capacity,
)

__all__ = ["EngineCheck", "EngineVerdict"]

MISMATCH = "mismatch"
MATCH = "match"
UNRECORDED = "unrecorded"


@dataclass(frozen=True)
class EngineVerdict:
    """The outcome of checking one node's (new) engine record against its profile."""

    node: str
    pair: str
    kind: str
    """``mismatch`` (derated or differing), ``match``, or ``unrecorded`` (the profile records
    no engine configuration, so nothing is checked)."""
    node_engine: EngineRecord
    profile_engine: EngineRecord | None
    mismatches: tuple[Mismatch, ...]
    cleared: tuple[str, ...]
    """Parameters that mismatched before this verdict and no longer do."""
    factor: float
    """The share of the profile's capacity granted to the node, in (0, 1]."""
    capacity_concurrency: int
    level: int | None
    """The logging level this verdict deserves; ``None`` when it is not worth a line (a
    first report that matches, or a change that leaves the verdict as it was)."""

    def log_fields(self) -> dict[str, Any]:
        """One JSON-ready log record (the caller adds the time)."""
        fields: dict[str, Any] = {"event": f"node_config_{self.kind}"}
        if self.level is not None:
            fields["level"] = logging.getLevelName(self.level)
        fields["node"], fields["pair"] = self.node, self.pair
        if self.kind == UNRECORDED:
            fields["node_engine"] = _known(self.node_engine)
            fields["message"] = (
                f"pair {self.pair}'s profile records no engine configuration: node "
                f"{self.node}'s is not checked, and its capacity is taken as profiled"
            )
        elif self.kind == MISMATCH:
            fields["mismatches"] = [
                {"parameter": m.parameter, "node": m.node, "profile": m.profile}
                for m in self.mismatches
            ]
            parts = [str(m) for m in self.mismatches]
            sequences = self.node_engine.max_num_sequences
            ran = sequences_at_capacity(self.profile_engine, self.capacity_concurrency)
            if (
                sequences is not None
                and sequences < ran
                and not any(m.parameter == "max_num_sequences" for m in self.mismatches)
            ):
                parts.append(
                    f"max_num_sequences {sequences} below the profile's capacity concurrency "
                    f"{self.capacity_concurrency}"
                )
            differs = "; ".join(parts)
            fields["message"] = (
                f"node {self.node} does not run the engine configuration pair {self.pair}'s "
                f"profile was measured on: {differs}; granted {self.factor:.3g} of the profile's "
                "capacity"
            )
        else:
            fields["message"] = (
                f"node {self.node} runs the engine configuration of pair {self.pair}'s profile "
                "again; granted its full capacity"
            )
        fields["capacity_factor"] = self.factor
        fields["capacity_concurrency"] = self.capacity_concurrency
        return fields


@dataclass
class _NodeState:
    profile: PairProfile
    record: EngineRecord | None = None
    mismatches: tuple[Mismatch, ...] = ()
    factor: float = 1.0
    warned_unrecorded: bool = False
    kind: str | None = None


@dataclass
class EngineCheck:
    """Per node: its profile, its last reported record and the verdict on it.

    ``profiles`` maps node name → the node's pair profile; ``untrusted`` is the share granted
    to a node running another engine, engine version or hardware profile. Disabled, it
    observes nothing and grants every node its full capacity.
    """

    profiles: Mapping[str, PairProfile]
    untrusted: float = 0.5
    enabled: bool = True
    _nodes: dict[str, _NodeState] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.untrusted <= 1:
            raise ValueError(f"untrusted must lie in (0, 1], got {self.untrusted}")
        self._nodes = {name: _NodeState(profile) for name, profile in self.profiles.items()}

    def observe(self, node: str, record: EngineRecord | None) -> EngineVerdict | None:
        """A scrape of ``node`` reported ``record``: a verdict when it is new, else ``None``."""
        state = self._nodes.get(node)
        if not self.enabled or state is None or record is None or record == state.record:
            return None
        state.record = record
        profile = state.profile
        if profile.engine is None:
            if state.warned_unrecorded:
                return None
            state.warned_unrecorded = True
            state.kind = UNRECORDED
            return self._verdict(node, state, UNRECORDED, (), logging.WARNING)
        found = tuple(mismatches(profile.engine, record))
        factor = capacity_factor(
            profile.engine, record, profile.capacity_concurrency, self.untrusted
        )
        before = (state.mismatches, state.factor, state.kind)
        still = {m.parameter for m in found}
        cleared = tuple(
            dict.fromkeys(m.parameter for m in state.mismatches if m.parameter not in still)
        )
        state.mismatches, state.factor = found, factor
        kind = MISMATCH if found or factor < 1.0 else MATCH
        state.kind = kind
        if (found, factor, kind) == before:
            level = None  # the record changed, the verdict did not
        elif kind == MISMATCH:
            level = logging.WARNING
        else:
            level = logging.INFO if before[2] == MISMATCH else None
        return self._verdict(node, state, kind, cleared, level)

    def factor(self, node: str) -> float:
        """The node's granted share of its profile's capacity (1 when unchecked)."""
        state = self._nodes.get(node)
        return 1.0 if state is None or not self.enabled else state.factor

    def view(self, node: str) -> dict[str, Any]:
        """JSON-ready: the profile's record, the mismatches and the check's status
        (``disabled``, ``unreported``: no record yet, ``unrecorded``, ``match``, ``mismatch``;
        ``unchecked`` for a node it was not given)."""
        state = self._nodes.get(node)
        if state is None:
            return {"profile_engine": None, "config_mismatches": [], "config_check": "unchecked"}
        engine = state.profile.engine
        status = "disabled" if not self.enabled else state.kind or "unreported"
        return {
            "profile_engine": None if engine is None else engine.model_dump(),
            "config_mismatches": [str(m) for m in state.mismatches],
            "config_check": status,
        }

    def _verdict(
        self,
        node: str,
        state: _NodeState,
        kind: str,
        cleared: tuple[str, ...],
        level: int | None,
    ) -> EngineVerdict:
        assert state.record is not None
        return EngineVerdict(
            node=node,
            pair=state.profile.pair,
            kind=kind,
            node_engine=state.record,
            profile_engine=state.profile.engine,
            mismatches=state.mismatches,
            cleared=cleared,
            factor=state.factor,
            capacity_concurrency=state.profile.capacity_concurrency,
            level=level,
        )


def _known(record: EngineRecord) -> dict[str, Any]:
    return record.model_dump(exclude_none=True)
