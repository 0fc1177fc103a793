"""dynamo_kv: minimum overlap_score_weight × prefill blocks + decode blocks."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from router.policies import NodeSnapshot, RequestView, block_hashes, build_policy
from router.policies.dynamo_kv import DynamoKv
from router.policies.synthetic import make_node

PROMPT = list(range(1000, 2024))  # 1024 tokens: 64 blocks of 16


def request(tokens: list[int], rid: str = "r", max_tokens: int = 256) -> RequestView:
    hashes = block_hashes(tokens, 16)
    return RequestView(rid, "t", "llama-3.1-8b", len(tokens), max_tokens, {}, block_hashes=hashes)


def other(k: int, blocks: int = 16) -> RequestView:
    """A request sharing nothing with PROMPT or with other(j) for j ≠ k."""
    start = 100_000 * (k + 1)
    return request(list(range(start, start + 16 * blocks)), rid=f"other-{k}")


def fleet(*names: str) -> list[NodeSnapshot]:
    return [make_node(name, pair="p") for name in names or ("a", "b")]


def dynamo(**params: object) -> DynamoKv:
    policy = build_policy("dynamo_kv", params)
    assert isinstance(policy, DynamoKv)
    return policy


def test_defaults_are_upstreams() -> None:
    p = dynamo().params
    assert (p.overlap_score_weight, p.router_temperature, p.ttl_s) == (1.0, 0.0, 120.0)
    assert p.max_tree_size == 2**20
    assert (p.expected_output_ratio, p.track_prefill_tokens) == (0.0, False)
    assert (p.kv_block_size, p.tie_break) == (None, "random")


def test_cost_is_prefill_blocks_plus_decode_blocks() -> None:
    policy = dynamo()
    decision = policy.choose(request(PROMPT[:1000]), fleet(), 0.0)
    # 1000 tokens: 62.5 blocks to prefill, 62 full blocks to decode
    assert dict(decision.scores) == {"a": -124.5, "b": -124.5}
    assert "62.5 prefill blocks + 62 decode blocks, 0 blocks cached" in decision.reason
    assert decision.kind == "no_overlap"


def test_prefers_the_overlap_until_active_decode_blocks_outweigh_it() -> None:
    policy = dynamo()
    policy.on_routed(request(PROMPT, "warm"), "a", 0.0)
    policy.on_finished(request(PROMPT, "warm"), "a", 1.0)  # a caches PROMPT, runs nothing
    decision = policy.choose(request(PROMPT), fleet(), 2.0)
    assert decision.node == "a" and decision.kind == "overlap"
    assert dict(decision.scores) == {"a": -64.0, "b": -128.0}  # 0 + 64 vs 64 + 64
    for k in range(4):  # 64 unrelated active blocks on a: 0 + 128 vs 64 + 64, a tie
        policy.on_routed(other(k), "a", 2.0)
    assert policy.choose(request(PROMPT), fleet(), 3.0).scores["a"] == -128.0
    policy.on_routed(other(4), "a", 3.0)  # 80 active blocks on a: 144 vs 128
    decision = policy.choose(request(PROMPT), fleet(), 4.0)
    assert decision.node == "b"
    assert dict(decision.scores) == {"a": -144.0, "b": -128.0}


def test_the_weight_changes_the_trade_off() -> None:
    chosen = {}
    for weight in (0.0, 1.0, 2.0):
        policy = dynamo(overlap_score_weight=weight)
        policy.on_routed(request(PROMPT, "warm"), "a", 0.0)
        policy.on_finished(request(PROMPT, "warm"), "a", 0.0)
        for k in range(5):  # 80 active blocks on a, which holds the prefix
            policy.on_routed(other(k), "a", 0.0)
        decision = policy.choose(request(PROMPT), fleet(), 1.0)
        chosen[weight] = decision.node
        assert decision.scores["a"] == -144.0  # no prefill on a: the weight does not matter
        assert decision.scores["b"] == -(weight * 64 + 64)
    assert chosen == {0.0: "b", 1.0: "b", 2.0: "a"}


def test_blocks_shared_by_active_requests_count_once() -> None:
    policy = dynamo()
    policy.on_routed(request(PROMPT, "running"), "a", 0.0)  # running, not finished
    decision = policy.choose(request(PROMPT), fleet(), 1.0)
    # a: nothing to prefill, and the request's 64 blocks are already among a's 64 active
    assert dict(decision.scores) == {"a": -64.0, "b": -128.0}
    half = request([*PROMPT[:512], *range(512)])  # shares 32 blocks with the running one
    assert policy.choose(half, fleet(), 1.0).scores["a"] == -(32 + 64 + 32)


def test_finishing_releases_active_blocks() -> None:
    policy = dynamo()
    for k in range(3):
        policy.on_routed(other(k), "a", 0.0)
    assert policy.active.blocks_on("a") == 48
    policy.on_finished(other(1), "a", 1.0)
    assert policy.active.blocks_on("a") == 32
    policy.on_finished(other(1), "a", 1.0)  # twice: no effect
    policy.on_finished(other(0), "a", 1.0)
    policy.on_finished(other(2), "a", 1.0)
    assert policy.active.blocks_on("a") == 0
    assert policy.active.matched(other(0).block_hashes, ("a", "b")) is None


def test_ttl_expiry_forgets_and_routing_again_refreshes() -> None:
    policy = dynamo()
    policy.on_routed(request(PROMPT, "warm"), "a", 0.0)
    policy.on_finished(request(PROMPT, "warm"), "a", 1.0)
    assert policy.choose(request(PROMPT), fleet(), 119.0).kind == "overlap"
    late = policy.choose(request(PROMPT), fleet(), 121.0)
    assert late.kind == "no_overlap"
    assert dict(late.scores) == {"a": -128.0, "b": -128.0}
    policy.on_routed(request(PROMPT, "again"), "b", 121.0)
    policy.on_finished(request(PROMPT, "again"), "b", 122.0)
    assert policy.choose(request(PROMPT), fleet(), 240.0).node == "b"  # 121 + 120 > 240
    assert policy.choose(request(PROMPT), fleet(), 242.0).kind == "no_overlap"


def test_a_shorter_ttl() -> None:
    policy = dynamo(ttl_s=10.0)
    policy.on_routed(request(PROMPT, "warm"), "a", 0.0)
    policy.on_finished(request(PROMPT, "warm"), "a", 0.0)
    assert policy.choose(request(PROMPT), fleet(), 9.0).node == "a"
    assert policy.choose(request(PROMPT), fleet(), 11.0).kind == "no_overlap"


def warmed(**params: object) -> DynamoKv:
    """a's tree holds 16 blocks (of a finished request), b's and c's none."""
    policy = dynamo(**params)
    policy.on_routed(other(0), "a", 0.0)
    policy.on_finished(other(0), "a", 0.0)
    return policy


