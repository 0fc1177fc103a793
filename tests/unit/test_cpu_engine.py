"""Unit tests for CpuEngine with the real tiny model, stepped synchronously (no thread)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from python_backends.cpu_engine.engine import CpuEngine, EngineConfig, _Sequence
from python_backends.cpu_engine.prefix_cache import PrefixCache
from python_backends.engine_loop import TOP_PRIORITY_LEVEL
from python_backends.engine_types import EngineStats, TokenEvent
from python_backends.generation import GenerationSpec

MAX_SEQUENCES = 8
PROMPTS: tuple[tuple[int, ...], ...] = (
    (11, 500, 9, 300, 400),
    (12, 7),
    (13, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000),
    (14, 42, 43, 44),
)
MAX_NEW = (12, 7, 12, 9)
LONG_PROMPT = tuple(range(100, 120))


class Collector:
    """The ``emit`` callback of one request: records every event the engine sends."""

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


def _spec(prompt: Sequence[int], max_new: int = 8, **kwargs: object) -> GenerationSpec:
    return GenerationSpec(input_ids=tuple(prompt), max_new_tokens=max_new, **kwargs)  # type: ignore[arg-type]


def _drain(engine: CpuEngine, max_steps: int = 200) -> int:
    """Step until nothing runs or waits; returns the number of steps."""
    for steps in range(1, max_steps + 1):
        engine.step()
        if engine.stats.active == 0 and engine.stats.waiting == 0:
            return steps
    raise AssertionError(f"engine still busy after {max_steps} steps")


def _generate(
    engine: CpuEngine, spec: GenerationSpec, is_cancelled: Callable[[], bool] = lambda: False
) -> Collector:
    """Run one request to its end and return what it was sent."""
    out = Collector()
    engine.submit(spec, out, is_cancelled)
    _drain(engine)
    assert out.finished
    return out


def _reset(engine: CpuEngine) -> None:
    engine.prefix_cache = PrefixCache(engine.config.prefix_cache_bytes)
    engine.config.max_num_sequences = MAX_SEQUENCES
    engine.stats = EngineStats(
        max_sequences=MAX_SEQUENCES, kv_tokens_per_block=engine.config.kv_block_tokens
    )


@pytest.fixture(scope="module")
def shared_engine(tiny_model_dir: Path) -> CpuEngine:
    return CpuEngine(EngineConfig(model_dir=tiny_model_dir, max_num_sequences=MAX_SEQUENCES))


@pytest.fixture
def engine(shared_engine: CpuEngine) -> Iterator[CpuEngine]:
    """The module's engine, idle, with an empty prefix cache and fresh counters."""
    _reset(shared_engine)
    yield shared_engine
    _drain(shared_engine)


@pytest.fixture(scope="module")
def solo_outputs(shared_engine: CpuEngine) -> list[list[int]]:
    """Greedy tokens of each of PROMPTS decoded alone, with no prefix cache."""
    outputs = []
    for prompt, max_new in zip(PROMPTS, MAX_NEW, strict=True):
        _reset(shared_engine)
        shared_engine.prefix_cache = PrefixCache(0)
        outputs.append(_generate(shared_engine, _spec(prompt, max_new)).tokens)
    return outputs


def test_solo_generation_is_well_formed(engine: CpuEngine, solo_outputs: list[list[int]]) -> None:
    out = _generate(engine, _spec(PROMPTS[0], MAX_NEW[0]))

    assert len(out.events) == 1
    event = out.last
    assert event.finished
    assert event.finish_reason == "length"
    assert event.error is None
    assert event.cached_tokens == 0
    assert list(event.token_ids) == solo_outputs[0]
    assert len(event.token_ids) == MAX_NEW[0]
    assert all(0 <= t < engine.vocab_size for t in event.token_ids)
    assert len(event.log_probs) == len(event.token_ids)
    assert all(math.isfinite(p) and p <= 0.0 for p in event.log_probs)


