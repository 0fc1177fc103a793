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
from itertools import islice, repeat

import numpy as np
from numpy.typing import NDArray

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


class PrefixIndex:
    """Per-node LRU of block hashes plus a reverse index block → holders, for one model.

    Holders are Python ints used as bitmasks over node ids (ids are given out on a node's
    first insert), so the set algebra of a lookup runs in C whatever the fleet size.

    Invariant that makes lookups cheap: a node's set of blocks is *prefix-closed* — if it
    holds a block it holds all of that block's ancestors. :meth:`insert` keeps it by
    touching a request's blocks tail first and head last (so a block is never less recent
    than its descendants, as in vLLM's eviction order); LRU eviction and TTL expiry then
    always drop descendants before ancestors. Along one request's chain the holder sets
    therefore shrink monotonically, and :meth:`match` finds every node's matched length
    with a few binary searches (O(distinct lengths × log blocks)), not a lookup per block
    and node. Ids that are not prefix-closed (arbitrary per-block ids) still work, less
    exactly.

    TTL: blocks not used for ``ttl_s`` are dropped (exactly, assuming ``now`` never goes
    back); the index keeps one ``(time, node)`` entry per insert to find them.

    ``stride``: index only every ``stride``-th block (blocks ``stride − 1``, ``2·stride − 1``,
    …). Chained hashes make each indexed block stand for its whole prefix, so matching is
    exact to within ``stride`` blocks (a match is rounded *down* to a multiple of
    ``stride``) and every table operation is ``stride`` times cheaper — the trade llm-d's
    approximate prefix scorer makes with its 64-token hash blocks. Capacity is still
    counted in blocks.
    """

    def __init__(
        self, capacity_blocks: int, ttl_s: float | None = None, *, stride: int = 1
    ) -> None:
        if capacity_blocks <= 0:
            raise ValueError(f"capacity_blocks must be positive, got {capacity_blocks}")
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        if stride <= 0:
            raise ValueError(f"stride must be positive, got {stride}")
        self.capacity_blocks = capacity_blocks
        self.ttl_s = ttl_s
        self.stride = stride
        self._capacity = max(1, capacity_blocks // stride)
        self._holders: dict[int, int] = {}
        """block → bitmask of node ids holding it (0: none; such keys are compacted away)."""
        self._dead = 0
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._lru: list[OrderedDict[int, float]] = []
        """Per node id: block → last use, least recently used first."""
        self._touches: deque[tuple[float, int]] = deque()
        self._rows_key: tuple[tuple[str, ...] | None, int] = (None, 0)
        self._rows: NDArray[np.intp] = np.zeros(0, dtype=np.intp)

    # -- introspection ------------------------------------------------------------------

    def __len__(self) -> int:
        """Distinct indexed blocks held by at least one node."""
        return sum(1 for v in self._holders.values() if v)

    def blocks_on(self, node: str) -> int:
        """Blocks the index believes ``node`` holds (indexed blocks × ``stride``)."""
        nid = self._ids.get(node)
        return 0 if nid is None else len(self._lru[nid]) * self.stride

    def holds(self, node: str, block: int) -> bool:
        """Whether ``node`` holds indexed block hash ``block``."""
        nid = self._ids.get(node)
        return nid is not None and block in self._lru[nid]

    def _sample(self, hashes: Sequence[int]) -> Sequence[int]:
        stride = self.stride
        return hashes if stride == 1 else hashes[stride - 1 :: stride]

    # -- lookups ------------------------------------------------------------------------

    def _levels(self, blocks: Sequence[int]) -> list[tuple[int, int]]:
        """Disjoint (node-id mask, matched blocks) groups, longest match last."""
        hashes = self._sample(blocks)
        stride = self.stride
        n = len(hashes)
        if n == 0:
            return []
        get = self._holders.get
        cur = get(hashes[0], 0)
        out: list[tuple[int, int]] = []
        lo = 0  # every node in ``cur`` holds blocks 0..lo
        while cur:
            if (get(hashes[n - 1], 0) & cur) == cur:
                out.append((cur, n * stride))
                break
            a, b = lo, n - 1  # all of cur hold a, not all hold b
            while b - a > 1:
                m = (a + b) // 2
                if (get(hashes[m], 0) & cur) == cur:
                    a = m
                else:
                    b = m
            nxt = cur & get(hashes[b], 0)
            out.append((cur & ~nxt, b * stride))
            cur, lo = nxt, b
        return out

    def match(self, hashes: Sequence[int], now: float = 0.0) -> dict[str, int]:
        """Node → number of leading blocks of ``hashes`` it holds (nodes with none left out)."""
        self._expire(now)
        names = self._names
        out: dict[str, int] = {}
        for mask, blocks in self._levels(hashes):
            while mask:
                low = mask & -mask
                out[names[low.bit_length() - 1]] = blocks
                mask ^= low
        return out

    def matched_blocks(
        self, hashes: Sequence[int], names: tuple[str, ...], now: float = 0.0
    ) -> NDArray[np.float64] | None:
        """Leading blocks of ``hashes`` held by each of ``names`` (``None``: no node holds
        any). Vectorised for policies; the name → id map is cached per ``names`` tuple."""
        self._expire(now)
        levels = self._levels(hashes)
        if not levels:
            return None
        n_ids = len(self._names)
        by_id = np.zeros(n_ids + 1)  # the last slot answers for names the index never saw
        nbytes = (n_ids + 7) // 8
        for mask, blocks in levels:
            if mask.bit_count() <= 8:
                while mask:
                    low = mask & -mask
                    by_id[low.bit_length() - 1] = blocks
                    mask ^= low
            else:
                bits = np.unpackbits(
                    np.frombuffer(mask.to_bytes(nbytes, "little"), dtype=np.uint8),
                    count=n_ids,
                    bitorder="little",
                )
                by_id[:n_ids][bits.view(bool)] = blocks
        return by_id[self._row_ids(names)]

    def _row_ids(self, names: tuple[str, ...]) -> NDArray[np.intp]:
        key = (names, len(self._names))
        cached, count = self._rows_key
        if cached is not names or count != key[1]:
            get = self._ids.get
            missing = len(self._names)
            self._rows = np.fromiter(
                (get(name, missing) for name in names), dtype=np.intp, count=len(names)
            )
            self._rows_key = key
        return self._rows

    # -- learning -----------------------------------------------------------------------

    def _id(self, node: str) -> int:
        nid = self._ids.get(node)
        if nid is None:
            nid = self._ids[node] = len(self._names)
            self._names.append(node)
            self._lru.append(OrderedDict())
        return nid

    def insert(self, node: str, blocks: Sequence[int], now: float = 0.0) -> None:
        """``node`` was sent a request with these blocks: it now holds (and just used) them."""
        self._expire(now)
        hashes = self._sample(blocks)
        if not hashes:
            return
        nid = self._id(node)
        bit = 1 << nid
        lru = self._lru[nid]
        holders = self._holders
        held = _leading(hashes, lru)
        rest = hashes[held:]
        if rest:
            if holders.keys().isdisjoint(rest):
                holders.update(dict.fromkeys(rest, bit))
            else:
                merged = map(bit.__or__, map(holders.get, rest, repeat(0)))
                holders.update(zip(rest, merged, strict=True))
            # new blocks in, tail first: the head ends up the most recently used
            deque(map(lru.__setitem__, reversed(rest), repeat(now)), maxlen=0)
        if held:
            again = hashes[held - 1 :: -1]
            deque(map(lru.move_to_end, again), maxlen=0)
            if self.ttl_s is not None:
                deque(map(lru.__setitem__, again, repeat(now)), maxlen=0)
        if self.ttl_s is not None and (not self._touches or self._touches[-1] != (now, nid)):
            self._touches.append((now, nid))
        excess = len(lru) - self._capacity
        if excess > 0:
            self._drop(nid, list(islice(lru, excess)))

    def _drop(self, nid: int, blocks: list[int]) -> None:
        """Forget that node ``nid`` holds ``blocks`` (all of which it holds)."""
        lru = self._lru[nid]
        deque(map(lru.pop, blocks), maxlen=0)
        holders = self._holders
        keep = ~(1 << nid)
        masks = list(map(keep.__and__, map(holders.get, blocks, repeat(0))))
        holders.update(zip(blocks, masks, strict=True))
        self._dead += masks.count(0)
        if self._dead > 1024 and self._dead * 2 > len(holders):
            self._holders = {b: m for b, m in holders.items() if m}
            self._dead = 0

    def _expire(self, now: float) -> None:
        ttl = self.ttl_s
        if ttl is None:
            return
        cutoff = now - ttl
        touches = self._touches
        while touches and touches[0][0] < cutoff:
            _, nid = touches.popleft()
            lru = self._lru[nid]
            old = []
            for block, seen in lru.items():
                if seen >= cutoff:
                    break
                old.append(block)
            if old:
                self._drop(nid, old)

    def forget(self, node: str) -> None:
        """``node`` lost its KV cache (restart) or left the fleet."""
        nid = self._ids.get(node)
        if nid is not None and self._lru[nid]:
            self._drop(nid, list(self._lru[nid]))


def _leading(hashes: Sequence[int], held: Container[int]) -> int:
    """Length of the leading run of ``hashes`` in ``held``: a binary search, valid because
    a node's blocks are prefix-closed."""
    has = held.__contains__
    n = len(hashes)
    if not has(hashes[0]):
        return 0
    if has(hashes[n - 1]):
        return n
    a, b = 0, n - 1  # a held, b not
    while b - a > 1:
        m = (a + b) // 2
        if has(hashes[m]):
            a = m
        else:
            b = m
    return a + 1