def test_ties_go_to_any_tied_node_at_random() -> None:
    policy = warmed()
    nodes = fleet("a", "b", "c")
    decision = policy.choose(request(PROMPT), nodes, 1.0)
    assert set(decision.scores.values()) == {-128.0}  # all tie on cost
    picks = Counter(policy.choose(request(PROMPT), nodes, 1.0).node for _ in range(300))
    assert set(picks) == {"a", "b", "c"}
    busy = [*fleet("a", "b"), make_node("c", pair="p")]
    policy.on_routed(other(1), "c", 1.0)  # c now costs more: never picked
    assert {policy.choose(request(PROMPT), busy, 2.0).node for _ in range(100)} == {"a", "b"}


def test_ties_can_prefer_the_smallest_tree() -> None:
    policy = warmed(tie_break="smallest_tree")
    nodes = fleet("a", "b", "c")
    picks = Counter(policy.choose(request(PROMPT), nodes, 1.0).node for _ in range(300))
    assert set(picks) == {"b", "c"}  # random between the two empty trees, never a


def test_random_choices_replay_with_the_seed() -> None:
    nodes = fleet("a", "b", "c")
    first = [warmed(seed=5).choose(request(PROMPT), nodes, 1.0).node]
    run = warmed(seed=5)
    sequence = [run.choose(request(PROMPT), nodes, 1.0).node for _ in range(30)]
    replay = warmed(seed=5)
    shuffled = list(reversed(nodes))  # the draw is in name order, whatever the list order
    assert sequence == [replay.choose(request(PROMPT), shuffled, 1.0).node for _ in range(30)]
    assert first[0] == sequence[0] and len(set(sequence)) > 1