def test_batched_decoding_matches_solo(engine: CpuEngine, solo_outputs: list[list[int]]) -> None:
    outs = [Collector() for _ in PROMPTS]
    for prompt, max_new, out in zip(PROMPTS, MAX_NEW, outs, strict=True):
        engine.submit(_spec(prompt, max_new), out)

    engine.step()
    assert engine.stats.active == len(PROMPTS)
    _drain(engine)

    assert [out.tokens for out in outs] == solo_outputs
    assert [out.last.finish_reason for out in outs] == ["length"] * len(PROMPTS)
    assert engine.stats.completed == len(PROMPTS)


def test_late_admission_with_cached_prefix_matches_solo(engine: CpuEngine) -> None:
    first = _generate(engine, _spec(LONG_PROMPT, 6))
    follow_up = _spec((*LONG_PROMPT, *first.tokens, 300, 301), 8)
    others = [_spec(PROMPTS[1], 10), _spec(PROMPTS[2], 9)]
    cache = engine.prefix_cache
    engine.prefix_cache = PrefixCache(0)
    solo = [_generate(engine, spec).tokens for spec in [*others, follow_up]]
    engine.prefix_cache = cache

    outs = [Collector() for _ in range(3)]
    engine.submit(others[0], outs[0])
    for _ in range(3):
        engine.step()
    engine.submit(follow_up, outs[2])
    engine.step()
    engine.submit(others[1], outs[1])
    _drain(engine)

    assert outs[2].last.cached_tokens > 0
    assert [outs[0].tokens, outs[1].tokens, outs[2].tokens] == solo


def test_finished_sequence_is_kept_in_prefix_cache(engine: CpuEngine) -> None:
    out = _generate(engine, _spec(LONG_PROMPT, 6))

    assert len(engine.prefix_cache) == 1
    # Everything fed to the model: the prompt and all output tokens but the last.
    assert engine.prefix_cache.tokens_held == len(LONG_PROMPT) + len(out.tokens) - 1
    assert engine.prefix_cache.lookup([*LONG_PROMPT, *out.tokens, 1])[0] == (
        len(LONG_PROMPT) + len(out.tokens) - 1
    )


def test_follow_up_prompt_reuses_cached_prefix(engine: CpuEngine) -> None:
    first = _generate(engine, _spec(LONG_PROMPT, 8))
    follow_up = (*LONG_PROMPT, *first.tokens, 300, 301, 302)
    reused_before = engine.stats.kv_blocks_reused

    cached = _generate(engine, _spec(follow_up, 8))

    expected_cached = len(LONG_PROMPT) + len(first.tokens) - 1
    assert cached.last.cached_tokens == expected_cached
    assert engine.stats.cached_prompt_tokens == expected_cached
    assert engine.stats.kv_blocks_reused > reused_before
    engine.prefix_cache = PrefixCache(0)
    uncached = _generate(engine, _spec(follow_up, 8))
    assert uncached.last.cached_tokens == 0
    assert cached.tokens == uncached.tokens


def test_prefill_counts_only_uncached_tokens(engine: CpuEngine) -> None:
    first = _generate(engine, _spec(LONG_PROMPT, 4))
    prefilled = engine.stats.prefill_tokens
    follow_up = (*LONG_PROMPT, *first.tokens, 7)

    out = _generate(engine, _spec(follow_up, 4))

    assert engine.stats.prefill_tokens - prefilled == len(follow_up) - out.last.cached_tokens


def test_kv_blocks_reused_grows_on_prefix_hit(engine: CpuEngine) -> None:
    block = engine.config.kv_block_tokens
    prompt = tuple(range(200, 200 + 3 * block + 2))
    _generate(engine, _spec(prompt, 2))
    assert engine.stats.kv_blocks_reused == 0

    out = _generate(engine, _spec((*prompt, 5, 6), 2))

    assert out.last.cached_tokens >= 3 * block
    assert engine.stats.kv_blocks_reused == out.last.cached_tokens // block


def test_streaming_emits_one_event_per_token(
    engine: CpuEngine, solo_outputs: list[list[int]]
) -> None:
    out = _generate(engine, _spec(PROMPTS[2], MAX_NEW[2], streaming=True))

    assert len(out.events) == MAX_NEW[2]
    assert all(len(e.token_ids) == 1 and len(e.log_probs) == 1 for e in out.events)
    assert [e.finished for e in out.events] == [False] * (MAX_NEW[2] - 1) + [True]
    assert out.last.finish_reason == "length"
    assert all(e.finish_reason is None for e in out.events[:-1])
    assert out.tokens == solo_outputs[2]


