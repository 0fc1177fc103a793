"""Continuous batching of a Hugging Face causal LM on CPU.

One engine thread owns the model. Each iteration it admits waiting requests (up to
``max_num_sequences`` in flight, and a couple more of the top priority level: see
:mod:`python_backends.engine_loop`), prefills each newcomer (reusing a cached prefix when
one matches), then runs one decode step for every running sequence: batched, with each
sequence attending over its own KV only (:mod:`python_backends.cpu_engine.ragged_decode`),
so a request costs the same whichever requests share its batch.
Finished sequences leave their KV in the :class:`PrefixCache` for later turns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from python_backends.cpu_engine.prefix_cache import KVState, PrefixCache
from python_backends.cpu_engine.ragged_decode import SequenceKV, check_decoder, decode_step
from python_backends.cpu_engine.sampling import TokenSampler
from python_backends.engine_loop import EngineLoop, context_tail
from python_backends.engine_types import EngineInfo, EngineStats, RequestPerf, TokenEvent
from python_backends.generation import GenerationSpec

Emit = Callable[[TokenEvent], None]


CPU_ENGINE_VERSION = "2"
"""Changes whenever the cpu engine's batching or caching rules change."""


@dataclass
class EngineConfig:
    model_dir: Path
    max_num_sequences: int = 8
    prefix_cache_bytes: int = 256 << 20
    threads: int = 1
    kv_block_tokens: int = 16
    """Granularity of the exported ``nv_trt_llm_kv_cache_block_metrics`` (tokens per block)."""


@dataclass
class _Sequence:
    request_id: int
    spec: GenerationSpec
    emit: Emit
    is_cancelled: Callable[[], bool]
    sampler: TokenSampler
    fed: list[int] = field(default_factory=list)
    kv: SequenceKV | None = None
    generated: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    cached_tokens: int = 0
    finish_reason: str | None = None
    scheduled_ns: int = 0
    first_token_ns: int = 0
    last_token_ns: int = 0
    context_logits: object = None
    """``[prompt, vocab]`` numpy logits, kept until the first event carries them."""
    logits: list[np.ndarray] = field(default_factory=list)
    """Generation logits rows not yet sent (only when asked for)."""
    ended: bool = False
    """The owner has had its final event (or is gone)."""


def _to_cache(kv: KVState) -> object:
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k, v) for k, v in kv])


def _from_cache(cache: object) -> KVState:
    layers = cache.layers  # type: ignore[attr-defined]
    return tuple((layer.keys, layer.values) for layer in layers)


