"""The TensorRT-LLM ``[2, N]`` word-list encoding used by ``stop_words_list``/``bad_words_list``.

Row 0 holds the token ids of every word concatenated; row 1 holds the cumulative end
offset of each word, padded with -1 to the width of row 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def encode_word_lists(words: Sequence[Sequence[int]]) -> np.ndarray:
    """Pack token-id sequences into the ``[2, N]`` int32 layout (``[2, 1]`` of -1 if empty)."""
    flat: list[int] = []
    offsets: list[int] = []
    for word in words:
        if not word:
            continue
        flat.extend(int(t) for t in word)
        offsets.append(len(flat))
    if not flat:
        return np.array([[-1], [-1]], dtype=np.int32)
    width = max(len(flat), len(offsets))
    out = np.full((2, width), -1, dtype=np.int32)
    out[0, : len(flat)] = flat
    out[1, : len(offsets)] = offsets
    return out


def decode_word_lists(packed: np.ndarray | None) -> list[list[int]]:
    """Inverse of :func:`encode_word_lists`; accepts a leading batch dimension of 1."""
    if packed is None:
        return []
    arr = np.asarray(packed)
    while arr.ndim > 2:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[0] != 2:
        raise ValueError(f"word list must have shape [2, N], got {list(arr.shape)}")
    flat, offsets = arr[0], arr[1]
    words: list[list[int]] = []
    start = 0
    for end in offsets:
        end = int(end)
        if end < 0:
            break
        if end <= start or end > len(flat):
            raise ValueError("word list offsets must increase within the token row")
        words.append([int(t) for t in flat[start:end]])
        start = end
    return words
