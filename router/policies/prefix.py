"""Prefix-block hashes and the router-side index of which node holds which blocks.

A prompt is cut into full blocks of ``block_size`` tokens (a trailing partial block is not
hashed: engines only share full blocks). Block ``k``'s hash covers the parent's hash and the
block's own token ids, so it names the *whole prefix* up to and including block ``k``, as in
vLLM's automatic prefix caching and Mooncake's ``hash_ids``. The hash is BLAKE2b over the
parent's 8-byte hash and the block's token ids (little-endian int64), truncated to 64 bits:
the same tokens give the same hashes in every process and on every machine (Python's own
``hash`` of ``str``/``bytes`` is salted per process and must not be used). A trace that
carries only block hashes therefore drives a policy exactly as live traffic does: a policy
sees nothing but ``RequestView.block_hashes``, a tuple of ints.

:class:`PrefixIndex` is the router's *belief* about each node's KV cache: the blocks it sent
there, kept per node as an LRU with a capacity in blocks and an optional TTL. It is not the
engine's cache; it is what a router can know without asking the engines (llm-d's
"precise" prefix scorer asks them; its approximate one, like this, does not).
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict, deque
from collections.abc import Container, Sequence
from hashlib import blake2b
from itertools import repeat

__all__ = ["ROOT_HASH", "PrefixIndex", "block_hashes"]

ROOT_HASH = 0
"""The parent hash of a prompt's first block."""

_LITTLE = sys.byteorder == "little"


