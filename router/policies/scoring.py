"""Filter → score → pick: the base class every policy in this package is built on.

``ScoringPolicy.choose`` runs the same pipeline for every policy (as llm-d's scheduler runs
filter, scorer and picker plugins):

1. **eligible** (not meant to be overridden): nodes whose ``state.routable`` is true and whose
   ``models`` contain ``request.model``; none left → :class:`NoCandidateError`. A node the
   health machine does not fully trust (``NodeSnapshot.trust`` < 1: suspect, on probation,
   ramping up after it) then gets a *reduced share*: it is kept for a request with
   probability ``trust``. The coin is a hash of (request id, node), so the same request
   always gets the same answer. If every candidate lost its coin, they are all kept: a node
   on trial beats no node.
2. **filter** (per policy, optional): narrow the candidates further (bounded load, sampling);
   never to nothing.
3. **score** (per policy): one float per node, higher is better. Cost-based policies score
   ``−cost``. ``Decision.scores`` maps every remaining candidate to its score.
4. **pick** (default): the highest score; ties go to the first node in name order, so a
   decision is a pure function of the inputs and the policy's state. Policies may override.

``on_routed`` / ``on_finished`` default to no-ops.

Hot path. A policy keeps a :class:`NodeTable`, a columnar (numpy) copy of the last snapshot
list. Each call compares the new list with the previous one by object identity (snapshots
are frozen, so the service replaces the one it changed) and rewrites only the rows that
changed; scoring is then a handful of vector operations over all nodes, with no Python object
per node. ``Decision.scores`` is a lazy mapping over the score vector.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from hashlib import blake2b
from typing import Generic, TypeVar

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from router.policies.base import Decision, NoCandidateError, NodeSnapshot, NodeState, RequestView

__all__ = ["NodeTable", "PolicyParams", "ScoreMap", "ScoringPolicy", "unit_hash"]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]


class PolicyParams(BaseModel):
    """Parameters every policy takes; each policy's own model extends this one."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def unit_hash(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings (BLAKE2b, not Python's salted hash)."""
    digest = blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _restarted(old: NodeState, new: NodeState) -> bool:
    """The node restarted (its KV cache is empty): it entered ``RESTARTING``, or entered
    ``PROBATION`` without being seen restarting (probation only follows a restart)."""
    if new is NodeState.RESTARTING:
        return old is not NodeState.RESTARTING
    return new is NodeState.PROBATION and old not in (NodeState.RESTARTING, NodeState.PROBATION)


_ROUTABLE = frozenset(s for s in NodeState if s.routable)

_COLUMNS = (
    "capacity_mu_s",
    "",  # 1 / capacity
    "inflight_mu",
    "reserved_mu",
    "",  # load_ratio
    "inflight_requests",
    "queued_requests",
    "kv_used_fraction",
    "metrics_age_s",
    "trust",
)


class NodeTable:
    """Columns of the last snapshot list (one row per node, in the caller's order).

    Rows are rewritten in place when their snapshot object changes; the whole table is
    rebuilt when the node list changes shape (other length, other names, or many changes).
    ``version`` increases on every change; ``layout`` only when names or order change, so
    structures keyed by row (a hash ring) know when to rebuild.
    """

    def __init__(self) -> None:
        self.nodes: tuple[NodeSnapshot, ...] = ()
        self.names: tuple[str, ...] = ()
        self.index: dict[str, int] = {}
        self.sorted_names: tuple[str, ...] = ()
        self.rank: IntArray = np.zeros(0, dtype=np.intp)
        """Position of each row's name in name order (the tie-breaker)."""
        self.pairs: list[str] = []
        self._pair_ids: dict[str, int] = {}
        self.pair_idx: IntArray = np.zeros(0, dtype=np.intp)
        empty = np.zeros(0)
        self._cols = np.zeros((len(_COLUMNS), 0))
        self.capacity: FloatArray = empty
        self.inv_capacity: FloatArray = empty
        self.inflight_mu: FloatArray = empty
        self.reserved_mu: FloatArray = empty
        self.inflight_requests: FloatArray = empty
        self.queued_requests: FloatArray = empty
        self.kv_used: FloatArray = empty
        self.metrics_age: FloatArray = empty
        self.trust: FloatArray = empty
        self.routable: BoolArray = np.zeros(0, dtype=bool)
        self.kv_lost: list[str] = []
        """Nodes seen restarting (their KV cache is gone): entering ``RESTARTING``, or
        ``PROBATION`` from a routable state (the restart happened between two looks)."""
        self.version = 0
        self.layout = 0
        self.load_ratio: FloatArray = empty
        """``NodeSnapshot.load_ratio`` of every row."""
        self.in_name_order = True
        """Rows are in name order (then the first best row is also the tie-break winner)."""
        self._serves: dict[str, BoolArray] = {}
        self._eligible: dict[str, BoolArray] = {}

    def __len__(self) -> int:
        return len(self.nodes)

    # -- keeping in step with the caller's snapshots -------------------------------------

    def sync(self, nodes: Sequence[NodeSnapshot], now: float) -> list[int] | None:
        """Catch up with ``nodes``: the rows rewritten, or ``None`` if the table was rebuilt."""
        prev = self.nodes
        if nodes is prev:
            return []
        n = len(nodes)
        if n != len(prev) or n == 0:
            self._rebuild(nodes, now)
            return None
        flags = bytes(map(operator.is_not, prev, nodes))  # 1 where the snapshot was replaced
        changed: list[int] = []
        limit = 8 + n // 4  # past this many, rewriting rows costs more than a rebuild
        find = flags.find
        i = find(1)
        while i >= 0:
            if len(changed) == limit:
                self._rebuild(nodes, now)
                return None
            changed.append(i)
            i = find(1, i + 1)
        if not changed:
            return changed
        new = nodes if isinstance(nodes, tuple) else tuple(nodes)
        for i in changed:
            if new[i].name != prev[i].name:
                self._rebuild(new, now)
                return None
        for i in changed:
            self._set_row(i, new[i], prev[i], now)
        self.nodes = new
        self.version += 1
        return changed

    def _rebuild(self, nodes: Sequence[NodeSnapshot], now: float) -> None:
        new = nodes if isinstance(nodes, tuple) else tuple(nodes)
        n = len(new)
        names = tuple(s.name for s in new)
        index = {name: i for i, name in enumerate(names)}
        if len(index) != n:
            dupes = sorted({x for x in names if names.count(x) > 1})
            raise ValueError(f"node names must be unique; repeated: {dupes}")
        old_names, old_nodes = self.names, self.nodes
        if names != self.names:
            self.layout += 1
            self.names = names
            self.index = index
            self.sorted_names = tuple(sorted(names))
            order = {name: r for r, name in enumerate(self.sorted_names)}
            self.rank = np.fromiter((order[x] for x in names), dtype=np.intp, count=n)
            self.in_name_order = names == self.sorted_names
        pairs = [s.pair for s in new]
        for pair in dict.fromkeys(pairs):  # ids in order of first appearance
            self._pair_id(pair)
        self.pair_idx = np.fromiter(map(self._pair_ids.__getitem__, pairs), np.intp, n)

        cols = np.empty((len(_COLUMNS), n))
        for j, attr in enumerate(_COLUMNS):
            if attr:
                cols[j] = np.fromiter(map(operator.attrgetter(attr), new), np.float64, n)
        cols[1] = 1.0 / np.maximum(cols[0], 1e-9)
        cols[4] = (cols[2] + cols[3]) * cols[1]
        self._cols = cols
        (
            self.capacity,
            self.inv_capacity,
            self.inflight_mu,
            self.reserved_mu,
            self.load_ratio,
            self.inflight_requests,
            self.queued_requests,
            self.kv_used,
            self.metrics_age,
            self.trust,
        ) = cols
        states = [s.state for s in new]
        self.routable = np.fromiter(map(_ROUTABLE.__contains__, states), bool, n)
        if old_nodes:  # state changes: restarts lose the KV cache
            if names == old_names:
                old_states = [s.state for s in old_nodes]
                moved = bytes(map(operator.is_not, states, old_states))
                rows, k = [], moved.find(1)
                while k >= 0:
                    rows.append(k)
                    k = moved.find(1, k + 1)
                transitions = [(names[k], old_states[k], states[k]) for k in rows]
            else:
                before = {s.name: s.state for s in old_nodes}
                transitions = [
                    (name, before[name], st)
                    for name, st in zip(names, states, strict=True)
                    if name in before and before[name] is not st
                ]
            for name, old, st in transitions:
                if _restarted(old, st):
                    self.kv_lost.append(name)
        self._serves = {}
        self._eligible = {}
        self.nodes = new
        self.version += 1

    def _pair_id(self, pair: str) -> int:
        pid = self._pair_ids.get(pair)
        if pid is None:
            pid = self._pair_ids[pair] = len(self.pairs)
            self.pairs.append(pair)
        return pid

    def _set_row(self, i: int, s: NodeSnapshot, old: NodeSnapshot, now: float) -> None:
        if s.pair != old.pair:
            self.pair_idx[i] = self._pair_id(s.pair)
        cap = s.capacity_mu_s
        inv = 1.0 / max(cap, 1e-9)
        self._cols[:, i] = (
            cap,
            inv,
            s.inflight_mu,
            s.reserved_mu,
            (s.inflight_mu + s.reserved_mu) * inv,
            s.inflight_requests,
            s.queued_requests,
            s.kv_used_fraction,
            s.metrics_age_s,
            s.trust,
        )
        state = s.state
        models = s.models
        if state is old.state and models == old.models:
            return
        if state is not old.state:
            self.routable[i] = state.routable
            if _restarted(old.state, state):
                self.kv_lost.append(s.name)
        for model, mask in self._serves.items():
            mask[i] = model in models
        routable = state.routable
        for model, mask in self._eligible.items():
            mask[i] = routable and model in models

    # -- derived columns ------------------------------------------------------------------

    def serves(self, model: str) -> BoolArray:
        """Rows whose node serves ``model`` (cached per model; do not modify)."""
        mask = self._serves.get(model)
        if mask is None:
            mask = np.fromiter(
                (model in s.models for s in self.nodes), dtype=bool, count=len(self.nodes)
            )
            self._serves[model] = mask
        return mask

    def eligible(self, model: str) -> BoolArray:
        """Rows that are routable and serve ``model`` (cached per model; do not modify)."""
        mask = self._eligible.get(model)
        if mask is None:
            mask = self._eligible[model] = self.routable & self.serves(model)
        return mask

    def request_mu(self, request: RequestView) -> FloatArray:
        """``request.mu_on(node)`` for every row."""
        get = request.mu_by_pair.get
        return np.array([get(p, 0.0) for p in self.pairs], dtype=np.float64).take(self.pair_idx)


class ScoreMap(Mapping[str, float]):
    """``Decision.scores``: candidate name → score, read lazily from the score vector."""

    __slots__ = ("_index", "_mask", "_names", "_scores")

    def __init__(
        self, names: tuple[str, ...], index: Mapping[str, int], scores: FloatArray, mask: BoolArray
    ) -> None:
        self._names = names
        self._index = index
        self._scores = scores
        self._mask = mask

    def __getitem__(self, name: str) -> float:
        i = self._index[name]
        if not self._mask[i]:
            raise KeyError(name)
        return float(self._scores[i])

    def __iter__(self) -> Iterator[str]:
        names = self._names
        return (names[i] for i in np.flatnonzero(self._mask))

    def __len__(self) -> int:
        return int(np.count_nonzero(self._mask))

    def __repr__(self) -> str:
        return f"ScoreMap({dict(self)!r})"


P = TypeVar("P", bound=PolicyParams)


class ScoringPolicy(ABC, Generic[P]):
    """A :class:`~router.policies.base.Policy` as eligible → filter → score → pick."""

    name: str = "scoring"
    """Set by :func:`router.policies.registry.register`."""

    def __init__(self, params: P) -> None:
        self.params = params
        self.table = NodeTable()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"

    # -- the Policy interface -------------------------------------------------------------

    def choose(self, request: RequestView, nodes: Sequence[NodeSnapshot], now: float) -> Decision:
        table = self.table
        changed = table.sync(nodes, now)
        if changed is None:
            self.table_rebuilt(table)
        elif changed:
            self.rows_changed(table, changed)
        if table.kv_lost:
            lost, table.kv_lost = table.kv_lost, []
            self.on_kv_lost(lost)
        mask = self.eligible(request, table, now)
        mask = self.filter(request, table, mask, now)
        scores = self.score(request, table, mask, now)
        i = self.pick(request, table, mask, scores)
        return Decision(
            node=table.names[i],
            reason=f"{self.name}: {self.explain(request, table, i, scores)}",
            scores=ScoreMap(table.names, table.index, scores, mask),
            kind=self.kind(request, table, i, scores),
        )

    def on_routed(self, request: RequestView, node: str, now: float) -> None:
        return None

    def on_finished(self, request: RequestView, node: str, now: float) -> None:
        return None

    # -- the pipeline's steps -------------------------------------------------------------

    def eligible(self, request: RequestView, table: NodeTable, now: float) -> BoolArray:
        """Routable nodes serving the model, partly trusted ones at their reduced share."""
        mask = table.eligible(request.model)
        if not mask.any():
            raise NoCandidateError(self._no_candidate(request, table))
        mask = mask.copy()
        on_trial = np.flatnonzero(mask & (table.trust < 1.0))
        if on_trial.size:
            names = table.names
            trust = table.trust
            drop = [
                i for i in on_trial.tolist() if unit_hash(request.request_id, names[i]) >= trust[i]
            ]
            if drop and len(drop) < np.count_nonzero(mask):
                mask[drop] = False
        return mask

    def filter(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> BoolArray:
        """Narrow the candidates (never to none). Default: keep them all."""
        return mask

    @abstractmethod
    def score(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> FloatArray:
        """One score per row (higher is better); only rows in ``mask`` are read. Must be a
        fresh array: the decision keeps it."""

    def pick(
        self, request: RequestView, table: NodeTable, mask: BoolArray, scores: FloatArray
    ) -> int:
        """Highest score; ties to the first name in name order."""
        masked = np.where(mask, scores, -np.inf)
        i = int(masked.argmax())  # the first best row
        if table.in_name_order and mask[i]:
            return i
        ties = np.flatnonzero((masked == masked[i]) & mask)
        if ties.size == 1:
            return int(ties[0])
        if ties.size == 0:  # NaN or -inf scores: fall back to name order
            ties = np.flatnonzero(mask)
        return int(ties[np.argmin(table.rank[ties])])

    def explain(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        return f"score {scores[i]:.6g}"

    def kind(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        """Why, as a metrics label from a small fixed set (never numbers or keys)."""
        return "best_score"

    def table_rebuilt(self, table: NodeTable) -> None:
        """Hook: every row changed (keep per-row derived state here)."""
        return None

    def rows_changed(self, table: NodeTable, rows: list[int]) -> None:
        """Hook: these rows changed since the last call."""
        return None

    def on_kv_lost(self, nodes: list[str]) -> None:
        """These nodes restarted: whatever they had cached is gone."""
        return None

    @staticmethod
    def _no_candidate(request: RequestView, table: NodeTable) -> str:
        serves = table.serves(request.model)
        return (
            f"no node can take request {request.request_id!r} for model {request.model!r}: "
            f"{len(table)} nodes, {int(table.routable.sum())} routable, "
            f"{int(serves.sum())} serve the model, "
            f"{int((table.routable & serves).sum())} both"
        )
