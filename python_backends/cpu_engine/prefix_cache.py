"""Reuse of attention KV state across requests that share a token prefix.

An agent's next turn re-sends its whole conversation; keeping the KV of finished
sequences lets that turn prefill only the new tokens. Entries are whole sequences,
matched by longest common token prefix, evicted least-recently-used under a byte budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

LayerKV = tuple[torch.Tensor, torch.Tensor]
KVState = tuple[LayerKV, ...]
"""Per layer ``(keys, values)``, each ``[1, kv_heads, tokens, head_dim]``."""


def kv_length(kv: KVState) -> int:
    return int(kv[0][0].shape[2]) if kv else 0


def kv_bytes(kv: KVState) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


def kv_prefix(kv: KVState, tokens: int) -> KVState:
    """The first ``tokens`` positions of ``kv`` (a view, no copy)."""
    return tuple((k[:, :, :tokens], v[:, :, :tokens]) for k, v in kv)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(a.size, b.size)
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


class PrefixCache:
    """LRU map from fed token sequences to their KV state."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[tuple[int, ...], tuple[np.ndarray, KVState]] = OrderedDict()
        self._bytes = 0
        self._tokens = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    @property
    def tokens_held(self) -> int:
        return self._tokens

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, tokens: Sequence[int]) -> tuple[int, KVState | None]:
        """Longest cached prefix of ``tokens``, leaving at least one token to prefill.

        The last prompt token is always computed: its logits choose the first new token.
        """
        want = np.asarray(tokens, dtype=np.int64)
        best_len, best_key = 0, None
        for key, (arr, _) in self._entries.items():
            n = common_prefix(arr, want)
            if n > best_len:
                best_len, best_key = n, key
        best_len = min(best_len, len(tokens) - 1)
        if best_key is None or best_len <= 0:
            return 0, None
        self._entries.move_to_end(best_key)
        return best_len, kv_prefix(self._entries[best_key][1], best_len)

    def insert(self, tokens: Sequence[int], kv: KVState) -> None:
        """Keep ``kv`` (covering exactly ``tokens``); drops entries it makes redundant."""
        key = tuple(int(t) for t in tokens)
        if not key or kv_length(kv) != len(key):
            return
        size = kv_bytes(kv)
        if size > self.capacity_bytes:
            return
        arr = np.asarray(key, dtype=np.int64)
        for other in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
            self._drop(other)
        kv = tuple((k.contiguous(), v.contiguous()) for k, v in kv)
        self._entries[key] = (arr, kv)
        self._bytes += size
        self._tokens += len(key)
        while self._bytes > self.capacity_bytes and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[int, ...]) -> None:
        _, kv = self._entries.pop(key)
        self._bytes -= kv_bytes(kv)
        self._tokens -= kv_length(kv)
