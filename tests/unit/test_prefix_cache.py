"""Unit tests for PrefixCache: KV reuse across requests that share a token prefix."""

from __future__ import annotations

import numpy as np
import torch

from python_backends.cpu_engine.prefix_cache import (
    KVState,
    PrefixCache,
    common_prefix,
    kv_bytes,
    kv_length,
    kv_prefix,
)

LAYERS, HEADS, HEAD_DIM = 2, 2, 4


def _kv(tokens: int, fill: float = 0.0) -> KVState:
    """A KV state of ``tokens`` positions; position ``i`` of every tensor holds ``fill + i``."""
    ramp = torch.arange(tokens, dtype=torch.float32).view(1, 1, tokens, 1) + fill
    shape = (1, HEADS, tokens, HEAD_DIM)
    return tuple((ramp.expand(shape).clone(), -ramp.expand(shape).clone()) for _ in range(LAYERS))


def _bytes(tokens: int) -> int:
    return kv_bytes(_kv(tokens))


def test_kv_helpers() -> None:
    kv = _kv(5)

    assert kv_length(kv) == 5
    assert kv_length(()) == 0
    assert kv_bytes(kv) == LAYERS * 2 * HEADS * 5 * HEAD_DIM * 4
    assert kv_length(kv_prefix(kv, 3)) == 3


def test_common_prefix() -> None:
    assert common_prefix(np.array([1, 2, 3]), np.array([1, 2, 4])) == 2
    assert common_prefix(np.array([1, 2]), np.array([1, 2, 3])) == 2
    assert common_prefix(np.array([5]), np.array([1])) == 0
    assert common_prefix(np.array([], dtype=np.int64), np.array([1])) == 0


def test_empty_cache_misses() -> None:
    assert PrefixCache(1 << 20).lookup([1, 2, 3]) == (0, None)


def test_lookup_returns_matching_prefix_of_kv() -> None:
    cache = PrefixCache(1 << 20)
    kv = _kv(6, fill=100.0)
    cache.insert([1, 2, 3, 4, 5, 6], kv)

    n, got = cache.lookup([1, 2, 3, 4, 9, 9])

    assert n == 4
    assert got is not None
    assert kv_length(got) == 4
    for (k, v), (k0, v0) in zip(got, kv, strict=True):
        assert torch.equal(k, k0[:, :, :4])
        assert torch.equal(v, v0[:, :, :4])


def test_lookup_leaves_at_least_one_token_to_prefill() -> None:
    cache = PrefixCache(1 << 20)
    cache.insert([1, 2, 3, 4], _kv(4))

    exact, exact_kv = cache.lookup([1, 2, 3, 4])
    shorter, shorter_kv = cache.lookup([1, 2, 3])

    assert exact == 3
    assert exact_kv is not None and kv_length(exact_kv) == 3
    assert shorter == 2
    assert shorter_kv is not None and kv_length(shorter_kv) == 2


def test_lookup_of_single_token_prompt_misses() -> None:
    cache = PrefixCache(1 << 20)
    cache.insert([1, 2, 3], _kv(3))

    assert cache.lookup([1]) == (0, None)
    assert cache.lookup([]) == (0, None)


def test_no_common_prefix_misses() -> None:
    cache = PrefixCache(1 << 20)
    cache.insert([1, 2, 3], _kv(3))

    assert cache.lookup([2, 2, 3]) == (0, None)


def test_longest_match_wins() -> None:
    cache = PrefixCache(1 << 20)
    cache.insert([1, 2, 9, 9], _kv(4, fill=10.0))
    cache.insert([1, 2, 3, 4, 8], _kv(5, fill=20.0))
    cache.insert([1, 7], _kv(2, fill=30.0))

    n, kv = cache.lookup([1, 2, 3, 4, 5, 6])

    assert n == 4
    assert kv is not None
    assert float(kv[0][0][0, 0, 0, 0]) == 20.0


def test_lru_eviction_under_byte_budget() -> None:
    cache = PrefixCache(3 * _bytes(4))
    cache.insert([1, 1, 1, 1], _kv(4))
    cache.insert([2, 2, 2, 2], _kv(4))
    cache.insert([3, 3, 3, 3], _kv(4))
    assert len(cache) == 3

    # Touch the oldest entry: the second one becomes least recently used.
    assert cache.lookup([1, 1, 1, 1, 5])[0] == 4
    cache.insert([4, 4, 4, 4], _kv(4))

    assert len(cache) == 3
    assert cache.bytes_used <= cache.capacity_bytes
    assert cache.lookup([2, 2, 2, 2, 5]) == (0, None)
    for kept in (1, 3, 4):
        assert cache.lookup([kept] * 4 + [5])[0] == 4