def test_temperature_samples_the_normalised_logits() -> None:
    policy = dynamo(router_temperature=1.0, seed=3)
    policy.on_routed(request(PROMPT, "warm"), "a", 0.0)
    policy.on_finished(request(PROMPT, "warm"), "a", 0.0)  # costs: a 64, b 128
    picks = Counter(policy.choose(request(PROMPT), fleet(), 1.0).node for _ in range(4000))
    # p(a) = 1 / (1 + e^(−(128 − 64) / ((128 − 64) · 1))) = 1 / (1 + e^−1)
    assert picks["a"] / 4000 == pytest.approx(1 / (1 + math.exp(-1)), abs=0.03)
    greedy = dynamo(router_temperature=0.0)
    greedy.on_routed(request(PROMPT, "warm"), "a", 0.0)
    assert {greedy.choose(request(PROMPT), fleet(), 1.0).node for _ in range(50)} == {"a"}


def test_kv_block_size_counts_in_engine_blocks() -> None:
    policy = dynamo(kv_block_size=64)
    decision = policy.choose(request(PROMPT[:1000]), fleet(), 0.0)
    # 1000 tokens in 64-token blocks: 15.625 to prefill, 15 full blocks to decode
    assert decision.scores["a"] == -(1000 / 64 + 15)
    policy.on_routed(request(PROMPT[:1000], "warm"), "a", 0.0)
    policy.on_finished(request(PROMPT[:1000], "warm"), "a", 0.0)
    # a now caches 15 full KV blocks (960 tokens): 40 tokens left to prefill
    assert policy.choose(request(PROMPT), fleet(), 1.0).scores["a"] == -((1024 - 960) / 64 + 16)


def test_expected_output_blocks_count_as_decode_load() -> None:
    policy = dynamo(expected_output_ratio=0.5)
    policy.on_routed(other(0), "a", 0.0)  # 16 prompt + ⌈0.5 × 256 / 16⌉ = 8 output blocks
    assert policy.active.blocks_on("a") == 24
    decision = policy.choose(request(PROMPT), fleet(), 1.0)
    assert dict(decision.scores) == {"a": -(64 + 24 + 64 + 8), "b": -(64 + 64 + 8)}
    policy.on_finished(other(0), "a", 2.0)
    assert policy.active.blocks_on("a") == 0


def test_tracked_prefill_tokens_load_the_node_until_finished() -> None:
    policy = dynamo(track_prefill_tokens=True)
    policy.on_routed(other(0), "a", 0.0)  # 256 uncached tokens: 16 pending prefill blocks
    decision = policy.choose(request(PROMPT), fleet(), 1.0)
    assert dict(decision.scores) == {"a": -(16 + 64 + 16 + 64), "b": -128.0}
    policy.on_finished(other(0), "a", 2.0)
    assert policy.choose(request(PROMPT), fleet(), 3.0).scores["a"] == -128.0
    untracked = dynamo()
    untracked.on_routed(other(0), "a", 0.0)
    assert untracked.choose(request(PROMPT), fleet(), 1.0).scores["a"] == -(64 + 16 + 64)


def test_a_retry_replaces_the_first_routing() -> None:
    policy = dynamo()
    policy.on_routed(other(0), "a", 0.0)
    policy.on_routed(other(0), "b", 1.0)  # same request id, sent elsewhere
    assert (policy.active.blocks_on("a"), policy.active.blocks_on("b")) == (0, 16)
    policy.on_finished(other(0), "b", 2.0)
    assert policy.active.blocks_on("b") == 0
