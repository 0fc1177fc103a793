"""Unit tests for the sim engine's paged KV block pool (prefix reuse, publish, LRU eviction)."""

from __future__ import annotations

import random

import pytest

from python_backends.sim_engine.block_pool import Allocation, BlockPool, block_hashes

BLOCK = 4


def _state(pool: BlockPool) -> tuple[int, int, int, int]:
    return pool.used, pool.free, pool.cached_idle, pool.reused_blocks


def _check_invariants(pool: BlockPool, running: list[Allocation]) -> None:
    assert 0 <= pool.used <= pool.total_blocks
    assert pool.used + pool.cached_idle <= pool.total_blocks
    assert pool.free == pool.total_blocks - pool.used
    # What running sequences hold is exactly what the pool counts as used.
    shared = {h for a in running for h in a.cached_blocks}
    assert pool.used == sum(a.private_blocks for a in running) + len(shared)
    assert all(a.private_blocks >= 0 for a in running)


# -- block_hashes -----------------------------------------------------------------------


def test_block_hashes_hash_only_full_blocks() -> None:
    tokens = list(range(100, 111))  # two full blocks and three tokens

    hashes = block_hashes(tokens, BLOCK)

    assert len(hashes) == 2
    assert block_hashes(tokens[:8], BLOCK) == hashes
    assert block_hashes(tokens[:7], BLOCK) == hashes[:1]
    assert block_hashes(tokens[:3], BLOCK) == []
    assert block_hashes([], BLOCK) == []


def test_same_prefix_gives_same_leading_hashes() -> None:
    a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    b = [1, 2, 3, 4, 5, 6, 7, 8, 99, 10, 11, 12]

    ha, hb = block_hashes(a, BLOCK), block_hashes(b, BLOCK)

    assert ha[:2] == hb[:2]
    assert ha[2] != hb[2]
    assert len(set(ha)) == 3


def test_change_in_first_block_changes_every_later_hash() -> None:
    a = [1, 2, 3, 4] + [7, 7, 7, 7] * 3
    b = [1, 2, 3, 5] + [7, 7, 7, 7] * 3

    ha, hb = block_hashes(a, BLOCK), block_hashes(b, BLOCK)

    assert len(ha) == len(hb) == 4
    assert all(x != y for x, y in zip(ha, hb, strict=True))
    # Identical block contents at different positions hash differently (chained).
    assert len(set(ha[1:])) == 3


# -- allocation -------------------------------------------------------------------------


@pytest.mark.parametrize(("reserve", "blocks"), [(1, 1), (4, 1), (5, 2), (8, 2), (9, 3), (17, 5)])
def test_try_allocate_reserves_ceil_blocks(reserve: int, blocks: int) -> None:
    pool = BlockPool(10, BLOCK)

    allocation = pool.try_allocate([1], reserve)

    assert allocation is not None
    assert allocation.total == allocation.private_blocks == blocks
    assert allocation.cached_blocks == []
    assert pool.used == blocks
    assert pool.free == 10 - blocks
    assert pool.blocks_for(reserve) == blocks


def test_try_allocate_returns_none_when_full_and_changes_nothing() -> None:
    pool = BlockPool(10, BLOCK)
    assert pool.try_allocate([1, 2, 3], 30) is not None  # 8 blocks
    before = _state(pool)

    assert pool.try_allocate([4, 5, 6], 9) is None  # needs 3, 2 free

    assert _state(pool) == before
    assert pool.try_allocate([4, 5, 6], 8) is not None  # 2 fit exactly
    assert pool.free == 0


def test_failed_allocation_leaves_idle_prefix_cached() -> None:
    pool = BlockPool(6, BLOCK)
    prompt = list(range(8))
    first = pool.try_allocate(prompt, 8)
    assert first is not None
    pool.release(first, prompt)
    filler = pool.try_allocate([50], 16)  # 4 blocks: room left = 2 idle cached
    assert filler is not None
    before = _state(pool)

    # Matches the 2 idle blocks but needs 3 more than it reuses: does not fit.
    assert pool.try_allocate([*prompt, 9], 4 * BLOCK + 1) is None

    assert _state(pool) == before
    assert pool.match(block_hashes(prompt, BLOCK)) == 2


