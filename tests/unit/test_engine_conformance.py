"""One contract, every engine: each name in ``ENGINES`` built the way the model config builds it.

Engines are stepped synchronously (no thread) except in the start/stop test; the sim engine
runs its iterations instantly (``sleep`` replaced by a no-op).
"""

from __future__ import annotations

import inspect
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import pytest

from python_backends.cpu_engine.engine import CpuEngine
from python_backends.cpu_engine.prefix_cache import PrefixCache
from python_backends.engine_loop import (
    MAX_CONSECUTIVE_FAILURES,
    TOP_PRIORITY_LEVEL,
    TOP_PRIORITY_SLOTS,
    EngineLoop,
)
from python_backends.engine_types import Engine, EngineStats, TokenEvent
from python_backends.engines import ENGINES, build_engine
from python_backends.generation import GenerationSpec, SamplingParams
from python_backends.sim_engine.engine import SimEngine
from python_backends.sim_engine.faults import FAULT_FILE_ENV

SIM_PROFILE = Path(__file__).resolve().parents[1] / "data" / "sim_test_gpu.json"
MAX_BATCH = 3
KINDS = sorted(ENGINES)
PROMPTS: tuple[tuple[int, ...], ...] = (
    (11, 500, 9, 300, 400),
    (12, 7),
    (13, 100, 200, 300, 400, 500, 600),
    (14, 42, 43, 44),
    (15, 16, 17),
)


class SteppedEngine(Engine, Protocol):
    """An engine the tests can drive one iteration at a time."""

    def step(self) -> object: ...


class Collector:
    """The ``emit`` callback of one request: records every event the engine sends."""

    def __init__(self) -> None:
        self.events: list[TokenEvent] = []
        self.done = threading.Event()

    def __call__(self, event: TokenEvent) -> None:
        assert not self.finished, "event after the final one"
        self.events.append(event)
        if event.finished:
            self.done.set()

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


def _params(kind: str, model_dir: Path) -> dict[str, str]:
    """The string parameters the rendered ``tensorrt_llm`` config.pbtxt passes."""
    return {
        "engine": kind,
        "model_dir": str(model_dir),
        "tokenizer_dir": str(model_dir),
        "hardware_profile": str(SIM_PROFILE) if kind == "sim" else "",
        "time_scale": "1.0",
        "max_context": "0",
        "prefix_cache_mb": "256",
        "engine_threads": "1",
        "enable_kv_cache_reuse": "true",
    }


def _build(kind: str, model_dir: Path) -> SteppedEngine:
    engine = build_engine(kind, _params(kind, model_dir), MAX_BATCH)
    assert callable(getattr(engine, "step", None)), f"{kind} engine cannot be stepped"
    if isinstance(engine, SimEngine):
        engine.sleep = lambda seconds: None
    return cast(SteppedEngine, engine)


def _reset(engine: SteppedEngine) -> None:
    """Forget counters, caches and callbacks a previous test left behind."""
    engine.on_step = None
    if isinstance(engine, CpuEngine):
        engine.prefix_cache = PrefixCache(engine.config.prefix_cache_bytes)
        engine.config.max_num_sequences = MAX_BATCH
        engine.stats = EngineStats(
            max_sequences=MAX_BATCH, kv_tokens_per_block=engine.config.kv_block_tokens
        )


def _spec(prompt: Sequence[int], max_new: int = 5, **kwargs: object) -> GenerationSpec:
    kwargs.setdefault("min_tokens", max_new)
    return GenerationSpec(input_ids=tuple(prompt), max_new_tokens=max_new, **kwargs)  # type: ignore[arg-type]


def _drain(engine: SteppedEngine, max_steps: int = 200) -> int:
    """Step until nothing runs or waits; returns the number of steps."""
    for steps in range(1, max_steps + 1):
        engine.step()
        if engine.stats.active == 0 and engine.stats.waiting == 0:
            return steps
    raise AssertionError(f"engine still busy after {max_steps} steps")


def _generate(
    engine: SteppedEngine, spec: GenerationSpec, is_cancelled: Callable[[], bool] = lambda: False
) -> Collector:
    out = Collector()
    engine.submit(spec, out, is_cancelled)
    _drain(engine)
    assert out.finished
    return out


@pytest.fixture(autouse=True)
def _no_fault_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAULT_FILE_ENV, raising=False)


