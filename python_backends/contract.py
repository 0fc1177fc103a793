"""The tensor contract of the TensorRT-LLM backend's ``inflight_batcher_llm`` models.

One table for the whole repository: every ``config.pbtxt`` input and output block is
rendered from :data:`MODELS`, the ensemble's steps are derived from the routing maps here,
the BLS model forwards by the same maps, and the engines parse ``tensorrt_llm``'s inputs by
name from it. The tensors themselves are upstream's (:mod:`python_backends.upstream_io`);
what the Python engines cannot honour is in :mod:`python_backends.engine_limits`.
"""

from __future__ import annotations

from python_backends.tensor_spec import INT32, ModelIO, T
from python_backends.upstream_io import (
    ENSEMBLE_INPUTS,
    ENSEMBLE_OUTPUTS,
    POSTPROCESSING_INPUTS,
    POSTPROCESSING_OUTPUTS,
    PREPROCESSING_INPUTS,
    PREPROCESSING_OUTPUTS,
    TENSORRT_LLM_BLS_INPUTS,
    TENSORRT_LLM_BLS_OUTPUTS,
    TENSORRT_LLM_INPUTS,
    TENSORRT_LLM_OUTPUTS,
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
