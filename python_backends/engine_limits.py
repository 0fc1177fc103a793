"""Which values of ``tensorrt_llm``'s inputs the Python engines cannot honour.

Every input not listed here is honoured by every engine; a listed input is refused, naming
what is supported, whenever its ``refused`` test says the value cannot be honoured by an
engine outside ``engines``. Refused, never silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _present(value: np.ndarray) -> bool:
    arr = np.asarray(value)
    if arr.dtype == np.object_ or arr.dtype.kind in "SU":
        return any(v not in (b"", "", b"none", "none") for v in arr.reshape(-1).tolist())
    return arr.size > 0


def _true(value: np.ndarray) -> bool:
    return bool(np.asarray(value).astype(bool).any())


def _not_one(value: np.ndarray) -> bool:
    return bool((np.asarray(value) != 1).any())


@dataclass(frozen=True)
class Limit:
    """Values of one ``tensorrt_llm`` input that some engines cannot honour."""

    refused: Callable[[np.ndarray], bool]
    supported: str
    engines: frozenset[str] = frozenset()
    """Engines that honour every value of the input."""


_ENCODER = "decoder-only models; encoder-decoder inputs are not supported"
_DRAFT = "no speculative decoding; draft tokens and logits are not supported"
_PROMPT_TABLE = "no prompt-tuning tables"
_LORA = "no LoRA adapters"
_LOOKAHEAD = "no lookahead decoding"
_RETENTION = "no KV-cache retention priorities"
_LOGITS = "logits from the cpu engine only; the sim engine computes none"
LIMITS: dict[str, Limit] = {
    "beam_width": Limit(_not_one, "beam_width 1 (sampling or greedy decoding, no beam search)"),
    "encoder_input_features": Limit(_present, _ENCODER),
    "encoder_output_lengths": Limit(_present, _ENCODER),
    "decoder_input_ids": Limit(_present, _ENCODER),
    "decoder_input_lengths": Limit(_present, _ENCODER),
    "cross_attention_mask": Limit(_present, _ENCODER),
    "skip_cross_attn_blocks": Limit(_true, _ENCODER),
    "draft_input_ids": Limit(_present, _DRAFT),
    "draft_logits": Limit(_present, _DRAFT),
    "draft_acceptance_threshold": Limit(_present, _DRAFT),
    "prompt_embedding_table": Limit(_present, _PROMPT_TABLE),
    "prompt_vocab_size": Limit(_present, _PROMPT_TABLE),
    "mrope_rotary_cos_sin": Limit(_present, "no multimodal rotary embeddings"),
    "mrope_position_deltas": Limit(_present, "no multimodal rotary embeddings"),
    "lora_task_id": Limit(_present, _LORA),
    "lora_weights": Limit(_present, _LORA),
    "lora_config": Limit(_present, _LORA),
    "context_phase_params": Limit(_present, "no disaggregated context/generation serving"),
    "guided_decoding_guide_type": Limit(_present, "no guided decoding"),
    "guided_decoding_guide": Limit(_present, "no guided decoding"),
    "lookahead_window_size": Limit(_present, _LOOKAHEAD),
    "lookahead_ngram_size": Limit(_present, _LOOKAHEAD),
    "lookahead_verification_set_size": Limit(_present, _LOOKAHEAD),
    "retention_token_range_starts": Limit(_present, _RETENTION),
    "retention_token_range_ends": Limit(_present, _RETENTION),
    "retention_token_range_priorities": Limit(_present, _RETENTION),
    "retention_token_range_durations_ms": Limit(_present, _RETENTION),
    "retention_decode_priority": Limit(_present, _RETENTION),
    "retention_decode_duration_ms": Limit(_present, _RETENTION),
    "stop": Limit(
        _true,
        "stop=false only; to stop a request, cancel it (close its gRPC stream or HTTP call)",
    ),
    "return_context_logits": Limit(_true, _LOGITS, frozenset({"cpu"})),
    "return_generation_logits": Limit(_true, _LOGITS, frozenset({"cpu"})),
}


def refusal(engine: str, name: str, value: np.ndarray) -> str | None:
    """Why ``engine`` cannot honour ``name=value``, or None when it can."""
    limit = LIMITS.get(name)
    if limit is None or engine in limit.engines or not limit.refused(value):
        return None
    return f"input '{name}' is not supported by the {engine} engine: it supports {limit.supported}"
