"""A trace turned into the request stream a simulated fleet receives, at a chosen rate.

A fleet of 64 GPUs needs about 80 times the arrival rate of the shared Mooncake slice.
Compressing its 40 minutes into 30 seconds would turn minute-long gaps between the turns of
a conversation into sub-second ones and flatter every cache-aware policy (nothing is
evicted in 30 s). So a rate multiplier ``m`` is made of ``k = floor(m)`` independent
**copies** of the trace, each shifted in time by a seeded random offset (wrapping round the
trace's span) and with its own prefix-id space, and a residual time compression ``m / k``
in ``[1, 2)``. Ids that appear in at least :data:`GLOBAL_ID_SHARE` of the trace's requests
(Mooncake's block 0, a system prompt every request starts with) stay shared between copies:
those are prompts common to every user of the service, not to one user's conversation.

Hashes: a Mooncake id names a 512-token block and everything before it; the KV pool and the
router see chained hashes of (copy, id), one per *full* block of the prompt (a trailing
partial block is never shared, as in the engines).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from mufleet.traces import Trace, TraceRequest
from python_backends.sim_engine.block_pool import BlockPool

__all__ = ["GLOBAL_ID_SHARE", "Arrival", "Workload", "kv_hit_bound"]

GLOBAL_ID_SHARE = 0.01
"""A prefix id that this share of the trace's requests continue in different ways (and at
least two) is common to all copies of the trace."""


def global_ids(trace: Trace) -> frozenset[int]:
    """Prefix ids shared by different conversations: a system prompt, not a history.

    A conversation's earlier turns are continued one way (by its next turn); a system
    prompt is continued by many different conversations. So an id counts as global when
    the requests holding it go on with at least ``max(2, GLOBAL_ID_SHARE × requests)``
    distinct next ids (or end there).
    """
    successors: dict[int, set[int]] = {}
    for request in trace.requests:
        ids = request.hash_ids
        for position, h in enumerate(ids):
            following = ids[position + 1] if position + 1 < len(ids) else -1
            successors.setdefault(h, set()).add(following)
    floor = max(2.0, GLOBAL_ID_SHARE * len(trace))
    return frozenset(h for h, after in successors.items() if len(after) >= floor)


@dataclass(frozen=True, slots=True)
class Arrival:
    time_s: float
    copy: int
    index: int
    """Index of the request in the trace."""


class Workload:
    """The arrivals and per-request KV hashes of ``trace`` at ``rate_multiplier``."""

    def __init__(
        self,
        trace: Trace,
        rate_multiplier: float,
        *,
        seed: int = 0,
        pool_block_tokens: int | None = None,
        duration_s: float | None = None,
    ) -> None:
        if not (math.isfinite(rate_multiplier) and rate_multiplier > 0):
            raise ValueError(f"rate multiplier must be > 0, got {rate_multiplier}")
        self.trace = trace
        self.rate_multiplier = rate_multiplier
        self.copies = max(1, math.floor(rate_multiplier))
        self.compression = rate_multiplier / self.copies
        self.seed = seed
        self.trace_block_tokens = trace.block_tokens or 0
        self.pool_block_tokens = pool_block_tokens or self.trace_block_tokens or 32
        if self.trace_block_tokens and self.trace_block_tokens % self.pool_block_tokens:
            raise ValueError(
                f"KV block of {self.pool_block_tokens} tokens must divide the trace's "
                f"{self.trace_block_tokens}-token prefix blocks"
            )
        # The span a copy wraps round: the last bucket's width, or one mean gap, past the
        # last arrival (so that copy 0's last request does not wrap to t = 0).
        gap = trace.duration_s / max(len(trace) - 1, 1)
        span = trace.duration_s + (trace.bucket_s or gap)
        self.span_s = max(span, 1e-9)
        lap_s = self.span_s / self.compression
        self.duration_s = lap_s if duration_s is None else duration_s
        self.laps = max(1, math.ceil(self.duration_s / lap_s))
        """Longer than the trace: laps follow each other, each with copies of its own."""
        rng = random.Random(seed)
        self.offsets = [0.0] + [rng.random() * self.span_s for _ in range(self.copies - 1)]
        self.global_ids = global_ids(trace)

    @property
    def rate_rps(self) -> float:
        return self.trace.rate_rps * self.rate_multiplier

    def arrivals(self) -> list[Arrival]:
        """Every arrival within ``duration_s``, in time order (ties by copy, then index)."""
        out: list[Arrival] = []
        span, c, end = self.span_s, self.compression, self.duration_s
        for lap in range(self.laps):
            for k, offset in enumerate(self.offsets):
                copy = lap * self.copies + k
                for index, request in enumerate(self.trace.requests):
                    t = ((request.arrival_s + offset) % span + lap * span) / c
                    if t < end:
                        out.append(Arrival(t, copy, index))
        out.sort(key=lambda a: (a.time_s, a.copy, a.index))
        return out

    def hashes(self, copy: int, index: int) -> tuple[int, ...]:
        """Chained hashes of the request's full prefix blocks, as copy ``copy`` sees them."""
        request = self.trace.requests[index]
        if not request.hash_ids or not self.trace_block_tokens:
            return ()
        full = request.input_tokens // self.trace_block_tokens
        shared = self.global_ids
        parent = 0
        out: list[int] = []
        sub = self.trace_block_tokens // self.pool_block_tokens
        for block in request.hash_ids[:full]:
            parent = hash((parent, block if block in shared else (copy, block)))
            if sub == 1:
                out.append(parent)
            else:
                out.extend(hash((parent, s)) for s in range(sub))
        return tuple(out)

    def kv_hit_bound(self, max_copies: int = 8) -> float:
        """The KV token hit rate of this request stream on one node with an infinite cache.

        Taken over the first ``max_copies`` copies (each is a window of the same trace;
        they share only the global ids), fed to one cache in arrival order.
        """
        block = self.trace_block_tokens
        if not block:
            return 0.0
        requests = self.trace.requests
        seen: set[int] = set()
        hit = total = 0
        for a in self.arrivals():
            if a.copy >= max_copies:
                continue
            request = requests[a.index]
            hashes = self.hashes(a.copy, a.index)
            matched = 0
            for h in hashes:
                if h not in seen:
                    break
                matched += 1
            seen.update(hashes)
            hit += min(matched * self.pool_block_tokens, request.input_tokens - 1)
            total += request.input_tokens
        return hit / total if total else 0.0


