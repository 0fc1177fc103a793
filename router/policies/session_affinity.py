"""Session affinity: consistent hashing of the session with bounded loads.

Models "Consistent Hashing with Bounded Loads" (Mirrokni, Thorup, Zadimoghaddam, SODA 2018;
HAProxy's and Envoy's ``hash_balance_factor``): each node owns ``virtual_nodes`` points on a
64-bit hash ring; a request's key (its ``session_id``, else its tenant) goes to the first
point clockwise whose node is *not full*, a node being full when its load exceeds
``(1 + epsilon) ×`` the mean load of the candidates. So a session stays on one node (whose
KV cache holds its history) until that node gets too busy, then spills to the next node on
the ring, and comes home when the load evens out; nodes joining or leaving move only the
keys next to them. The least-loaded candidate is never full, so the walk always ends.
"""

from __future__ import annotations

from bisect import bisect_right
from hashlib import blake2b
from typing import Literal

import numpy as np
from pydantic import Field

from router.policies.base import RequestView
from router.policies.registry import register
from router.policies.scoring import (
    BoolArray,
    FloatArray,
    IntArray,
    NodeTable,
    PolicyParams,
    ScoringPolicy,
)

__all__ = ["SessionAffinity", "SessionAffinityParams", "ring_hash"]


def ring_hash(key: str) -> int:
    """A point on the ring: BLAKE2b-64 of ``key`` (the same in every process)."""
    return int.from_bytes(blake2b(key.encode(), digest_size=8).digest(), "little")


class SessionAffinityParams(PolicyParams):
    epsilon: float = Field(0.25, gt=0.0)
    """A node is full when its load exceeds (1 + epsilon) × the candidates' mean load."""
    virtual_nodes: int = Field(64, ge=1, le=4096)
    """Points per node on the ring (more points: more even key shares)."""
    load_metric: Literal["load_ratio", "requests"] = "load_ratio"
    """``load_ratio``: (in-flight + reserved MU) / capacity; ``requests``: in flight + queued."""


@register("session_affinity", SessionAffinityParams)
class SessionAffinity(ScoringPolicy[SessionAffinityParams]):
    """Consistent hashing of session (else tenant), bounded load (1 + epsilon) × mean."""

    _CHUNK = 64

    def __init__(self, params: SessionAffinityParams | None = None) -> None:
        super().__init__(params or SessionAffinityParams())
        # The ring holds every node seen so far (by id), so a call that passes a subset of
        # the fleet does not rebuild it: absent nodes are skipped like full ones.
        self._ids: dict[str, int] = {}
        self._points: dict[int, list[int]] = {}
        self._ring_points: list[int] = []
        self._ring_owner: IntArray = np.zeros(0, dtype=np.intp)
        self._rows_key: tuple[int, int] = (-1, -1)
        self._row_of_id: IntArray = np.zeros(0, dtype=np.intp)
        self._last_walk: tuple[str, int] = ("", 0)

    def _load(self, table: NodeTable) -> FloatArray:
        if self.params.load_metric == "requests":
            return table.inflight_requests + table.queued_requests
        return table.load_ratio

    def _ring(self, table: NodeTable) -> tuple[list[int], IntArray, IntArray]:
        """Ring points, their owners' ids, and id → row (``len(table)``: not in the table)."""
        if self._rows_key != (table.layout, len(self._ids)):
            new = [name for name in table.names if name not in self._ids]
            if new or len(self._ids) > 2 * len(table) + 64:
                if len(self._ids) + len(new) > 2 * len(table) + 64:  # prune departed nodes
                    self._ids, self._points = {}, {}
                    new = list(table.names)
                vnodes = self.params.virtual_nodes
                for name in new:
                    nid = self._ids[name] = len(self._ids)
                    self._points[nid] = [ring_hash(f"{name}#{v}") for v in range(vnodes)]
                ring = sorted((p, nid) for nid, points in self._points.items() for p in points)
                self._ring_points = [p for p, _ in ring]
                self._ring_owner = np.fromiter((n for _, n in ring), np.intp, len(ring))
            row_of_id = np.full(len(self._ids), len(table), dtype=np.intp)
            for name, row in table.index.items():
                row_of_id[self._ids[name]] = row
            self._row_of_id = row_of_id
            self._rows_key = (table.layout, len(self._ids))
        return self._ring_points, self._ring_owner, self._row_of_id

    def filter(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> BoolArray:
        load = self._load(table)
        bound = (1.0 + self.params.epsilon) * float(load[mask].mean())
        return mask & (load <= bound)

    def score(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> FloatArray:
        return -self._load(table)

    def pick(
        self, request: RequestView, table: NodeTable, mask: BoolArray, scores: FloatArray
    ) -> int:
        points, owner, row_of_id = self._ring(table)
        ok = np.append(mask, False)  # the last slot answers for nodes not in this table
        key = request.session_id if request.session_id is not None else f"tenant:{request.tenant}"
        start = bisect_right(points, ring_hash(key))
        size = len(points)
        chunk = self._CHUNK
        for offset in range(0, size, chunk):
            ids = owner.take(np.arange(start + offset, start + offset + chunk), mode="wrap")
            rows = row_of_id[ids]
            hits = ok[rows]
            if hits.any():
                first = int(hits.argmax())
                self._last_walk = (key, offset + first)
                return int(rows[first])
        raise AssertionError("bounded-load filter left no candidate")  # pragma: no cover

    def kind(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        return "ring_owner" if self._last_walk[1] == 0 else "ring_walk"

    def explain(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        key, skipped = self._last_walk
        if skipped == 0:
            return f"ring owner of {key!r}"
        return f"ring walk for {key!r}: skipped {skipped} points of full or ineligible nodes"
