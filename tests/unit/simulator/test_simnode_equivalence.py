"""SimNode against the real SimEngine: the same requests give the same times and cache hits.

The engine runs on a virtual clock: its module's ``time`` and its ``sleep`` are a fake clock
that moves only when the engine sleeps through an iteration, and requests are submitted at
their arrival times between :meth:`SimEngine.step` calls (an arrival during an iteration is
admitted at the next iteration's start, as in :class:`SimNode`). Each request stops at its
output length (``max_new_tokens`` = output length, no ``end_id``), so the KV reserved
(prompt + ``max_new_tokens``) is the SimRequest's ``prompt + max_tokens``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from mufleet.simulator.node import EngineShape, SimNode, SimRequest
from python_backends.engine_loop import DEFAULT_PRIORITY_LEVEL, TOP_PRIORITY_LEVEL
from python_backends.engine_types import TokenEvent
from python_backends.generation import GenerationSpec
from python_backends.sim_engine import engine as sim_module
from python_backends.sim_engine.block_pool import block_hashes
from python_backends.sim_engine.engine import MAX_LAG_S, SimConfig, SimEngine
from python_backends.sim_engine.faults import FaultSwitches
from python_backends.sim_engine.hardware import HardwareProfile

VOCAB = 1000
BLOCK = 32
MAX_NUM_TOKENS = 256
MAX_SEQUENCES = 4
SMALL_POOL = 64
"""Blocks: 2048 tokens, of which 8 blocks are the top-priority reserve."""
TOL = 1e-9


def _profile(total_blocks: int = SMALL_POOL) -> HardwareProfile:
    return HardwareProfile.model_validate(
        {
            "name": "equivalence_gpu",
            "model": "unit test model",
            "hardware": "unit test GPU",
            "tensor_parallel": 1,
            "precision": "bf16",
            "step": {
                "base_ms": 2.0,
                "per_prefill_token_us": 10.0,
                "per_decode_seq_us": 50.0,
                "per_context_token_ns": 100.0,
            },
            "max_num_tokens": MAX_NUM_TOKENS,
            "max_num_sequences": MAX_SEQUENCES,
            "kv_cache": {"block_tokens": BLOCK, "total_blocks": total_blocks},
            "max_context": 8192,
            "vocab_size": VOCAB,
        }
    )


@dataclass(frozen=True)
class Req:
    arrival_s: float
    prompt: tuple[int, ...]
    output: int
    level: int = DEFAULT_PRIORITY_LEVEL


@dataclass(frozen=True)
class Outcome:
    first_token_s: float
    finish_s: float
    cached_tokens: int


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"negative sleep {seconds}"
        self.now += seconds


def run_engine(
    monkeypatch: pytest.MonkeyPatch,
    profile: HardwareProfile,
    requests: list[Req],
    slowdown: float = 1.0,
) -> list[Outcome]:
    """Serve ``requests`` with a real SimEngine on a virtual clock."""
    clock = VirtualClock()
    monkeypatch.setattr(
        sim_module, "time", SimpleNamespace(monotonic=clock.monotonic, sleep=clock.sleep)
    )
    engine = SimEngine(
        SimConfig(profile=profile, vocab_size=VOCAB, max_num_sequences=profile.max_num_sequences)
    )
    engine.sleep = clock.sleep
    faults = FaultSwitches(slowdown=slowdown)
    seen: dict[int, dict[str, Any]] = {}

    def collector(index: int) -> Any:
        def emit(event: TokenEvent) -> None:
            assert event.error is None, event.error
            record = seen.setdefault(index, {"first": clock.now})
            record["cached"] = event.cached_tokens
            if event.finished:
                record["finish"] = clock.now

        return emit

    pending = sorted(range(len(requests)), key=lambda k: requests[k].arrival_s)
    i = 0
    for _ in range(100_000):
        while i < len(pending) and requests[pending[i]].arrival_s <= clock.now:
            r = requests[pending[i]]
            spec = GenerationSpec(
                input_ids=r.prompt,
                max_new_tokens=r.output,
                streaming=True,
                priority=r.level,
            )
            engine.submit(spec, collector(pending[i]))
            i += 1
        if engine.step(faults) == 0.0:  # idle: nothing admitted or running
            if i == len(pending):
                break
            clock.now = requests[pending[i]].arrival_s
    else:
        raise AssertionError("the engine did not drain")
    assert sorted(seen) == list(range(len(requests)))
    return [Outcome(s["first"], s["finish"], s["cached"]) for _, s in sorted(seen.items())]


def run_node(profile: HardwareProfile, requests: list[Req], slowdown: float = 1.0) -> list[Outcome]:
    """Serve ``requests`` with one SimNode, events in time order (node events first on ties,
    as :func:`mufleet.simulator.run.simulate` orders them)."""
    kv = profile.kv_cache
    shape = EngineShape(
        step=profile.step,
        max_num_sequences=profile.max_num_sequences,
        max_num_tokens=profile.max_num_tokens,
        kv_tokens=kv.total_blocks * kv.block_tokens,
        block_tokens=kv.block_tokens,
    )
    finished: list[int] = []
    node = SimNode(0, "node-0", shape, lambda r, t: None, lambda r, t: finished.append(r.index))
    node.slowdown = slowdown
    sim = [
        SimRequest(
            k,
            r.arrival_s,
            len(r.prompt),
            r.output,
            r.output,
            tuple(block_hashes(r.prompt, kv.block_tokens)),
            "tenant",
            r.level,
        )
        for k, r in enumerate(requests)
    ]
    order = sorted(sim, key=lambda r: r.arrival_s)
    i = 0
    for _ in range(100_000):
        tn = node.next_event()
        ta = order[i].arrival_s if i < len(order) else math.inf
        if tn is None and ta == math.inf:
            break
        if tn is not None and tn <= ta:
            node.handle(tn)
        else:
            node.submit(order[i], ta)
            i += 1
    else:
        raise AssertionError("the node did not drain")
    assert sorted(finished) == list(range(len(requests)))
    assert node.pool.used == 0
    return [Outcome(r.first_token_s, r.finish_s, r.cached_tokens) for r in sim]


def assert_same(engine: list[Outcome], node: list[Outcome]) -> None:
    diffs = [
        (k, e, n)
        for k, (e, n) in enumerate(zip(engine, node, strict=True))
        if abs(e.first_token_s - n.first_token_s) > TOL
        or abs(e.finish_s - n.finish_s) > TOL
        or e.cached_tokens != n.cached_tokens
    ]
    assert not diffs, f"{len(diffs)} requests differ (index, engine, node): {diffs[:4]}"


def tokens(start: int, n: int) -> tuple[int, ...]:
    return tuple(range(start, start + n))


SYSTEM = tokens(10_000, 96)  # three full blocks
DOC = tokens(20_000, 100)  # three full blocks and 4 tokens


def hand_built() -> list[Req]:
    """Shared prefixes (hit after the first finished, and while it still runs), prompts
    beyond ``max_num_tokens`` (chunked prefill), one-token outputs, arrivals during prefill
    iterations and during decode runs, a burst beyond the sequence slots and the KV pool,
    and idle gaps longer than the engine's lag allowance."""
    return [
        Req(0.000, SYSTEM + tokens(100, 40), 12),
        Req(0.004, SYSTEM + tokens(200, 300), 1),  # cuts #0's decode run; reuses SYSTEM
        Req(0.011, tokens(300, 600), 30),  # three prefill chunks
        Req(0.0155, SYSTEM + tokens(400, 10), 25),  # during #2's chunks; SYSTEM in use
        # A burst beyond the sequence slots, then beyond the pool's blocks.
        Req(0.030, DOC + tokens(500, 450), 40),
        Req(0.0305, DOC + tokens(600, 420), 35),
        Req(0.031, tokens(700, 5), 1),
        Req(0.0312, tokens(800, 700), 20),
        Req(0.2, DOC + tokens(900, 20), 1),  # after an idle gap; DOC is cached
        Req(0.4, SYSTEM + tokens(1000, 100), 60),  # SYSTEM was evicted by the burst
        Req(0.405, SYSTEM + tokens(1100, 3), 2),
        Req(0.407, SYSTEM, 1),  # a prompt that is all cached blocks: one token short
        Req(0.409, DOC + tokens(1200, 260), 15),
        Req(0.43, tokens(1300, 31), 3),
        # 60 blocks: more than the pool leaves outside the top-priority reserve, so it
        # starts only once nothing runs, and then a short request waits behind it.
        Req(0.8, tokens(1400, 1500), 400),
        Req(0.801, tokens(3000, 40), 2),
    ]


