"""One simulated GPU node: the sim engine's batching, timing and KV pool, driven by events.

The engine rules are those of :class:`python_backends.sim_engine.engine.SimEngine`, and the
timing (:class:`~python_backends.sim_engine.hardware.StepTiming`) and the KV block pool
(:class:`~python_backends.sim_engine.block_pool.BlockPool`) are the very same objects:

* admission at each iteration's start, in priority order then FIFO, while a sequence slot
  is free and the pool can hold prompt + ``max_tokens`` (``guaranteed_no_evict``), reusing
  cached prefix blocks; a refusal stops admission for that iteration; the top-priority
  reserve is taken only by a top-level request or when nothing runs;
* chunked prefill in admission order within ``max_num_tokens`` per iteration; a sequence's
  first token comes at the end of the iteration that finishes its prefill, and every
  decoding sequence gets one token per iteration;
* a finished sequence's prompt blocks stay cached (LRU) for later prompts.

What is new is how time passes. A real engine (and the sim engine) runs one iteration after
another; here a run of decode-only iterations with an unchanged batch is one event whose
length :meth:`StepTiming.decode_run_s` gives in closed form, ending at the first finish or at
the iteration boundary after an arrival. That keeps the cost per request, not per
iteration, which is what lets an hour of a 512-node fleet run on two cores.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from python_backends.engine_loop import TOP_PRIORITY_LEVEL, TOP_PRIORITY_RESERVE_TOKENS
from python_backends.sim_engine.block_pool import Allocation, BlockPool
from python_backends.sim_engine.hardware import HardwareProfile, StepTiming

__all__ = ["EngineShape", "SimNode", "SimRequest"]


class SimRequest:
    """One request's life in the simulator (trace facts, routing, engine progress, timings)."""

    __slots__ = (
        "admitted_at",
        "allocation",
        "arrival_s",
        "cached_tokens",
        "finish_s",
        "finish_step",
        "first_token_s",
        "hashes",
        "index",
        "level",
        "max_tokens",
        "moved_tokens",
        "node",
        "output_tokens",
        "prefill_left",
        "prompt_tokens",
        "retries",
        "seq",
        "shed",
        "tenant",
    )

    def __init__(
        self,
        index: int,
        arrival_s: float,
        prompt_tokens: int,
        output_tokens: int,
        max_tokens: int,
        hashes: tuple[int, ...],
        tenant: str,
        level: int,
    ) -> None:
        self.index = index
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        """The true output length (the engine stops there; the router never sees it)."""
        self.max_tokens = max_tokens
        self.hashes = hashes
        """Chained hashes of the prompt's full KV blocks."""
        self.tenant = tenant
        self.level = level
        self.node = -1
        self.seq = 0
        self.allocation: Allocation | None = None
        self.prefill_left = 0
        self.cached_tokens = 0
        self.finish_step = 0
        self.admitted_at = -1.0
        self.first_token_s = -1.0
        self.finish_s = -1.0
        self.shed = False
        self.retries = 0
        self.moved_tokens = 0
        """Tokens streamed on earlier nodes (a migrated stream continues from them)."""

    @property
    def original_prompt(self) -> int:
        return self.prompt_tokens - self.moved_tokens

    @property
    def total_output(self) -> int:
        return self.output_tokens + self.moved_tokens

    @property
    def ttft_s(self) -> float:
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (0 for a one-token answer)."""
        total = self.total_output
        if total <= 1:
            return 0.0
        return (self.finish_s - self.first_token_s) / (total - 1)


@dataclass(frozen=True)
class EngineShape:
    """The engine configuration a node runs (by default the hardware profile's)."""

    step: StepTiming
    max_num_sequences: int
    max_num_tokens: int
    kv_tokens: int
    block_tokens: int

    @classmethod
    def of(
        cls,
        profile: HardwareProfile,
        block_tokens: int | None = None,
        *,
        max_num_sequences: int | None = None,
        time_scale: float = 1.0,
    ) -> EngineShape:
        """The profile's engine, or an engine started with other settings.

        ``block_tokens`` coarsens the KV block (same capacity in tokens), so that a trace
        whose prefixes are known per 512-token block needs 16 times fewer block operations.
        ``max_num_sequences`` caps the batch as a node started with a smaller one does;
        ``time_scale`` stretches every iteration as the sim engine's ``--time-scale`` does.
        """
        kv = profile.kv_cache
        step = profile.step
        if time_scale != 1.0:
            step = StepTiming(
                base_ms=step.base_ms * time_scale,
                per_prefill_token_us=step.per_prefill_token_us * time_scale,
                per_decode_seq_us=step.per_decode_seq_us * time_scale,
                per_context_token_ns=step.per_context_token_ns * time_scale,
            )
        sequences = profile.max_num_sequences
        if max_num_sequences is not None:
            sequences = min(sequences, max_num_sequences)
        return cls(
            step=step,
            max_num_sequences=sequences,
            max_num_tokens=profile.max_num_tokens,
            kv_tokens=kv.total_blocks * kv.block_tokens,
            block_tokens=block_tokens or kv.block_tokens,
        )


Callback = Callable[[SimRequest, float], None]


class SimNode:
    """An inflight-batching engine on the simulator's clock.

    The simulator calls :meth:`submit` on arrival, :meth:`next_event` to learn when the
    node next needs attention, and :meth:`handle` at that time. ``on_first_token`` and
    ``on_finish`` are called as requests reach those points.
    """

    def __init__(
        self,
        index: int,
        name: str,
        shape: EngineShape,
        on_first_token: Callback,
        on_finish: Callback,
    ) -> None:
        self.index = index
        self.name = name
        self.shape = shape
        self.step = shape.step
        self.pool = BlockPool(
            max(shape.kv_tokens // shape.block_tokens, 1),
            shape.block_tokens,
            reserved_tokens=TOP_PRIORITY_RESERVE_TOKENS,
        )
        self.on_first_token = on_first_token
        self.on_finish = on_finish
        self._waiting: list[tuple[int, int, SimRequest]] = []
        self._prefilling: list[SimRequest] = []
        self._decoding: list[tuple[int, int, SimRequest]] = []
        self.steps = 0
        """Iterations run so far; a decoding request finishes when this reaches its mark."""
        self._context_base = 0
        """Σ over decoding requests of (context when it started decoding − steps then)."""
        self._seq = 0
        self.slowdown = 1.0
        self.hung = False
        self.busy_s = 0.0
        """Seconds spent iterating (the engine's busy time)."""
        self.prefill_tokens = 0
        self.cached_prompt_tokens = 0
        # The iteration (or run of decode iterations) in progress.
        self._run_start = 0.0
        self._run_steps = 0
        self._run_end: float | None = None
        self._run_prefill: list[SimRequest] = []
        self._run_decode_only = False
        self._gauges = (0, 0, 0)

    # -- what the router's scrape sees ---------------------------------------------------------
    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._prefilling) + len(self._decoding)

    @property
    def gauges(self) -> tuple[int, int, int]:
        """(waiting, active, KV blocks used) as the engine last exported them.

        The sim engine refreshes its ``nv_trt_llm_*`` gauges once per iteration, at its end
        (so do TensorRT-LLM's iteration statistics): a request that arrived during an
        iteration reads as waiting until the *next* one ends, although it was admitted when
        that one began. A scrape reads these, never the live queue.
        """
        return self._gauges

    # -- events ------------------------------------------------------------------------------
    def next_event(self) -> float | None:
        """When the iteration (or decode run) in progress ends; ``None`` when idle or hung."""
        return self._run_end

    def submit(self, request: SimRequest, now: float) -> None:
        """A request arrives; it is admitted at the next iteration's start."""
        self._seq += 1
        request.node = self.index
        heapq.heappush(self._waiting, (request.level, self._seq, request))
        if self.hung:
            return
        if self._run_end is None:
            self._start(now)
        elif self._run_decode_only and self._run_steps > 1:
            self._cut_run(now)

    def handle(self, now: float) -> None:
        """The iteration or run in progress has ended (``now`` is its end): deliver, go on."""
        if self._run_end is None:
            return
        self._finish_run(now)
        self._gauges = (len(self._waiting), self.active, self.pool.used)
        self._start(now)

    def set_hung(self, hung: bool, now: float) -> None:
        """A hung engine stops between iterations; work in flight stays where it is."""
        if hung == self.hung:
            return
        self.hung = hung
        if hung:
            if self._run_end is not None and self._run_decode_only:
                self._cut_run(now)
        elif self._run_end is None:
            self._start(now)

    def set_slowdown(self, factor: float, now: float) -> None:
        """Iterations take ``factor`` times as long from the next iteration boundary."""
        if factor == self.slowdown:
            return
        if self._run_end is not None and self._run_decode_only and self._run_steps > 1:
            self._cut_run(now)  # at the old pace, up to the boundary after now
        self.slowdown = factor

    def evict_all(self) -> list[SimRequest]:
        """Take every request off the node (a cordon or restart); its KV cache is lost.

        A request that has streamed keeps its tokens: its prompt grows by them and its
        output shrinks, so that it continues elsewhere as a migrated stream does.
        """
        taken = [r for _, _, r in self._waiting] + self._prefilling
        for _, _, request in self._decoding:
            streamed = request.output_tokens - (request.finish_step - self.steps)
            request.prompt_tokens += streamed
            request.output_tokens -= streamed
            request.max_tokens -= streamed  # as the router's continuation asks for
            request.moved_tokens += streamed
            taken.append(request)
        for request in self._run_prefill:  # their first token never came
            request.prefill_left = 0
        self._waiting, self._prefilling, self._decoding = [], [], []
        self._context_base = 0
        self._run_end = None
        self._run_prefill = []
        kv = self.pool
        self.pool = BlockPool(kv.total_blocks, kv.block_tokens, TOP_PRIORITY_RESERVE_TOKENS)
        self._gauges = (0, 0, 0)
        for request in taken:
            request.allocation = None
            request.node = -1
        return taken

    # -- the engine ------------------------------------------------------------------------
    def _context(self) -> int:
        return self._context_base + len(self._decoding) * self.steps

    def _admit(self) -> None:
        waiting, pool = self._waiting, self.pool
        limit = self.shape.max_num_sequences
        while waiting:
            level, _, request = waiting[0]
            top = level <= TOP_PRIORITY_LEVEL
            if self.active >= limit + (2 if top else 0):
                break
            reserve = request.prompt_tokens + request.max_tokens
            use_reserve = top or self.active == 0
            allocation = pool.try_allocate_blocks(request.hashes, reserve, use_reserve)
            if allocation is None:
                break
            heapq.heappop(waiting)
            request.allocation = allocation
            cached = len(allocation.cached_blocks) * pool.block_tokens
            request.cached_tokens = min(cached, request.prompt_tokens - 1)
            request.prefill_left = request.prompt_tokens - request.cached_tokens
            self.prefill_tokens += request.prefill_left
            self.cached_prompt_tokens += request.cached_tokens
            self._prefilling.append(request)

    def _start(self, now: float) -> None:
        """Begin the next iteration at ``now`` (or go idle)."""
        self._run_end = None
        if self.hung:
            return
        if self._waiting:
            self._admit()
        generating = len(self._decoding)
        context = self._context()
        slowdown = self.slowdown
        if self._prefilling:
            budget = self.shape.max_num_tokens
            chunked = 0
            done: list[SimRequest] = []
            for request in self._prefilling:
                if budget <= 0:
                    break
                chunk = min(request.prefill_left, budget)
                budget -= chunk
                chunked += chunk
                request.prefill_left -= chunk
                if request.prefill_left == 0:
                    done.append(request)
            seconds = self.step.iteration_s(chunked, generating, context) * slowdown
            self._begin(now, seconds, 1, done, decode_only=False)
            return
        if not generating:
            return
        steps = self._decoding[0][0] - self.steps  # to the first finish
        seconds = self.step.decode_run_s(steps, generating, context) * slowdown
        self._begin(now, seconds, steps, [], decode_only=True)

    def _begin(
        self,
        now: float,
        seconds: float,
        steps: int,
        prefill_done: list[SimRequest],
        decode_only: bool,
    ) -> None:
        self._run_start = now
        self._run_steps = steps
        self._run_end = now + seconds
        self._run_prefill = prefill_done
        self._run_decode_only = decode_only

    def _cut_run(self, now: float) -> None:
        """End the decode run at the iteration boundary after ``now``."""
        elapsed = (now - self._run_start) / self.slowdown
        done = self.step.decode_steps_within(elapsed, len(self._decoding), self._context())
        steps = min(done + 1, self._run_steps)
        if steps < self._run_steps:
            seconds = self.step.decode_run_s(steps, len(self._decoding), self._context())
            self._run_steps = steps
            self._run_end = self._run_start + seconds * self.slowdown

    def _final_hashes(self, request: SimRequest) -> tuple[int, ...]:
        """The finished sequence's full blocks: its prompt's, then blocks of its own output.

        The engine caches the generated tokens' blocks too (they take LRU room); nobody
        else shares them, so their hashes need only be unique.
        """
        full = (request.prompt_tokens + request.output_tokens) // self.pool.block_tokens
        extra = full - len(request.hashes)
        if extra <= 0:
            return request.hashes
        return request.hashes + tuple(hash((-1, request.index, j)) for j in range(extra))

    def _finish_run(self, now: float) -> None:
        self.busy_s += now - self._run_start
        self.steps += self._run_steps
        self._run_end = None
        decoding = self._decoding
        finished: list[SimRequest] = []
        while decoding and decoding[0][0] <= self.steps:
            _, _, request = heapq.heappop(decoding)
            self._context_base -= (
                request.prompt_tokens + request.output_tokens - request.finish_step
            )
            finished.append(request)
        for request in self._run_prefill:
            self._prefilling.remove(request)
            if request.first_token_s < 0:
                request.first_token_s = now
            self.pool.publish_blocks(request.allocation, request.hashes)  # type: ignore[arg-type]
            self.on_first_token(request, now)
            if request.output_tokens <= 1:
                finished.append(request)
                continue
            # Decoding from the next iteration: one token so far, the rest one per step.
            request.finish_step = self.steps + request.output_tokens - 1
            self._seq += 1
            heapq.heappush(decoding, (request.finish_step, self._seq, request))
            self._context_base += request.prompt_tokens + 1 - self.steps
        self._run_prefill = []
        for request in finished:
            request.finish_s = now
            allocation = request.allocation
            if allocation is not None:
                self.pool.release_blocks(allocation, self._final_hashes(request))
                request.allocation = None
            self.on_finish(request, now)
