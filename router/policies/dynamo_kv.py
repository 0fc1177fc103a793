"""NVIDIA Dynamo's KV router: minimum of prefill blocks to compute plus decode blocks held.

A baseline modelled on Dynamo's KV-aware router (repository ``ai-dynamo/dynamo``): the cost
function of ``DefaultWorkerSelector`` (``lib/llm/src/kv_router/scheduler.rs``, since moved to
``lib/kv-router/src/scheduling/selector.rs``), the active-block bookkeeping of
``ActiveSequences`` (``lib/llm/src/kv_router/sequence.rs``), the event-free
``ApproxKvIndexer`` (``lib/llm/src/kv_router/approx.rs``), the defaults of ``KvRouterConfig``
(``lib/llm/src/kv_router/config.rs``), as documented in ``docs/router/kv_cache_routing.md``.
For each candidate worker ``w``::

    logit_w = overlap_score_weight × prefill_blocks_w + decode_blocks_w     (lower is better)

    prefill_blocks_w = (isl − overlap_w × kv_block_size) / kv_block_size
    decode_blocks_w  = active_blocks_w + blocks of the request not already active on w

with ``isl`` the prompt tokens, ``overlap_w`` the request's leading KV blocks the indexer
believes ``w`` caches, and ``active_blocks_w`` the distinct KV blocks of the requests routed
to ``w`` and not finished (a prompt shared by several of them counts once, as in
``ActiveSequences``' reference-counted block set). The current selector writes the prefill
term as ``prefill_load_scale × max(0, isl / kv_block_size − overlap_score_credit × overlap_w)``,
both knobs 1.0 by default: ``overlap_score_weight`` = w is ``prefill_load_scale`` = w with
credit 1.

With ``router_temperature`` 0 the minimum wins, ties at random (the current selector's
reservoir sampling; ``tie_break="smallest_tree"`` first prefers the smallest indexer tree, as
the earlier ``scheduler.rs`` did). Above 0 the worker is sampled with probability
∝ ``exp(−(logit − min) / ((max − min) · temperature))`` (uniform if all logits are equal), as
upstream's ``softmax_sample`` normalises by the logit range. Upstream's ``rand`` is here a
generator seeded with ``seed``.

The indexer is the approximate one (Dynamo's ``--no-kv-events`` mode): the blocks of a request
routed to a worker are assumed cached there for ``ttl_s`` (120 s upstream, refreshed when
routed again), in a :class:`~router.policies.prefix.PrefixIndex` with that TTL, bounded at
``max_tree_size`` KV blocks. Approximations, from what this interface shows:

* ``max_tree_size`` bounds each node's blocks (LRU); upstream bounds the whole tree, pruning
  the soonest-to-expire blocks down to ``prune_target_ratio`` (0.8) of it periodically.
* KV blocks are ``kv_block_size`` tokens (default: ``RequestView.block_size``); it should be
  a multiple of the request's hash block size, one KV block being ``kv_block_size //
  block_size`` hash blocks (a chained hash names its whole prefix, so the last hash of each
  KV block identifies it). Upstream uses the engine's KV block size.
* Decode blocks count the prompt's full KV blocks, as upstream by default
  (``router_track_output_blocks`` false). ``expected_output_ratio`` > 0 adds
  ``⌈ratio × max_tokens / kv_block_size⌉`` blocks per request for its output: the router
  sees ``max_tokens``, never the true output length (upstream's optional output tracking
  instead grows blocks as tokens stream back).
* Upstream's prefill term also counts the not-yet-prefilled tokens of requests already on
  the worker, from routing to their first token. This interface reports no first token,
  so that term is off by default; ``track_prefill_tokens`` counts each request's uncached
  prompt tokens until it finishes (an upper bound).
* A node seen restarting loses its indexer entries (upstream removes a worker's blocks when
  the worker goes away); its active blocks leave as its requests finish.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field

from router.policies.base import RequestView
from router.policies.prefix import PrefixIndex
from router.policies.registry import register
from router.policies.scoring import BoolArray, FloatArray, NodeTable, PolicyParams, ScoringPolicy

__all__ = ["ActiveBlocks", "DynamoKv", "DynamoKvParams"]


class DynamoKvParams(PolicyParams):
    """Defaults from ``KvRouterConfig::default()`` (``lib/llm/src/kv_router/config.rs``)."""

    overlap_score_weight: float = Field(1.0, ge=0.0)
    """Weight of the prefill blocks against the decode blocks (0: pure load balancing)."""
    router_temperature: float = Field(0.0, ge=0.0)
    """0: the minimum logit; above: softmax sampling over the range-normalised logits."""
    ttl_s: float = Field(120.0, gt=0.0)
    """Seconds a routed block is believed cached (``router_ttl_secs``)."""
    max_tree_size: int = Field(2**20, gt=0)
    """KV blocks the indexer remembers per node (``router_max_tree_size``, 2**20)."""
    kv_block_size: int | None = Field(None, gt=0)
    """Tokens per KV block (``None``: the request's hash block size)."""
    expected_output_ratio: float = Field(0.0, ge=0.0, le=1.0)
    """Output blocks per request as a fraction of ``max_tokens`` (0: prompt blocks only)."""
    track_prefill_tokens: bool = False
    """Add the uncached prompt tokens of the node's unfinished requests to its prefill term."""
    tie_break: Literal["random", "smallest_tree"] = "random"
    """Equal minimum costs: a random one, or the smallest indexer tree first."""
    seed: int = 0
    """Seed of the generator for ties and for sampling."""


IntArray = NDArray[np.intp]


class ActiveBlocks:
    """Reference-counted KV blocks of the requests in flight on each node.

    Like :class:`~router.policies.prefix.PrefixIndex`, node ids are bits of an int mask per
    block, and each node's set is prefix-closed (it is a union of whole prompt chains, and a
    block leaves only when its last request does), so the blocks of a new request already
    active on every node come from a few binary searches.
    """

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._refs: list[dict[int, int]] = []
        """Per node id: block → number of its requests holding it."""
        self._holders: dict[int, int] = {}
        """Block → bitmask of node ids holding it."""
        self._blocks = np.zeros(8)
        """Per node id: distinct active blocks plus output blocks."""
        self._prefill = np.zeros(8)
        """Per node id: uncached prompt tokens of its requests (when tracked)."""
        self._rows_key: tuple[tuple[str, ...] | None, int] = (None, 0)
        self._rows: IntArray = np.zeros(0, dtype=np.intp)

    def _id(self, node: str) -> int:
        nid = self._ids.get(node)
        if nid is None:
            nid = self._ids[node] = len(self._names)
            self._names.append(node)
            self._refs.append({})
            if nid + 1 >= len(self._blocks):  # keep a spare zero slot for unseen names
                self._blocks = np.concatenate([self._blocks, np.zeros(len(self._blocks))])
                self._prefill = np.concatenate([self._prefill, np.zeros(len(self._prefill))])
        return nid

    def blocks_on(self, node: str) -> float:
        """Active blocks (distinct prompt blocks plus output blocks) on ``node``."""
        nid = self._ids.get(node)
        return 0.0 if nid is None else float(self._blocks[nid])

    def add(self, node: str, blocks: Sequence[int], extra: float, prefill: float) -> None:
        nid = self._id(node)
        refs, holders, bit = self._refs[nid], self._holders, 1 << nid
        new = 0
        for block in blocks:
            count = refs.get(block, 0)
            if count == 0:
                new += 1
                holders[block] = holders.get(block, 0) | bit
            refs[block] = count + 1
        self._blocks[nid] += new + extra
        self._prefill[nid] += prefill

    def remove(self, node: str, blocks: Sequence[int], extra: float, prefill: float) -> None:
        nid = self._ids[node]
        refs, holders, keep = self._refs[nid], self._holders, ~(1 << nid)
        gone = 0
        for block in blocks:
            count = refs[block] - 1
            if count:
                refs[block] = count
                continue
            del refs[block]
            gone += 1
            mask = holders[block] & keep
            if mask:
                holders[block] = mask
            else:
                del holders[block]
        self._blocks[nid] = max(0.0, self._blocks[nid] - gone - extra)
        self._prefill[nid] = max(0.0, self._prefill[nid] - prefill)

    def rows(self, names: tuple[str, ...]) -> IntArray:
        """Node id of each name (names never seen map to a slot that stays zero)."""
        cached, count = self._rows_key
        if cached is not names or count != len(self._names):
            get, missing = self._ids.get, len(self._names)
            self._rows = np.fromiter((get(n, missing) for n in names), np.intp, len(names))
            self._rows_key = (names, len(self._names))
        return self._rows

    def vectors(self, names: tuple[str, ...]) -> tuple[FloatArray, FloatArray]:
        """(active blocks, pending prefill tokens) of each of ``names``."""
        rows = self.rows(names)
        return self._blocks[rows], self._prefill[rows]

    def matched(self, blocks: Sequence[int], names: tuple[str, ...]) -> FloatArray | None:
        """Leading blocks of ``blocks`` already active on each of ``names`` (``None``: none)."""
        n = len(blocks)
        if n == 0:
            return None
        get = self._holders.get
        cur = get(blocks[0], 0)
        if not cur:
            return None
        by_id = np.zeros(len(self._names) + 1)
        lo = 0  # every node in ``cur`` holds blocks 0..lo
        while cur:
            if (get(blocks[n - 1], 0) & cur) == cur:
                level, cur = cur, 0
                depth = n
            else:
                a, b = lo, n - 1
                while b - a > 1:
                    m = (a + b) // 2
                    if (get(blocks[m], 0) & cur) == cur:
                        a = m
                    else:
                        b = m
                nxt = cur & get(blocks[b], 0)
                level, depth, cur, lo = cur & ~nxt, b, nxt, b
            while level:
                low = level & -level
                by_id[low.bit_length() - 1] = depth
                level ^= low
        return by_id[self.rows(names)]


@dataclass(frozen=True)
class _Routed:
    node: str
    blocks: tuple[int, ...]
    extra: float
    prefill: float


@register("dynamo_kv", DynamoKvParams)
class DynamoKv(ScoringPolicy[DynamoKvParams]):
    """Dynamo KV router: minimum ``overlap_score_weight × prefill blocks + decode blocks``,
    approximate (TTL) indexer, router-tracked active blocks."""

    def __init__(self, params: DynamoKvParams | None = None) -> None:
        super().__init__(params or DynamoKvParams())
        self.indexes: dict[tuple[str, int, int], PrefixIndex] = {}
        self.active = ActiveBlocks()
        self.routed: dict[str, _Routed] = {}
        self.rng = np.random.default_rng(self.params.seed)
        self._parts: tuple[FloatArray, FloatArray, FloatArray] = (
            np.zeros(0),
            np.zeros(0),
            np.zeros(0),
        )

    # -- geometry -------------------------------------------------------------------------

    def stride(self, request: RequestView) -> int:
        """Hash blocks per KV block."""
        kv = self.params.kv_block_size
        return 1 if kv is None else max(1, kv // max(request.block_size, 1))

    def kv_blocks(self, request: RequestView) -> tuple[int, ...]:
        """The request's full KV blocks, each named by the last hash block inside it."""
        stride = self.stride(request)
        hashes = request.block_hashes
        return tuple(hashes if stride == 1 else hashes[stride - 1 :: stride])

    def index(self, request: RequestView) -> PrefixIndex:
        """The approximate indexer for the request's model and block geometry."""
        stride = self.stride(request)
        key = (request.model, request.block_size, stride)
        index = self.indexes.get(key)
        if index is None:
            p = self.params
            index = PrefixIndex(p.max_tree_size * stride, p.ttl_s, stride=stride)
            self.indexes[key] = index
        return index

    def _output_blocks(self, request: RequestView, kv: int) -> float:
        ratio = self.params.expected_output_ratio
        return float(math.ceil(ratio * request.max_tokens / kv)) if ratio > 0.0 else 0.0

    # -- scoring --------------------------------------------------------------------------

    def score(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> FloatArray:
        p = self.params
        stride = self.stride(request)
        kv = stride * request.block_size
        n = len(table)
        overlap = None
        if request.block_hashes:
            matched = self.index(request).matched_blocks(request.block_hashes, table.names, now)
            if matched is not None:
                overlap = np.floor_divide(matched, stride)
        if overlap is None:
            overlap = np.zeros(n)
        isl = float(request.prompt_tokens)
        prefill = np.maximum(isl - overlap * kv, 0.0)
        blocks = self.kv_blocks(request)
        active, pending = self.active.vectors(table.names)
        if p.track_prefill_tokens:
            prefill += pending
        prefill /= kv
        decode = active + (len(blocks) + self._output_blocks(request, kv))
        held = self.active.matched(blocks, table.names)
        if held is not None:
            decode -= held
        logit = p.overlap_score_weight * prefill + decode
        self._parts = (prefill, decode, overlap)
        return -logit

    def pick(
        self, request: RequestView, table: NodeTable, mask: BoolArray, scores: FloatArray
    ) -> int:
        temperature = self.params.router_temperature
        if temperature > 0.0:
            rows = np.flatnonzero(mask)
            rows = rows[np.argsort(table.rank[rows])]  # sample in name order
            logit = -scores[rows]
            lo, hi = float(logit.min()), float(logit.max())
            if hi == lo:
                weights = np.ones(len(rows))
            else:
                weights = np.exp(-(logit - lo) / ((hi - lo) * temperature))
            cumulative = np.cumsum(weights / weights.sum())
            k = int(np.searchsorted(cumulative, self.rng.random(), side="left"))
            return int(rows[min(k, len(rows) - 1)])
        masked = np.where(mask, scores, -np.inf)
        ties = np.flatnonzero(mask & (masked == masked.max()))
        if ties.size == 0:  # NaN scores: name order
            ties = np.flatnonzero(mask)
        if ties.size > 1:
            ties = ties[np.argsort(table.rank[ties])]  # draw in name order
        if ties.size > 1 and self.params.tie_break == "smallest_tree":
            index = self.index(request)
            names = table.names
            size = np.fromiter((index.blocks_on(names[i]) for i in ties), np.float64, ties.size)
            ties = ties[size == size.min()]
        if ties.size > 1:
            return int(ties[self.rng.integers(ties.size)])
        return int(ties[0])

    def explain(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        prefill, decode, overlap = self._parts
        w = self.params.overlap_score_weight
        return (
            f"cost {-scores[i]:.4g} = {w:g} × {prefill[i]:.4g} prefill blocks "
            f"+ {decode[i]:.0f} decode blocks, {overlap[i]:.0f} blocks cached"
        )

    def kind(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        overlap = self._parts[2]
        return "overlap" if overlap.size and overlap[i] > 0 else "no_overlap"

    # -- learning -------------------------------------------------------------------------

    def on_routed(self, request: RequestView, node: str, now: float) -> None:
        old = self.routed.pop(request.request_id, None)
        if old is not None:  # routed again without finishing (a retry): the old one is gone
            self.active.remove(old.node, old.blocks, old.extra, old.prefill)
        stride = self.stride(request)
        kv = stride * request.block_size
        prefill = 0.0
        if request.block_hashes:
            index = self.index(request)
            if self.params.track_prefill_tokens:
                hit = index.matched_blocks(request.block_hashes, (node,), now)
                cached = 0.0 if hit is None else float(hit[0] // stride) * kv
                prefill = max(float(request.prompt_tokens) - cached, 0.0)
            index.insert(node, request.block_hashes, now)
        elif self.params.track_prefill_tokens:
            prefill = float(request.prompt_tokens)
        record = _Routed(node, self.kv_blocks(request), self._output_blocks(request, kv), prefill)
        self.active.add(node, record.blocks, record.extra, record.prefill)
        self.routed[request.request_id] = record

    def on_finished(self, request: RequestView, node: str, now: float) -> None:
        record = self.routed.pop(request.request_id, None)
        if record is not None:
            self.active.remove(record.node, record.blocks, record.extra, record.prefill)

    def on_kv_lost(self, nodes: list[str]) -> None:
        for index in self.indexes.values():
            for node in nodes:
                index.forget(node)
