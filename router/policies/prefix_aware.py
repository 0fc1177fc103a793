"""Prefix-aware routing: send a request where its prompt prefix is (believed) cached.

Models llm-d's prefix-cache scorer, SGLang's cache-aware router and vLLM's production-stack
KV-aware routing: the router keeps its own index of which node was sent which prefix blocks
(:class:`~router.policies.prefix.PrefixIndex`: an LRU per node with a capacity in blocks and
an optional TTL, standing in for the node's KV cache) and credits each node with the number
of leading blocks of the request it holds. The node with the longest matched prefix wins,
unless it is overloaded: only candidates whose ``load_ratio`` is within ``load_gap_s`` of the
least-loaded candidate compete (so with one cache holder this is "the holder, unless it is
more than ``load_gap_s`` behind, then the least loaded"); ties go to the least loaded, then
by name.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from router.policies.base import RequestView
from router.policies.prefix import PrefixIndex
from router.policies.registry import register
from router.policies.scoring import BoolArray, FloatArray, NodeTable, PolicyParams, ScoringPolicy

__all__ = ["PrefixAware", "PrefixAwareParams"]


class PrefixAwareParams(PolicyParams):
    block_capacity: int = Field(32_768, gt=0)
    """Blocks the index remembers per node and model (≈ the node's KV cache in blocks)."""
    index_tokens: int = Field(64, ge=1)
    """Granularity of the prefix index in tokens: every (index_tokens // block_size)-th
    block is indexed, so matches are exact to within that many tokens (1: every block)."""
    ttl_s: float | None = Field(None, gt=0.0)
    """Forget blocks not used for this long (``None``: only LRU eviction)."""
    load_gap_s: float = Field(2.0, ge=0.0)
    """A node may be at most this many seconds of work (load_ratio) behind the least-loaded
    candidate and still win on its cached prefix."""


@register("prefix_aware", PrefixAwareParams)
class PrefixAware(ScoringPolicy[PrefixAwareParams]):
    """Longest cached prefix among nodes within ``load_gap_s`` of the least loaded."""

    def __init__(self, params: PrefixAwareParams | None = None) -> None:
        super().__init__(params or PrefixAwareParams())
        self.indexes: dict[tuple[str, int], PrefixIndex] = {}

    def index(self, request: RequestView) -> PrefixIndex:
        """The prefix index for the request's model and block size."""
        key = (request.model, request.block_size)
        index = self.indexes.get(key)
        if index is None:
            p = self.params
            stride = max(1, p.index_tokens // max(request.block_size, 1))
            index = self.indexes[key] = PrefixIndex(p.block_capacity, p.ttl_s, stride=stride)
        return index

    def filter(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> BoolArray:
        load = table.load_ratio
        return mask & (load <= float(load[mask].min()) + self.params.load_gap_s)

    def score(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> FloatArray:
        matched = None
        if request.block_hashes:
            index = self.index(request)
            matched = index.matched_blocks(request.block_hashes, table.names, now)
        return np.zeros(len(table)) if matched is None else matched

    def pick(
        self, request: RequestView, table: NodeTable, mask: BoolArray, scores: FloatArray
    ) -> int:
        masked = np.where(mask, scores, -np.inf)
        ties = np.flatnonzero((masked == masked.max()) & mask)
        if ties.size > 1:
            load = table.load_ratio[ties]
            ties = ties[load == load.min()]
        if ties.size > 1:
            return int(ties[np.argmin(table.rank[ties])])
        return int(ties[0])

    def explain(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        blocks = int(scores[i])
        if blocks == 0:
            return "no cached prefix; least loaded"
        return f"{blocks} of {len(request.block_hashes)} blocks cached"

    def kind(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        return "prefix_hit" if int(scores[i]) else "least_loaded"

    def on_routed(self, request: RequestView, node: str, now: float) -> None:
        if request.block_hashes:
            self.index(request).insert(node, request.block_hashes, now)

    def on_kv_lost(self, nodes: list[str]) -> None:
        for index in self.indexes.values():
            for node in nodes:
                index.forget(node)
