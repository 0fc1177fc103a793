"""Folding a stream of ensemble responses into one unary response."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

OUTPUTS = ("text_output", "output_ids", "sequence_length", "cum_log_probs", "output_log_probs")


class UnaryCallError(ValueError):
    """The wrapped call failed or cannot be served unary (maps to HTTP 400)."""


def collect_unary(responses: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The single non-empty response of a non-streaming call.

    A non-streaming engine request yields exactly one response with tensors (plus an
    empty final flag); more than one means the request was streamed.
    """
    found = [r for r in responses if r]
    if len(found) != 1:
        raise UnaryCallError(f"expected one response from the ensemble, got {len(found)}")
    return found[0]
