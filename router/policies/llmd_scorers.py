"""llm-d's inference scheduler: weighted prefix-cache, queue and KV-cache scorers, max score.

A baseline modelled on the endpoint picker (EPP) that llm-d's inference scheduler
(``llm-d/llm-d-inference-scheduler``) builds on the Gateway API Inference Extension
(``kubernetes-sigs/gateway-api-inference-extension``, "GIE"), in its default
``schedulingProfiles`` configuration: GIE's chart ``config/charts/inferencepool/templates/
epp-config.yaml`` (``default-plugins.yaml``: ``queue-scorer`` weight 2,
``kv-cache-utilization-scorer`` weight 2, ``prefix-cache-scorer`` weight 3), which llm-d's
inference-scheduling guide (``llm-d/llm-d``, ``guides/inference-scheduling/
gaie-inference-scheduling/values.yaml``) deploys. Each scorer gives every candidate a score in
[0, 1]; the total is ``Σ weight × score`` and the max-score picker takes the highest:

* **prefix-cache-scorer** (GIE ``pkg/epp/scheduling/framework/plugins/prefixcachescorer/
  plugin.go``, formerly ``.../plugins/multi/prefix/plugin.go``): the prompt is cut into
  blocks of ``block_tokens`` tokens (at most ``max_prefix_blocks``; the rest is ignored) and
  the score is the node's matched leading blocks ÷ the request's blocks (0 for all when the
  prompt is shorter than one block). The index is the router's own: the blocks of each
  request are recorded for the node it was sent to (``PreRequest``), in an LRU of
  ``lru_capacity_per_server`` blocks per node. Here that index is a
  :class:`~router.policies.prefix.PrefixIndex` over ``RequestView.block_hashes`` (every
  ``block_tokens // block_size``-th hash); upstream hashes the prompt's text, 4 characters
  standing for a token, and sizes the LRU from each pod's reported GPU blocks when
  ``autoTune`` is on.
* **queue-scorer** (GIE ``.../plugins/queuescorer/queue.go``, formerly ``.../plugins/scorer/
  queue.go``): ``(max_q − q) / (max_q − min_q)`` over the candidates, 1 for all when every
  queue is the same, with ``q`` the waiting-queue size from the node's metrics
  (``WaitingQueueSize``: ``NodeSnapshot.queued_requests``; running requests do not count).
* **kv-cache-utilization-scorer** (GIE ``.../plugins/kvcacheutilizationscorer/
  kvcache_utilization.go``): ``1 − KVCacheUsagePercent`` = ``1 − kv_used_fraction``
  (clipped to [0, 1] here).
* **max-score-picker** (GIE ``.../plugins/maxscorepicker/max_score_picker.go``): the highest
  total; upstream shuffles the candidates before a stable sort, so ties go to one of the
  tied nodes at random, here drawn from a generator seeded with ``seed``.

A node seen restarting loses its prefix entries (upstream drops a pod's entries when the pod
leaves the pool).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from router.policies.base import RequestView
from router.policies.prefix import PrefixIndex
from router.policies.registry import register
from router.policies.scoring import BoolArray, FloatArray, NodeTable, PolicyParams, ScoringPolicy

__all__ = ["LlmdScorers", "LlmdScorersParams"]


class LlmdScorersParams(PolicyParams):
    """Weights from GIE's ``default-plugins.yaml``; prefix-scorer defaults from its
    ``plugin.go`` (``DefaultBlockSizeTokens`` 16, ``DefaultMaxPrefixBlocks`` 256,
    ``DefaultLRUCapacityPerServer`` 31 250)."""

    prefix_weight: float = Field(3.0, ge=0.0)
    """Weight of the prefix-cache scorer."""
    queue_weight: float = Field(2.0, ge=0.0)
    """Weight of the queue scorer."""
    kv_cache_weight: float = Field(2.0, ge=0.0)
    """Weight of the KV-cache-utilization scorer."""
    block_tokens: int = Field(16, ge=1)
    """Tokens per prefix block (a multiple of the request's hash block size)."""
    max_prefix_blocks: int = Field(256, ge=1)
    """Leading blocks of a prompt that are matched and recorded."""
    lru_capacity_per_server: int = Field(31_250, gt=0)
    """Prefix blocks the index remembers per node."""
    seed: int = 0
    """Seed of the generator that breaks ties."""


@register("llmd_scorers", LlmdScorersParams)
class LlmdScorers(ScoringPolicy[LlmdScorersParams]):
    """llm-d / GIE default profile: 3 × prefix + 2 × queue + 2 × KV free, max score."""

    def __init__(self, params: LlmdScorersParams | None = None) -> None:
        super().__init__(params or LlmdScorersParams())
        self.indexes: dict[tuple[str, int, int], PrefixIndex] = {}
        self.rng = np.random.default_rng(self.params.seed)
        empty = np.zeros(0)
        self._parts: tuple[FloatArray, FloatArray, FloatArray] = (empty, empty, empty)

    def stride(self, request: RequestView) -> int:
        """Hash blocks per prefix block."""
        return max(1, self.params.block_tokens // max(request.block_size, 1))

    def hashes(self, request: RequestView) -> tuple[int, ...]:
        """The hash blocks the scorer looks at (at most ``max_prefix_blocks`` blocks)."""
        limit = self.params.max_prefix_blocks * self.stride(request)
        return request.block_hashes[:limit]

    def index(self, request: RequestView) -> PrefixIndex:
        """The prefix index for the request's model and block geometry."""
        stride = self.stride(request)
        key = (request.model, request.block_size, stride)
        index = self.indexes.get(key)
        if index is None:
            capacity = self.params.lru_capacity_per_server * stride
            index = self.indexes[key] = PrefixIndex(capacity, stride=stride)
        return index

    # -- the three scorers ----------------------------------------------------------------

    def prefix_scores(self, request: RequestView, table: NodeTable, now: float) -> FloatArray:
        """Matched leading blocks ÷ the request's blocks, per row (all 0 if no blocks)."""
        stride = self.stride(request)
        hashes = self.hashes(request)
        total = len(hashes) // stride
        if total == 0:
            return np.zeros(len(table))
        matched = self.index(request).matched_blocks(hashes, table.names, now)
        if matched is None:
            return np.zeros(len(table))
        return np.floor_divide(matched, stride) / total

    @staticmethod
    def queue_scores(table: NodeTable, mask: BoolArray) -> FloatArray:
        """``(max − q) / (max − min)`` over the candidates; 1 for all when all are equal."""
        queue = table.queued_requests
        hi, lo = float(queue[mask].max()), float(queue[mask].min())
        if hi == lo:
            return np.ones(len(table))
        return (hi - queue) / (hi - lo)

    @staticmethod
    def kv_scores(table: NodeTable) -> FloatArray:
        """``1 − kv_used_fraction``, clipped to [0, 1]."""
        return np.clip(1.0 - table.kv_used, 0.0, 1.0)

    # -- the pipeline ---------------------------------------------------------------------

    def score(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> FloatArray:
        p = self.params
        prefix = self.prefix_scores(request, table, now)
        queue = self.queue_scores(table, mask)
        kv = self.kv_scores(table)
        self._parts = (prefix, queue, kv)
        return p.prefix_weight * prefix + p.queue_weight * queue + p.kv_cache_weight * kv

    def pick(
        self, request: RequestView, table: NodeTable, mask: BoolArray, scores: FloatArray
    ) -> int:
        masked = np.where(mask, scores, -np.inf)
        ties = np.flatnonzero(mask & (masked == masked.max()))
        if ties.size == 0:  # NaN scores: any candidate
            ties = np.flatnonzero(mask)
        if ties.size == 1:
            return int(ties[0])
        ties = ties[np.argsort(table.rank[ties])]  # draw in name order: independent of layout
        return int(ties[self.rng.integers(ties.size)])

    def explain(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        p = self.params
        prefix, queue, kv = self._parts
        return (
            f"score {scores[i]:.4g} = {p.prefix_weight:g} × prefix {prefix[i]:.3f} "
            f"+ {p.queue_weight:g} × queue {queue[i]:.3f} "
            f"+ {p.kv_cache_weight:g} × kv {kv[i]:.3f}"
        )

    def kind(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        prefix = self._parts[0]
        return "prefix_hit" if prefix.size and prefix[i] > 0 else "no_prefix"

    def on_routed(self, request: RequestView, node: str, now: float) -> None:
        hashes = self.hashes(request)
        if hashes:
            self.index(request).insert(node, hashes, now)

    def on_kv_lost(self, nodes: list[str]) -> None:
        for index in self.indexes.values():
            for node in nodes:
                index.forget(node)
