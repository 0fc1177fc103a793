"""The tensor contract of the TensorRT-LLM backend's ``inflight_batcher_llm`` models.

One table for the whole repository: every ``config.pbtxt`` input and output block is
rendered from it, the ensemble's steps are derived from its routing maps, the BLS model
forwards by the same maps, and the engines parse ``tensorrt_llm``'s inputs by name from it.
Names, data types, dims and optional flags are upstream's (TensorRT-LLM 1.2,
``triton_backend/all_models/inflight_batcher_llm/*/config.pbtxt``), so a client written for
those models works unchanged; ``tests/data/upstream_contract.json`` holds upstream's tables
and a test compares every rendered config with it.

Dims exclude the batch dimension (every model has ``max_batch_size > 0``). ``scalar``
inputs carry ``reshape: { shape: [ ] }``, as upstream's ``tensorrt_llm`` declares them.
Three data types are template variables, as upstream's are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BOOL = "TYPE_BOOL"
UINT8 = "TYPE_UINT8"
INT32 = "TYPE_INT32"
INT64 = "TYPE_INT64"
UINT64 = "TYPE_UINT64"
FP16 = "TYPE_FP16"
FP32 = "TYPE_FP32"
STRING = "TYPE_STRING"
LOGITS = "${logits_datatype}"
ENCODER_FEATURES = "${encoder_input_features_data_type}"
PROMPT_TABLE = "${prompt_embedding_table_data_type}"


@dataclass(frozen=True)
class T:
    """One tensor of one model."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    required: bool = False
    scalar: bool = False
    ragged: bool = False

    def pbtxt(self, is_input: bool) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        parts = [f'name: "{self.name}"', f"data_type: {self.dtype}", f"dims: [ {dims} ]"]
        if is_input:
            if self.scalar:
                parts.append("reshape: { shape: [ ] }")
            if not self.required:
                parts.append("optional: true")
            if self.ragged:
                parts.append("allow_ragged_batch: true")
        return "  { " + " ".join(parts) + " }"


@dataclass(frozen=True)
class ModelIO:
    inputs: tuple[T, ...]
    outputs: tuple[T, ...]

    @property
    def inputs_by_name(self) -> dict[str, T]:
        return {t.name: t for t in self.inputs}

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def pbtxt(self) -> str:
        """The ``input [...]`` and ``output [...]`` blocks of ``config.pbtxt``."""
        inputs = ",\n".join(t.pbtxt(True) for t in self.inputs)
        outputs = ",\n".join(t.pbtxt(False) for t in self.outputs)
        return f"input [\n{inputs}\n]\noutput [\n{outputs}\n]"