def test_hand_built_requests_match_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = _profile()
    requests = hand_built()

    engine = run_engine(monkeypatch, profile, requests)
    node = run_node(profile, requests)

    assert_same(engine, node)
    # The scenario exercises what it claims to.
    assert [o.cached_tokens for o in node][8] == 96  # DOC's three blocks
    assert node[1].cached_tokens == node[3].cached_tokens == 96
    assert node[9].cached_tokens == 0
    assert node[11].cached_tokens == len(SYSTEM) - 1
    assert sum(o.cached_tokens > 0 for o in node) >= 6
    one_token = [k for k, r in enumerate(requests) if r.output == 1]
    assert all(node[k].first_token_s == node[k].finish_s for k in one_token)
    chunked = node[2].first_token_s - requests[2].arrival_s
    assert chunked > 3 * profile.step.iteration_s(MAX_NUM_TOKENS, 0, 0)
    during_decode = [
        k
        for k, r in enumerate(requests)
        if any(o.first_token_s < r.arrival_s < o.finish_s for o in node[:k])
    ]
    assert len(during_decode) >= 4
    # The small pool binds: with a large one the burst's last request starts earlier.
    roomy = run_node(_profile(total_blocks=4096), requests)
    assert roomy[7].first_token_s < node[7].first_token_s - TOL
    assert node[-1].first_token_s > node[-2].finish_s > requests[-1].arrival_s + 0.5