@pytest.fixture(scope="module")
def cpu_engine(tiny_model_dir: Path) -> SteppedEngine:
    """Loading the checkpoint is the costly part: one cpu engine for the module."""
    return _build("cpu", tiny_model_dir)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(
    kind: str, request: pytest.FixtureRequest, tiny_model_dir: Path
) -> Iterator[SteppedEngine]:
    """An idle engine of ``kind`` with fresh counters."""
    if kind == "cpu":
        built: SteppedEngine = request.getfixturevalue("cpu_engine")
    else:
        built = _build(kind, tiny_model_dir)
    _reset(built)
    yield built
    _drain(built)
    _reset(built)


def test_every_registered_engine_is_covered() -> None:
    assert KINDS == ["cpu", "sim"]


def test_has_every_member_of_the_engine_protocol(engine: SteppedEngine) -> None:
    members = set(Engine.__annotations__) | {
        name for name, value in vars(Engine).items() if callable(value) and not name.startswith("_")
    }
    assert members >= {"vocab_size", "max_context", "stats", "on_step", "submit", "start"}

    for name in members:
        assert hasattr(engine, name), f"missing {name}"
    assert isinstance(engine.vocab_size, int) and engine.vocab_size > 0
    assert isinstance(engine.max_context, int) and engine.max_context > 0
    assert isinstance(engine.stats, EngineStats)
    assert engine.stats.max_sequences == MAX_BATCH
    for name in ("submit", "start", "stop"):
        protocol_params = list(inspect.signature(getattr(Engine, name)).parameters)[1:]
        assert list(inspect.signature(getattr(engine, name)).parameters) == protocol_params


def test_non_streaming_request_gets_one_final_event(engine: SteppedEngine) -> None:
    out = _generate(engine, _spec(PROMPTS[0], 6))

    assert len(out.events) == 1
    event = out.last
    assert event.finished
    assert event.error is None
    assert event.finish_reason == "length"
    assert len(event.token_ids) == 6
    assert len(event.log_probs) == 6
    assert event.sequence_length in (None, 6)


def test_streaming_request_gets_one_event_per_token(engine: SteppedEngine) -> None:
    out = _generate(engine, _spec(PROMPTS[2], 7, streaming=True))

    assert len(out.events) == 7
    assert all(len(e.token_ids) == 1 for e in out.events)
    assert [e.finished for e in out.events] == [False] * 6 + [True]
    assert all(e.error is None for e in out.events)
    assert out.last.finish_reason == "length"


def test_token_ids_lie_in_the_vocabulary(engine: SteppedEngine) -> None:
    outs = [Collector() for _ in PROMPTS]
    for prompt, out in zip(PROMPTS, outs, strict=True):
        engine.submit(_spec(prompt, 8, streaming=prompt[0] % 2 == 0), out)
    _drain(engine)

    for out in outs:
        assert out.finished and out.last.error is None
        assert len(out.tokens) == 8
        assert all(0 <= t < engine.vocab_size for t in out.tokens)


def test_no_more_than_max_num_sequences_run_at_once(engine: SteppedEngine) -> None:
    outs = [Collector() for _ in range(2 * MAX_BATCH + 1)]
    for i, out in enumerate(outs):
        engine.submit(_spec((50 + i, 60, 70, 80), 4), out)

    engine.step()
    assert engine.stats.active == MAX_BATCH
    assert engine.stats.waiting == len(outs) - MAX_BATCH
    peak = 0
    for _ in range(200):
        engine.step()
        peak = max(peak, engine.stats.active)
        if engine.stats.active == 0 and engine.stats.waiting == 0:
            break
    assert peak == MAX_BATCH
    assert all(o.finished and len(o.tokens) == 4 for o in outs)


def test_top_priority_requests_are_admitted_ahead_of_a_full_batch(engine: SteppedEngine) -> None:
    """Canaries (level 1) run beyond max_num_sequences, up to TOP_PRIORITY_SLOTS of them,
    and before ordinary requests that queued earlier."""
    first_tokens: list[str] = []

    def recorder(name: str) -> Collector:
        class First(Collector):
            def __call__(self, event: TokenEvent) -> None:
                if not self.events:
                    first_tokens.append(name)
                super().__call__(event)

        return First()

    ordinary = [recorder(f"ordinary{i}") for i in range(MAX_BATCH + 2)]
    for i, out in enumerate(ordinary):
        engine.submit(_spec((50 + i, 60, 70), 12, streaming=True, priority=3), out)
    engine.step()
    assert (engine.stats.active, engine.stats.waiting) == (MAX_BATCH, 2)

    tops = [recorder(f"top{i}") for i in range(TOP_PRIORITY_SLOTS + 1)]
    for i, out in enumerate(tops):
        engine.submit(_spec((80 + i, 81), 4, streaming=True, priority=TOP_PRIORITY_LEVEL), out)
    engine.step()

    assert engine.stats.active == MAX_BATCH + TOP_PRIORITY_SLOTS
    assert engine.stats.waiting == 2 + 1
    assert [bool(o.events) for o in tops] == [True] * TOP_PRIORITY_SLOTS + [False]
    _drain(engine)
    assert all(o.finished and o.last.error is None for o in [*tops, *ordinary])
    # The third canary waited for a canary slot, never behind the queued ordinary work.
    assert first_tokens.index("top2") < first_tokens.index(f"ordinary{MAX_BATCH}")
    assert first_tokens[-2:] == [f"ordinary{MAX_BATCH}", f"ordinary{MAX_BATCH + 1}"]


