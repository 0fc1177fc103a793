"""A paged KV-cache block pool with prefix reuse, as TensorRT-LLM's block manager keeps it.

Blocks are identified by a chained hash of their tokens (a block's identity depends on
everything before it), so two prompts share blocks exactly as far as their full-block
prefixes agree. A finished sequence's full blocks stay cached with no owner; they are
evicted least-recently-used when a new sequence needs room.

A few blocks may be kept in reserve for top-priority requests (the router's health
canaries): an ordinary request is admitted only if it leaves them free, so a pool filled
by long ``guaranteed_no_evict`` reservations still admits a canary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field


def block_hashes(tokens: Sequence[int], block_tokens: int) -> list[int]:
    """Chained hashes of every full block of ``tokens``."""
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        parent = hash((parent, tuple(tokens[start : start + block_tokens])))
        hashes.append(parent)
    return hashes


@dataclass
class Allocation:
    """The blocks one running sequence holds."""

    cached_blocks: list[int] = field(default_factory=list)
    """Hashes of reused blocks (shared, reference-counted)."""
    private_blocks: int = 0
    """Blocks allocated fresh for this sequence."""

    @property
    def total(self) -> int:
        return len(self.cached_blocks) + self.private_blocks


MAX_RESERVED_FRACTION = 8
"""The top-priority reserve never exceeds ``total_blocks // MAX_RESERVED_FRACTION``."""


class BlockPool:
    """Capacity accounting for KV blocks, with LRU reuse of finished prefixes."""

    def __init__(self, total_blocks: int, block_tokens: int, reserved_tokens: int = 0) -> None:
        self.total_blocks = total_blocks
        self.block_tokens = block_tokens
        self.reserved_blocks = min(
            self.blocks_for(reserved_tokens), total_blocks // MAX_RESERVED_FRACTION
        )
        """Blocks only a ``use_reserve`` allocation may take."""
        self._refs: dict[int, int] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()
        self._private = 0
        self.reused_blocks = 0

    @property
    def used(self) -> int:
        """Blocks owned by running sequences."""
        return self._private + len(self._refs)

    @property
    def free(self) -> int:
        """Blocks a new sequence could take (idle cached blocks can be evicted)."""
        return self.total_blocks - self.used

    @property
    def cached_idle(self) -> int:
        return len(self._idle)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` are cached (owned or idle)."""
        n = 0
        for h in hashes:
            if h not in self._refs and h not in self._idle:
                break
            n += 1
        return n

    def try_allocate(
        self, prompt: Sequence[int], reserve_tokens: int, use_reserve: bool = False
    ) -> Allocation | None:
        """Reserve room for ``reserve_tokens`` (prompt + max new tokens), reusing prefixes.

        Returns ``None`` (nothing changed) when the pool cannot hold it: under
        ``guaranteed_no_evict`` a request waits rather than risk eviction mid-generation.
        Unless ``use_reserve``, the allocation must leave :attr:`reserved_blocks` free.
        """
        hashes = block_hashes(prompt, self.block_tokens)
        return self.try_allocate_blocks(hashes, reserve_tokens, use_reserve)

    def try_allocate_blocks(
        self, hashes: Sequence[int], reserve_tokens: int, use_reserve: bool = False
    ) -> Allocation | None:
        """:meth:`try_allocate` for a prompt given by its full blocks' chained hashes.

        The fleet simulator calls this directly with hashes derived from a trace's prefix
        ids; the engine calls it through :meth:`try_allocate` with hashes of real tokens.
        """
        matched = hashes[: self.match(hashes)]
        needed = self.blocks_for(reserve_tokens) - len(matched)
        idle = self._idle
        reusable_idle = sum(1 for h in matched if h in idle) if idle else 0
        # Every idle block not being reused can be evicted to make room.
        held_back = 0 if use_reserve else self.reserved_blocks
        if self.total_blocks - self.used - reusable_idle - held_back < needed:
            return None
        refs = self._refs
        for h in matched:
            if h in idle:
                del idle[h]
            refs[h] = refs.get(h, 0) + 1
        excess = self.used + needed + len(idle) - self.total_blocks
        for _ in range(max(excess, 0)):
            idle.popitem(last=False)
        self._private += needed
        self.reused_blocks += len(matched)
        return Allocation(cached_blocks=list(matched), private_blocks=needed)

    def publish(self, allocation: Allocation, prompt: Sequence[int]) -> None:
        """Make a prefilled prompt's full blocks shareable while its sequence still runs.

        As in TensorRT-LLM, a request arriving while an earlier one with the same prefix
        is still generating reuses the prefix computed by the earlier one.
        """
        self.publish_blocks(allocation, block_hashes(prompt, self.block_tokens))

    def publish_blocks(self, allocation: Allocation, hashes: Sequence[int]) -> None:
        """:meth:`publish` for a prompt given by its full blocks' chained hashes."""
        refs, idle = self._refs, self._idle
        cached = allocation.cached_blocks
        take = hashes[len(cached) : len(cached) + allocation.private_blocks]
        for h in take:
            # A block someone else already published is shared and ours is freed.
            if h in idle:
                del idle[h]
            refs[h] = refs.get(h, 0) + 1
        cached.extend(take)
        allocation.private_blocks -= len(take)
        self._private -= len(take)

    def release(self, allocation: Allocation, tokens: Sequence[int]) -> None:
        """Free a finished sequence's blocks, keeping its full blocks cached for reuse."""
        self.release_blocks(allocation, block_hashes(tokens, self.block_tokens))

    def release_blocks(self, allocation: Allocation, hashes: Sequence[int]) -> None:
        """:meth:`release` for a sequence given by its full blocks' chained hashes."""
        refs, idle = self._refs, self._idle
        for h in allocation.cached_blocks:
            refs[h] -= 1
            if refs[h] == 0:
                del refs[h]
                idle[h] = None
        self._private -= allocation.private_blocks
        # The cached blocks lead ``hashes`` (matched, then published, in order) and are
        # idle now unless shared: only the blocks past them are new to the cache.
        for h in hashes[len(allocation.cached_blocks) : allocation.total]:
            if h in refs:
                continue
            idle[h] = None
            idle.move_to_end(h)
        excess = self.used + len(idle) - self.total_blocks
        for _ in range(max(excess, 0)):
            idle.popitem(last=False)