ENSEMBLE_INPUTS = (
    T("text_input", STRING, (1,), required=True),
    T("decoder_text_input", STRING, (1,)),
    T("max_tokens", INT32, (1,), required=True),
    T("num_return_sequences", INT32, (1,)),
    T("bad_words", STRING, (-1,)),
    T("stop_words", STRING, (-1,)),
    T("exclude_input_in_output", BOOL, (1,)),
    T("end_id", INT32, (1,)),
    T("pad_id", INT32, (1,)),
    T("top_k", INT32, (1,)),
    T("top_p", FP32, (1,)),
    T("temperature", FP32, (1,)),
    T("length_penalty", FP32, (1,)),
    T("repetition_penalty", FP32, (1,)),
    T("min_tokens", INT32, (1,)),
    T("presence_penalty", FP32, (1,)),
    T("frequency_penalty", FP32, (1,)),
    T("seed", UINT64, (1,)),
    T("return_log_probs", BOOL, (1,)),
    T("return_context_logits", BOOL, (1,)),
    T("return_generation_logits", BOOL, (1,)),
    T("return_perf_metrics", BOOL, (1,)),
    T("return_num_input_tokens", BOOL, (1,)),
    T("return_num_output_tokens", BOOL, (1,)),
    T("beam_width", INT32, (1,)),
    T("stream", BOOL, (1,)),
    T("prompt_embedding_table", FP16, (-1, -1)),
    T("prompt_table_extra_id", UINT64, (1,)),
    T("prompt_vocab_size", INT32, (1,)),
    T("embedding_bias_words", STRING, (-1,)),
    T("embedding_bias_weights", FP32, (-1,)),
    T("lora_task_id", UINT64, (1,)),
    T("lora_weights", FP16, (-1, -1), ragged=True),
    T("lora_config", INT32, (-1, 3), ragged=True),
    T("guided_decoding_guide_type", STRING, (1,), ragged=True),
    T("guided_decoding_guide", STRING, (1,), ragged=True),
)
ENSEMBLE_OUTPUTS = (
    T("text_output", STRING, (-1,)),
    T("cum_log_probs", FP32, (-1,)),
    T("output_log_probs", FP32, (-1, -1)),
    T("context_logits", LOGITS, (-1, -1)),
    T("generation_logits", LOGITS, (-1, -1, -1)),
    T("batch_index", INT32, (1,)),
    T("sequence_index", INT32, (1,)),
    T("kv_cache_alloc_new_blocks", INT32, (1,)),
    T("kv_cache_reused_blocks", INT32, (1,)),
    T("kv_cache_alloc_total_blocks", INT32, (1,)),
    T("arrival_time_ns", INT64, (1,)),
    T("first_scheduled_time_ns", INT64, (1,)),
    T("first_token_time_ns", INT64, (1,)),
    T("last_token_time_ns", INT64, (1,)),
    T("acceptance_rate", FP32, (1,)),
    T("total_accepted_draft_tokens", INT32, (1,)),
    T("total_draft_tokens", INT32, (1,)),
    T("num_input_tokens", INT32, (1,)),
    T("num_output_tokens", INT32, (1,)),
)

PREPROCESSING_INPUTS = (
    T("QUERY", STRING, (1,), required=True),
    T("DECODER_QUERY", STRING, (1,)),
    T("IMAGE_BYTES", UINT8, (-1, -1, -1, -1)),
    T("IMAGE_URL", STRING, (-1,)),
    T("IMAGE_SIZES", INT64, (-1, 2)),
    T("VIDEO_BYTES", UINT8, (-1, -1, -1, -1)),
    T("REQUEST_OUTPUT_LEN", INT32, (1,), required=True),
    T("BAD_WORDS_DICT", STRING, (-1,)),
    T("STOP_WORDS_DICT", STRING, (-1,)),
    T("EMBEDDING_BIAS_WORDS", STRING, (-1,)),
    T("EMBEDDING_BIAS_WEIGHTS", FP32, (-1,)),
    T("END_ID", INT32, (1,)),
    T("PAD_ID", INT32, (1,)),
    T("PROMPT_TABLE_EXTRA_ID", UINT64, (1,)),
)
PREPROCESSING_OUTPUTS = (
    T("INPUT_ID", INT32, (-1,)),
    T("REQUEST_INPUT_LEN", INT32, (1,)),
    T("DECODER_INPUT_ID", INT32, (-1,)),
    T("REQUEST_DECODER_INPUT_LEN", INT32, (1,)),
    T("BAD_WORDS_IDS", INT32, (2, -1)),
    T("STOP_WORDS_IDS", INT32, (2, -1)),
    T("EMBEDDING_BIAS", FP32, (-1,)),
    T("REQUEST_OUTPUT_LEN", INT32, (-1,)),
    T("OUT_END_ID", INT32, (1,)),
    T("OUT_PAD_ID", INT32, (1,)),
    T("OUT_PROMPT_TABLE_EXTRA_IDS", UINT64, (-1,)),
    T("PIXEL_VALUES", FP16, (-1, -1, -1, -1)),
    T("ASPECT_RATIO_IDS", INT64, (-1,)),
    T("ASPECT_RATIO_MASK", INT64, (-1, -1)),
    T("CROSS_ATTENTION_MASK", INT64, (-1, -1, -1)),
    T("IMAGE_SIZES", INT64, (-1, 2)),
    T("IS_VIDEO_INPUT", BOOL, (1,)),
    T("ATTENTION_MASK", INT64, (-1,)),
    T("IMAGE_GRID_THW", INT64, (3,)),
    T("VISION_INPUT_ID", INT32, (-1,)),
)