def test_ordinary_requests_never_run_beyond_max_num_sequences(engine: SteppedEngine) -> None:
    top = Collector()
    engine.submit(_spec((90, 91), 6, priority=TOP_PRIORITY_LEVEL), top)
    outs = [Collector() for _ in range(MAX_BATCH + 1)]
    for i, out in enumerate(outs):
        engine.submit(_spec((50 + i, 60), 6, priority=3), out)

    engine.step()

    # The canary took one of the ordinary slots while there was one.
    assert (engine.stats.active, engine.stats.waiting) == (MAX_BATCH, 2)
    _drain(engine)
    assert all(o.finished and o.last.error is None for o in [top, *outs])


class CountedCancel:
    """An ``is_cancelled`` that counts how often it was asked."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.answer


def test_a_request_cancelled_while_queued_is_dropped_at_the_head(engine: SteppedEngine) -> None:
    running = [Collector() for _ in range(MAX_BATCH)]
    for i, out in enumerate(running):
        engine.submit(_spec((30 + i, 31), 4), out)
    gone, kept = Collector(), Collector()
    gone_asked, kept_asked = CountedCancel(True), CountedCancel(False)
    engine.submit(_spec((40, 41), 4), gone, gone_asked)
    engine.submit(_spec((42, 43), 4), kept, kept_asked)

    for _ in range(3):
        engine.step()
        # No slot: nobody in the queue is asked (asking costs the model an IPC call).
        assert gone_asked.calls == kept_asked.calls == 0
    _drain(engine)

    assert gone_asked.calls == 1
    assert [e.error for e in gone.events] == ["cancelled"]
    assert gone.tokens == []
    assert kept.last.error is None and len(kept.tokens) == 4
    assert engine.stats.completed == MAX_BATCH + 1


# -- continuing a request from its prompt plus the tokens it generated -------------------------
CONTINUATION_LEN = 10


def _continue(
    engine: SteppedEngine, prompt: Sequence[int], k: int, **kwargs: Any
) -> tuple[list[int], list[int]]:
    """The unbroken run, and its first ``k`` tokens followed by a continuation re-sent as
    the router re-sends a moved stream: prompt + those tokens, the lengths reduced by k."""
    n = CONTINUATION_LEN
    whole = _generate(engine, _spec(prompt, n, min_tokens=n, **kwargs)).tokens
    head = _generate(engine, _spec(prompt, k, min_tokens=k, **kwargs)).tokens
    rest = _generate(engine, _spec((*prompt, *head), n - k, min_tokens=n - k, **kwargs)).tokens
    return whole, head + rest


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(),
        SamplingParams(temperature=0.8, top_k=40, seed=7),
        SamplingParams(temperature=1.3, top_p=0.9, seed=123),
        SamplingParams(temperature=1.0, top_k=5, seed=2**64 - 1),
    ],
    ids=["greedy", "top_k", "top_p", "max_seed"],
)
@pytest.mark.parametrize("k", [1, 4])
def test_a_continuation_equals_the_rest_of_the_unbroken_run(
    engine: SteppedEngine, sampling: SamplingParams, k: int
) -> None:
    whole, continued = _continue(engine, PROMPTS[2], k, sampling=sampling)

    assert len(whole) == CONTINUATION_LEN
    assert continued == whole


def test_a_continuation_keeps_bad_words_end_id_and_min_tokens(engine: SteppedEngine) -> None:
    k = 3
    sampling = SamplingParams(temperature=0.9, top_k=20, seed=11)
    free = _generate(engine, _spec(PROMPTS[0], CONTINUATION_LEN, sampling=sampling)).tokens
    # A two-token bad word across the split: its first token ends the continuation's prompt.
    bad_words = ((free[k - 1], free[k]),)
    banned = _generate(
        engine, _spec(PROMPTS[0], CONTINUATION_LEN, sampling=sampling, bad_words=bad_words)
    ).tokens
    assert banned[:k] == free[:k] and banned[k] != free[k]
    # An end_id the run would produce right after the split, held off by min_tokens.
    end_id = banned[k + 1]

    whole, continued = _continue(
        engine, PROMPTS[0], k, sampling=sampling, bad_words=bad_words, end_id=end_id
    )

    assert len(whole) == CONTINUATION_LEN and end_id not in whole
    assert whole[:k] == free[:k] and (free[k - 1], free[k]) not in set(itertools.pairwise(whole))
    assert continued == whole


def test_cancelled_request_ends_with_an_error_event(engine: SteppedEngine) -> None:
    out = _generate(engine, _spec(PROMPTS[0], 6), lambda: True)

    assert out.last.finished
    assert out.last.finish_reason == "error"
    assert out.last.error == "cancelled"
    assert out.tokens == []


def test_cancel_while_streaming_stops_the_request(engine: SteppedEngine) -> None:
    out = Collector()
    engine.submit(_spec(PROMPTS[2], 10, streaming=True), out, lambda: len(out.events) >= 2)
    _drain(engine)

    assert [e.error for e in out.events] == [None, None, "cancelled"]
    assert out.last.finished


def test_completed_counts_finished_requests(engine: SteppedEngine) -> None:
    assert engine.stats.completed == 0
    outs = [Collector() for _ in range(3)]
    for prompt, out in zip(PROMPTS[:3], outs, strict=True):
        engine.submit(_spec(prompt, 3), out)
    cancelled = Collector()
    engine.submit(_spec(PROMPTS[3], 3), cancelled, lambda: True)
    _drain(engine)

    assert all(o.last.error is None for o in outs)
    assert cancelled.last.error == "cancelled"
    assert engine.stats.completed == 3
    assert engine.stats.active == engine.stats.waiting == 0


def test_on_step_receives_engine_stats(engine: SteppedEngine) -> None:
    seen: list[EngineStats] = []
    engine.on_step = seen.append
    _generate(engine, _spec(PROMPTS[1], 3))

    assert seen
    assert all(isinstance(s, EngineStats) for s in seen)
    assert seen[-1].completed == 1
    assert seen[-1].active == 0


def test_stop_fails_queued_and_running_requests(kind: str, tiny_model_dir: Path) -> None:
    engine = _build(kind, tiny_model_dir)
    outs = [Collector() for _ in range(MAX_BATCH + 2)]
    for i, out in enumerate(outs):
        engine.submit(_spec((90 + i, 91, 92), 20), out)
    engine.step()
    assert engine.stats.waiting == 2

    engine.stop()

    for out in outs:
        assert out.finished
        assert out.last.finish_reason == "error"
        assert out.last.error


def test_engine_thread_serves_requests(kind: str, tiny_model_dir: Path) -> None:
    engine = _build(kind, tiny_model_dir)
    engine.start()
    try:
        outs = [Collector() for _ in range(MAX_BATCH + 1)]
        for prompt, out in zip(PROMPTS[: len(outs)], outs, strict=True):
            engine.submit(_spec(prompt, 4), out)
        for out in outs:
            assert out.done.wait(timeout=10.0)
            assert out.last.error is None
            assert len(out.tokens) == 4
    finally:
        engine.stop()


# -- what a request asks for: stop words, end_id, bad words, perf ------------------------------
REFERENCE_LEN = 10


def _reference(engine: SteppedEngine, prompt: Sequence[int] = PROMPTS[0]) -> list[int]:
    """What the engine generates for ``prompt`` with nothing to stop or ban it."""
    tokens = _generate(engine, _spec(prompt, REFERENCE_LEN)).tokens
    assert len(tokens) == REFERENCE_LEN
    return tokens


def _first_end(tokens: Sequence[int], word: Sequence[int]) -> int:
    """Number of tokens generated when ``word`` first ends the output."""
    for end in range(len(word), len(tokens) + 1):
        if list(tokens[end - len(word) : end]) == list(word):
            return end
    raise AssertionError(f"{word} not in {tokens}")


@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("word_slice", [slice(3, 4), slice(2, 4)], ids=["one-token", "two-token"])
def test_stop_words_finish_with_reason_stop_words(
    engine: SteppedEngine, streaming: bool, word_slice: slice
) -> None:
    reference = _reference(engine)
    word = tuple(reference[word_slice])
    expected = reference[: _first_end(reference, word)]

    out = _generate(
        engine, _spec(PROMPTS[0], REFERENCE_LEN, stop_words=(word,), streaming=streaming)
    )

    assert out.last.error is None
    assert out.last.finish_reason == "stop_words"
    assert out.tokens == expected  # the stop word itself is part of the output
    assert len(out.events) == (len(expected) if streaming else 1)


def test_any_of_several_stop_words_finishes(engine: SteppedEngine) -> None:
    reference = _reference(engine)
    never = (engine.vocab_size - 1, engine.vocab_size - 2, engine.vocab_size - 3)
    word = (reference[5],)

    out = _generate(engine, _spec(PROMPTS[0], REFERENCE_LEN, stop_words=(never, word)))

    assert out.last.finish_reason == "stop_words"
    assert out.tokens == reference[: _first_end(reference, word)]


@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
def test_end_id_the_engine_would_produce_ends_the_sequence(
    engine: SteppedEngine, streaming: bool
) -> None:
    reference = _reference(engine)
    end_id = reference[3]
    expected = reference[: reference.index(end_id)]

    out = _generate(
        engine,
        _spec(PROMPTS[0], REFERENCE_LEN, end_id=end_id, min_tokens=0, streaming=streaming),
    )

    assert out.last.error is None
    assert out.last.finish_reason == "end_id"
    assert out.tokens == expected  # end_id itself is never part of the output
    if streaming:
        assert out.last.token_ids == ()
        assert len(out.events) == len(expected) + 1


def test_min_tokens_forbids_an_early_end_id(engine: SteppedEngine) -> None:
    reference = _reference(engine)
    end_id = reference[0]

    out = _generate(
        engine, _spec(PROMPTS[0], REFERENCE_LEN, end_id=end_id, min_tokens=REFERENCE_LEN)
    )

    assert out.last.finish_reason == "length"
    assert len(out.tokens) == REFERENCE_LEN
    assert end_id not in out.tokens


def test_end_id_is_allowed_once_min_tokens_are_out(engine: SteppedEngine) -> None:
    reference = _reference(engine)
    end_id = reference[2]
    min_tokens = reference.index(end_id) + 1

    out = _generate(engine, _spec(PROMPTS[0], REFERENCE_LEN, end_id=end_id, min_tokens=min_tokens))

    assert out.last.error is None
    assert len(out.tokens) >= min_tokens
    assert end_id not in out.tokens
    assert out.last.finish_reason in ("end_id", "length")
    if out.last.finish_reason == "length":
        assert len(out.tokens) == REFERENCE_LEN


@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
def test_bad_words_never_appear_in_the_output(engine: SteppedEngine, streaming: bool) -> None:
    reference = _reference(engine)
    bad = {reference[1], reference[4]}

    out = _generate(
        engine,
        _spec(
            PROMPTS[0],
            REFERENCE_LEN,
            bad_words=tuple((t,) for t in sorted(bad)),
            streaming=streaming,
        ),
    )

    assert out.last.error is None
    assert len(out.tokens) == REFERENCE_LEN
    assert not bad & set(out.tokens)
    assert all(0 <= t < engine.vocab_size for t in out.tokens)


def test_a_multi_token_bad_word_bans_its_last_token_after_its_prefix(
    engine: SteppedEngine,
) -> None:
    reference = _reference(engine)
    word = (reference[0], reference[1])

    out = _generate(engine, _spec(PROMPTS[0], REFERENCE_LEN, bad_words=(word,)))

    assert out.tokens[0] == reference[0]
    assert out.tokens[1] != reference[1]
    pairs = set(zip(out.tokens, out.tokens[1:], strict=False))
    assert word not in pairs


def _check_perf(engine: SteppedEngine, out: Collector, spec: GenerationSpec) -> None:
    block = engine.stats.kv_tokens_per_block
    generated = 0
    first_token = None
    last_token = 0
    for event in out.events:
        perf = event.perf
        assert perf is not None
        generated += len(event.token_ids)
        assert perf.arrival_ns == spec.arrival_ns
        assert 0 < perf.arrival_ns <= perf.first_scheduled_ns
        assert perf.first_scheduled_ns <= perf.first_token_ns <= perf.last_token_ns
        first_token = first_token or perf.first_token_ns
        assert perf.first_token_ns == first_token
        assert perf.last_token_ns >= last_token
        last_token = perf.last_token_ns
        assert perf.kv_total_blocks == perf.kv_new_blocks + perf.kv_reused_blocks
        assert perf.kv_new_blocks >= 0 and perf.kv_reused_blocks >= 0
        assert perf.kv_total_blocks * block >= len(spec.input_ids) + generated


@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
def test_perf_is_filled_with_ordered_times_and_consistent_blocks(
    engine: SteppedEngine, streaming: bool
) -> None:
    spec = _spec(PROMPTS[2], 6, streaming=streaming, arrival_ns=time.monotonic_ns())

    out = _generate(engine, spec)

    _check_perf(engine, out, spec)
    assert out.last.perf is not None and out.last.perf.kv_reused_blocks == 0


def test_perf_reports_reused_blocks_on_a_prefix_hit(engine: SteppedEngine) -> None:
    prompt = tuple(range(300, 300 + 3 * 32 + 5))
    _generate(engine, _spec(prompt, 4, arrival_ns=time.monotonic_ns()))
    spec = _spec((*prompt, 7, 8, 9), 4, arrival_ns=time.monotonic_ns())

    out = _generate(engine, spec)

    _check_perf(engine, out, spec)
    perf = out.last.perf
    assert perf is not None
    assert perf.kv_reused_blocks > 0
    assert perf.kv_reused_blocks * engine.stats.kv_tokens_per_block <= len(spec.input_ids)
    assert out.last.cached_tokens > 0


def test_an_error_event_needs_no_perf(engine: SteppedEngine) -> None:
    out = _generate(engine, _spec(PROMPTS[0], 4), lambda: True)

    assert out.last.error == "cancelled"
    assert out.last.token_ids == ()


# -- cpu only: logits --------------------------------------------------------------------------
def test_cpu_context_logits_cover_the_prompt(cpu_engine: SteppedEngine) -> None:
    _reset(cpu_engine)
    prompt = PROMPTS[2]

    out = _generate(cpu_engine, _spec(prompt, 4, return_context_logits=True))

    logits = np.asarray(out.last.context_logits)
    assert logits.shape == (len(prompt), cpu_engine.vocab_size)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    assert int(np.argmax(logits[-1])) == out.tokens[0]  # greedy: the first token's logits


def test_cpu_context_logits_come_on_the_first_streamed_event_only(
    cpu_engine: SteppedEngine,
) -> None:
    _reset(cpu_engine)

    out = _generate(cpu_engine, _spec(PROMPTS[1], 4, return_context_logits=True, streaming=True))

    first, *rest = out.events
    assert np.asarray(first.context_logits).shape == (len(PROMPTS[1]), cpu_engine.vocab_size)
    assert all(e.context_logits is None for e in rest)


def test_cpu_context_logits_bypass_the_prefix_cache(cpu_engine: SteppedEngine) -> None:
    _reset(cpu_engine)
    prompt = tuple(range(400, 440))
    first = _generate(cpu_engine, _spec(prompt, 4))
    follow_up = (*prompt, *first.tokens, 5)
    assert _generate(cpu_engine, _spec(follow_up, 2)).last.cached_tokens > 0

    out = _generate(cpu_engine, _spec(follow_up, 2, return_context_logits=True))

    assert out.last.cached_tokens == 0
    assert np.asarray(out.last.context_logits).shape == (len(follow_up), cpu_engine.vocab_size)


def test_cpu_no_logits_unless_asked(cpu_engine: SteppedEngine) -> None:
    _reset(cpu_engine)

    out = _generate(cpu_engine, _spec(PROMPTS[0], 3, streaming=True))

    assert all(e.context_logits is None and e.generation_logits is None for e in out.events)


@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
def test_cpu_generation_logits_have_one_row_per_token(
    cpu_engine: SteppedEngine, streaming: bool
) -> None:
    _reset(cpu_engine)

    out = _generate(
        cpu_engine, _spec(PROMPTS[3], 5, return_generation_logits=True, streaming=streaming)
    )

    rows: list[np.ndarray] = []
    for event in out.events:
        logits = np.asarray(event.generation_logits)
        assert logits.shape == (len(event.token_ids), cpu_engine.vocab_size)
        assert logits.dtype == np.float32
        rows.extend(logits)
    assert len(rows) == len(out.tokens) == 5
    assert [int(np.argmax(r)) for r in rows] == out.tokens  # greedy picks each row's argmax


# -- failure containment --------------------------------------------------------------------------
def _loop_once(engine: SteppedEngine) -> Exception | None:
    """One iteration as the engine thread runs it: ``_iterate``, and ``_contain`` if it raises."""
    loop = cast(EngineLoop[Any], engine)
    try:
        loop._iterate()
    except Exception as exc:
        loop._contain(exc)
        return exc
    return None


def _errors(out: Collector) -> list[str]:
    return [e.error for e in out.events if e.error is not None]


@pytest.fixture
def fresh(kind: str, tiny_model_dir: Path) -> Iterator[SteppedEngine]:
    """An engine of ``kind`` of the test's own: it may be killed."""
    engine = _build(kind, tiny_model_dir)
    yield engine
    engine.stop()