def test_eviction_frees_enough_for_a_big_entry() -> None:
    cache = PrefixCache(_bytes(8))
    cache.insert([1, 1], _kv(2))
    cache.insert([2, 2], _kv(2))
    cache.insert([3, 3, 3, 3, 3, 3, 3], _kv(7))

    assert len(cache) == 1
    assert cache.bytes_used == _bytes(7)


def test_bytes_and_tokens_are_accounted() -> None:
    cache = PrefixCache(1 << 20)
    cache.insert([1, 2, 3], _kv(3))
    cache.insert([4, 5], _kv(2))

    assert cache.bytes_used == _bytes(3) + _bytes(2)
    assert cache.tokens_held == 5


def test_insert_drops_entries_that_are_prefixes_of_the_new_one() -> None:
    cache = PrefixCache(1 << 20)
    cache.insert([1, 2], _kv(2))
    cache.insert([1, 2, 3], _kv(3))
    cache.insert([1, 9], _kv(2))
    cache.insert([1, 2, 3, 4, 5], _kv(5))

    assert len(cache) == 2
    assert cache.bytes_used == _bytes(5) + _bytes(2)
    assert cache.tokens_held == 7
    assert cache.lookup([1, 9, 9])[0] == 2


def test_reinserting_same_tokens_keeps_one_entry() -> None:
    cache = PrefixCache(1 << 20)
    cache.insert([1, 2, 3], _kv(3))
    cache.insert([1, 2, 3], _kv(3, fill=50.0))

    assert len(cache) == 1
    assert cache.bytes_used == _bytes(3)
    _, kv = cache.lookup([1, 2, 3, 4])
    assert kv is not None and float(kv[0][0][0, 0, 0, 0]) == 50.0


def test_longer_entry_is_not_dropped_by_its_prefix() -> None:
    cache = PrefixCache(1 << 20)
    cache.insert([1, 2, 3, 4], _kv(4))
    cache.insert([1, 2], _kv(2))

    assert len(cache) == 2
    assert cache.lookup([1, 2, 3, 4, 5])[0] == 4


def test_entries_larger_than_capacity_are_skipped() -> None:
    cache = PrefixCache(_bytes(3))
    cache.insert([7, 7], _kv(2))
    cache.insert([1, 2, 3, 4], _kv(4))

    assert len(cache) == 1
    assert cache.bytes_used == _bytes(2)
    assert cache.lookup([1, 2, 3, 4, 5]) == (0, None)
    assert cache.lookup([7, 7, 7])[0] == 2


def test_zero_capacity_cache_keeps_nothing() -> None:
    cache = PrefixCache(0)
    cache.insert([1, 2, 3], _kv(3))

    assert len(cache) == 0
    assert cache.lookup([1, 2, 3, 4]) == (0, None)


def test_insert_ignores_mismatched_or_empty_sequences() -> None:
    cache = PrefixCache(1 << 20)
    cache.insert([1, 2, 3], _kv(2))
    cache.insert([], _kv(0))

    assert len(cache) == 0
    assert cache.bytes_used == 0


def test_stored_tensors_are_contiguous_copies() -> None:
    big = _kv(10, fill=1.0)
    view = kv_prefix(big, 4)
    assert not view[0][0].is_contiguous()
    cache = PrefixCache(1 << 20)

    cache.insert([1, 2, 3, 4], view)
    n, stored = cache.lookup([1, 2, 3, 4, 5])

    assert n == 4
    assert stored is not None
    own_bytes = HEADS * 4 * HEAD_DIM * 4
    for (k, v), (big_k, big_v) in zip(stored, big, strict=True):
        assert k.is_contiguous() and v.is_contiguous()
        assert k.untyped_storage().data_ptr() != big_k.untyped_storage().data_ptr()
        assert v.untyped_storage().data_ptr() != big_v.untyped_storage().data_ptr()
        assert k.untyped_storage().nbytes() == own_bytes
        assert v.untyped_storage().nbytes() == own_bytes
    # Writing into the big tensors must not reach the cached copy.
    for k, v in big:
        k.fill_(-7.0)
        v.fill_(-7.0)
    _, again = cache.lookup([1, 2, 3, 4, 5])
    assert again is not None
    assert float(again[0][0][0, 0, 0, 0]) == 1.0
    assert float(again[0][1][0, 0, 2, 0]) == -3.0