POSTPROCESSING_INPUTS = (
    T("TOKENS_BATCH", INT32, (-1, -1), required=True),
    T("SEQUENCE_LENGTH", INT32, (-1,), required=True),
)
POSTPROCESSING_OUTPUTS = (T("OUTPUT", STRING, (-1,)),)

TENSORRT_LLM_INPUTS = (
    T("input_ids", INT32, (-1,), ragged=True),
    T("encoder_input_features", ENCODER_FEATURES, (-1, -1), ragged=True),
    T("encoder_output_lengths", INT32, (1,), scalar=True),
    T("input_lengths", INT32, (1,), required=True, scalar=True),
    T("request_output_len", INT32, (1,), required=True, scalar=True),
    T("num_return_sequences", INT32, (1,), scalar=True),
    T("draft_input_ids", INT32, (-1,), ragged=True),
    T("decoder_input_ids", INT32, (-1,), ragged=True),
    T("decoder_input_lengths", INT32, (1,), scalar=True),
    T("draft_logits", LOGITS, (-1, -1), ragged=True),
    T("draft_acceptance_threshold", FP32, (1,), scalar=True),
    T("end_id", INT32, (1,), scalar=True),
    T("pad_id", INT32, (1,), scalar=True),
    T("stop_words_list", INT32, (2, -1), ragged=True),
    T("bad_words_list", INT32, (2, -1), ragged=True),
    T("embedding_bias", FP32, (-1,), ragged=True),
    T("beam_width", INT32, (1,), scalar=True),
    T("temperature", FP32, (1,), scalar=True),
    T("runtime_top_k", INT32, (1,), scalar=True),
    T("runtime_top_p", FP32, (1,), scalar=True),
    T("runtime_top_p_min", FP32, (1,), scalar=True),
    T("runtime_top_p_decay", FP32, (1,), scalar=True),
    T("runtime_top_p_reset_ids", INT32, (1,), scalar=True),
    T("len_penalty", FP32, (1,), scalar=True),
    T("early_stopping", BOOL, (1,), scalar=True),
    T("repetition_penalty", FP32, (1,), scalar=True),
    T("min_tokens", INT32, (1,), scalar=True),
    T("beam_search_diversity_rate", FP32, (1,), scalar=True),
    T("presence_penalty", FP32, (1,), scalar=True),
    T("frequency_penalty", FP32, (1,), scalar=True),
    T("seed", UINT64, (1,), scalar=True),
    T("return_log_probs", BOOL, (1,), scalar=True),
    T("return_context_logits", BOOL, (1,), scalar=True),
    T("return_generation_logits", BOOL, (1,), scalar=True),
    T("return_perf_metrics", BOOL, (1,), scalar=True),
    T("return_num_input_tokens", BOOL, (1,), scalar=True),
    T("return_num_output_tokens", BOOL, (1,), scalar=True),
    T("exclude_input_in_output", BOOL, (1,), scalar=True),
    T("stop", BOOL, (1,), scalar=True),
    T("streaming", BOOL, (1,), scalar=True),
    T("prompt_embedding_table", PROMPT_TABLE, (-1, -1), ragged=True),
    T("prompt_table_extra_ids", UINT64, (-1,), ragged=True),
    T("prompt_vocab_size", INT32, (1,), scalar=True),
    T("cross_attention_mask", BOOL, (-1, -1), ragged=True),
    T("mrope_rotary_cos_sin", FP32, (-1,)),
    T("mrope_position_deltas", INT64, (1,)),
    T("lora_task_id", UINT64, (1,), scalar=True),
    T("lora_weights", FP16, (-1, -1), ragged=True),
    T("lora_config", INT32, (-1, 3), ragged=True),
    T("context_phase_params", UINT8, (-1,), ragged=True),
    T("skip_cross_attn_blocks", BOOL, (1,), ragged=True),
    T("retention_token_range_starts", INT32, (-1,), ragged=True),
    T("retention_token_range_ends", INT32, (-1,), ragged=True),
    T("retention_token_range_priorities", INT32, (-1,), ragged=True),
    T("retention_token_range_durations_ms", INT32, (-1,), ragged=True),
    T("retention_decode_priority", INT32, (1,), ragged=True),
    T("retention_decode_duration_ms", INT32, (1,), ragged=True),
    T("guided_decoding_guide_type", STRING, (1,), ragged=True),
    T("guided_decoding_guide", STRING, (1,), ragged=True),
    T("lookahead_window_size", INT32, (1,), ragged=True),
    T("lookahead_ngram_size", INT32, (1,), ragged=True),
    T("lookahead_verification_set_size", INT32, (1,), ragged=True),
)
TENSORRT_LLM_OUTPUTS = (
    T("output_ids", INT32, (-1, -1)),
    T("sequence_length", INT32, (-1,)),
    T("cum_log_probs", FP32, (-1,)),
    T("output_log_probs", FP32, (-1, -1)),
    T("context_logits", LOGITS, (-1, -1)),
    T("generation_logits", LOGITS, (-1, -1, -1)),
    T("batch_index", INT32, (1,)),
    T("sequence_index", INT32, (1,)),
    T("context_phase_params", UINT8, (-1,)),
    T("kv_cache_alloc_new_blocks", INT32, (1,)),
    T("kv_cache_reused_blocks", INT32, (1,)),
    T("kv_cache_alloc_total_blocks", INT32, (1,)),
    T("arrival_time_ns", INT64, (1,)),
    T("first_scheduled_time_ns", INT64, (1,)),
    T("first_token_time_ns", INT64, (1,)),
    T("last_token_time_ns", INT64, (1,)),
    T("acceptance_rate", FP32, (1,)),
    T("total_accepted_draft_tokens", INT32, (1,)),
    T("total_draft_tokens", INT32, (1,)),
    T("num_input_tokens", INT32, (1,)),
    T("num_output_tokens", INT32, (1,)),
)

