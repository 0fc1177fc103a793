"""MU cost (the default): the node where this request's work would be done soonest.

Models cost-based routing over a heterogeneous fleet, with cache and session awareness as
*credits* on the price rather than as rules (the weighted-scorer design of llm-d, priced in
MU as in ``router/README.md``). For each candidate node ``n``::

    cost_n = (inflight_mu_n + reserved_mu_n + mu_n · (1 − prefill_share · credit_n))
             / capacity_mu_s_n
           + staleness_s_per_s · max(0, metrics_age_s_n − stale_after_s)
           + queue_weight · queued_requests_n · mean_request_mu / capacity_mu_s_n

in seconds of work; the minimum wins (ties by name). ``mu_n = request.mu_on(n)``.

* ``credit_n`` ∈ [0, 1] is the fraction of the prompt ``n`` is expected to hold in KV: the
  larger of its matched prefix in the policy's own
  :class:`~router.policies.prefix.PrefixIndex` (matched blocks × block size ÷ prompt tokens,
  as in ``prefix_aware``) and ``session_credit`` if ``n`` is the node the session's previous
  request went to. Affinity is a credit, never a rule: a session stays only while its node,
  credit included, is still the cheapest, so it is never piled onto an overloaded node.
* The credit discounts only the **prefill share** of the request's MU (cached tokens skip
  prefill; decode costs the same wherever the prefix sits). The share is
  ``prefill_fraction`` if set; otherwise ``P / (P + output_token_weight · E)`` with ``P`` the
  prompt tokens and ``E = expected_output_ratio · max_tokens`` the expected output (the policy
  sees only ``max_tokens``). ``output_token_weight`` is the cost of one generated token in
  prompt tokens: 6.5 by default, ``output_token_s / prefill_token_s`` of the calibrated
  reference pair ``profiles/llama-3.1-8b_h100-sxm_tp1.json``. Counting tokens 1:1 instead
  would credit a cached 2000-token prompt with ~87 % of a request whose prefill is ~25 % of
  its MU, and pull sessions onto busy nodes.
* Stale metrics count against a node: past ``stale_after_s`` each second of metrics age adds
  ``staleness_s_per_s`` seconds of cost.
* A queue in the node (Triton pending + engine waiting) adds an estimated wait per queued
  request: ``mean_request_mu`` (a running mean of routed requests' MU, starting at
  ``initial_request_mu``) over the node's capacity.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from pydantic import Field

from router.policies.base import RequestView
from router.policies.prefix import PrefixIndex
from router.policies.registry import register
from router.policies.scoring import BoolArray, FloatArray, NodeTable, PolicyParams, ScoringPolicy

__all__ = ["MuCost", "MuCostParams"]


class MuCostParams(PolicyParams):
    prefill_fraction: float | None = Field(None, ge=0.0, le=1.0)
    """Fixed prefill share of a request's MU (``None``: estimate it per request)."""
    output_token_weight: float = Field(6.5, ge=0.0)
    """Cost of one output token in prompt tokens, for the estimated prefill share."""
    expected_output_ratio: float = Field(0.3, ge=0.0, le=1.0)
    """Expected output tokens as a fraction of ``max_tokens``."""
    session_credit: float = Field(0.5, ge=0.0, le=1.0)
    """Credit of the node the session's previous request went to."""
    max_sessions: int = Field(100_000, gt=0)
    """Sessions remembered (least recently routed forgotten first)."""
    block_capacity: int = Field(32_768, gt=0)
    """Blocks the prefix index remembers per node and model."""
    index_tokens: int = Field(64, ge=1)
    """Granularity of the prefix index in tokens: every (index_tokens // block_size)-th
    block is indexed, so matches are exact to within that many tokens (1: every block)."""
    ttl_s: float | None = Field(None, gt=0.0)
    """Forget cached blocks not used for this long (``None``: LRU only)."""
    stale_after_s: float = Field(5.0, ge=0.0)
    """Metrics younger than this cost nothing."""
    staleness_s_per_s: float = Field(0.1, ge=0.0)
    """Seconds of cost per second of metrics age beyond ``stale_after_s``."""
    queue_weight: float = Field(1.0, ge=0.0)
    """Weight of the queued-requests wait estimate."""
    initial_request_mu: float = Field(300.0, gt=0.0)
    """Mean request MU assumed before any request was routed."""
    request_mu_alpha: float = Field(0.02, gt=0.0, le=1.0)
    """Weight of each routed request in the running mean of request MU."""