def _random_requests(
    seed: int, n: int, long_outputs: bool, with_top_level: bool = False
) -> list[Req]:
    """``n`` requests over a few shared prefixes with bursty arrivals.

    Without ``long_outputs``, no output completes a KV block past its prompt's full blocks,
    so the engine's pool caches exactly the prompt blocks SimNode caches (see
    test_output_blocks_take_cache_room_in_the_engine_too).
    """
    rng = random.Random(seed)
    prefixes = [tokens(50_000 + 1000 * p, rng.choice([32, 64, 96, 100])) for p in range(3)]
    out: list[Req] = []
    t = 0.0
    for k in range(n):
        t += rng.expovariate(1 / 0.02) if rng.random() < 0.9 else 0.3
        prefix = rng.choice([*prefixes, ()])
        prompt = prefix + tokens(100_000 * (k + 1), rng.randint(1, 500))
        if not long_outputs and len(prompt) % BLOCK == BLOCK - 1:
            prompt += (7,)  # even one generated token would complete a block
        if long_outputs:
            output = rng.choice([1, 1, 2, 5, 20, 60, 100])
        else:
            output = rng.randint(1, BLOCK - 1 - len(prompt) % BLOCK) if rng.random() < 0.8 else 1
        level = TOP_PRIORITY_LEVEL if with_top_level and rng.random() < 0.15 else 2
        out.append(Req(t, prompt, output, level))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_random_requests_match_the_engine_with_a_small_pool(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """Admission bound by the KV pool, LRU eviction of cached prefixes, chunked prefill."""
    profile = _profile()
    requests = _random_requests(seed, 40, long_outputs=False, with_top_level=seed % 2 == 1)

    engine = run_engine(monkeypatch, profile, requests)
    node = run_node(profile, requests)

    assert_same(engine, node)
    assert sum(o.cached_tokens for o in node) > 0


@pytest.mark.parametrize(("seed", "slowdown"), [(0, 1.0), (1, 1.0), (2, 2.5), (3, 4.0)])
def test_random_requests_match_the_engine_with_long_outputs(
    monkeypatch: pytest.MonkeyPatch, seed: int, slowdown: float
) -> None:
    """Long decode runs cut by arrivals, top-priority requests with their extra slots and
    reserve, and a slowdown on every iteration (a pool large enough never to evict)."""
    profile = _profile(total_blocks=2048)
    requests = _random_requests(seed, 40, long_outputs=True, with_top_level=True)

    engine = run_engine(monkeypatch, profile, requests, slowdown)
    node = run_node(profile, requests, slowdown)

    assert_same(engine, node)
    assert any(r.level == TOP_PRIORITY_LEVEL for r in requests)


def test_engine_charges_the_first_iteration_after_a_short_idle_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    profile = _profile()
    first = profile.step.iteration_s(100, 0, 0)
    gap = MAX_LAG_S / 2
    requests = [Req(0.0, tokens(100, 100), 1), Req(first + gap, tokens(300, 100), 1)]

    engine = run_engine(monkeypatch, profile, requests)

    assert engine[1].first_token_s == pytest.approx(first + gap + first, abs=TOL)


def test_output_blocks_take_cache_room_in_the_engine_too(monkeypatch: pytest.MonkeyPatch) -> None:
    profile = _profile()
    prefix = tokens(100, 64)  # two full blocks
    requests = [
        Req(0.0, prefix, 1),
        Req(1.0, tokens(2000, 32), 1900),  # 60 full blocks of prompt + output
        Req(20.0, tokens(3000, 300), 1),  # needs room: evicts the LRU idle blocks
        Req(21.0, prefix + tokens(5000, 10), 1),  # does the prefix survive?
    ]

    engine = run_engine(monkeypatch, profile, requests)
    node = run_node(profile, requests)

    assert engine[3].cached_tokens == 0  # the engine evicted the prefix for output blocks
    assert_same(engine, node)  # SimNode's output blocks take the same room
