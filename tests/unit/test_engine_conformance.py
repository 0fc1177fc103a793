"""One contract, every engine: each name in ``ENGINES`` built the way the model config builds it.

Engines are stepped synchronously (no thread) except in the start/stop test; the sim engine
runs its iterations instantly (``sleep`` replaced by a no-op).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, cast

import pytest

from python_backends.cpu_engine.engine import CpuEngine
from python_backends.cpu_engine.prefix_cache import PrefixCache
from python_backends.engine_types import Engine, EngineStats, TokenEvent
from python_backends.engines import ENGINES, build_engine
from python_backends.generation import GenerationSpec
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
    for name in ("submit", "wait_admitted", "start", "stop"):
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


def test_wait_admitted_until_the_queue_drains(engine: SteppedEngine) -> None:
    assert engine.wait_admitted(timeout=0.01) is True
    outs = [Collector() for _ in range(MAX_BATCH + 2)]
    for i, out in enumerate(outs):
        engine.submit(_spec((20 + i, 30, 40), 3), out)

    assert engine.wait_admitted(timeout=0.01) is False
    engine.step()
    assert engine.wait_admitted(timeout=0.01) is False
    for _ in range(50):
        if engine.wait_admitted(timeout=0.0):
            break
        engine.step()
    assert engine.wait_admitted(timeout=0.01) is True
    _drain(engine)
    assert all(o.finished and o.last.error is None for o in outs)


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
    assert engine.wait_admitted(timeout=0.01) is True


def test_engine_thread_serves_requests(kind: str, tiny_model_dir: Path) -> None:
    engine = _build(kind, tiny_model_dir)
    engine.start()
    try:
        outs = [Collector() for _ in range(MAX_BATCH + 1)]
        for prompt, out in zip(PROMPTS[: len(outs)], outs, strict=True):
            engine.submit(_spec(prompt, 4), out)
        assert engine.wait_admitted(timeout=10.0) is True
        for out in outs:
            assert out.done.wait(timeout=10.0)
            assert out.last.error is None
            assert len(out.tokens) == 4
    finally:
        engine.stop()
