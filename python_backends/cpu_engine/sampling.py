"""Next-token choice with TensorRT-LLM's sampling knobs, seeded per request."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from python_backends.generation import GenerationSpec


class TokenSampler:
    """Picks tokens for one request; owns that request's random generator."""

    def __init__(self, spec: GenerationSpec) -> None:
        self.spec = spec
        self.generator = torch.Generator().manual_seed(spec.sampling.seed)

    def _banned(self, generated: Sequence[int]) -> list[int]:
        banned: list[int] = []
        for word in self.spec.bad_words:
            *prefix, last = word
            if not prefix or list(generated[-len(prefix) :]) == prefix:
                banned.append(last)
        if (
            self.spec.end_id is not None
            and len(generated) < self.spec.min_tokens
            and self.spec.end_id >= 0
        ):
            banned.append(self.spec.end_id)
        return banned

    def choose(self, logits: torch.Tensor, generated: Sequence[int]) -> tuple[int, float]:
        """Return ``(token, log_prob)`` for a 1-D ``logits`` row over the vocabulary."""
        logits = logits.float().clone()
        banned = [t for t in self._banned(generated) if 0 <= t < logits.numel()]
        if banned:
            logits[banned] = float("-inf")
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
        if 0.0 < sampling.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p
            mask = torch.zeros_like(probs, dtype=torch.bool)
            mask[order[keep]] = True
            probs = torch.where(mask, probs, torch.zeros_like(probs))
            probs = probs / probs.sum()
        token = int(torch.multinomial(probs, 1, generator=self.generator))
        return token, float(log_probs[token])