def test_release_keeps_full_blocks_cached_for_the_next_prompt() -> None:
    pool = BlockPool(16, BLOCK)
    prompt = list(range(10))  # two full blocks + 2 tokens
    first = pool.try_allocate(prompt, len(prompt) + 6)
    assert first is not None and first.total == 4
    generated = [500, 501, 502, 503, 504, 505]

    pool.release(first, prompt + generated)

    assert pool.used == 0
    assert pool.cached_idle == 4  # 16 tokens = 4 full blocks, prompt and output
    follow_up = [*prompt[:8], 70, 71, 72]
    second = pool.try_allocate(follow_up, len(follow_up) + 5)
    assert second is not None
    assert second.cached_blocks == block_hashes(prompt, BLOCK)[:2]
    assert pool.reused_blocks == 2
    assert second.private_blocks == pool.blocks_for(len(follow_up) + 5) - 2
    assert pool.used == second.total
    assert pool.cached_idle == 2
    pool.release(second, follow_up)
    assert pool.used == 0
    assert pool.used + pool.cached_idle <= pool.total_blocks


def test_publish_shares_a_running_prompt_with_a_concurrent_request() -> None:
    pool = BlockPool(32, BLOCK)
    prompt = list(range(14))  # three full blocks + 2 tokens
    first = pool.try_allocate(prompt, len(prompt) + 4)  # 5 blocks
    assert first is not None
    used = pool.used

    pool.publish(first, prompt)

    assert first.cached_blocks == block_hashes(prompt, BLOCK)
    assert first.private_blocks == 2
    assert pool.used == used  # blocks change owner, not number
    second = pool.try_allocate([*prompt[:12], 80, 81], 14 + 4)
    assert second is not None
    assert second.cached_blocks == first.cached_blocks
    assert pool.reused_blocks == 3
    assert pool.used == used + second.private_blocks  # shared blocks are counted once
    _check_invariants(pool, [first, second])

    pool.release(first, prompt)
    _check_invariants(pool, [second])
    assert pool.used == 3 + second.private_blocks
    pool.release(second, [*prompt[:12], 80, 81])
    assert pool.used == 0
    assert pool.cached_idle == 3
    assert pool.match(block_hashes(prompt, BLOCK)) == 3


def test_publish_of_a_block_already_published_frees_the_duplicate() -> None:
    pool = BlockPool(32, BLOCK)
    prompt = list(range(8))
    first = pool.try_allocate(prompt, 12)
    second = pool.try_allocate(prompt, 12)  # neither is published yet: no reuse
    assert first is not None and second is not None
    assert pool.used == 6

    pool.publish(first, prompt)
    pool.publish(second, prompt)

    assert second.cached_blocks == first.cached_blocks
    assert pool.used == 4  # two shared + one private each
    _check_invariants(pool, [first, second])
    pool.release(second, prompt)
    pool.release(first, prompt)
    assert pool.used == 0
    assert pool.cached_idle == 2


# -- the top-priority reserve ------------------------------------------------------------


def test_ordinary_allocations_leave_the_reserve_free() -> None:
    pool = BlockPool(16, BLOCK, reserved_tokens=2 * BLOCK)
    assert pool.reserved_blocks == 2

    assert pool.try_allocate([1], 14 * BLOCK) is not None
    assert pool.try_allocate([2], 1) is None  # two blocks free, both held back
    assert pool.used == 14

    assert pool.try_allocate([3], 1, use_reserve=True) is not None
    assert pool.try_allocate([4], 1, use_reserve=True) is not None
    assert pool.try_allocate([5], 1, use_reserve=True) is None
    assert pool.used == pool.total_blocks == 16