def _first_stop(tokens: Sequence[int], word: Sequence[int]) -> int:
    """Number of tokens generated when ``word`` first ends the output."""
    n = len(word)
    for end in range(n, len(tokens) + 1):
        if list(tokens[end - n : end]) == list(word):
            return end
    raise AssertionError(f"{word} not in {tokens}")


@pytest.mark.parametrize("word_slice", [slice(3, 4), slice(2, 4)], ids=["one-token", "two-token"])
def test_stop_words_end_generation(
    engine: CpuEngine, solo_outputs: list[list[int]], word_slice: slice
) -> None:
    reference = solo_outputs[0]
    word = tuple(reference[word_slice])
    expected = reference[: _first_stop(reference, word)]
    assert len(expected) < MAX_NEW[0]

    out = _generate(engine, _spec(PROMPTS[0], MAX_NEW[0], stop_words=(word,)))

    assert out.last.finish_reason == "stop_words"
    assert out.tokens == expected


def test_stop_words_when_streaming(engine: CpuEngine, solo_outputs: list[list[int]]) -> None:
    reference = solo_outputs[0]
    word = (reference[3],)
    expected = reference[: _first_stop(reference, word)]

    out = _generate(engine, _spec(PROMPTS[0], MAX_NEW[0], stop_words=(word,), streaming=True))

    assert out.tokens == expected
    assert len(out.events) == len(expected)
    assert out.last.finish_reason == "stop_words"


def test_end_id_finishes_generation(engine: CpuEngine, solo_outputs: list[list[int]]) -> None:
    reference = solo_outputs[1]
    end_id = reference[0]

    out = _generate(engine, _spec(PROMPTS[1], MAX_NEW[1], end_id=end_id))

    assert out.last.finish_reason == "end_id"
    assert out.tokens == []


def test_end_id_when_streaming_sends_empty_final_event(
    engine: CpuEngine, solo_outputs: list[list[int]]
) -> None:
    reference = solo_outputs[2]
    end_id = reference[2]
    stop_at = reference.index(end_id)

    out = _generate(engine, _spec(PROMPTS[2], MAX_NEW[2], end_id=end_id, streaming=True))

    assert out.tokens == reference[:stop_at]
    assert [e.finished for e in out.events] == [False] * stop_at + [True]
    assert out.last.token_ids == ()
    assert out.last.finish_reason == "end_id"


def test_min_tokens_forces_full_length(engine: CpuEngine, solo_outputs: list[list[int]]) -> None:
    end_id = solo_outputs[1][0]

    out = _generate(engine, _spec(PROMPTS[1], MAX_NEW[1], end_id=end_id, min_tokens=MAX_NEW[1]))

    assert out.last.finish_reason == "length"
    assert len(out.tokens) == MAX_NEW[1]
    assert end_id not in out.tokens


def test_cancelled_request_gets_error_event(engine: CpuEngine) -> None:
    out = _generate(engine, _spec(PROMPTS[0], 8), lambda: True)

    assert len(out.events) == 1
    assert out.last.finished
    assert out.last.finish_reason == "error"
    assert out.last.error == "cancelled"
    assert out.tokens == []


def test_cancel_while_streaming_stops_after_current_token(engine: CpuEngine) -> None:
    out = Collector()
    engine.submit(_spec(PROMPTS[2], 10, streaming=True), out, lambda: len(out.events) >= 2)
    _drain(engine)

    assert [e.error for e in out.events] == [None, None, "cancelled"]
    assert len(out.tokens) == 2
    assert out.last.finished