@register("mu_cost", MuCostParams)
class MuCost(ScoringPolicy[MuCostParams]):
    """Minimum projected completion cost in seconds of work, with prefix/session credit."""

    def __init__(self, params: MuCostParams | None = None) -> None:
        super().__init__(params or MuCostParams())
        self.indexes: dict[tuple[str, int], PrefixIndex] = {}
        self.sessions: OrderedDict[str, str] = OrderedDict()
        self.mean_request_mu = self.params.initial_request_mu
        self._static: FloatArray = np.zeros(0)
        """Per row: load_ratio plus the staleness penalty, in seconds."""
        self._queue: FloatArray = np.zeros(0)
        """Per row: queued requests over capacity (× mean request MU → seconds)."""
        self._credit: tuple[FloatArray | None, float] = (None, 0.0)

    def index(self, request: RequestView) -> PrefixIndex:
        """The prefix index for the request's model and block size."""
        key = (request.model, request.block_size)
        index = self.indexes.get(key)
        if index is None:
            p = self.params
            stride = max(1, p.index_tokens // max(request.block_size, 1))
            index = self.indexes[key] = PrefixIndex(p.block_capacity, p.ttl_s, stride=stride)
        return index

    def prefill_share(self, request: RequestView) -> float:
        """Fraction of the request's MU that a cached prompt would save."""
        fixed = self.params.prefill_fraction
        if fixed is not None:
            return fixed
        prompt = request.prompt_tokens
        if prompt <= 0:
            return 0.0
        expected = self.params.expected_output_ratio * request.max_tokens
        return prompt / (prompt + self.params.output_token_weight * expected)

    def credits(self, request: RequestView, table: NodeTable, now: float) -> FloatArray | None:
        """Per row, the fraction of the prompt expected in that node's KV (``None``: none)."""
        credit, scale = self._credit_units(request, table, now)
        return None if credit is None else credit * scale

    def _credit_units(
        self, request: RequestView, table: NodeTable, now: float
    ) -> tuple[FloatArray | None, float]:
        """``credits`` as (vector, scale): fraction = vector × scale, the vector counting
        matched blocks, so the hot path multiplies by one scalar instead of a vector."""
        credit = None
        prompt = request.prompt_tokens
        if prompt <= 0:
            return None, 0.0
        per_block = request.block_size / prompt
        if request.block_hashes:
            index = self.index(request)
            credit = index.matched_blocks(request.block_hashes, table.names, now)
            if credit is not None and len(request.block_hashes) * per_block > 1.0:
                np.minimum(credit, 1.0 / per_block, out=credit)  # more blocks than prompt
        session = self.params.session_credit
        if request.session_id is not None and session > 0.0:
            last = self.sessions.get(request.session_id)
            row = None if last is None else table.index.get(last)
            if row is not None:
                if credit is None:
                    credit = np.zeros(len(table))
                if credit[row] * per_block < session:
                    credit[row] = session / per_block
        return credit, per_block

    def table_rebuilt(self, table: NodeTable) -> None:
        p = self.params
        static = table.load_ratio.copy()
        if p.staleness_s_per_s > 0.0:
            static += p.staleness_s_per_s * np.maximum(table.metrics_age - p.stale_after_s, 0.0)
        self._static = static
        self._queue = table.queued_requests * table.inv_capacity

    def rows_changed(self, table: NodeTable, rows: list[int]) -> None:
        p = self.params
        static, queue, nodes = self._static, self._queue, table.nodes
        for i in rows:
            s = nodes[i]
            inv = 1.0 / max(s.capacity_mu_s, 1e-9)
            cost = (s.inflight_mu + s.reserved_mu) * inv
            if s.metrics_age_s > p.stale_after_s:
                cost += p.staleness_s_per_s * (s.metrics_age_s - p.stale_after_s)
            static[i] = cost
            queue[i] = s.queued_requests * inv

    def score(
        self, request: RequestView, table: NodeTable, mask: BoolArray, now: float
    ) -> FloatArray:
        own = table.request_mu(request)
        own *= table.inv_capacity
        cost = self._static + own
        wait = self.params.queue_weight * self.mean_request_mu
        if wait > 0.0:
            cost += self._queue * wait
        credit, scale = self._credit_units(request, table, now)
        self._credit = (credit, scale)
        if credit is not None:
            own *= credit
            own *= scale * self.prefill_share(request)
            cost -= own
        np.negative(cost, out=cost)
        return cost

    def explain(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        credit, scale = self._credit
        share = 0.0 if credit is None else float(credit[i]) * scale
        if share:
            return f"cost {-scores[i]:.4g} s, {share:.0%} of the prompt credited as cached"
        return f"cost {-scores[i]:.4g} s"

    def kind(self, request: RequestView, table: NodeTable, i: int, scores: FloatArray) -> str:
        credit, scale = self._credit
        return "cache_credit" if credit is not None and credit[i] * scale > 0 else "cost"

    def on_routed(self, request: RequestView, node: str, now: float) -> None:
        if request.block_hashes:
            self.index(request).insert(node, request.block_hashes, now)
        if request.session_id is not None:
            sessions = self.sessions
            sessions[request.session_id] = node
            sessions.move_to_end(request.session_id)
            if len(sessions) > self.params.max_sessions:
                sessions.popitem(last=False)
        table = self.table
        row = table.index.get(node)
        if row is not None:
            mu = request.mu_by_pair.get(table.pairs[table.pair_idx[row]])
            if mu is not None:
                self.mean_request_mu += self.params.request_mu_alpha * (mu - self.mean_request_mu)

    def on_kv_lost(self, nodes: list[str]) -> None:
        for index in self.indexes.values():
            for node in nodes:
                index.forget(node)