TENSORRT_LLM_BLS_INPUTS = (
    T("text_input", STRING, (1,), required=True),
    T("decoder_text_input", STRING, (1,)),
    T("image_input", FP16, (-1, 3, -1, -1)),
    T("image_bytes_input", UINT8, (-1, -1, -1, -1)),
    T("image_url_input", STRING, (1,)),
    T("image_sizes_input", INT64, (-1, 2)),
    T("video_bytes_input", UINT8, (-1, -1, -1, -1)),
    T("max_tokens", INT32, (1,), required=True),
    T("bad_words", STRING, (-1,)),
    T("stop_words", STRING, (-1,)),
    T("exclude_input_in_output", BOOL, (1,)),
    T("end_id", INT32, (1,)),
    T("pad_id", INT32, (1,)),
    T("top_k", INT32, (1,)),
    T("top_p", FP32, (1,)),
    T("temperature", FP32, (1,)),
    T("length_penalty", FP32, (1,)),
    T("repetition_penalty", FP32, (1,)),
    T("min_tokens", INT32, (1,)),
    T("presence_penalty", FP32, (1,)),
    T("frequency_penalty", FP32, (1,)),
    T("seed", UINT64, (1,)),
    T("return_log_probs", BOOL, (1,), scalar=True),
    T("return_context_logits", BOOL, (1,), scalar=True),
    T("return_generation_logits", BOOL, (1,), scalar=True),
    T("num_return_sequences", INT32, (1,), scalar=True),
    T("beam_width", INT32, (1,)),
    T("stream", BOOL, (1,)),
    T("prompt_embedding_table", PROMPT_TABLE, (-1, -1)),
    T("prompt_vocab_size", INT32, (1,)),
    T("prompt_table_extra_id", UINT64, (1,)),
    T("embedding_bias_words", STRING, (-1,)),
    T("embedding_bias_weights", FP32, (-1,)),
    T("num_draft_tokens", INT32, (1,)),
    T("use_draft_logits", BOOL, (1,), scalar=True),
    T("lora_task_id", UINT64, (1,), scalar=True),
    T("lora_weights", FP16, (-1, -1), ragged=True),
    T("lora_config", INT32, (-1, 3), ragged=True),
    T("return_perf_metrics", BOOL, (1,), scalar=True),
    T("return_num_input_tokens", BOOL, (1,), scalar=True),
    T("return_num_output_tokens", BOOL, (1,), scalar=True),
    T("guided_decoding_guide_type", STRING, (1,)),
    T("guided_decoding_guide", STRING, (1,)),
)
TENSORRT_LLM_BLS_OUTPUTS = (
    T("text_output", STRING, (-1,)),
    T("cum_log_probs", FP32, (-1,)),
    T("output_log_probs", FP32, (-1, -1)),
    T("context_logits", LOGITS, (-1, -1)),
    T("generation_logits", LOGITS, (-1, -1, -1)),
    T("batch_index", INT32, (1,)),
    T("sequence_index", INT32, (1,)),
    T("kv_cache_alloc_new_blocks", INT32, (1,)),
    T("kv_cache_reused_blocks", INT32, (1,)),
    T("kv_cache_alloc_total_blocks", INT32, (1,)),
    T("arrival_time_ns", INT64, (1,)),
    T("first_scheduled_time_ns", INT64, (1,)),
    T("first_token_time_ns", INT64, (1,)),
    T("last_token_time_ns", INT64, (1,)),
    T("acceptance_rate", FP32, (1,)),
    T("total_accepted_draft_tokens", INT32, (1,)),
    T("total_draft_tokens", INT32, (1,)),
    T("num_input_tokens", INT32, (1,)),
    T("num_output_tokens", INT32, (1,)),
)