def test_max_num_sequences_caps_running(engine: CpuEngine) -> None:
    engine.config.max_num_sequences = 2
    outs = [Collector() for _ in range(5)]
    for i, out in enumerate(outs):
        engine.submit(_spec((20 + i, 30, 40), 4), out)

    engine.step()

    assert engine.stats.active == 2
    assert engine.stats.waiting == 3
    assert engine.stats.context == 2
    assert [len(o.events) for o in outs] == [0] * 5
    peak = 2
    while engine.stats.active or engine.stats.waiting:
        engine.step()
        peak = max(peak, engine.stats.active)
    assert peak == 2
    assert all(o.finished and len(o.tokens) == 4 for o in outs)


def test_a_canary_runs_beside_a_full_batch(
    engine: CpuEngine, solo_outputs: list[list[int]]
) -> None:
    """A top-level request joins a batch already at max_num_sequences and decodes as it
    would alone; the ordinary request queued before it waits."""
    engine.config.max_num_sequences = 1
    first, queued, canary = Collector(), Collector(), Collector()
    engine.submit(_spec(PROMPTS[0], MAX_NEW[0], priority=3), first)
    engine.submit(_spec(PROMPTS[1], MAX_NEW[1], priority=3), queued)
    engine.step()
    engine.submit(_spec(PROMPTS[2], MAX_NEW[2], priority=TOP_PRIORITY_LEVEL), canary)

    engine.step()

    assert (engine.stats.active, engine.stats.waiting) == (2, 1)
    while not canary.finished:
        engine.step()
        assert engine.stats.waiting == 1  # its slot is the canary's until the canary ends
    _drain(engine)
    assert [first.tokens, queued.tokens, canary.tokens] == solo_outputs[:3]


def test_stats_after_drain(engine: CpuEngine) -> None:
    for prompt in PROMPTS[:2]:
        engine.submit(_spec(prompt, 3), Collector())

    _drain(engine)

    stats = engine.stats
    assert stats.completed == 2
    assert stats.active == stats.scheduled == stats.waiting == 0
    assert stats.prefill_tokens == len(PROMPTS[0]) + len(PROMPTS[1])
    assert 0 < stats.kv_blocks_used <= stats.kv_blocks_max
    assert stats.kv_tokens_per_block == engine.config.kv_block_tokens


def test_on_step_receives_stats(engine: CpuEngine) -> None:
    seen: list[int] = []
    engine.on_step = lambda stats: seen.append(stats.active)
    try:
        _generate(engine, _spec(PROMPTS[1], 3))
    finally:
        engine.on_step = None

    assert seen[0] == 1
    assert seen[-1] == 0


# -- failures inside model work --------------------------------------------------------------
def test_a_failing_prefill_fails_only_its_request(
    engine: CpuEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine._prefill

    def prefill(seq: _Sequence) -> None:
        if seq.spec.input_ids == PROMPTS[1]:
            raise RuntimeError("out of memory")
        real(seq)

    monkeypatch.setattr(engine, "_prefill", prefill)
    broken, fine = Collector(), Collector()
    engine.submit(_spec(PROMPTS[1], 4), broken)
    engine.submit(_spec(PROMPTS[0], 4), fine)
    _drain(engine)

    assert broken.finished and len(broken.events) == 1
    assert broken.last.finish_reason == "error"
    assert broken.last.error == "prefill failed: out of memory"
    assert fine.last.error is None and len(fine.tokens) == 4
    assert engine.dead_reason is None


def test_a_failing_decode_fails_its_batch_and_the_engine_goes_on(
    engine: CpuEngine, monkeypatch: pytest.MonkeyPatch, solo_outputs: list[list[int]]
) -> None:
    real = engine._decode
    failures = [RuntimeError("bad kernel")]

    def decode(batch: list[_Sequence]) -> None:
        if failures:
            raise failures.pop()
        real(batch)

    monkeypatch.setattr(engine, "_decode", decode)
    outs = [Collector(), Collector()]
    for prompt, out in zip(PROMPTS[:2], outs, strict=True):
        engine.submit(_spec(prompt, 6, streaming=True), out)
    _drain(engine)

    for out in outs:
        assert len(out.events) == 2  # the prefill's token, then the error
        assert out.last.error == "decode failed: bad kernel"
    after = _generate(engine, _spec(PROMPTS[0], MAX_NEW[0]))
    assert after.tokens == solo_outputs[0]
    assert engine.dead_reason is None
