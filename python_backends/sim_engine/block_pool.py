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
        matched = hashes[: self.match(hashes)]
        needed = self.blocks_for(reserve_tokens) - len(matched)
        reusable_idle = sum(1 for h in matched if h in self._idle)
        # Every idle block not being reused can be evicted to make room.
        held_back = 0 if use_reserve else self.reserved_blocks
        if self.total_blocks - self.used - reusable_idle - held_back < needed:
            return None
        for h in matched:
            if h in self._idle:
                del self._idle[h]
            self._refs[h] = self._refs.get(h, 0) + 1
        while self.total_blocks - self.used - len(self._idle) < needed:
            self._idle.popitem(last=False)
        self._private += needed
        self.reused_blocks += len(matched)
        return Allocation(cached_blocks=list(matched), private_blocks=needed)

    def publish(self, allocation: Allocation, prompt: Sequence[int]) -> None:
        """Make a prefilled prompt's full blocks shareable while its sequence still runs.

        As in TensorRT-LLM, a request arriving while an earlier one with the same prefix
        is still generating reuses the prefix computed by the earlier one.
        """
        hashes = block_hashes(prompt, self.block_tokens)
        for h in hashes[len(allocation.cached_blocks) :]:
            if allocation.private_blocks == 0:
                break
            # A block someone else already published is shared and ours is freed.
            self._idle.pop(h, None)
            self._refs[h] = self._refs.get(h, 0) + 1
            allocation.cached_blocks.append(h)
            allocation.private_blocks -= 1
            self._private -= 1

    def release(self, allocation: Allocation, tokens: Sequence[int]) -> None:
        """Free a finished sequence's blocks, keeping its full blocks cached for reuse."""
        for h in allocation.cached_blocks:
            self._refs[h] -= 1
            if self._refs[h] == 0:
                del self._refs[h]
                self._idle[h] = None
        self._private -= allocation.private_blocks
        for h in block_hashes(tokens, self.block_tokens)[: allocation.total]:
            if h in self._refs:
                continue
            self._idle[h] = None
            self._idle.move_to_end(h)
        while self.used + len(self._idle) > self.total_blocks:
            self._idle.popitem(last=False)
