"""Workload: trace copies, residual compression, per-copy prefix hashes and the hit bounds."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from mufleet.simulator.workload import (
    GLOBAL_ID_SHARE,
    Workload,
    fleet_cache_bound,
    kv_hit_bound,
)
from mufleet.traces import Trace, TraceRequest, load_trace


def _trace(
    rows: Sequence[tuple[float, int, int, tuple[int, ...]]], block: int | None = 512
) -> Trace:
    return Trace("hand", tuple(TraceRequest(*row) for row in rows), block)


def _conversations(n: int = 400) -> Trace:
    """``n`` requests every 0.5 s in conversations of three turns: a turn starts with
    block 0 (the shared system prompt) or extends the previous turn's prefix by a block."""
    rows: list[tuple[float, int, int, tuple[int, ...]]] = []
    for i in range(n):
        ids = (0, i + 1) if i % 3 == 0 else (*rows[i - 1][3], i + 1)
        rows.append((0.5 * i, 512 * len(ids) + 100, 50, ids))
    return _trace(rows)


@pytest.fixture(scope="module")
def conv() -> Trace:
    return _conversations()


@pytest.mark.parametrize("multiplier", [1.0, 1.5, 1.999, 2.0, 2.5, 3.0, 7.2, 16.0])
def test_copies_and_compression(conv: Trace, multiplier: float) -> None:
    w = Workload(conv, multiplier, seed=3)

    assert w.copies == math.floor(multiplier)
    assert 1.0 <= w.compression < 2.0
    assert w.copies * w.compression == pytest.approx(multiplier)
    assert w.rate_rps == pytest.approx(conv.rate_rps * multiplier)
    arrivals = w.arrivals()
    assert len(arrivals) == w.copies * len(conv)  # copies wrap round the span: none is lost
    assert {(a.copy, a.index) for a in arrivals} == {
        (c, i) for c in range(w.copies) for i in range(len(conv))
    }
    assert all(0 <= a.time_s < w.duration_s for a in arrivals)


def _bucketed(trace: Trace) -> Trace:
    """``trace`` as if its stamps were 3 s buckets spread out: its span ends a bucket later."""
    return Trace(trace.name, trace.requests, trace.block_tokens, bucket_s=3.0)


def test_a_multiplier_below_one_stretches_the_single_copy(conv: Trace) -> None:
    w = Workload(_bucketed(conv), 0.25)

    assert (w.copies, w.compression) == (1, 0.25)
    times = [a.time_s for a in w.arrivals()]
    assert times == pytest.approx([r.arrival_s / 0.25 for r in conv.requests])


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_bad_multiplier_is_rejected(conv: Trace, bad: float) -> None:
    with pytest.raises(ValueError, match="rate multiplier"):
        Workload(conv, bad)


def test_arrivals_are_sorted_and_deterministic_per_seed(conv: Trace) -> None:
    a = Workload(conv, 3.7, seed=11).arrivals()
    b = Workload(conv, 3.7, seed=11).arrivals()
    c = Workload(conv, 3.7, seed=12).arrivals()

    times = [x.time_s for x in a]
    assert times == sorted(times)
    assert a == b
    assert [x.time_s for x in c] != times
    assert sorted((x.copy, x.index) for x in c) == sorted((x.copy, x.index) for x in a)


@pytest.mark.parametrize(
    "bucketed",
    [
        True,
        False,
    ],
)
def test_copy_zero_keeps_the_trace_timeline(conv: Trace, bucketed: bool) -> None:
    trace = _bucketed(conv) if bucketed else conv
    w = Workload(trace, 2.5, seed=5)

    zero = [a for a in w.arrivals() if a.copy == 0]

    assert [a.index for a in zero] == list(range(len(conv)))
    for a in zero:
        assert a.time_s == pytest.approx(conv.requests[a.index].arrival_s / w.compression)


def test_duration_cuts_the_stream(conv: Trace) -> None:
    w = Workload(conv, 2.0, duration_s=10.0)

    assert w.duration_s == 10.0
    assert all(a.time_s < 10.0 for a in w.arrivals())
    assert 0 < len(w.arrivals()) < 2 * len(conv)


def test_hashes_per_copy(conv: Trace) -> None:
    w = Workload(conv, 3.0)
    assert w.global_ids == frozenset({0})  # in every request; the others are in fewer than 1%

    for index in (0, 4, 5, 100):
        same = w.hashes(1, index)
        assert same == w.hashes(1, index)
        full = conv.requests[index].input_tokens // 512
        assert len(same) == full
        others = [w.hashes(c, index) for c in (0, 2)]
        for other in others:
            # Only the leading global block (the shared system prompt) is common.
            assert other[0] == same[0]
            assert set(other) & set(same) == {same[0]}
    # Within a copy, a continued conversation extends its earlier request's chain.
    earlier = w.hashes(2, 4)
    assert w.hashes(2, 5)[: len(earlier)] == earlier
    assert w.hashes(1, 5)[: len(earlier)] != earlier


def test_requests_of_different_copies_share_only_global_blocks(conv: Trace) -> None:
    w = Workload(conv, 4.0)
    by_copy = [{h for i in range(len(conv)) for h in w.hashes(c, i)} for c in range(w.copies)]
    block0 = w.hashes(0, 0)[0]
    for a in range(w.copies):
        for b in range(a + 1, w.copies):
            assert by_copy[a] & by_copy[b] == {block0}