class CpuEngine(EngineLoop[_Sequence]):
    """Serves :class:`GenerationSpec` requests with a local HF checkpoint."""

    thread_name = "cpu-engine"
    name = "cpu"

    def __init__(self, config: EngineConfig) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        super().__init__()
        self.config = config
        torch.set_num_threads(config.threads)
        hf_config = AutoConfig.from_pretrained(str(config.model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(
            str(config.model_dir), dtype=torch.float32
        ).eval()
        check_decoder(self.model)
        self.vocab_size = int(hf_config.vocab_size)
        self.max_context = int(getattr(hf_config, "max_position_embeddings", 2048))
        self.prefix_cache = PrefixCache(config.prefix_cache_bytes)
        self.stats = EngineStats(
            max_sequences=config.max_num_sequences, kv_tokens_per_block=config.kv_block_tokens
        )
        self.info = EngineInfo("cpu", CPU_ENGINE_VERSION)
        self._refresh_stats()

    # -- requests ------------------------------------------------------------------
    def submit(
        self,
        spec: GenerationSpec,
        emit: Emit,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> int:
        """Queue a request; ``emit`` is called from the engine thread."""
        seq = _Sequence(next(self._ids), spec, emit, is_cancelled, TokenSampler(spec))
        self._enqueue(seq)
        return seq.request_id

    def _max_sequences(self) -> int:
        return self.config.max_num_sequences

    def step(self) -> None:
        """One iteration: admit and prefill newcomers, then one batched decode step."""
        admitted = self._admit_waiting()
        self.stats.context = len(admitted)
        now = time.monotonic_ns()
        for seq in admitted:
            seq.scheduled_ns = now
            self._guard(seq, self._prefill)
        decoding = [s for s in self._running if s.finish_reason is None and s.generated]
        if decoding:
            try:
                self._decode(decoding)
            except Exception as exc:  # a failed batch fails its requests, not the engine
                for seq in decoding:
                    self._fail(seq, f"decode failed: {exc}")
        self._running = [s for s in self._running if s.finish_reason is None]
        self._refresh_stats()
        self._emit_stats(self.stats)

    # -- model work --------------------------------------------------------------------
    def _guard(self, seq: _Sequence, work: Callable[[_Sequence], None]) -> None:
        try:
            work(seq)
        except Exception as exc:
            self._fail(seq, f"prefill failed: {exc}")

    @torch.inference_mode()
    def _prefill(self, seq: _Sequence) -> None:
        prompt = list(seq.spec.input_ids)
        # Context logits cover every prompt position, so a cached prefix cannot be used.
        cached, kv = (
            (0, None) if seq.spec.return_context_logits else self.prefix_cache.lookup(prompt)
        )
        seq.cached_tokens = cached
        new = prompt[cached:]
        input_ids = torch.tensor([new], dtype=torch.long)
        positions = torch.arange(cached, len(prompt), dtype=torch.long).unsqueeze(0)
        out = self.model(
            input_ids=input_ids,
            position_ids=positions,
            past_key_values=_to_cache(kv) if kv is not None else None,
            use_cache=True,
        )
        seq.kv = SequenceKV(_from_cache(out.past_key_values), len(prompt) + seq.spec.max_new_tokens)
        seq.fed = prompt
        self.stats.prefill_tokens += len(new)
        self.stats.cached_prompt_tokens += cached
        self.stats.kv_blocks_reused += cached // self.config.kv_block_tokens
        if seq.spec.return_context_logits:
            seq.context_logits = out.logits[0].float().numpy().copy()
        self._accept(seq, out.logits[0, -1])

    def _decode(self, batch: list[_Sequence]) -> None:
        kvs = [s.kv for s in batch if s.kv is not None]
        assert len(kvs) == len(batch), "a decoding sequence without its KV"
        logits = decode_step(self.model, [s.generated[-1] for s in batch], kvs)
        for row, seq in enumerate(batch):
            seq.fed.append(seq.generated[-1])
            self._accept(seq, logits[row])

    # -- bookkeeping -------------------------------------------------------------------
    def _perf(self, seq: _Sequence) -> RequestPerf:
        block = self.config.kv_block_tokens
        total = -(-(len(seq.spec.input_ids) + len(seq.generated)) // block)
        reused = seq.cached_tokens // block
        return RequestPerf(
            arrival_ns=seq.spec.arrival_ns,
            first_scheduled_ns=seq.scheduled_ns,
            first_token_ns=seq.first_token_ns,
            last_token_ns=seq.last_token_ns,
            kv_new_blocks=total - reused,
            kv_reused_blocks=reused,
            kv_total_blocks=total,
        )

    def _event(self, seq: _Sequence, tokens: list[int], log_probs: list[float], reason: str | None):
        """An event for ``tokens``, carrying the logits not sent yet."""
        context, seq.context_logits = seq.context_logits, None
        rows, seq.logits = seq.logits, []
        generation = np.stack(rows) if seq.spec.return_generation_logits and rows else None
        return TokenEvent(
            tuple(tokens),
            tuple(log_probs),
            reason is not None,
            reason,
            cached_tokens=seq.cached_tokens,
            perf=self._perf(seq),
            context_logits=context,
            generation_logits=generation,
        )

    def _accept(self, seq: _Sequence, logits: torch.Tensor) -> None:
        if self._cancelled(seq):
            self._fail(seq, "cancelled")
            return
        token, log_prob = seq.sampler.choose(logits, seq.generated)
        spec = seq.spec
        now = time.monotonic_ns()
        seq.first_token_ns = seq.first_token_ns or now
        seq.last_token_ns = now
        if token == spec.end_id and len(seq.generated) >= spec.min_tokens:
            self._finish(seq, "end_id")
            return
        seq.generated.append(token)
        seq.log_probs.append(log_prob)
        if spec.return_generation_logits:
            seq.logits.append(logits.float().numpy().copy())
        if any(context_tail(spec.input_ids, seq.generated, len(w)) == w for w in spec.stop_words):
            reason: str | None = "stop_words"
        elif len(seq.generated) >= spec.max_new_tokens:
            reason = "length"
        else:
            reason = None
        if spec.streaming and not self._deliver(
            seq.emit, self._event(seq, [token], [log_prob], reason)
        ):
            self._drop(seq)
            return
        if reason is not None:
            self._finish(seq, reason, streamed=spec.streaming)

    def _finish(self, seq: _Sequence, reason: str, streamed: bool = False) -> None:
        seq.finish_reason = reason
        seq.ended = True
        self.stats.completed += 1
        if seq.kv is not None and seq.kv.length == len(seq.fed):
            self.prefix_cache.insert(seq.fed, seq.kv.state())
        seq.kv = None
        if streamed:
            return
        if seq.spec.streaming:
            event = self._event(seq, [], [], reason)
        else:
            event = self._event(seq, seq.generated, seq.log_probs, reason)
        self._deliver(seq.emit, event)

    def _drop(self, seq: _Sequence) -> None:
        """End ``seq`` without telling its owner (the owner's callback failed)."""
        seq.finish_reason = "error"
        seq.ended = True
        seq.kv = None

    def _fail(self, seq: _Sequence, message: str) -> None:
        if seq.ended:
            return
        seq.finish_reason = "error"
        seq.ended = True
        seq.kv = None
        self._deliver(seq.emit, TokenEvent((), (), True, "error", error=message))

    def _refresh_stats(self) -> None:
        stats, block = self.stats, self.config.kv_block_tokens
        with self._cond:
            stats.waiting = len(self._waiting)
        stats.active = len(self._running)
        stats.scheduled = len(self._running)
        live_tokens = sum(len(s.fed) for s in self._running)
        stats.kv_blocks_used = -(-(live_tokens + self.prefix_cache.tokens_held) // block)
        per_token = self._bytes_per_token()
        stats.kv_cache_blocks = max(self.config.prefix_cache_bytes // max(per_token * block, 1), 1)
        stats.kv_blocks_max = max(stats.kv_blocks_used, stats.kv_cache_blocks)

    def _bytes_per_token(self) -> int:
        cfg = self.model.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return int(2 * cfg.num_hidden_layers * heads * head_dim * 4)
