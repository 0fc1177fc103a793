"""An inflight-batching GPU engine emulated in real time.

Each iteration takes what the hardware profile says the real engine would take for the
work scheduled in it (prefill chunks within ``max_num_tokens``, one decode token for every
generating sequence, attention over their contexts), multiplied by the ``slowdown``
fault and by ``time_scale``; the engine sleeps that long and then delivers the tokens.
Admission follows ``guaranteed_no_evict``: a request starts only when the block pool can
hold its prompt plus ``max_new_tokens``, reusing cached prefix blocks; a small part of the
pool is kept for top-priority requests (the router's canaries), which also get slots
beyond ``max_num_sequences`` (:mod:`python_backends.engine_loop`). Output tokens are
deterministic pseudo-text drawn from the served tokenizer's ordinary ids, a function of the
context and the seed (:func:`pseudo_token`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from python_backends.engine_loop import TOP_PRIORITY_RESERVE_TOKENS, EngineLoop, context_tail
from python_backends.engine_types import EngineInfo, EngineStats, RequestPerf, TokenEvent
from python_backends.generation import GenerationSpec
from python_backends.sim_engine.block_pool import Allocation, BlockPool
from python_backends.sim_engine.faults import FaultFile, FaultSwitches
from python_backends.sim_engine.hardware import HardwareProfile

Emit = Callable[[TokenEvent], None]
CRASH_EXIT_CODE = 86
MAX_LAG_S = 0.05
"""How far behind its timeline the engine may fall before it stops catching up."""
FIRST_ORDINARY_ID = 8
"""Ids below this are left to special tokens; pseudo-text never uses them."""
CONTEXT_KEY_TOKENS = 16
"""How many of the context's last tokens choose the next pseudo-text token."""


SIM_ENGINE_VERSION = "2"
"""Changes whenever the sim engine's timing or scheduling rules change: a profile
calibrated on another version measured another engine."""
log = logging.getLogger("mufleet.sim_engine")


@dataclass
class SimConfig:
    """The emulated engine: its hardware profile and what the operator overrides.

    ``max_num_sequences``, ``max_num_tokens`` and ``kv_cache_blocks`` default (``None``) to
    the profile's values, the engine the profile describes; a value given is capped at the
    profile's (an engine cannot batch past what it was built for, nor hold more KV than
    the GPU's memory) and logged when it differs.
    """

    profile: HardwareProfile
    vocab_size: int
    max_num_sequences: int | None = None
    time_scale: float = 1.0
    max_context: int | None = None
    max_num_tokens: int | None = None
    kv_cache_blocks: int | None = None

    def limit(self, name: str) -> int:
        """The effective value of one engine limit (see the class docstring)."""
        built = self.profile.limit(name)
        asked = getattr(self, name)
        return built if asked is None else max(min(asked, built), 1)

    def overrides(self) -> list[str]:
        """One line per limit that differs from the hardware profile's."""
        lines = []
        for name in ("max_num_sequences", "max_num_tokens", "kv_cache_blocks"):
            asked, used = getattr(self, name), self.limit(name)
            built = self.profile.limit(name)
            if asked is not None and asked != built:
                capped = f" (capped from {asked})" if asked != used else ""
                lines.append(f"{name} {used}{capped}, the profile's is {built}")
        return lines


@dataclass
class _SimSequence:
    request_id: int
    spec: GenerationSpec
    emit: Emit
    is_cancelled: Callable[[], bool]
    allocation: Allocation | None = None
    cached_tokens: int = 0
    prefill_left: int = 0
    generated: list[int] = field(default_factory=list)
    scheduled_ns: int = 0
    first_token_ns: int = 0
    last_token_ns: int = 0
    kv_reused_blocks: int = 0
    kv_total_blocks: int = 0
    ended: bool = False
    """The owner has had its final event (or is gone)."""

    @property
    def context(self) -> int:
        return len(self.spec.input_ids) + len(self.generated)

    def tail(self, n: int) -> tuple[int, ...]:
        return context_tail(self.spec.input_ids, self.generated, n)


