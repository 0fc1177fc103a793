"""Next-token choice with TensorRT-LLM's sampling knobs, seeded per request and step.

Order of the logits processing, as TensorRT-LLM applies it: embedding bias, repetition
penalty (over prompt and output), presence and frequency penalties (over output tokens),
bad words (matched over prompt and output) and ``min_tokens`` bans, then temperature,
top-k and top-p. ``top_p`` decays by ``runtime_top_p_decay`` per generated token down to
``runtime_top_p_min`` and returns to its start value after ``runtime_top_p_reset_ids``.

A draw is a function of the context (prompt and tokens generated so far), the seed and
the sampling parameters: its random generator is seeded from the seed and the context's
length (:func:`step_seed`), never advanced along one request. A request re-sent with its
output appended to the prompt, ``request_output_len`` and ``min_tokens`` reduced by as
many tokens (a stream moved to another node), so draws what the unbroken run would have.
Two knobs keep state a continuation cannot see, so it is exact only without them:
``runtime_top_p_decay`` (how far top-p has decayed depends on how many tokens this request
generated) and the presence and frequency penalties (they count output tokens only, and a
continuation's prompt holds part of the output).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from python_backends.engine_loop import context_tail
from python_backends.generation import GenerationSpec

_MASK = (1 << 64) - 1


def step_seed(seed: int, context_length: int) -> int:
    """The seed of the draw that follows a context of ``context_length`` tokens.

    SplitMix64 of the request's seed stepped ``context_length`` times: neighbouring
    lengths and seeds give unrelated generators.
    """
    x = (seed + (context_length + 1) * 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class TokenSampler:
    """Picks tokens for one request; owns that request's random generator and top-p state."""

    def __init__(self, spec: GenerationSpec) -> None:
        self.spec = spec
        self.generator = torch.Generator()
        self._longest_bad_word = max((len(w) for w in spec.bad_words), default=0)
        self.top_p = spec.sampling.top_p
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if spec.embedding_bias:
            ids, values = zip(*spec.embedding_bias, strict=True)
            self._bias = (torch.tensor(ids), torch.tensor(values, dtype=torch.float32))

    def _banned(self, generated: Sequence[int]) -> list[int]:
        banned: list[int] = []
        context = context_tail(self.spec.input_ids, generated, self._longest_bad_word - 1)
        for word in self.spec.bad_words:
            *prefix, last = word
            if not prefix or context[-len(prefix) :] == tuple(prefix):
                banned.append(last)
        if (
            self.spec.end_id is not None
            and len(generated) < self.spec.min_tokens
            and self.spec.end_id >= 0
        ):
            banned.append(self.spec.end_id)
        return banned

    def _penalise(self, logits: torch.Tensor, generated: Sequence[int]) -> None:
        sampling = self.spec.sampling
        size = logits.numel()
        if sampling.repetition_penalty != 1.0:
            seen = torch.tensor(
                sorted({t for t in (*self.spec.input_ids, *generated) if 0 <= t < size}),
                dtype=torch.long,
            )
            if seen.numel():
                picked = logits[seen]
                logits[seen] = torch.where(
                    picked > 0,
                    picked / sampling.repetition_penalty,
                    picked * sampling.repetition_penalty,
                )
        if generated and (sampling.presence_penalty or sampling.frequency_penalty):
            ids = torch.tensor([t for t in generated if 0 <= t < size], dtype=torch.long)
            counts = torch.bincount(ids, minlength=size).to(logits.dtype)
            logits -= sampling.frequency_penalty * counts
            logits -= sampling.presence_penalty * (counts > 0).to(logits.dtype)

    def processed(self, logits: torch.Tensor, generated: Sequence[int]) -> torch.Tensor:
        """The logits after bias, penalties and bans (what sampling and log-probs see)."""
        logits = logits.float().clone()
        if self._bias is not None:
            logits[self._bias[0]] += self._bias[1]
        if self.spec.sampling.penalised:
            self._penalise(logits, generated)
        banned = [t for t in self._banned(generated) if 0 <= t < logits.numel()]
        if banned:
            logits[banned] = float("-inf")
        return logits

    def choose(self, logits: torch.Tensor, generated: Sequence[int]) -> tuple[int, float]:
        """Return ``(token, log_prob)`` for a 1-D ``logits`` row over the vocabulary."""
        logits = self.processed(logits, generated)
        log_probs = torch.log_softmax(logits, dim=-1)
        sampling = self.spec.sampling
        if sampling.greedy:
            token = int(torch.argmax(logits))
            return token, float(log_probs[token])
        scaled = logits / max(sampling.temperature, 1e-5)
        if sampling.top_k > 0:
            k = min(sampling.top_k, scaled.numel())
            kth = torch.topk(scaled, k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        top_p = self.top_p
        if 0.0 < top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p
            mask = torch.zeros_like(probs, dtype=torch.bool)
            mask[order[keep]] = True
            probs = torch.where(mask, probs, torch.zeros_like(probs))
            probs = probs / probs.sum()
        self.generator.manual_seed(
            step_seed(self.spec.sampling.seed, len(self.spec.input_ids) + len(generated))
        )
        token = int(torch.multinomial(probs, 1, generator=self.generator))
        self._decay_top_p(token)
        return token, float(log_probs[token])

    def _decay_top_p(self, token: int) -> None:
        sampling = self.spec.sampling
        if sampling.top_p_reset_id is not None and token == sampling.top_p_reset_id:
            self.top_p = sampling.top_p
        elif sampling.top_p_decay < 1.0:
            self.top_p = max(self.top_p * sampling.top_p_decay, sampling.top_p_min)
