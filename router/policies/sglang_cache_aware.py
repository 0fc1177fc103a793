"""SGLang's cache-aware router: shortest queue when imbalanced, else the longest prefix match.

A baseline modelled on the ``cache_aware`` policy of SGLang's model gateway (formerly
``sgl-router``): repository ``sgl-project/sglang``, file
``sgl-model-gateway/src/policies/cache_aware.rs`` (before it, ``sgl-router/src/policies/
cache_aware.rs``), with its approximate tree in ``sgl-model-gateway/src/policies/tree.rs`` and
the launch defaults in ``sgl-model-gateway/bindings/python/sglang_router/router_args.py``.

For each request, over the candidate nodes, with ``load`` the router's own count of running
requests on a node (``NodeSnapshot.inflight_requests``; upstream ``Worker::load()``, which
the gateway increments when it routes and decrements when the request completes):

1. **Imbalanced** if ``max_load − min_load > balance_abs_threshold`` *and*
   ``max_load > balance_rel_threshold × min_load``: route to the least loaded node (shortest
   queue). Both conditions must hold.
2. Otherwise match the prompt against the approximate tree: ``match_rate`` = the longest
   prefix any node holds ÷ the prompt length. If ``match_rate > cache_threshold``, route to a
   node holding that longest prefix.
3. Else (a cache miss) route by ``miss_fallback``: ``min_load`` (the least loaded node, what
   the gateway does since sgl-project/sglang PR #14650, "cache-aware router should pick min
   load instead of min tenant size") or ``smallest_tree`` (the node whose tree is smallest,
   i.e. the most free cache: the original design, still described in the file's header
   comment and used by ``sgl-router``).

Whatever the branch, the request's prompt is then inserted into the chosen node's tree.

Differences from upstream, all forced by what a router here sees:

* The tree is :class:`~router.policies.prefix.PrefixIndex` over ``RequestView.block_hashes``,
  so prefixes match in whole ``block_size``-token blocks; SGLang's radix tree matches raw
  text **characters** (it never tokenizes). The match rate is matched blocks × block size ÷
  prompt tokens (a trailing partial block never matches).
* Tree size is bounded by LRU eviction on insert at ``max_tree_tokens`` per node, instead of
  a background thread evicting least recently used leaves down to ``max_tree_size``
  characters every ``eviction_interval_secs`` (120 s); between two such passes an upstream
  tree may exceed its bound, here it never does.
* Imbalance is measured over the candidates (eligible nodes); upstream takes the min and max
  over every worker of the model, healthy or not.
* Ties (several nodes with the longest match, the least load or the smallest tree) go to the
  first node in name order. Upstream takes the first tenant in a hash map's iteration order
  for a match (effectively arbitrary) and the first worker in list order for the least load.
* A node seen restarting loses its tree, as when the gateway removes a worker.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from router.policies.base import RequestView
from router.policies.prefix import PrefixIndex
from router.policies.registry import register
from router.policies.scoring import BoolArray, FloatArray, NodeTable, PolicyParams, ScoringPolicy

__all__ = ["SglangCacheAware", "SglangCacheAwareParams"]

_IMBALANCED, _HIT, _MISS = "load_balance", "cache_hit", "cache_miss"


class SglangCacheAwareParams(PolicyParams):
    """Defaults are the gateway's launch defaults (``router_args.py``; the same in its CLI).
    The Rust ``CacheAwareConfig::default()`` differs (0.5 / 32 / 1.1 / 30 s / 10 000): it is
    used only when the policy is built in code."""

    cache_threshold: float = Field(0.3, ge=0.0, le=1.0)
    """Minimum prefix match rate (exclusive) for routing to the node with the longest match."""
    balance_abs_threshold: int = Field(64, ge=0)
    """Imbalanced only if max − min running requests exceeds this ..."""
    balance_rel_threshold: float = Field(1.5, ge=0.0)
    """... and max exceeds this many times min."""
    max_tree_tokens: int = Field(2**24, gt=0)
    """Tokens the tree remembers per node (LRU beyond). Upstream bounds the tree at
    ``max_tree_size`` = 2**26 characters; at about 4 characters per token that is 2**24."""
    miss_fallback: Literal["min_load", "smallest_tree"] = "min_load"
    """Where a cache miss goes: the least loaded node (the gateway today) or the node with
    the smallest tree (the original design)."""


@register("sglang_cache_aware", SglangCacheAwareParams)
class SglangCacheAware(ScoringPolicy[SglangCacheAwareParams]):
    """SGLang gateway cache-aware: shortest queue if imbalanced, else longest prefix over
    ``cache_threshold``, else ``miss_fallback``."""

    def __init__(self, params: SglangCacheAwareParams | None = None) -> None:
        super().__init__(params or SglangCacheAwareParams())
        self.indexes: dict[tuple[str, int], PrefixIndex] = {}
        self._mode = _MISS
        self._detail = ""

    def index(self, request: RequestView) -> PrefixIndex:
        """The approximate tree for the request's model and block size."""
        key = (request.model, request.block_size)
        index = self.indexes.get(key)
        if index is None:
            blocks = max(1, self.params.max_tree_tokens // max(request.block_size, 1))
            index = self.indexes[key] = PrefixIndex(blocks)
        return index

    def score(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> FloatArray:
        p = self.params
        load = table.inflight_requests
        candidates = load[mask]
        max_load, min_load = float(candidates.max()), float(candidates.min())
        if max_load - min_load > p.balance_abs_threshold and max_load > (
            min_load * p.balance_rel_threshold
        ):
            self._mode = _IMBALANCED
            self._detail = (
                f"load imbalanced (max {max_load:.0f}, min {min_load:.0f} running): "
                "fewest running requests"
            )
            return -load
        rate = None
        if request.block_hashes and request.prompt_tokens > 0:
            matched = self.index(request).matched_blocks(request.block_hashes, table.names, now)
            if matched is not None:
                rate = np.minimum(matched * (request.block_size / request.prompt_tokens), 1.0)
        best = 0.0 if rate is None else float(rate[mask].max())
        if rate is not None and best > p.cache_threshold:
            self._mode = _HIT
            self._detail = f"prefix match {best:.0%} > {p.cache_threshold:.0%}"
            return rate
        self._mode = _MISS
        if p.miss_fallback == "smallest_tree":
            index = self.index(request)
            size = np.fromiter(map(index.blocks_on, table.names), np.float64, len(table))
            self._detail = f"best prefix match {best:.0%} ≤ {p.cache_threshold:.0%}: smallest tree"
            return -size
        self._detail = (
            f"best prefix match {best:.0%} ≤ {p.cache_threshold:.0%}: fewest running requests"
        )
        return -load

    def explain(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        return self._detail

    def kind(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        return self._mode

    def on_routed(self, request: RequestView, node: str, now: float) -> None:
        if request.block_hashes:
            self.index(request).insert(node, request.block_hashes, now)

    def on_kv_lost(self, nodes: list[str]) -> None:
        for index in self.indexes.values():
            for node in nodes:
                index.forget(node)