MUFLEET_FRONT_OUTPUTS = (
    T("output_ids", INT32, (-1, -1)),
    T("sequence_length", INT32, (-1,)),
)
"""Not in upstream's ensemble: the token ids behind ``text_output``, for routers that
count, price or resume a generation by its tokens."""

MODELS: dict[str, ModelIO] = {
    "ensemble": ModelIO(ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS + MUFLEET_FRONT_OUTPUTS),
    "preprocessing": ModelIO(PREPROCESSING_INPUTS, PREPROCESSING_OUTPUTS),
    "postprocessing": ModelIO(POSTPROCESSING_INPUTS, POSTPROCESSING_OUTPUTS),
    "tensorrt_llm": ModelIO(TENSORRT_LLM_INPUTS, TENSORRT_LLM_OUTPUTS),
    "tensorrt_llm_bls": ModelIO(
        TENSORRT_LLM_BLS_INPUTS, TENSORRT_LLM_BLS_OUTPUTS + MUFLEET_FRONT_OUTPUTS
    ),
}
FRONTS = ("ensemble", "tensorrt_llm_bls")
"""The text-in, text-out models: the ensemble and its BLS twin."""

# -- routing: how a front's request flows through preprocessing, tensorrt_llm, postprocessing.
# The ensemble's steps are rendered from these maps and the BLS model forwards by them.
PREPROCESSING_FROM_FRONT: dict[str, str] = {
    "QUERY": "text_input",
    "DECODER_QUERY": "decoder_text_input",
    "REQUEST_OUTPUT_LEN": "max_tokens",
    "BAD_WORDS_DICT": "bad_words",
    "STOP_WORDS_DICT": "stop_words",
    "EMBEDDING_BIAS_WORDS": "embedding_bias_words",
    "EMBEDDING_BIAS_WEIGHTS": "embedding_bias_weights",
    "END_ID": "end_id",
    "PAD_ID": "pad_id",
    "PROMPT_TABLE_EXTRA_ID": "prompt_table_extra_id",
    "IMAGE_BYTES": "image_bytes_input",
    "IMAGE_URL": "image_url_input",
    "IMAGE_SIZES": "image_sizes_input",
    "VIDEO_BYTES": "video_bytes_input",
}
"""preprocessing input ← front input (a front without that input skips the entry)."""
TRTLLM_FROM_PREPROCESSING: dict[str, str] = {
    "input_ids": "INPUT_ID",
    "decoder_input_ids": "DECODER_INPUT_ID",
    "input_lengths": "REQUEST_INPUT_LEN",
    "decoder_input_lengths": "REQUEST_DECODER_INPUT_LEN",
    "request_output_len": "REQUEST_OUTPUT_LEN",
    "end_id": "OUT_END_ID",
    "pad_id": "OUT_PAD_ID",
    "embedding_bias": "EMBEDDING_BIAS",
    "stop_words_list": "STOP_WORDS_IDS",
    "bad_words_list": "BAD_WORDS_IDS",
    "prompt_table_extra_ids": "OUT_PROMPT_TABLE_EXTRA_IDS",
}
"""tensorrt_llm input ← preprocessing output."""
TRTLLM_FROM_FRONT: dict[str, str] = {
    "exclude_input_in_output": "exclude_input_in_output",
    "runtime_top_k": "top_k",
    "runtime_top_p": "top_p",
    "temperature": "temperature",
    "len_penalty": "length_penalty",
    "repetition_penalty": "repetition_penalty",
    "min_tokens": "min_tokens",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "return_log_probs": "return_log_probs",
    "return_context_logits": "return_context_logits",
    "return_generation_logits": "return_generation_logits",
    "return_perf_metrics": "return_perf_metrics",
    "return_num_input_tokens": "return_num_input_tokens",
    "return_num_output_tokens": "return_num_output_tokens",
    "num_return_sequences": "num_return_sequences",
    "beam_width": "beam_width",
    "streaming": "stream",
    "prompt_embedding_table": "prompt_embedding_table",
    "prompt_vocab_size": "prompt_vocab_size",
    "lora_task_id": "lora_task_id",
    "lora_weights": "lora_weights",
    "lora_config": "lora_config",
    "guided_decoding_guide_type": "guided_decoding_guide_type",
    "guided_decoding_guide": "guided_decoding_guide",
}
"""tensorrt_llm input ← front input, passed through unchanged."""
POSTPROCESSING_FROM_TRTLLM: dict[str, str] = {
    "TOKENS_BATCH": "output_ids",
    "SEQUENCE_LENGTH": "sequence_length",
}
FRONT_FROM_POSTPROCESSING: dict[str, str] = {"text_output": "OUTPUT"}


