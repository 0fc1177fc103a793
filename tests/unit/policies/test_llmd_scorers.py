"""llmd_scorers: Σ weight × (prefix, queue, KV-free) scores in [0, 1], the max wins."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from router.policies import NodeSnapshot, RequestView, block_hashes, build_policy
from router.policies.llmd_scorers import LlmdScorers
from router.policies.synthetic import SyntheticTraffic, make_node, synthetic_fleet

PROMPT = list(range(1000, 1512))  # 512 tokens: 32 blocks of 16


def request(tokens: list[int], rid: str = "r") -> RequestView:
    hashes = block_hashes(tokens, 16)
    return RequestView(rid, "t", "llama-3.1-8b", len(tokens), 128, {}, block_hashes=hashes)


def llmd(**params: object) -> LlmdScorers:
    policy = build_policy("llmd_scorers", params)
    assert isinstance(policy, LlmdScorers)
    return policy


def node(name: str, queued: int = 0, kv: float = 0.0, running: int = 0) -> NodeSnapshot:
    return make_node(
        name, pair="p", queued_requests=queued, kv_used_fraction=kv, inflight_requests=running
    )


def test_defaults_are_the_sample_profile() -> None:
    p = llmd().params
    assert (p.prefix_weight, p.queue_weight, p.kv_cache_weight) == (3.0, 2.0, 2.0)
    assert (p.block_tokens, p.max_prefix_blocks, p.lru_capacity_per_server) == (16, 256, 31_250)


def test_queue_score_is_min_max_normalised_over_candidates() -> None:
    policy = llmd(prefix_weight=0.0, kv_cache_weight=0.0)
    nodes = [node("a", queued=0), node("b", queued=5), node("c", queued=10)]
    decision = policy.choose(request(PROMPT), nodes, 0.0)
    assert dict(decision.scores) == {"a": 2.0, "b": 1.0, "c": 0.0}  # 2 × (1, 0.5, 0)
    assert decision.node == "a"
    same = [node("a", queued=4), node("b", queued=4)]
    assert dict(policy.choose(request(PROMPT), same, 0.0).scores) == {"a": 2.0, "b": 2.0}


def test_queue_score_reads_the_waiting_queue_not_running_requests() -> None:
    policy = llmd(prefix_weight=0.0, kv_cache_weight=0.0)
    nodes = [node("a", queued=1, running=0), node("b", queued=0, running=50)]
    decision = policy.choose(request(PROMPT), nodes, 0.0)
    assert decision.node == "b"
    assert dict(decision.scores) == {"a": 0.0, "b": 2.0}


def test_kv_score_is_the_free_fraction() -> None:
    policy = llmd(prefix_weight=0.0, queue_weight=0.0)
    nodes = [node("a", kv=0.9), node("b", kv=0.25), node("c", kv=1.2)]
    decision = policy.choose(request(PROMPT), nodes, 0.0)
    assert decision.node == "b"
    assert decision.scores["a"] == pytest.approx(2 * 0.1)
    assert decision.scores["b"] == pytest.approx(2 * 0.75)
    assert decision.scores["c"] == 0.0  # clipped


def test_prefix_score_is_the_matched_share_of_the_blocks() -> None:
    policy = llmd(queue_weight=0.0, kv_cache_weight=0.0)
    policy.on_routed(request(PROMPT[:256], "warm"), "a", 0.0)  # a holds 16 blocks
    half = policy.choose(request(PROMPT), [node("a"), node("b")], 1.0)
    assert dict(half.scores) == {"a": 3 * 0.5, "b": 0.0}
    assert (half.node, half.kind) == ("a", "prefix_hit")
    short = request(PROMPT[:15])  # shorter than one block: no blocks, 0 for every node
    assert set(policy.choose(short, [node("a"), node("b")], 1.0).scores.values()) == {0.0}


def test_prefix_blocks_are_block_tokens_long() -> None:
    policy = llmd(block_tokens=64, queue_weight=0.0, kv_cache_weight=0.0)
    policy.on_routed(request(PROMPT[:160], "warm"), "a", 0.0)  # 2 full 64-token blocks
    decision = policy.choose(request(PROMPT), [node("a"), node("b")], 1.0)
    assert decision.scores["a"] == pytest.approx(3 * 2 / 8)  # 2 of 512 / 64 = 8 blocks


def test_only_the_first_max_prefix_blocks_count() -> None:
    policy = llmd(max_prefix_blocks=4, queue_weight=0.0, kv_cache_weight=0.0)
    policy.on_routed(request([*PROMPT[:64], *range(64)], "warm"), "a", 0.0)
    # differs from the warm prompt after block 4, which is past the limit: a full match
    decision = policy.choose(request(PROMPT), [node("a"), node("b")], 1.0)
    assert decision.scores["a"] == 3.0
    index = policy.index(request(PROMPT))
    assert index.blocks_on("a") == 4  # only the first 4 blocks were recorded


def test_the_index_is_an_lru_of_lru_capacity_per_server_blocks() -> None:
    policy = llmd(lru_capacity_per_server=8, queue_weight=0.0, kv_cache_weight=0.0)
    policy.on_routed(request(PROMPT, "warm"), "a", 0.0)  # 32 blocks, the first 8 kept
    decision = policy.choose(request(PROMPT), [node("a"), node("b")], 1.0)
    assert decision.scores["a"] == pytest.approx(3 * 8 / 32)


def test_weights_change_the_winner() -> None:
    def winner(**weights: float) -> str:
        policy = llmd(**weights)
        policy.on_routed(request(PROMPT, "warm"), "a", 0.0)
        # a holds the prompt but is busy and full; b is idle and empty
        nodes = [node("a", queued=8, kv=0.9), node("b", queued=0, kv=0.1)]
        return policy.choose(request(PROMPT), nodes, 1.0).node

    # defaults: a = 3 × 1 + 2 × 0 + 2 × 0.1 = 3.2; b = 0 + 2 × 1 + 2 × 0.9 = 3.8
    assert winner() == "b"
    assert winner(prefix_weight=5.0) == "a"  # 5.2 vs 3.8
    assert winner(queue_weight=0.0, kv_cache_weight=0.5) == "a"  # 3.05 vs 0.45


def test_reason_breaks_the_score_down() -> None:
    policy = llmd()
    decision = policy.choose(request(PROMPT), [node("a", kv=0.5), node("b", kv=0.6)], 0.0)
    assert decision.node == "a"
    assert decision.reason == (
        "llmd_scorers: score 3 = 3 × prefix 0.000 + 2 × queue 1.000 + 2 × kv 0.500"
    )
    assert decision.kind == "no_prefix"


def test_ties_go_to_a_tied_node_at_random_reproducibly() -> None:
    nodes = [node("a"), node("b"), node("c", queued=1), node("d")]
    policy = llmd()
    picks = Counter(policy.choose(request(PROMPT), nodes, 0.0).node for _ in range(300))
    assert set(picks) == {"a", "b", "d"}  # c scores lower and is never picked
    again = llmd(seed=9)
    sequence = [again.choose(request(PROMPT), nodes, 0.0).node for _ in range(30)]
    replay = llmd(seed=9)
    assert sequence == [replay.choose(request(PROMPT), nodes, 0.0).node for _ in range(30)]
    assert len(set(sequence)) > 1
    shuffled = [nodes[3], nodes[1], nodes[2], nodes[0]]  # the draw is in name order
    replay = llmd(seed=9)
    assert sequence == [replay.choose(request(PROMPT), shuffled, 0.0).node for _ in range(30)]


def test_every_scorer_stays_in_the_unit_interval_on_synthetic_traffic() -> None:
    policy = llmd()
    nodes = synthetic_fleet(32, seed=4)
    table = policy.table
    for step, req in enumerate(SyntheticTraffic(seed=4).take(150)):
        decision = policy.choose(req, nodes, float(step))
        policy.on_routed(req, decision.node, float(step))
        mask = np.ones(len(table), dtype=bool)
        for scores in (
            policy.prefix_scores(req, table, float(step)),
            policy.queue_scores(table, mask),
            policy.kv_scores(table),
        ):
            assert scores.min() >= 0.0 and scores.max() <= 1.0
        assert 0.0 <= decision.scores[decision.node] <= 7.0
    assert max(policy.prefix_scores(req, table, 150.0)) == 1.0  # the last one, just recorded
