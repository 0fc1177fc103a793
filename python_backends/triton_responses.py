"""Output tensors of the ``tensorrt_llm`` contract for one engine event."""

from __future__ import annotations

import numpy as np

from python_backends.engine_types import TokenEvent


def token_event_tensors(event: TokenEvent) -> dict[str, np.ndarray]:
    """``output_ids [1, beam, n]``, ``sequence_length [1, beam]`` and the log-prob outputs.

    Outputs exclude the prompt, as ``exclude_input_in_output: true`` does in TensorRT-LLM.
    """
    n = len(event.token_ids)
    log_probs = np.asarray(event.log_probs, dtype=np.float32).reshape(1, 1, n)
    return {
        "output_ids": np.asarray(event.token_ids, dtype=np.int32).reshape(1, 1, n),
        "sequence_length": np.array(
            [[n if event.sequence_length is None else event.sequence_length]], dtype=np.int32
        ),
        "cum_log_probs": np.array([[log_probs.sum()]], dtype=np.float32),
        "output_log_probs": log_probs,
    }