def _raising_after_work(engine: SteppedEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next iteration does its work and then raises (an engine bug)."""
    real = engine.step

    def broken(*args: Any) -> object:
        real(*args)
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "step", broken)


def test_a_failing_iteration_fails_only_the_requests_it_was_running(
    fresh: SteppedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = [Collector() for _ in range(MAX_BATCH)]
    for i, out in enumerate(running):
        fresh.submit(_spec((60 + i, 61, 62), 8, streaming=True), out)
    waiting = Collector()
    fresh.submit(_spec((70, 71), 4), waiting)
    fresh.step()
    assert fresh.stats.active == MAX_BATCH and fresh.stats.waiting == 1
    assert all(o.events and not o.finished for o in running)

    with monkeypatch.context() as patch:
        _raising_after_work(fresh, patch)
        assert isinstance(_loop_once(fresh), RuntimeError)

    for out in running:
        assert out.finished
        assert out.last.finish_reason == "error"
        assert _errors(out) == [out.last.error]
        assert "engine iteration failed" in str(out.last.error)
        assert "boom" in str(out.last.error)
    assert waiting.events == []
    _drain(fresh)
    assert waiting.finished and waiting.last.error is None and len(waiting.tokens) == 4
    after = _generate(fresh, _spec(PROMPTS[1], 3))
    assert after.last.error is None and len(after.tokens) == 3
    assert fresh.dead_reason is None


@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
def test_a_raising_emit_callback_ends_only_its_request(
    engine: SteppedEngine, streaming: bool
) -> None:
    calls: list[TokenEvent] = []

    def gone(event: TokenEvent) -> None:
        calls.append(event)
        raise ConnectionError("client gone")

    good = Collector()
    engine.submit(_spec(PROMPTS[0], 6, streaming=streaming), gone)
    engine.submit(_spec(PROMPTS[1], 6, streaming=streaming), good)
    _drain(engine)

    assert len(calls) == 1  # dropped after the first failed delivery
    assert good.finished and good.last.error is None and len(good.tokens) == 6
    assert engine.stats.active == 0
    after = _generate(engine, _spec(PROMPTS[2], 3, streaming=streaming))
    assert after.last.error is None and len(after.tokens) == 3


def test_a_raising_emit_callback_on_an_error_event_is_contained(engine: SteppedEngine) -> None:
    def gone(event: TokenEvent) -> None:
        raise ConnectionError("client gone")

    engine.submit(_spec(PROMPTS[0], 6), gone, lambda: True)
    _drain(engine)

    assert _generate(engine, _spec(PROMPTS[1], 3)).last.error is None


def test_a_raising_on_step_hook_does_not_stop_requests(engine: SteppedEngine) -> None:
    calls: list[EngineStats] = []

    def hook(stats: EngineStats) -> None:
        calls.append(stats)
        raise ValueError("metrics backend down")

    engine.on_step = hook
    outs = [Collector() for _ in range(2)]
    for prompt, out in zip(PROMPTS[:2], outs, strict=True):
        engine.submit(_spec(prompt, 5), out)
    steps = _drain(engine)

    assert all(o.last.error is None and len(o.tokens) == 5 for o in outs)
    assert len(calls) == steps > 1  # still called after it first raised


def test_consecutive_failing_iterations_kill_the_engine(
    fresh: SteppedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    reasons: list[str] = []
    fresh.on_fatal = reasons.append
    outs = [Collector() for _ in range(MAX_BATCH + 2)]
    for i, out in enumerate(outs):
        fresh.submit(_spec((80 + i, 81, 82), 8), out)
    fresh.step()  # MAX_BATCH run, two wait

    def broken(*args: Any) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(fresh, "step", broken)
    for failures in range(1, MAX_CONSECUTIVE_FAILURES):
        assert isinstance(_loop_once(fresh), RuntimeError)
        assert fresh.dead_reason is None, f"dead after {failures} failures"
        assert reasons == []
    assert all(o.finished for o in outs[:MAX_BATCH])
    assert not any(o.events for o in outs[MAX_BATCH:])

    assert isinstance(_loop_once(fresh), RuntimeError)

    assert fresh.dead_reason is not None
    assert f"{MAX_CONSECUTIVE_FAILURES} iterations in a row" in fresh.dead_reason
    assert "boom" in fresh.dead_reason
    assert reasons == [fresh.dead_reason]
    for out in outs:
        assert out.finished and out.last.finish_reason == "error"
        assert len(_errors(out)) == 1
    for out in outs[MAX_BATCH:]:
        assert str(out.last.error).startswith("engine is dead")

    late = Collector()
    fresh.submit(_spec(PROMPTS[1], 3), late)
    assert late.finished  # at once, from submit itself
    assert str(late.last.error).startswith("engine is dead")
    assert len(reasons) == 1


def test_on_fatal_is_told_once_and_may_raise(fresh: SteppedEngine) -> None:
    calls: list[str] = []

    def fatal(reason: str) -> None:
        calls.append(reason)
        raise SystemError("exit hook broke")

    fresh.on_fatal = fatal
    loop = cast(EngineLoop[Any], fresh)

    loop._die("first")
    loop._die("second")

    assert calls == ["first"]
    assert fresh.dead_reason == "first"


class FlakySteps:
    """Wraps ``step``: the calls numbered in ``failing`` raise before doing any work."""

    def __init__(self, engine: SteppedEngine, failing: set[int] | None = None) -> None:
        self.real = engine.step
        self.failing = failing
        self.calls = 0

    def __call__(self, *args: Any) -> object:
        call, self.calls = self.calls, self.calls + 1
        if self.failing is None or call in self.failing:
            raise RuntimeError(f"boom {call}")
        return self.real(*args)


def test_engine_thread_survives_failing_iterations(
    fresh: SteppedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failures that never come MAX_CONSECUTIVE_FAILURES in a row leave the engine serving."""
    fatal: list[str] = []
    fresh.on_fatal = fatal.append
    flaky = FlakySteps(fresh, failing={0, 2, 4})
    monkeypatch.setattr(fresh, "step", flaky)
    first = Collector()
    fresh.submit(_spec(PROMPTS[0], 8), first)

    fresh.start()
    # call 0 fails before admitting it; call 1 admits it; call 2 fails it.
    assert first.done.wait(timeout=30)
    second = Collector()
    fresh.submit(_spec(PROMPTS[1], 8), second)
    assert second.done.wait(timeout=30)  # call 3 admits it, call 4 fails it
    third = Collector()
    fresh.submit(_spec(PROMPTS[2], 4), third)
    assert third.done.wait(timeout=30)

    assert _errors(first) == [first.last.error] and "boom 2" in str(first.last.error)
    assert _errors(second) == [second.last.error] and "boom 4" in str(second.last.error)
    assert third.last.error is None and len(third.tokens) == 4
    assert fatal == []
    assert fresh.dead_reason is None
    assert cast(EngineLoop[Any], fresh).alive


def test_engine_thread_dies_after_consecutive_failures(
    fresh: SteppedEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    told = threading.Event()
    reasons: list[str] = []

    def on_fatal(reason: str) -> None:
        reasons.append(reason)
        told.set()

    fresh.on_fatal = on_fatal
    flaky = FlakySteps(fresh)  # every iteration raises
    monkeypatch.setattr(fresh, "step", flaky)
    outs = [Collector() for _ in range(MAX_BATCH + 2)]
    for i, out in enumerate(outs):
        fresh.submit(_spec((90 + i, 91, 92), 4), out)

    fresh.start()
    assert told.wait(timeout=30)
    for out in outs:
        assert out.done.wait(timeout=30)

    assert flaky.calls == MAX_CONSECUTIVE_FAILURES
    assert len(reasons) == 1 and reasons[0] == fresh.dead_reason
    assert all(str(o.last.error).startswith("engine is dead") for o in outs)
    assert all(len(_errors(o)) == 1 for o in outs)
    late = Collector()
    fresh.submit(_spec(PROMPTS[0], 4), late)
    assert late.finished and str(late.last.error).startswith("engine is dead")
    assert not cast(EngineLoop[Any], fresh).alive
    assert len(reasons) == 1


def test_a_raising_is_cancelled_callback_ends_only_its_request(fresh: SteppedEngine) -> None:
    asked = itertools.count()

    def is_cancelled() -> bool:
        if next(asked) >= 2:
            raise ConnectionError("sender gone")
        return False

    bad, good = Collector(), Collector()
    fresh.submit(_spec(PROMPTS[0], 8, streaming=True), bad, is_cancelled)
    fresh.submit(_spec(PROMPTS[1], 8, streaming=True), good)

    fresh.start()
    assert good.done.wait(timeout=30)
    assert bad.done.wait(timeout=30)

    assert good.last.error is None and len(good.tokens) == 8
    assert bad.last.error is not None