def kv_hit_bound(trace: Trace) -> float:
    """The trace's own KV token hit rate on one node with an infinite cache.

    Each request reuses the longest run of leading full blocks that any earlier request
    has had (contiguous prefix), capped one token short of its prompt as engines do.
    """
    if not trace.block_tokens:
        return 0.0
    hit, total = _prefix_hits(trace.requests, trace.block_tokens)
    return hit / total if total else 0.0


def _prefix_hits(requests: Sequence[TraceRequest], block: int) -> tuple[int, int]:
    """Cached and total prompt tokens of ``requests`` in order, with an infinite cache."""
    seen: set[int] = set()
    hit = total = 0
    for request in requests:
        full = request.input_tokens // block
        parent, matched, matching = 0, 0, True
        for position, h in enumerate(request.hash_ids[:full]):
            parent = hash((parent, h))
            if matching and parent in seen:
                matched = position + 1
            else:
                matching = False
            seen.add(parent)
        hit += min(matched * block, request.input_tokens - 1)
        total += request.input_tokens
    return hit, total


def fleet_cache_bound(workload: Workload, kv_tokens: int, max_copies: int = 8) -> float:
    """The hit rate of one LRU cache as large as the whole fleet's, fed the whole stream.

    What perfect placement could reach with the fleet's KV memory: every request sees the
    union of all caches (:class:`BlockPool` with its LRU), sequences take no room while
    running. With ``k`` copies, the first ``max_copies`` are fed into a cache scaled by the
    same share, which holds the same seconds of traffic.
    """
    if not workload.trace_block_tokens:
        return 0.0
    block = workload.pool_block_tokens
    copies = min(workload.copies, max_copies)
    tokens = int(kv_tokens * copies / workload.copies)
    pool = BlockPool(max(tokens // block, 1), block)
    requests = workload.trace.requests
    hit = total = 0
    for a in workload.arrivals():
        if a.copy >= copies:
            continue
        request = requests[a.index]
        hashes = workload.hashes(a.copy, a.index)
        allocation = pool.try_allocate_blocks(hashes, request.input_tokens, use_reserve=True)
        if allocation is None:
            total += request.input_tokens
            continue
        hit += min(len(allocation.cached_blocks) * block, request.input_tokens - 1)
        total += request.input_tokens
        pool.release_blocks(allocation, hashes)
    return hit / total if total else 0.0
