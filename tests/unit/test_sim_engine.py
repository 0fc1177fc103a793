"""Unit tests for SimEngine: emulated iteration timing, scheduling and fault injection.

Time is fake: the module's ``time`` and the engine's ``sleep`` are a :class:`FakeClock`, so
iterations run instantly and every slept second is recorded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from python_backends.engine_loop import (
    TOP_PRIORITY_LEVEL,
    TOP_PRIORITY_RESERVE_TOKENS,
    TOP_PRIORITY_SLOTS,
)
from python_backends.engine_types import TokenEvent
from python_backends.generation import GenerationSpec, SamplingParams
from python_backends.sim_engine import engine as sim_module
from python_backends.sim_engine.engine import (
    CONTEXT_KEY_TOKENS,
    CRASH_EXIT_CODE,
    FIRST_ORDINARY_ID,
    MAX_LAG_S,
    SimConfig,
    SimEngine,
    pseudo_token,
)
from python_backends.sim_engine.faults import FaultFile, FaultSwitches
from python_backends.sim_engine.hardware import HardwareProfile

VOCAB = 1000
BLOCK = 32
PROFILE: dict[str, Any] = {
    "name": "unit_test_gpu",
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
    "max_num_tokens": 256,
    "max_num_sequences": 8,
    "kv_cache": {"block_tokens": BLOCK, "total_blocks": 64},
    "max_context": 2048,
    "vocab_size": VOCAB,
}


class FakeClock:
    """A monotonic clock that moves only when slept on (``late_s`` later than asked)."""

    def __init__(self, late_s: float = 0.0) -> None:
        self.now = 1000.0
        self.late_s = late_s
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"negative sleep {seconds}"
        self.slept.append(seconds)
        self.now += seconds + self.late_s


class Collector:
    def __init__(self) -> None:
        self.events: list[TokenEvent] = []

    def __call__(self, event: TokenEvent) -> None:
        assert not self.finished, "event after the final one"
        self.events.append(event)

    @property
    def finished(self) -> bool:
        return bool(self.events) and self.events[-1].finished

    @property
    def tokens(self) -> list[int]:
        return [t for e in self.events for t in e.token_ids]

    @property
    def last(self) -> TokenEvent:
        assert self.events, "no event received"
        return self.events[-1]


class StubFaults(FaultFile):
    """A control file whose switches the test sets directly."""

    def __init__(self, switches: FaultSwitches) -> None:
        super().__init__(None, poll_s=0.0)
        self.switches = switches

    def current(self) -> FaultSwitches:
        return self.switches


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(
        sim_module, "time", SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep)
    )
    return fake


def _profile(**overrides: Any) -> HardwareProfile:
    data = {**PROFILE, **overrides}
    return HardwareProfile.model_validate(data)


def _engine(
    clock: FakeClock,
    profile: HardwareProfile | None = None,
    faults: FaultFile | None = None,
    **config: Any,
) -> SimEngine:
    engine = SimEngine(
        SimConfig(
            profile=profile or _profile(),
            vocab_size=VOCAB,
            max_num_sequences=config.pop("max_num_sequences", 8),
            **config,
        ),
        faults=faults,
    )
    engine.sleep = clock.sleep
    return engine


def _spec(prompt: Sequence[int], max_new: int = 4, **kwargs: Any) -> GenerationSpec:
    return GenerationSpec(input_ids=tuple(prompt), max_new_tokens=max_new, **kwargs)


def _prompt(n: int, start: int = 100) -> list[int]:
    return [start + i % 700 for i in range(n)]


def _drain(engine: SimEngine, faults: FaultSwitches | None = None, max_steps: int = 500) -> int:
    for steps in range(1, max_steps + 1):
        engine.step(faults)
        if engine.stats.active == 0 and engine.stats.waiting == 0:
            return steps
    raise AssertionError(f"engine still busy after {max_steps} steps")


# -- timing -----------------------------------------------------------------------------


def test_prefill_and_decode_iterations_follow_the_profile(clock: FakeClock) -> None:
    engine = _engine(clock)
    timing = engine.config.profile.step
    out = Collector()
    engine.submit(_spec(_prompt(100), 3), out)

    prefill = engine.step()

    assert prefill == timing.iteration_s(100, 0, 0)
    assert prefill == pytest.approx(2e-3 + 100 * 10e-6, rel=1e-12)
    assert engine.busy_s == prefill
    assert out.events == []  # non-streaming: nothing until the last token
    decode = engine.step()
    assert decode == timing.iteration_s(0, 1, 101)  # context: prompt + the first token
    assert decode == pytest.approx(2e-3 + 50e-6 + 101 * 100e-9, rel=1e-12)
    assert engine.busy_s == prefill + decode
    assert clock.slept == pytest.approx([prefill, decode])


def test_decode_iteration_charges_batch_and_context(clock: FakeClock) -> None:
    engine = _engine(clock)
    timing = engine.config.profile.step
    outs = [Collector(), Collector()]
    engine.submit(_spec(_prompt(100), 4), outs[0])
    engine.submit(_spec(_prompt(50, 300), 4), outs[1])

    costs = [engine.step() for _ in range(4)]

    assert costs == [
        timing.iteration_s(150, 0, 0),
        timing.iteration_s(0, 2, 101 + 51),
        timing.iteration_s(0, 2, 102 + 52),
        timing.iteration_s(0, 2, 103 + 53),
    ]
    assert engine.busy_s == pytest.approx(sum(costs))
    assert all(o.finished and len(o.tokens) == 4 for o in outs)
    assert engine.step() == 0.0  # idle: nothing charged
    assert engine.busy_s == pytest.approx(sum(costs))


@pytest.mark.parametrize("prompt_tokens", [255, 256, 257, 600])
def test_long_prefill_is_chunked(clock: FakeClock, prompt_tokens: int) -> None:
    engine = _engine(clock)
    timing = engine.config.profile.step
    budget = engine.config.profile.max_num_tokens
    chunks = math.ceil(prompt_tokens / budget)
    out = Collector()
    engine.submit(_spec(_prompt(prompt_tokens), 2, streaming=True), out)

    costs = []
    for _ in range(chunks - 1):
        costs.append(engine.step())
        assert out.events == []
        assert engine.stats.context == 1
    costs.append(engine.step())

    assert len(out.events) == 1
    sizes = [budget] * (chunks - 1) + [prompt_tokens - budget * (chunks - 1)]
    assert costs == [timing.iteration_s(n, 0, 0) for n in sizes]
    _drain(engine)
    assert len(out.tokens) == 2


def test_shared_prefix_is_reused_after_the_first_request(clock: FakeClock) -> None:
    engine = _engine(clock)
    timing = engine.config.profile.step
    shared = _prompt(3 * BLOCK)
    first = Collector()
    engine.submit(_spec([*shared, *_prompt(20, 500)], 2), first)
    first_prefill = engine.step()
    _drain(engine)
    assert first.last.cached_tokens == 0

    second = Collector()
    engine.submit(_spec([*shared, *_prompt(20, 600)], 2), second)
    second_prefill = engine.step()
    _drain(engine)

    assert second.last.cached_tokens == 96
    assert second_prefill == timing.iteration_s(20, 0, 0)
    assert second_prefill < first_prefill == timing.iteration_s(116, 0, 0)
    assert engine.stats.cached_prompt_tokens == 96
    assert engine.stats.prefill_tokens == 116 + 20
    assert engine.stats.kv_blocks_reused == 3


def test_running_request_shares_its_prefix(clock: FakeClock) -> None:
    engine = _engine(clock)
    shared = _prompt(3 * BLOCK)
    first, second = Collector(), Collector()
    engine.submit(_spec([*shared, *_prompt(20, 500)], 10), first)
    engine.step()  # prefill: the prompt's blocks are published

    engine.submit(_spec([*shared, *_prompt(20, 600)], 2), second)
    _drain(engine)

    assert not first.last.error and not second.last.error
    assert second.last.cached_tokens == 96
    assert engine.pool.used == 0


def test_request_waits_until_the_pool_can_hold_it(clock: FakeClock) -> None:
    engine = _engine(clock, _profile(kv_cache={"block_tokens": BLOCK, "total_blocks": 4}))
    first, second = Collector(), Collector()
    engine.submit(_spec(_prompt(40), 40), first)  # 80 tokens: 3 of the 4 blocks
    engine.submit(_spec(_prompt(40, 400), 40), second)

    engine.step()
    assert engine.stats.active == 1
    assert engine.stats.waiting == 1
    while not first.finished:
        engine.step()
        assert second.events == []
        assert engine.stats.active <= 1
        assert engine.pool.used <= 4
    assert first.last.error is None
    engine.step()

    assert engine.stats.waiting == 0
    _drain(engine)
    assert second.last.error is None and len(second.tokens) == 40


@pytest.mark.parametrize(
    ("time_scale", "slowdown"), [(1.0, 1.0), (3.0, 1.0), (1.0, 2.5), (3.0, 2.5)]
)
def test_time_scale_and_slowdown_stretch_wall_time_only(
    clock: FakeClock, time_scale: float, slowdown: float
) -> None:
    engine = _engine(clock, time_scale=time_scale)
    timing = engine.config.profile.step
    out = Collector()
    engine.submit(_spec(_prompt(100), 5), out)

    _drain(engine, FaultSwitches(slowdown=slowdown))

    expected_busy = timing.iteration_s(100, 0, 0) + sum(
        timing.iteration_s(0, 1, 100 + k) for k in range(1, 5)
    )
    assert engine.busy_s == pytest.approx(expected_busy, rel=1e-12)
    assert sum(clock.slept) == pytest.approx(expected_busy * time_scale * slowdown, rel=1e-9)
    assert len(out.tokens) == 5


def test_late_wake_ups_are_made_up(clock: FakeClock) -> None:
    engine = _engine(clock)
    clock.late_s = 0.004
    start = clock.now

    for _ in range(20):
        engine._advance(0.01)

    # Only the last wake-up's lateness is left over; the others were compensated.
    assert clock.now - start == pytest.approx(0.2 + 0.004, abs=1e-9)
    assert clock.slept[0] == pytest.approx(0.01)
    assert clock.slept[1:] == pytest.approx([0.006] * 19)


def test_small_lag_is_caught_up_and_a_large_one_restarts_the_timeline(
    clock: FakeClock,
) -> None:
    engine = _engine(clock)
    start = clock.now
    engine._advance(0.01)
    clock.now += MAX_LAG_S / 2  # host busy for 25 ms, 2.5 iterations
    for _ in range(3):
        engine._advance(0.01)

    # Two iterations are already due (no sleep), the third sleeps what is left.
    assert clock.slept[1:] == pytest.approx([0.0, 0.0, 0.04 - (0.01 + MAX_LAG_S / 2)])
    assert clock.now - start == pytest.approx(0.04)

    clock.now += 10 * MAX_LAG_S  # idle, or far behind: no burst of catch-up iterations
    engine._advance(0.01)
    assert clock.slept[-1] == pytest.approx(0.01)
    assert all(s >= 0 for s in clock.slept)


# -- top priority (health canaries) -------------------------------------------------------
TOP, ORDINARY = TOP_PRIORITY_LEVEL, 3


def test_top_priority_requests_run_beyond_a_full_batch(clock: FakeClock) -> None:
    engine = _engine(clock, max_num_sequences=2)
    longs = [Collector() for _ in range(4)]
    for i, out in enumerate(longs):
        engine.submit(_spec(_prompt(20, 100 + i), 50, priority=ORDINARY), out)
    engine.step()
    assert (engine.stats.active, engine.stats.waiting) == (2, 2)

    tops = [Collector() for _ in range(TOP_PRIORITY_SLOTS + 1)]
    for i, out in enumerate(tops):
        engine.submit(_spec(_prompt(20, 400 + i), 2, priority=TOP, streaming=True), out)
    engine.step()

    assert engine.stats.active == 2 + TOP_PRIORITY_SLOTS
    assert engine.stats.waiting == 2 + 1
    assert [len(o.events) for o in tops] == [1] * TOP_PRIORITY_SLOTS + [0]
    while not tops[-1].finished:
        engine.step()
        assert engine.stats.active <= 2 + TOP_PRIORITY_SLOTS
        assert longs[2].events == longs[3].events == []  # no ordinary slot came free
    _drain(engine)
    assert all(o.last.error is None for o in [*tops, *longs])


def test_an_ordinary_request_never_takes_a_slot_beyond_the_batch(clock: FakeClock) -> None:
    engine = _engine(clock, max_num_sequences=2)
    top = Collector()
    engine.submit(_spec(_prompt(20), 30, priority=TOP), top)
    outs = [Collector() for _ in range(3)]
    for i, out in enumerate(outs):
        engine.submit(_spec(_prompt(20, 200 + i), 30, priority=ORDINARY), out)

    engine.step()

    # The canary holds one of the two slots; ordinary work gets the other one only.
    assert (engine.stats.active, engine.stats.waiting) == (2, 2)
    _drain(engine)
    assert all(o.last.error is None for o in [top, *outs])


def _reserve_profile() -> HardwareProfile:
    """64 blocks of 32 tokens: the reserve is capped at an eighth, 8 blocks."""
    return _profile(kv_cache={"block_tokens": BLOCK, "total_blocks": 64})


def test_the_kv_reserve_admits_a_canary_into_a_pool_full_of_reservations(
    clock: FakeClock,
) -> None:
    engine = _engine(clock, _reserve_profile())
    reserved = engine.pool.reserved_blocks
    assert reserved == min(engine.pool.blocks_for(TOP_PRIORITY_RESERVE_TOKENS), 64 // 8) > 0
    long_blocks = (64 - reserved) // 2  # two of these fill all but the reserve
    longs = [Collector(), Collector()]
    for i, out in enumerate(longs):
        engine.submit(_spec(_prompt(BLOCK, 100 + i), long_blocks * BLOCK - BLOCK), out)
    engine.step()
    assert engine.pool.used == 64 - reserved

    small, canary = Collector(), Collector()
    engine.submit(_spec(_prompt(20, 500), 4, priority=ORDINARY), small)
    engine.submit(_spec(_prompt(20, 600), 4, priority=TOP), canary)
    engine.step()

    # Both would fit in the free blocks; only the canary may take the reserve.
    assert engine.stats.active == 3 and engine.stats.waiting == 1
    while not canary.finished:
        engine.step()
        assert small.events == []
    assert canary.last.error is None and len(canary.tokens) == 4
    assert not any(o.finished for o in longs)
    _drain(engine, max_steps=long_blocks * BLOCK + 10)
    assert small.last.error is None


def test_an_idle_engine_admits_a_request_that_needs_part_of_the_reserve(
    clock: FakeClock,
) -> None:
    engine = _engine(clock, _reserve_profile())
    out = Collector()
    # 62 of the 64 blocks: more than an ordinary request may take beside the reserve.
    engine.submit(_spec(_prompt(BLOCK), 61 * BLOCK, priority=ORDINARY), out)

    engine.step()

    assert engine.stats.active == 1 and engine.pool.used == 62
    _drain(engine, max_steps=61 * BLOCK + 10)
    assert out.last.error is None


# -- faults -----------------------------------------------------------------------------


def test_error_rate_one_fails_every_admitted_request(clock: FakeClock) -> None:
    engine = _engine(clock, max_num_sequences=4)
    outs = [Collector() for _ in range(6)]
    for i, out in enumerate(outs):
        engine.submit(_spec(_prompt(30, 100 + i), 4), out)

    _drain(engine, FaultSwitches(error_rate=1.0))

    for out in outs:
        assert len(out.events) == 1
        assert out.last.finished and out.last.finish_reason == "error"
        assert out.last.error is not None and out.last.error.startswith("injected fault")
    assert engine.stats.completed == 0
    assert engine.pool.used == 0

    healthy = Collector()
    engine.submit(_spec(_prompt(30), 4), healthy)
    _drain(engine)
    assert healthy.last.error is None and len(healthy.tokens) == 4


def test_garbage_emits_invalid_ids_and_wrong_lengths(clock: FakeClock) -> None:
    engine = _engine(clock)
    streamed, unary = Collector(), Collector()
    engine.submit(_spec(_prompt(20), 3, streaming=True), streamed)
    engine.submit(_spec(_prompt(20, 300), 3), unary)

    _drain(engine, FaultSwitches(garbage=True))

    assert len(streamed.events) == 3
    for event in [*streamed.events, unary.last]:
        assert event.error is None
        assert all(t >= VOCAB for t in event.token_ids)
        assert event.sequence_length is not None
        assert event.sequence_length != len(event.token_ids)
    assert len(unary.last.token_ids) == 3
    assert engine.pool.used == 0


def test_hang_produces_no_tokens_until_lifted(clock: FakeClock) -> None:
    faults = StubFaults(FaultSwitches(hang=True))
    engine = _engine(clock, faults=faults)
    out = Collector()
    engine.submit(_spec(_prompt(20), 3), out)

    for _ in range(5):
        engine._iterate()

    assert out.events == []
    assert engine.busy_s == 0.0
    assert clock.slept == [faults.poll_s] * 5

    faults.switches = FaultSwitches()
    for _ in range(10):
        engine._iterate()
    assert out.finished and len(out.tokens) == 3


def test_crash_exits_the_process_with_its_code(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Exited(Exception):
        pass

    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise Exited

    monkeypatch.setattr(sim_module.os, "_exit", fake_exit)
    engine = _engine(clock, faults=StubFaults(FaultSwitches(crash=True)))
    engine.submit(_spec(_prompt(20), 3), Collector())

    with pytest.raises(Exited):
        engine._iterate()
    assert codes == [CRASH_EXIT_CODE]


# -- output tokens ----------------------------------------------------------------------


def test_pseudo_tokens_are_deterministic_and_seeded() -> None:
    contexts = [_prompt(40 + n) for n in range(16)]

    tokens = [pseudo_token(c, len(c), 0, VOCAB) for c in contexts]

    assert tokens == [pseudo_token(list(c), len(c), 0, VOCAB) for c in contexts]
    assert tokens != [pseudo_token(c, len(c), 7, VOCAB) for c in contexts]
    assert all(FIRST_ORDINARY_ID <= t < VOCAB for t in tokens)
    assert len(set(tokens)) > 1


def test_a_pseudo_token_depends_on_the_context_s_tail_and_length_only() -> None:
    context = _prompt(60)
    token = pseudo_token(context, len(context), 3, VOCAB)

    # Only the last CONTEXT_KEY_TOKENS tokens and the length are read.
    assert pseudo_token(context[-CONTEXT_KEY_TOKENS:], len(context), 3, VOCAB) == token
    assert pseudo_token([1, *context[1:]], len(context), 3, VOCAB) == token
    assert pseudo_token([*context[:-1], 999], len(context), 3, VOCAB) != token
    assert pseudo_token(context, len(context) + 1, 3, VOCAB) != token


def test_engine_output_is_reproducible(clock: FakeClock) -> None:
    outputs = []
    for seed in (0, 0, 5):
        engine = _engine(clock)
        out = Collector()
        engine.submit(_spec(_prompt(30), 6, sampling=SamplingParams(seed=seed)), out)
        _drain(engine)
        outputs.append(out.tokens)

    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_lag_that_is_caught_up_is_not_lost_and_a_restart_counts_what_was_given_up(
    clock: FakeClock,
) -> None:
    engine = _engine(clock)
    clock.late_s = 0.004
    for _ in range(10):
        engine._advance(0.01)
    assert engine.stats.host_lag_lost_s == 0.0  # every late wake-up was made up
    assert engine.stats.host_lag_s == pytest.approx(0.004)

    clock.now += 0.3  # the host held the engine thread for 0.3 s
    engine._advance(0.01)
    assert engine.stats.host_lag_lost_s == pytest.approx(0.3, abs=0.01)


def test_idle_time_is_not_lag(clock: FakeClock) -> None:
    engine = _engine(clock)
    engine.step()  # nothing to do: the timeline is forgotten
    clock.now += 5.0
    engine._advance(0.01)
    assert engine.stats.host_lag_lost_s == 0.0


def test_the_engine_is_its_profile_unless_the_operator_overrides_it(clock: FakeClock) -> None:
    default = SimConfig(profile=_profile(), vocab_size=VOCAB)
    assert [
        default.limit(n) for n in ("max_num_sequences", "max_num_tokens", "kv_cache_blocks")
    ] == [8, 256, 64]
    assert default.overrides() == []

    asked = SimConfig(
        profile=_profile(),
        vocab_size=VOCAB,
        max_num_sequences=4,
        max_num_tokens=999,
        kv_cache_blocks=32,
    )
    assert asked.limit("max_num_sequences") == 4
    assert asked.limit("max_num_tokens") == 256  # capped: the engine was built for 256
    assert asked.limit("kv_cache_blocks") == 32
    lines = asked.overrides()
    assert any("max_num_sequences 4" in line and "profile's is 8" in line for line in lines)
    assert any("capped from 999" in line for line in lines)

    engine = _engine(clock, max_num_sequences=4, kv_cache_blocks=32)
    assert engine.stats.max_sequences == 4
    assert (engine.stats.kv_blocks_max, engine.stats.kv_cache_blocks) == (32, 32)
    assert engine.stats.max_num_tokens == 256
    assert engine.info.engine == "sim" and engine.info.hardware_profile == "unit_test_gpu"