def front_from_trtllm(front: str) -> dict[str, str]:
    """Front output ← tensorrt_llm output: every front output but the text, same name."""
    produced = set(MODELS["tensorrt_llm"].output_names)
    return {n: n for n in MODELS[front].output_names if n in produced}


def routed_inputs(front: str, routes: dict[str, str]) -> dict[str, str]:
    """``routes`` restricted to the inputs ``front`` declares."""
    declared = set(MODELS[front].input_names)
    return {target: source for target, source in routes.items() if source in declared}


def ensemble_steps() -> str:
    """The ``ensemble_scheduling`` block: preprocessing → tensorrt_llm → postprocessing."""

    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
        lines = [f'    {{\n      model_name: "{model}"\n      model_version: -1']
        lines += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
        lines += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
        return "\n".join(lines) + "\n    }"

    internal = {name: f"_{name}" for name in TRTLLM_FROM_PREPROCESSING.values()}
    pre_in = routed_inputs("ensemble", PREPROCESSING_FROM_FRONT)
    pre_out = {n: internal[n] for n in MODELS["preprocessing"].output_names if n in internal}
    trt_in = {k: internal[v] for k, v in TRTLLM_FROM_PREPROCESSING.items()}
    trt_in |= routed_inputs("ensemble", TRTLLM_FROM_FRONT)
    trt_out = front_from_trtllm("ensemble")
    post_in = dict(POSTPROCESSING_FROM_TRTLLM)
    post_out = {v: k for k, v in FRONT_FROM_POSTPROCESSING.items()}
    steps = [
        step("preprocessing", pre_in, pre_out),
        step("tensorrt_llm", trt_in, trt_out),
        step("postprocessing", post_in, post_out),
    ]
    return "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}"


# -- what the Python engines honour. Every tensorrt_llm input not listed here is honoured by
# every engine; a listed input is refused, naming what is supported, whenever ``refused``
# says the value cannot be honoured by an engine outside ``engines``.
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