def test_finer_pool_blocks_split_each_trace_block(conv: Trace) -> None:
    coarse = Workload(conv, 2.0)
    fine = Workload(conv, 2.0, pool_block_tokens=32)

    for index in (0, 3, 9):
        h = fine.hashes(1, index)
        assert len(h) == 16 * len(coarse.hashes(1, index))
        assert len(set(h)) == len(h)
    # The same prefix gives the same sub-blocks; another copy's differ past block 0.
    earlier = fine.hashes(1, 4)
    assert fine.hashes(1, 5)[: len(earlier)] == earlier
    assert fine.hashes(0, 3)[:16] == fine.hashes(1, 3)[:16]
    assert not set(fine.hashes(0, 3)[16:]) & set(fine.hashes(1, 3)[16:])


def test_a_partial_last_block_gets_no_hash() -> None:
    trace = _trace([(0.0, 1000, 5, (0, 1)), (1.0, 1024, 5, (0, 2))])
    w = Workload(trace, 1.0)
    assert len(w.hashes(0, 0)) == 1
    assert len(w.hashes(0, 1)) == 2


def test_pool_block_must_divide_the_trace_block(conv: Trace) -> None:
    with pytest.raises(ValueError, match="must divide"):
        Workload(conv, 1.0, pool_block_tokens=48)


def test_a_trace_without_prefixes_has_no_hashes() -> None:
    trace = _trace([(0.0, 1000, 5, ()), (1.0, 2000, 5, ())], block=None)
    w = Workload(trace, 2.0)

    assert w.hashes(1, 1) == ()
    assert w.pool_block_tokens == 32
    assert kv_hit_bound(trace) == 0.0
    assert w.kv_hit_bound() == 0.0
    assert fleet_cache_bound(w, 10**6) == 0.0


HAND = [
    (0.0, 1024, 5, (0, 1)),  # new: 0
    (1.0, 1500, 5, (0, 1, 2)),  # two full blocks, both seen: 1024
    (2.0, 600, 5, (0, 5)),  # one full block, seen: 512
    (3.0, 512, 5, (0,)),  # all cached, one token short: 511
    (4.0, 2048, 5, (7, 1, 2, 3)),  # another first block: no prefix of it is cached: 0
    (5.0, 1024, 5, (0, 2)),  # (0) seen, (0, 2) not: 512
]
HAND_HITS = 0 + 1024 + 512 + 511 + 0 + 512
HAND_TOKENS = 1024 + 1500 + 600 + 512 + 2048 + 1024


def test_kv_hit_bound_by_hand() -> None:
    trace = _trace(HAND)

    assert kv_hit_bound(trace) == pytest.approx(HAND_HITS / HAND_TOKENS)
    assert Workload(trace, 1.0).kv_hit_bound() == pytest.approx(HAND_HITS / HAND_TOKENS)
    assert fleet_cache_bound(Workload(trace, 1.0), 10**9) == pytest.approx(HAND_HITS / HAND_TOKENS)


def test_the_bound_of_copies_pools_the_copies(conv: Trace) -> None:
    one = Workload(conv, 1.0).kv_hit_bound()
    assert 0 < one < 1
    # Each copy is the same trace, rotated: its bound is close to the trace's own.
    assert Workload(conv, 3.0, seed=1).kv_hit_bound() == pytest.approx(one, abs=0.02)


@pytest.mark.parametrize("kv_tokens", [2_000, 20_000, 200_000, 10**9])
def test_fleet_cache_bound_is_below_the_infinite_cache_bound(conv: Trace, kv_tokens: int) -> None:
    w = Workload(conv, 1.0)
    assert fleet_cache_bound(w, kv_tokens) <= w.kv_hit_bound() + 1e-12
    assert fleet_cache_bound(w, kv_tokens) <= kv_hit_bound(conv) + 1e-12


def test_fleet_cache_bound_grows_with_the_cache(conv: Trace) -> None:
    w = Workload(conv, 1.0)
    bounds = [fleet_cache_bound(w, kv) for kv in (1_000, 10_000, 100_000, 10**9)]
    assert bounds == sorted(bounds)
    assert bounds[0] < bounds[-1] == pytest.approx(w.kv_hit_bound())


def test_fleet_cache_bound_on_a_generated_trace(make_trace: Callable[..., Path]) -> None:
    trace = load_trace(make_trace(n=400, seed=4))
    w = Workload(trace, 1.0)
    assert (
        0 < fleet_cache_bound(w, 50_000) <= w.kv_hit_bound() == pytest.approx(kv_hit_bound(trace))
    )


def test_fleet_cache_bound_does_not_depend_on_the_pool_block(conv: Trace) -> None:
    coarse = fleet_cache_bound(Workload(conv, 1.0), 10**9)
    fine = fleet_cache_bound(Workload(conv, 1.0, pool_block_tokens=32), 10**9)
    assert fine == pytest.approx(coarse, abs=0.01)


def test_infinite_cache_bound_covers_the_fleet_cache_bound_with_copies() -> None:
    rows = [(0.5 * i, 1024, 5, (0, i + 1)) for i in range(200)]
    w = Workload(_trace(rows), 3.0)
    assert fleet_cache_bound(w, 10**9) <= w.kv_hit_bound() + 1e-12


def test_an_id_of_one_request_is_never_global() -> None:
    n = int(0.5 / GLOBAL_ID_SHARE)
    rows = [(float(i), 1024, 5, (0, i + 1)) for i in range(n)]
    w = Workload(_trace(rows), 2.0)
    assert w.global_ids == frozenset({0})