def test_the_reserve_counts_evictable_idle_blocks_as_free() -> None:
    pool = BlockPool(16, BLOCK, reserved_tokens=2 * BLOCK)
    prompt = list(range(100, 100 + 8 * BLOCK))
    first = pool.try_allocate(prompt, len(prompt))
    assert first is not None
    pool.release(first, prompt)
    assert pool.cached_idle == 8 and pool.used == 0

    assert pool.try_allocate([1], 14 * BLOCK) is not None  # evicts idle blocks
    assert pool.try_allocate([2], 1) is None
    assert pool.try_allocate([2], 1, use_reserve=True) is not None


@pytest.mark.parametrize(
    ("total", "reserved_tokens", "blocks"),
    [(64, 0, 0), (64, 1, 1), (64, 9 * BLOCK, 8), (64, 100 * BLOCK, 8), (7, 8 * BLOCK, 0)],
)
def test_the_reserve_is_at_most_an_eighth_of_the_pool(
    total: int, reserved_tokens: int, blocks: int
) -> None:
    assert BlockPool(total, BLOCK, reserved_tokens).reserved_blocks == blocks


def test_idle_blocks_are_evicted_least_recently_used() -> None:
    pool = BlockPool(4, 2)
    prompts = [[1, 2], [3, 4], [5, 6], [7, 8]]
    for prompt in prompts:
        allocation = pool.try_allocate(prompt, 2)
        assert allocation is not None
        pool.release(allocation, prompt)
    assert pool.cached_idle == 4
    assert pool.free == 4
    # Reuse [3, 4] (it becomes the most recently used); its one new block evicts [1, 2].
    again = pool.try_allocate([3, 4, 9], 3)
    assert again is not None and len(again.cached_blocks) == 1
    assert pool.match(block_hashes([1, 2], 2)) == 0
    pool.release(again, [3, 4, 9])
    assert pool.cached_idle == 3

    newcomer = pool.try_allocate([9, 10], 4)  # needs 2 blocks: evicts the oldest, [5, 6]

    assert newcomer is not None
    assert pool.cached_idle == 2
    cached = [pool.match(block_hashes(p, 2)) for p in prompts]
    assert cached == [0, 1, 0, 1]
    assert pool.used + pool.cached_idle == pool.total_blocks


def test_random_operations_keep_the_accounting_consistent() -> None:
    rng = random.Random(1234)
    pool = BlockPool(40, BLOCK)
    families = [[rng.randrange(1000) for _ in range(4 * BLOCK)] for _ in range(4)]
    running: list[tuple[Allocation, list[int]]] = []
    published: set[int] = set()
    allocated = refused = 0

    for _ in range(3000):
        op = rng.random()
        if op < 0.45 or not running:
            family = rng.choice(families)
            prompt = family[: rng.randrange(1, len(family) + 1)]
            prompt += [rng.randrange(1000) for _ in range(rng.randrange(0, 6))]
            reserve = len(prompt) + rng.randrange(1, 12)
            before = _state(pool)
            allocation = pool.try_allocate(prompt, reserve)
            if allocation is None:
                refused += 1
                assert _state(pool) == before
            else:
                allocated += 1
                assert allocation.total == pool.blocks_for(reserve)
                running.append((allocation, prompt))
        elif op < 0.7:
            allocation, prompt = rng.choice(running)
            if id(allocation) not in published:
                published.add(id(allocation))
                pool.publish(allocation, prompt)
        else:
            allocation, prompt = running.pop(rng.randrange(len(running)))
            published.discard(id(allocation))
            generated = [rng.randrange(1000) for _ in range(rng.randrange(0, 12))]
            pool.release(allocation, prompt + generated)
        _check_invariants(pool, [a for a, _ in running])

    for allocation, prompt in running:
        pool.release(allocation, prompt)
    assert pool.used == 0
    assert pool.free == pool.total_blocks
    assert pool.cached_idle <= pool.total_blocks
    assert allocated > 100 and refused > 10
    assert pool.reused_blocks > 0