def block_hashes(
    token_ids: Sequence[int], block_size: int, *, parent: int = ROOT_HASH
) -> tuple[int, ...]:
    """Chained 64-bit hashes of the full ``block_size``-token blocks of ``token_ids``.

    ``parent`` seeds the chain (e.g. a hash of the model or LoRA adapter, so that equal
    token ids under different adapters do not collide). Deterministic across processes.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    out: list[int] = []
    full = len(token_ids) - len(token_ids) % block_size
    for start in range(0, full, block_size):
        ids = array("q", token_ids[start : start + block_size])
        if not _LITTLE:
            ids.byteswap()
        digest = blake2b(parent.to_bytes(8, "little"), digest_size=8)
        digest.update(ids.tobytes())
        parent = int.from_bytes(digest.digest(), "little")
        out.append(parent)
    return tuple(out)


Holders = str | set[str]
"""The nodes that hold one block: a bare name for the (common) single holder, else a set."""


def _size(holders: Holders | None) -> int:
    if holders is None:
        return 0
    if holders.__class__ is str:
        return 1
    return len(holders)


def _as_set(holders: Holders | None) -> set[str]:
    if holders is None:
        return set()
    if isinstance(holders, str):
        return {holders}
    return set(holders)


class PrefixIndex:
    """Per-node LRU of block hashes, plus a reverse index hash → holders, for one model.

    Invariant that makes lookups cheap: a node's set of blocks is *prefix-closed* — if it
    holds a block it holds all of that block's ancestors. :meth:`insert` keeps it by
    touching a request's blocks tail first and head last (so a block is never older than
    its descendants, as in vLLM's eviction order), and LRU eviction and TTL expiry then
    always drop descendants before ancestors. Hence along one request's chain the holder
    sets shrink monotonically, and :meth:`match` finds every node's matched length with a
    few binary searches (O(changes × log blocks)) instead of one lookup per block and node.
    Chains that are not prefix-closed (arbitrary ids) still work, less exactly.
    """

    def __init__(self, capacity_blocks: int, ttl_s: float | None = None) -> None:
        if capacity_blocks <= 0:
            raise ValueError(f"capacity_blocks must be positive, got {capacity_blocks}")
        self.capacity_blocks = capacity_blocks
        self.ttl_s = ttl_s
        self._holders: dict[int, Holders] = {}
        self._lru: dict[str, OrderedDict[int, float]] = {}
        self._touches: deque[tuple[float, str]] = deque()
        """(time, node) of each insert, oldest first: which LRUs may hold expired blocks."""

    def __len__(self) -> int:
        """Distinct blocks held by at least one node."""
        return len(self._holders)

    def blocks_on(self, node: str) -> int:
        lru = self._lru.get(node)
        return 0 if lru is None else len(lru)

    def holds(self, node: str, block: int) -> bool:
        lru = self._lru.get(node)
        return lru is not None and block in lru

    def _expire(self, now: float) -> None:
        ttl = self.ttl_s
        if ttl is None:
            return
        cutoff = now - ttl
        touches = self._touches
        while touches and touches[0][0] < cutoff:
            _, node = touches.popleft()
            lru = self._lru.get(node)
            while lru:
                block, seen = next(iter(lru.items()))
                if seen >= cutoff:
                    break
                lru.popitem(last=False)
                self._drop_holder(block, node)

    def _drop_holder(self, block: int, node: str) -> None:
        holders = self._holders.get(block)
        if holders is None:
            return
        if isinstance(holders, str):
            if holders == node:
                del self._holders[block]
            return
        holders.discard(node)
        if len(holders) == 1:
            self._holders[block] = next(iter(holders))
        elif not holders:
            del self._holders[block]

    @staticmethod
    def _leading(hashes: Sequence[int], held: Container[int], lo: int = 0) -> int:
        """Length of the leading run of ``hashes`` in ``held`` (a binary search, valid because
        held sets are prefix-closed); the first ``lo`` blocks are known to be held."""
        has = held.__contains__
        n = len(hashes)
        if lo >= n or not has(hashes[lo]):
            return lo
        if has(hashes[n - 1]):
            return n
        a, b = lo, n - 1  # a held, b not
        while b - a > 1:
            m = (a + b) // 2
            if has(hashes[m]):
                a = m
            else:
                b = m
        return a + 1

    def match(self, hashes: Sequence[int], now: float = 0.0) -> dict[str, int]:
        """Node → number of leading blocks of ``hashes`` it holds (nodes with none omitted)."""
        self._expire(now)
        n = len(hashes)
        if n == 0:
            return {}
        get = self._holders.get
        first = get(hashes[0])
        if first is None:
            return {}
        out: dict[str, int] = {}
        cur: Holders = first
        size = _size(cur)
        lo = 0  # every node in ``cur`` holds blocks 0..lo
        while True:
            if _size(get(hashes[n - 1])) == size:
                k = n - 1
            else:
                a, b = lo, n - 1  # size(a) == size, size(b) < size
                while b - a > 1:
                    m = (a + b) // 2
                    if _size(get(hashes[m])) == size:
                        a = m
                    else:
                        b = m
                k = a
            if k == n - 1:
                for node in _as_set(cur):
                    out[node] = n
                return out
            nxt = get(hashes[k + 1])
            nxt_set = _as_set(nxt)
            for node in _as_set(cur) - nxt_set:
                out[node] = k + 1
            if not nxt_set:
                return out
            cur, size, lo = nxt_set, len(nxt_set), k + 1

    def insert(self, node: str, hashes: Sequence[int], now: float = 0.0) -> None:
        """``node`` was sent a request with these blocks: it now holds (and just used) them."""
        self._expire(now)
        if not hashes:
            return
        lru = self._lru.get(node)
        if lru is None:
            lru = self._lru[node] = OrderedDict()
        holders = self._holders
        held = self._leading(hashes, lru)
        known = self._leading(hashes, holders, held)
        # Reverse index: blocks no node held get this node as their only holder (bulk, in C);
        # blocks other nodes hold gain this node.
        tail = hashes[known:]
        if tail and holders.keys().isdisjoint(tail):
            holders.update(dict.fromkeys(tail, node))
            shared = hashes[held:known]
        else:  # not prefix-closed (arbitrary ids): take every block the slow way
            shared = hashes[held:]
        for block in shared:
            cur = holders.get(block)
            if cur is None:
                holders[block] = node
            elif isinstance(cur, str):
                if cur != node:
                    holders[block] = {cur, node}
            else:
                cur.add(node)
        # LRU: re-insert the held blocks and add the new ones, tail first, head last.
        if held:
            deque(map(lru.pop, hashes[:held], repeat(None)), maxlen=0)
        lru.update(dict.fromkeys(reversed(hashes), now))
        if self.ttl_s is not None and (not self._touches or self._touches[-1] != (now, node)):
            self._touches.append((now, node))
        excess = len(lru) - self.capacity_blocks
        if excess > 0:
            popitem = lru.popitem
            drop = self._drop_holder
            for _ in range(excess):
                block, _seen = popitem(last=False)
                drop(block, node)

    def forget(self, node: str) -> None:
        """``node`` lost its KV cache (restart) or left the fleet."""
        lru = self._lru.pop(node, None)
        if lru is None:
            return
        for block in lru:
            self._drop_holder(block, node)