def pseudo_token(context: Sequence[int], length: int, seed: int, vocab_size: int) -> int:
    """The next pseudo-text token after a context (prompt and tokens generated so far).

    ``context`` ends the context (only its last :data:`CONTEXT_KEY_TOKENS` tokens are
    read) and ``length`` is the whole context's length. The token is a function of those
    and the seed, never of where the original prompt ended: a request re-sent with the
    tokens already generated appended to its prompt continues as the unbroken run would.
    Hashed with BLAKE2b so that every process and Python version agrees.
    """
    tail = [t & 0xFFFFFFFFFFFFFFFF for t in context[-CONTEXT_KEY_TOKENS:]]
    packed = struct.pack(f"<QQ{len(tail)}Q", seed, length, *tail)
    key = int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little")
    return FIRST_ORDINARY_ID + key % max(vocab_size - FIRST_ORDINARY_ID, 1)


class SimEngine(EngineLoop[_SimSequence]):
    """Serves :class:`GenerationSpec` requests with emulated GPU timing."""

    thread_name = "sim-engine"
    name = "sim"

    def __init__(self, config: SimConfig, faults: FaultFile | None = None) -> None:
        super().__init__()
        self.config = config
        profile = config.profile
        self.vocab_size = config.vocab_size
        self.max_context = min(config.max_context or profile.max_context, profile.max_context)
        self.max_num_sequences = config.limit("max_num_sequences")
        self.max_num_tokens = config.limit("max_num_tokens")
        kv_blocks = config.limit("kv_cache_blocks")
        self.pool = BlockPool(
            kv_blocks, profile.kv_cache.block_tokens, reserved_tokens=TOP_PRIORITY_RESERVE_TOKENS
        )
        self.info = EngineInfo("sim", SIM_ENGINE_VERSION, profile.name)
        for line in config.overrides():
            log.warning("sim engine %s: the operator overrides %s", profile.name, line)
        self.faults = faults or FaultFile(None)
        self.rng = random.Random(0)
        self.stats = EngineStats(
            max_sequences=self.max_num_sequences,
            kv_tokens_per_block=profile.kv_cache.block_tokens,
            kv_blocks_max=kv_blocks,
            kv_cache_blocks=kv_blocks,
            max_num_tokens=self.max_num_tokens,
            time_scale=config.time_scale,
        )
        self.sleep: Callable[[float], None] = time.sleep
        self._timeline = float("-inf")
        self.busy_s = 0.0
        """Emulated seconds of engine work so far (excludes time_scale and slowdown)."""
        self._faults_seen: FaultSwitches | None = None
        self._errors_raised = 0

    def submit(
        self, spec: GenerationSpec, emit: Emit, is_cancelled: Callable[[], bool] = lambda: False
    ) -> int:
        seq = _SimSequence(next(self._ids), spec, emit, is_cancelled)
        self._enqueue(seq)
        return seq.request_id

    def _max_sequences(self) -> int:
        return self.max_num_sequences

    def _iterate(self) -> None:
        faults = self.faults.current()
        if faults.crash:
            os._exit(CRASH_EXIT_CODE)
        if faults.hang:
            time.sleep(self.faults.poll_s)
            return
        if faults is not self._faults_seen:  # a new file version: count its errors anew
            self._faults_seen, self._errors_raised = faults, 0
        if self._errors_raised < faults.iteration_errors:
            self._errors_raised += 1
            self._admit(faults)  # so that queued requests are the ones running, and fail
            raise RuntimeError("injected fault: engine iteration raised")
        self.step(faults)

    def step(self, faults: FaultSwitches | None = None) -> float:
        """Run one iteration: schedule, take its time, deliver its tokens.

        Returns the emulated seconds the iteration cost (0 when there was nothing to do).
        The wall time slept is that times ``slowdown`` and ``time_scale``; tests replace
        :attr:`sleep` to run iterations instantly.
        """
        faults = faults or FaultSwitches()
        self._admit(faults)
        self._drop_cancelled()
        budget = self.max_num_tokens
        prefill_tokens = 0
        delivering: list[_SimSequence] = []
        generating = 0
        context = 0
        for seq in self._running:
            if seq.prefill_left > 0:
                if budget <= 0:
                    continue
                chunk = min(seq.prefill_left, budget)
                budget -= chunk
                prefill_tokens += chunk
                seq.prefill_left -= chunk
                if seq.prefill_left == 0:
                    delivering.append(seq)  # the context phase ends with the first token
                    if seq.allocation is not None:
                        self.pool.publish(seq.allocation, seq.spec.input_ids)
            else:
                generating += 1
                context += seq.context
                delivering.append(seq)
        if prefill_tokens == 0 and generating == 0:
            self._timeline = float("-inf")  # idle time is not lag to make up
            self._refresh_stats()
            return 0.0
        emulated = self.config.profile.step.iteration_s(prefill_tokens, generating, context)
        self.busy_s += emulated
        self._advance(emulated * faults.slowdown * self.config.time_scale)
        for seq in delivering:
            self._next_token(seq, faults)
        self._running = [s for s in self._running if not self._finished(s)]
        self._refresh_stats()
        self._emit_stats(self.stats)
        return emulated

    def _advance(self, wall_s: float) -> None:
        """Sleep until this iteration's end on the engine's own clock.

        Iterations are laid end to end on a virtual timeline, so a late wake-up (the
        host is busy) is made up by the next sleep instead of accumulating: over many
        iterations the engine runs exactly as fast as the profile says.
        """
        now = time.monotonic()
        lag = now - self._timeline
        if lag > MAX_LAG_S:
            if math.isfinite(lag):  # far behind (not idle): the host set the pace
                self.stats.host_lag_lost_s += lag
            self._timeline = now  # restart the timeline
            lag = 0.0
        self.stats.host_lag_s = max(lag, 0.0)
        self._timeline += wall_s
        self.sleep(max(self._timeline - now, 0.0))

    # -- scheduling ---------------------------------------------------------------------
    def _admit(self, faults: FaultSwitches) -> None:
        for seq in self._admit_waiting(self._place):
            seq.scheduled_ns = int(time.monotonic() * 1e9)
            if faults.error_rate > 0 and self.rng.random() < faults.error_rate:
                self._fail(seq, "injected fault: engine error")

    def _place(self, seq: _SimSequence, top: bool) -> bool:
        """Reserve the blocks of ``seq``'s prompt plus ``max_new_tokens`` (reusing cached
        prefix blocks).

        Top-level requests may take the pool's reserve; so may a request that finds
        nothing running (one too long to fit beside the reserve would otherwise wait
        forever).
        """
        reserve = len(seq.spec.input_ids) + seq.spec.max_new_tokens
        use_reserve = top or not self._running
        allocation = self.pool.try_allocate(seq.spec.input_ids, reserve, use_reserve)
        if allocation is None:
            return False  # guaranteed_no_evict: wait for blocks, in order
        seq.allocation = allocation
        seq.kv_reused_blocks = len(allocation.cached_blocks)
        seq.kv_total_blocks = allocation.total
        cached = len(allocation.cached_blocks) * self.pool.block_tokens
        seq.cached_tokens = min(cached, len(seq.spec.input_ids) - 1)
        seq.prefill_left = len(seq.spec.input_ids) - seq.cached_tokens
        self.stats.cached_prompt_tokens += seq.cached_tokens
        self.stats.prefill_tokens += seq.prefill_left
        return True

    def _drop_cancelled(self) -> None:
        for seq in self._running:
            if not self._finished(seq) and self._cancelled(seq):
                self._fail(seq, "cancelled")
        self._running = [s for s in self._running if not self._finished(s)]

    def _finished(self, seq: _SimSequence) -> bool:
        return seq.allocation is None

    def _choose(self, seq: _SimSequence) -> int:
        """The next pseudo-text token, stepping past bad words and an early ``end_id``.

        Bad words match against the whole context (prompt and output), as TensorRT-LLM's
        do, so the choice depends on the context only.
        """
        spec = seq.spec
        longest = max((len(w) for w in spec.bad_words), default=1)
        context = seq.tail(max(CONTEXT_KEY_TOKENS, longest))
        token = pseudo_token(context, seq.context, spec.sampling.seed, self.vocab_size)
        span = max(self.vocab_size - FIRST_ORDINARY_ID, 1)
        for _ in range(span):
            banned = token == spec.end_id and len(seq.generated) < spec.min_tokens
            for word in spec.bad_words:
                *prefix, last = word
                if token == last and (not prefix or context[-len(prefix) :] == tuple(prefix)):
                    banned = True
            if not banned:
                break
            token = FIRST_ORDINARY_ID + (token - FIRST_ORDINARY_ID + 1) % span
        return token

    def _perf(self, seq: _SimSequence) -> RequestPerf:
        return RequestPerf(
            arrival_ns=seq.spec.arrival_ns,
            first_scheduled_ns=seq.scheduled_ns,
            first_token_ns=seq.first_token_ns,
            last_token_ns=seq.last_token_ns,
            kv_new_blocks=seq.kv_total_blocks - seq.kv_reused_blocks,
            kv_reused_blocks=seq.kv_reused_blocks,
            kv_total_blocks=seq.kv_total_blocks,
        )

    def _next_token(self, seq: _SimSequence, faults: FaultSwitches) -> None:
        if self._finished(seq):
            return
        spec = seq.spec
        now = int(time.monotonic() * 1e9)
        seq.first_token_ns = seq.first_token_ns or now
        seq.last_token_ns = now
        token = self._choose(seq)
        if faults.garbage:
            token = self.vocab_size + 1000 + len(seq.generated)
        reason: str | None = None
        if token == spec.end_id:
            reason = "end_id"
        else:
            seq.generated.append(token)
            if any(seq.tail(len(w)) == w for w in spec.stop_words):
                reason = "stop_words"
            elif len(seq.generated) >= spec.max_new_tokens:
                reason = "length"
        done = reason is not None
        sent = True
        if spec.streaming and (reason != "end_id"):
            sent = self._deliver(
                seq.emit,
                TokenEvent(
                    (token,),
                    (0.0,),
                    done,
                    reason,
                    cached_tokens=seq.cached_tokens,
                    sequence_length=3 if faults.garbage else None,
                    perf=self._perf(seq),
                ),
            )
        elif done:
            tokens = () if spec.streaming else tuple(seq.generated)
            n = len(tokens)
            sent = self._deliver(
                seq.emit,
                TokenEvent(
                    tokens,
                    (0.0,) * n,
                    True,
                    reason,
                    cached_tokens=seq.cached_tokens,
                    sequence_length=n + 3 if faults.garbage and n else n,
                    perf=self._perf(seq),
                ),
            )
        if done or not sent:
            seq.ended = True
            self._release(seq)
            self.stats.completed += 1

    def _release(self, seq: _SimSequence) -> None:
        if seq.allocation is not None:
            tokens = list(seq.spec.input_ids) + [t for t in seq.generated if t < self.vocab_size]
            self.pool.release(seq.allocation, tokens)
            seq.allocation = None

    def _fail(self, seq: _SimSequence, message: str) -> None:
        if seq.ended:
            return
        seq.ended = True
        self._release(seq)
        self._deliver(seq.emit, TokenEvent((), (), True, "error", error=message))

    def _refresh_stats(self) -> None:
        stats = self.stats
        with self._cond:
            stats.waiting = len(self._waiting)
        stats.active = len(self._running)
        stats.scheduled = len(self._running)
        stats.context = sum(1 for s in self._running if s.prefill_left > 0)
        stats.kv_blocks_used = self.pool.used
        stats.kv_blocks_reused = self.pool.reused_blocks
