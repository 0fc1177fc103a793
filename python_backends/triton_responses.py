"""Engine events → ``tensorrt_llm`` output tensors, for one Triton request.

A request fans out into one sequence per batch row and returned sequence. Decoupled, each
event of each sequence becomes a response of batch 1 that names its ``batch_index`` and
``sequence_index``, and only the last sequence to end carries Triton's final flag (as the
TensorRT-LLM backend does). Not decoupled, the request gets one response when every
sequence has ended: ``output_ids [batch, sequences, tokens]`` padded with ``pad_id``.

Outputs follow the request's :class:`OutputOptions`: log-probs, logits, perf metrics and
token counts only when asked for. With ``exclude_input_in_output`` false a non-streamed
``output_ids`` starts with the prompt; streamed responses never repeat it (upstream's
streaming clients rely on both). A streaming sequence passes through a
:class:`~python_backends.token_bytes.Utf8Holdback`, so no response splits a character.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from python_backends.engine_types import RequestPerf, TokenEvent
from python_backends.generation import GenerationRequest, GenerationSpec
from python_backends.token_bytes import Utf8Holdback

Tensors = dict[str, np.ndarray]
Send = Callable[[Tensors | None, str | None, bool], None]
"""``send(tensors, error, final)``: one Triton response (tensors or an error)."""

PERF_OUTPUTS: dict[str, tuple[str, type]] = {
    "kv_cache_alloc_new_blocks": ("kv_new_blocks", np.int32),
    "kv_cache_reused_blocks": ("kv_reused_blocks", np.int32),
    "kv_cache_alloc_total_blocks": ("kv_total_blocks", np.int32),
    "arrival_time_ns": ("arrival_ns", np.int64),
    "first_scheduled_time_ns": ("first_scheduled_ns", np.int64),
    "first_token_time_ns": ("first_token_ns", np.int64),
    "last_token_time_ns": ("last_token_ns", np.int64),
}
NO_DRAFT_OUTPUTS: dict[str, type] = {
    "acceptance_rate": np.float32,
    "total_accepted_draft_tokens": np.int32,
    "total_draft_tokens": np.int32,
}
"""Speculative-decoding figures: zero, as TensorRT-LLM reports them without a draft."""


@dataclass
class _Sequence:
    spec: GenerationSpec
    holdback: Utf8Holdback | None
    tokens: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)
    context_logits: np.ndarray | None = None
    sent: int = 0
    """Tokens of ``tokens`` already streamed (the rest is held back)."""
    cum_log_prob: float = 0.0
    perf: RequestPerf | None = None
    misreported: int = 0
    """Tokens an engine's own ``sequence_length`` claims beyond what it sent, not yet
    reported (only a faulty engine makes this non-zero)."""
    ended: bool = False


class ResponseAssembler:
    """Turns the events of every sequence of one request into its Triton responses.

    Events may come from several threads (the engine, and ``execute`` when an engine
    refuses at once), so state changes under a lock; ``send`` is called under it too,
    which keeps one request's responses in order.
    """

    def __init__(
        self,
        request: GenerationRequest,
        send: Send,
        decoupled: bool,
        holdback: Callable[[], Utf8Holdback] | None = None,
    ) -> None:
        self.request = request
        self.options = request.options
        self.decoupled = decoupled
        self._send = send
        self._lock = threading.Lock()
        self.failed = False
        streaming = self.options.streaming and holdback is not None
        self._sequences = [
            _Sequence(spec, holdback() if streaming and holdback else None)
            for spec in request.specs
        ]
        self._open = len(self._sequences)

    def emitter(self, index: int) -> Callable[[TokenEvent], None]:
        """The engine's ``emit`` callback for sequence ``index``."""
        return lambda event: self.on_event(index, event)

    def on_event(self, index: int, event: TokenEvent) -> None:
        with self._lock:
            try:
                self._on_event(index, event)
            except Exception as exc:  # the caller gets an error, never silence
                if not self.failed:
                    self.failed = True
                    with contextlib.suppress(Exception):
                        self._send(None, f"could not build the response: {exc}", True)
                raise

    def _on_event(self, index: int, event: TokenEvent) -> None:
        seq = self._sequences[index]
        if self.failed or seq.ended:
            return
        if event.error is not None:
            self.failed = True
            self._send(None, event.error, True)
            return
        self._absorb(seq, event)
        if event.finished:
            seq.ended = True
            self._open -= 1
        if self.decoupled:
            self._stream(seq, event)
        elif self._open == 0:
            self._send(self._combined(), None, True)

    # -- accumulation ---------------------------------------------------------------------
    def _absorb(self, seq: _Sequence, event: TokenEvent) -> None:
        seq.tokens.extend(event.token_ids)
        seq.log_probs.extend(event.log_probs)
        seq.cum_log_prob += float(sum(event.log_probs))
        if event.generation_logits is not None:
            seq.logits.extend(np.asarray(event.generation_logits, dtype=np.float32))
        if event.context_logits is not None:
            seq.context_logits = np.asarray(event.context_logits, dtype=np.float32)
        seq.perf = event.perf or seq.perf
        if event.sequence_length is not None:
            seq.misreported += event.sequence_length - len(event.token_ids)

    # -- decoupled: one response per event ------------------------------------------------
    def _stream(self, seq: _Sequence, event: TokenEvent) -> None:
        final = self._open == 0
        if not self.options.streaming:
            if event.finished:
                self._send(self._tensors(seq, seq.tokens, 0, streamed=False), None, final)
            return
        released = len(event.token_ids)
        if seq.holdback is not None:
            released = len(seq.holdback.push(event.token_ids))
            if event.finished:
                released += len(seq.holdback.flush())
        if released:
            start, seq.sent = seq.sent, seq.sent + released
            tokens = seq.tokens[start : seq.sent]
            self._send(self._tensors(seq, tokens, start, streamed=True), None, final)
            seq.context_logits = None
        elif final:
            self._send(None, None, True)

    def _tensors(self, seq: _Sequence, tokens: list[int], start: int, streamed: bool) -> Tensors:
        spec, options = seq.spec, self.options
        ids = list(tokens)
        if not streamed and not options.exclude_input_in_output:
            ids = [*spec.input_ids, *ids]
        length = len(ids)
        length += seq.misreported  # a faulty engine's own (wrong) count goes through
        seq.misreported = 0
        out: Tensors = {
            "output_ids": np.asarray(ids, dtype=np.int32).reshape(1, 1, -1),
            "sequence_length": np.array([[length]], dtype=np.int32),
            "batch_index": np.array([[spec.batch_index]], dtype=np.int32),
            "sequence_index": np.array([[spec.sequence_index]], dtype=np.int32),
        }
        end = start + len(tokens)
        if options.return_log_probs:
            out["cum_log_probs"] = np.array([[sum(seq.log_probs[:end])]], dtype=np.float32)
            out["output_log_probs"] = np.asarray(
                seq.log_probs[start:end], dtype=np.float32
            ).reshape(1, 1, -1)
        if options.return_context_logits and seq.context_logits is not None:
            out["context_logits"] = seq.context_logits[None]
        if options.return_generation_logits:
            rows = seq.logits[start:end]
            width = rows[0].shape[-1] if rows else 0
            stacked = np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)
            out["generation_logits"] = stacked[None, None]
        out |= self._extras(seq, end)
        return out

    def _extras(self, seq: _Sequence, generated: int) -> Tensors:
        options = self.options
        out: Tensors = {}
        if options.return_perf_metrics:
            perf = seq.perf or RequestPerf()
            for name, (attr, dtype) in PERF_OUTPUTS.items():
                out[name] = np.array([[getattr(perf, attr)]], dtype=dtype)
            for name, dtype in NO_DRAFT_OUTPUTS.items():
                out[name] = np.zeros((1, 1), dtype=dtype)
        if options.return_num_input_tokens:
            out["num_input_tokens"] = np.array([[len(seq.spec.input_ids)]], dtype=np.int32)
        if options.return_num_output_tokens:
            out["num_output_tokens"] = np.array([[generated]], dtype=np.int32)
        return out

    # -- not decoupled: one response for the whole request ----------------------------------
    def _combined(self) -> Tensors:
        """``[batch, sequences, ...]`` tensors; a row's sequences lie along the beam axis."""
        batch, per_row = self.request.batch_size, self.request.num_return_sequences
        parts = [self._tensors(seq, seq.tokens, 0, streamed=False) for seq in self._sequences]
        width = max(p["output_ids"].shape[-1] for p in parts)
        pad = self._sequences[0].spec.pad_id
        ids = np.full((batch, per_row, width), 0 if pad is None or pad < 0 else pad, np.int32)
        lengths = np.zeros((batch, per_row), dtype=np.int32)
        cum = np.zeros((batch, per_row), dtype=np.float32)
        steps = max(len(s.log_probs) for s in self._sequences)
        probs = np.zeros((batch, per_row, steps), dtype=np.float32)
        for seq, part in zip(self._sequences, parts, strict=True):
            at = (seq.spec.batch_index, seq.spec.sequence_index)
            row = part["output_ids"].reshape(-1)
            ids[at][: row.size] = row
            lengths[at] = part["sequence_length"].reshape(-1)[0]
            cum[at] = seq.cum_log_prob
            probs[at][: len(seq.log_probs)] = seq.log_probs
        out: Tensors = {
            "output_ids": ids,
            "sequence_length": lengths,
            "batch_index": np.arange(batch, dtype=np.int32).reshape(batch, 1),
            "sequence_index": np.zeros((batch, 1), dtype=np.int32),
        }
        if self.options.return_log_probs:
            out["cum_log_probs"], out["output_log_probs"] = cum, probs
        firsts = parts[::per_row]
        if self.options.return_context_logits:
            out["context_logits"] = _stack_padded([p.get("context_logits") for p in firsts])
        if self.options.return_generation_logits:
            rows = _stack_padded([p["generation_logits"][0] for p in parts])
            out["generation_logits"] = rows.reshape(batch, per_row, *rows.shape[1:])
        for name in parts[0]:
            if name not in out:
                out[name] = np.concatenate([p[name] for p in firsts])
        return out


def _stack_padded(arrays: list[np.ndarray | None]) -> np.ndarray:
    """Stack ``[1, n_i, ...]`` arrays along axis 0, zero-padding axis 1 to the longest."""
    present = [a for a in arrays if a is not None and a.shape[1] > 0]
    if not present:
        return np.zeros((len(arrays), 0, 0), dtype=np.float32)
    width = max(a.shape[1] for a in present)
    tail = present[0].shape[2:]
    out = np.zeros((len(arrays), width, *tail), dtype=np.float32)
    for i, a in enumerate(arrays):
        if a is not None and a.shape[1] > 0:
            out[i, : a.shape[1]] = a[0]
    return out
